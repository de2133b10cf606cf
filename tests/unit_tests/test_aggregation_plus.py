"""Fusion (judge analysis -> writer), RecursiveAggregate (RSA), SequentialAggregate
(Self-MoA-Seq) and their presets, on scripted fake models."""

from __future__ import annotations

import asyncio
import json

import pytest
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser

from langchain_moa import (
    AggregatorError,
    ConfigurationError,
    Fusion,
    LayerFailedError,
    MoAHistoryHandler,
    Propose,
    RecursiveAggregate,
    SequentialAggregate,
)
from langchain_moa.presets import (
    adaptive_consistency,
    fusion,
    rsa,
    self_consistency,
    self_moa_seq,
)
from langchain_moa.steps._sequential import windows
from tests.unit_tests.moa_fakes import ToolJudge, chat

ANALYSIS = {
    "consensus": ["the answer is 12"],
    "contradictions": ["response 2 says 7"],
    "gaps": [],
    "wrong": [{"response": 2, "reason": "adds instead of multiplying"}],
}


def proposers(*texts):
    return [chat(t, name=f"p{i}") for i, t in enumerate(texts)]


def run(moa, query="q"):
    history = MoAHistoryHandler()
    return moa.invoke(query, config={"callbacks": [history]}), history


# -- Fusion ---------------------------------------------------------------------------


def test_fusion_judge_then_writer_both_in_history():
    judge = chat(json.dumps(ANALYSIS), name="judge", input_tokens=100, output_tokens=30)
    writer = chat("3 x 4 = 12. Answer: 12", name="writer", input_tokens=200, output_tokens=8)
    out, history = run(Propose(proposers("Answer: 12", "Answer: 7")) | Fusion(judge, writer))
    assert isinstance(out, AIMessage) and out.content == "3 x 4 = 12. Answer: 12"
    assert out.response_metadata["model_name"] == "writer"
    assert out.response_metadata["moa"]["analysis"] == ANALYSIS
    assert out.response_metadata["moa"]["calls"] == 4
    assert out.usage_metadata["input_tokens"] == 2 * 10 + 100 + 200
    step = history.steps[-1]
    assert step.step == "Fusion" and [c.model for c in step.calls] == ["judge", "writer"]
    # the judge saw the candidates; the writer saw candidates + the analysis
    assert "Answer: 7" in step.calls[0].messages[0]["content"]
    system = writer.received()[0].content
    assert "Answer: 7" in system and "adds instead of multiplying" in system
    assert judge.kwargs()["temperature"] == 0.0 and writer.kwargs()["temperature"] == 0.7


def test_fusion_native_structured_output_and_writer_defaults_to_judge():
    judge = ToolJudge(model_name="judge", tool_args=ANALYSIS, replies=["fused answer"])
    out, history = run(Propose(proposers("a", "b")) | Fusion(judge))
    assert out.content == "fused answer"
    assert [c.model for c in history.steps[-1].calls] == ["judge", "judge"]
    assert "tools" in judge.kwargs(0) and "tools" not in judge.kwargs(1)


def test_fusion_invalid_analysis_raises_and_is_recorded():
    judge = chat("They all look fine to me.", name="judge")
    writer = chat("never called", name="writer")
    history = MoAHistoryHandler()
    with pytest.raises(AggregatorError, match="FusionAnalysis"):
        (Propose(proposers("a", "b")) | Fusion(judge, writer)).invoke(
            "q", config={"callbacks": [history]}
        )
    assert writer.calls == []
    assert history.steps[-1].error and history.steps[-1].calls[0].output.startswith("They")


def test_fusion_failed_writer_raises_never_returns_a_candidate():
    judge = chat(json.dumps(ANALYSIS), name="judge")
    writer = chat(RuntimeError("writer down"), name="writer")
    with pytest.raises(AggregatorError, match="writer down"):
        (Propose(proposers("Answer: 12")) | Fusion(judge, writer)).invoke("q")


