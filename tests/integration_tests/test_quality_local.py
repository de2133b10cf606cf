"""The answer-quality steps on the real bundled model (Qwen2.5-Coder-0.5B-Instruct):
MajorityVote, AdaptiveMajorityVote (and the greedy-first vote preset), Fusion,
RecursiveAggregate, SequentialAggregate and a Budget. One test each, small
``max_tokens`` so the file stays quick; the assertions are the steps' invariants (calls
made and recorded, usage summed, votes consistent with the texts), not the model's
arithmetic.
"""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage

from langchain_moa import (
    AdaptiveMajorityVote,
    Aggregate,
    Budget,
    Fusion,
    MajorityVote,
    MoAHistoryHandler,
    NumberAnswer,
    Propose,
    RecursiveAggregate,
    SequentialAggregate,
    with_budget,
)
from langchain_moa.local import LOCAL_BASE_URL_ENV, LocalServer, chat_model_for_base_url

pytestmark = pytest.mark.local_model

AGENT = "local/qwen2.5-coder-0.5b"
QUESTION = "What is 6 times 7? Reply with the number only."
SHORT = 16


@pytest.fixture
def agents_on_server(local_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> LocalServer:
    monkeypatch.setenv(LOCAL_BASE_URL_ENV, local_server.base_url)
    return local_server


def run(moa, question=QUESTION):
    history = MoAHistoryHandler()
    out = moa.invoke(question, config={"callbacks": [history]})
    return out, history


def usage_matches(out: AIMessage, history: MoAHistoryHandler) -> None:
    calls = history.calls
    assert out.usage_metadata["input_tokens"] == sum(c.input_tokens for c in calls)
    assert out.usage_metadata["output_tokens"] == sum(c.output_tokens for c in calls)
    assert out.response_metadata["moa"]["calls"] == len(calls)


def test_majority_vote_on_real_samples(agents_on_server):
    out, history = run(Propose([AGENT] * 3, max_tokens=SHORT) | MajorityVote("number"))
    meta = out.response_metadata["moa"]
    texts = history.steps[0].outputs
    answers = [NumberAnswer()(t) for t in texts]
    assert meta["votes"][meta["answer"]] == answers.count(meta["answer"])
    assert meta["votes"][meta["answer"]] == max(meta["votes"].values())
    assert out.content == texts[meta["chosen"]]
    assert history.steps[1].calls == []  # the vote made no call
    usage_matches(out, history)


def test_adaptive_majority_vote_stops_within_bounds(agents_on_server):
    out, history = run(AdaptiveMajorityVote(AGENT, max_samples=4, max_tokens=SHORT))
    meta = out.response_metadata["moa"]
    assert 2 <= meta["samples"] <= 4 and meta["samples"] == len(history.calls)
    assert meta["stopped"] in ("threshold", "unbeatable", "max_samples")
    usage_matches(out, history)


def test_greedy_first_self_consistency_votes_the_greedy_call_and_the_samples(agents_on_server):
    from langchain_moa.presets import self_consistency

    moa = self_consistency(AGENT, k=2, greedy_first=True, reference_max_tokens=SHORT)
    out, history = run(moa)
    meta = out.response_metadata["moa"]
    assert [s.step for s in history.steps] == ["Propose", "AdaptiveMajorityVote"]
    assert meta["calls"] == 3 == len(history.calls) and meta["samples"] == 3
    answers = [NumberAnswer()(c.output) for c in history.calls]
    assert meta["votes"][meta["answer"]] == answers.count(meta["answer"])
    top = max(meta["votes"].values())
    # ties go to the earliest supporter: the greedy call when it is among the leaders
    assert meta["answer"] == next(a for a in answers if a is not None and answers.count(a) == top)
    usage_matches(out, history)


def test_fusion_judge_analysis_then_writer(agents_on_server):
    moa = Propose([AGENT] * 2, max_tokens=SHORT) | Fusion(
        AGENT, max_tokens=384, writer_max_tokens=32, structured="native"
    )
    out, history = run(moa)
    fusion = history.steps[-1]
    assert fusion.step == "Fusion" and [c.ok for c in fusion.calls] == [True, True]
    assert set(out.response_metadata["moa"]["analysis"]) == {
        "consensus",
        "contradictions",
        "gaps",
        "wrong",
    }
    assert out.content == fusion.calls[-1].output
    assert "Reviewer's analysis" in fusion.calls[-1].messages[0]["content"]
    usage_matches(out, history)


def test_recursive_aggregate_one_round(agents_on_server):
    moa = Propose([AGENT] * 2, max_tokens=SHORT) | RecursiveAggregate(
        AGENT, k=2, rounds=1, seed=0, max_tokens=SHORT
    )
    state, history = run(moa)
    assert len(state.candidates) == 2 and state.layer == 2
    assert [len(s.calls) for s in history.steps] == [2, 2]
    for cand in state.candidates:
        assert cand.step == "RecursiveAggregate"
        assert state.calls[cand.call_index].output == cand.text


def test_sequential_aggregate_window_two(agents_on_server):
    moa = Propose([AGENT] * 3, max_tokens=SHORT) | SequentialAggregate(
        AGENT, window=2, max_tokens=SHORT
    )
    out, history = run(moa)
    assert out.response_metadata["moa"]["windows"] == [[0, 1], [2]]
    calls = history.steps[-1].calls
    assert len(calls) == 2
    assert calls[0].output.strip() in calls[1].messages[0]["content"]  # the synthesis carried on
    usage_matches(out, history)


def test_budget_best_answer_so_far(agents_on_server):
    budget = Budget(max_calls=2)
    moa = Propose([AGENT] * 2, max_tokens=SHORT) | Aggregate(AGENT, max_tokens=SHORT)
    out, history = run(with_budget(moa, budget, on_exceed="best"))
    assert out.response_metadata["moa"]["budget_exhausted"] is True
    assert out.content in history.steps[0].outputs
    assert history.steps[-1].step == "Aggregate" and history.steps[-1].calls == []
    assert history.steps[-1].error.startswith("BudgetExceededError")
    assert budget.spent()["calls"] == 2


def test_small_proposers_and_the_1_5b_aggregator(
    local_chat_model, local_server_factory, local_1_5b_model_path
):
    """The mixture of the quality benchmark: 0.5B proposers, the bundled 1.5B writes."""
    big = local_server_factory(
        model_path=local_1_5b_model_path, model_alias="qwen2.5-coder-1.5b", slots=1
    )
    aggregator = chat_model_for_base_url(big.base_url, big.model_alias, timeout=300.0)
    moa = Propose([local_chat_model] * 2, max_tokens=SHORT) | Aggregate(
        aggregator, temperature=0, max_tokens=SHORT
    )
    out, history = run(moa)
    proposals, final = history.steps
    assert [c.response_model for c in proposals.calls] == ["qwen2.5-coder-0.5b"] * 2
    [call] = final.calls
    assert call.ok and call.response_model == "qwen2.5-coder-1.5b"
    assert out.content == call.output and out.content.strip()
    usage_matches(out, history)