def test_fusion_async_and_parser():
    judge = chat(json.dumps(ANALYSIS), name="judge")
    writer = chat("final", name="writer")
    moa = Propose(proposers("a", "b")) | Fusion(judge, writer) | StrOutputParser()
    assert asyncio.run(moa.ainvoke("q")) == "final"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"writer_temperature": 5}, "writer_temperature"),
        ({"writer_max_tokens": 0}, "writer_max_tokens"),
        ({"writer_prompt": 3}, "writer_prompt"),
        ({"temperature": -1}, "temperature"),
        ({"structured": "xml"}, "structured"),
    ],
)
def test_fusion_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        Fusion(chat("x"), **kwargs)


# -- RecursiveAggregate (RSA) -------------------------------------------------------------


def echo_subset(messages):
    """Reply with the numbers of the candidates this call saw (from the system prompt)."""
    system = messages[0].content
    seen = [line.split(". ", 1)[1] for line in system.split("\n\n") if line[:1].isdigit()]
    return "+".join(sorted(seen))


def test_rsa_rounds_population_subsets_and_layers():
    agg = chat(echo_subset, name="agg")
    moa = Propose(proposers("a", "b", "c", "d")) | RecursiveAggregate(agg, k=2, rounds=2, seed=3)
    state, history = run(moa)
    assert len(state.candidates) == 4 and state.layer == 3
    assert len(agg.calls) == 8  # N x T
    step = history.steps[-1]
    assert step.step == "RecursiveAggregate" and len(step.calls) == 8
    assert [c.layer for c in step.calls] == [2] * 4 + [3] * 4
    # round 1: each call saw exactly k=2 distinct members of the initial population
    for call in step.calls[:4]:
        assert len(call.output.split("+")) == 2
    # candidates point at the calls that produced them
    for cand in state.candidates:
        assert state.calls[cand.call_index].output == cand.text
    # seeded: the same subsets again
    again, _ = run(
        Propose(proposers("a", "b", "c", "d"))
        | RecursiveAggregate(chat(echo_subset), k=2, rounds=2, seed=3)
    )
    assert again.texts == state.texts


def test_rsa_failed_call_keeps_the_old_member_and_all_failed_raises():
    agg = chat("better a", RuntimeError("down"), name="agg")
    state, history = run(Propose(proposers("a", "b")) | RecursiveAggregate(agg, k=2, seed=0))
    assert state.texts == ["better a", "b"]
    assert [c.ok for c in history.steps[-1].calls] == [True, False]
    with pytest.raises(LayerFailedError):
        (Propose(proposers("a", "b")) | RecursiveAggregate(chat(RuntimeError("x")), k=2)).invoke(
            "q"
        )
    with pytest.raises(LayerFailedError, match="no candidates"):
        RecursiveAggregate(chat("x")).invoke("q")


def test_rsa_async():
    state = asyncio.run(
        (Propose(proposers("a", "b", "c")) | RecursiveAggregate(chat("z"), k=2)).ainvoke("q")
    )
    assert state.texts == ["z", "z", "z"]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"k": 0}, "k"),
        ({"rounds": 0}, "rounds"),
        ({"seed": "1"}, "seed"),
        ({"min_success": 0}, "min_success"),
    ],
)
def test_rsa_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        RecursiveAggregate(chat("x"), **kwargs)


# -- SequentialAggregate (Self-MoA-Seq) ---------------------------------------------------


def test_windows_plan():
    assert windows(7, 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert windows(2, 3) == [[0, 1]]
    assert windows(6, 2) == [[0, 1], [2], [3], [4], [5]]


def test_sequential_aggregate_carries_the_synthesis_and_bounds_context():
    agg = chat("S1", "S2", "S3", name="agg")
    out, history = run(
        Propose(proposers("a", "b", "c", "d", "e", "f", "g")) | SequentialAggregate(agg, window=3)
    )
    assert out.content == "S3"
    assert out.response_metadata["moa"]["windows"] == [[0, 1, 2], [3, 4], [5, 6]]
    assert out.response_metadata["moa"]["calls"] == 7 + 3
    calls = history.steps[-1].calls
    assert len(calls) == 3
    second = calls[1].messages[0]["content"]
    assert "1. S1" in second and "2. d" in second and "3. e" in second and "\n\n4." not in second
    assert "synthesis" in second and "synthesis" not in calls[0].messages[0]["content"]


def test_sequential_aggregate_failure_raises():
    agg = chat("S1", RuntimeError("gone"), name="agg")
    with pytest.raises(AggregatorError, match="gone"):
        (Propose(proposers("a", "b", "c", "d")) | SequentialAggregate(agg, window=2)).invoke("q")


def test_sequential_aggregate_rejects_window_below_two():
    with pytest.raises(ConfigurationError, match="window"):
        SequentialAggregate(chat("x"), window=1)


# -- presets ------------------------------------------------------------------------------


def test_self_consistency_preset_makes_k_calls_and_votes():
    model = chat("Answer: 5", "Answer: 6", "Answer: 5")
    out, history = run(self_consistency(model, k=3))
    assert out.response_metadata["moa"]["answer"] == "5" and len(model.calls) == 3
    assert [s.step for s in history.steps] == ["Propose", "MajorityVote"]


def test_adaptive_consistency_preset_stops_early():
    model = chat("Answer: 5")
    out, _ = run(adaptive_consistency(model, max_samples=5))
    assert out.response_metadata["moa"]["samples"] == 2 and len(model.calls) == 2


def test_self_consistency_greedy_first_votes_the_greedy_answer_and_it_wins_ties():
    # greedy "5", then samples "6", "5", "6": a 2-2 tie, which the greedy answer wins
    model = chat("Answer: 5", "Answer: 6", "Answer: 5", "Answer: 6")
    out, history = run(self_consistency(model, k=3, greedy_first=True, temperature=0.3))
    meta = out.response_metadata["moa"]
    assert meta["answer"] == "5" and meta["votes"] == {"5": 2, "6": 2}
    assert meta["calls"] == 4 == len(model.calls)
    assert [c["kwargs"]["temperature"] for c in model.calls] == [0, 0.3, 0.3, 0.3]
    assert [s.step for s in history.steps] == ["Propose", "AdaptiveMajorityVote"]


def test_adaptive_consistency_greedy_first_counts_the_greedy_call():
    model = chat("Answer: 5")
    out, _ = run(adaptive_consistency(model, max_samples=3, greedy_first=True))
    assert out.response_metadata["moa"]["samples"] == 2 == len(model.calls)
    assert [c["kwargs"]["temperature"] for c in model.calls] == [0, 0.7]
    split = chat("Answer: 1", "Answer: 2", "Answer: 3")
    out, _ = run(adaptive_consistency(split, max_samples=3, greedy_first=True))
    assert len(split.calls) == 3 and out.response_metadata["moa"]["answer"] == "1"
    with pytest.raises(ConfigurationError, match="max_samples"):
        adaptive_consistency(chat("x"), max_samples=1, greedy_first=True)


def test_rsa_preset_calls_and_final_vote():
    model = chat("Answer: 9")
    out, history = run(rsa(model, n=3, k=2, rounds=2, extract="number", seed=0))
    assert [s.step for s in history.steps] == ["Propose", "RecursiveAggregate", "MajorityVote"]
    assert out.response_metadata["moa"]["calls"] == 3 + 3 * 2 == len(model.calls)
    out, history = run(rsa(chat("Answer: 9"), n=2, k=2, rounds=1))
    assert [s.step for s in history.steps][-1] == "Aggregate"
    assert out.response_metadata["moa"]["calls"] == 2 + 2 + 1


def test_self_moa_seq_preset_call_count():
    model = chat("x")
    out, history = run(self_moa_seq(model, k=6, window=3))
    # 6 samples + 1 + ceil((6 - 3) / 2) = 9
    assert out.response_metadata["moa"]["calls"] == 9 == len(model.calls)


def test_fusion_preset():
    judge = chat(json.dumps(ANALYSIS), "final", name="judge")
    out, history = run(fusion(proposers("a", "b", "c"), judge))
    assert out.content == "final" and out.response_metadata["moa"]["calls"] == 5
    with pytest.raises(ConfigurationError, match="proposers"):
        fusion([], judge)
