"""Presets from the papers: layers and calls per preset, counted with fakes."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage

from langchain_moa import ConfigurationError, MoAHistoryHandler
from langchain_moa.presets import (
    PAPER_PROPOSERS,
    moa_lite,
    robust_moa,
    self_moa,
    together_moa,
)
from tests.unit_tests.moa_fakes import Gauge, chat


def six():
    return [chat(f"answer {i}", name=f"p{i}") for i in range(6)]


def run_with_history(moa, query="q"):
    history = MoAHistoryHandler()
    out = moa.invoke(query, config={"callbacks": [history]})
    return out, history


def test_together_moa_is_three_layers_and_thirteen_calls():
    proposers, agg = six(), chat("final", name="agg")
    out, history = run_with_history(together_moa(proposers, agg))
    assert isinstance(out, AIMessage) and out.content == "final"
    assert [s.step for s in history.steps] == ["Propose", "Synthesize", "Aggregate"]
    assert [len(s.calls) for s in history.steps] == [6, 6, 1]
    assert out.response_metadata["moa"]["layers"] == 3
    assert out.response_metadata["moa"]["calls"] == 13
    # each proposer answers once as a reference and once as a synthesizer
    assert [len(p.calls) for p in proposers] == [2] * 6
    assert len(agg.calls) == 1
    assert history.steps[1].calls[0].messages[0]["content"].count("\n\n6. answer 5") == 1


def test_moa_lite_is_two_layers_and_seven_calls():
    proposers, agg = six(), chat("final", name="agg")
    out, history = run_with_history(moa_lite(proposers, agg))
    assert [s.step for s in history.steps] == ["Propose", "Aggregate"]
    assert out.response_metadata["moa"] == {
        "layers": 2,
        "calls": 7,
        "failed_calls": 0,
        "cost_usd": None,
    }
    assert [len(p.calls) for p in proposers] == [1] * 6


@pytest.mark.parametrize("k", [1, 3, 6])
def test_self_moa_samples_one_model_k_times_then_aggregates_with_it(k):
    model = chat("sample", name="solo")
    out, history = run_with_history(self_moa(model, k=k))
    assert out.response_metadata["moa"]["calls"] == k + 1
    assert out.response_metadata["moa"]["layers"] == 2
    assert len(model.calls) == k + 1
    assert [c.model for c in history.calls] == ["solo"] * (k + 1)
    assert history.steps[-1].params["agent"] == "solo"


def test_self_moa_with_a_separate_aggregator():
    model, agg = chat("s", name="solo"), chat("f", name="agg")
    out, _ = run_with_history(self_moa(model, k=4, aggregator=agg))
    assert len(model.calls) == 4 and len(agg.calls) == 1


@pytest.mark.parametrize("k", [0, -1, 2.5])
def test_self_moa_k_below_one_raises_naming_k(k):
    with pytest.raises(ConfigurationError, match="k must be an int >= 1"):
        self_moa(chat("x"), k=k)


def test_robust_moa_shuffles_and_drops_then_aggregates():
    proposers, agg = [chat(f"answer {i}", name=f"p{i}") for i in range(4)], chat("f", name="agg")
    out, history = run_with_history(robust_moa(proposers, agg, dropout=0.5, seed=3))
    assert [s.step for s in history.steps] == ["Propose", "Shuffle", "Dropout", "Aggregate"]
    assert out.response_metadata["moa"]["calls"] == 5
    assert out.response_metadata["moa"]["layers"] == 2
    kept = history.steps[2].outputs
    assert 1 <= len(kept) <= 4
    assert history.steps[-1].inputs == kept
    assert history.steps[1].params == {"seed": 3}
    assert history.steps[2].params == {"rate": 0.5, "seed": 3}
    # the seed makes the whole run reproducible
    _, again = run_with_history(
        robust_moa(
            [chat(f"answer {i}", name=f"p{i}") for i in range(4)], chat("f"), dropout=0.5, seed=3
        )
    )
    assert again.steps[2].outputs == kept


def test_robust_moa_rejects_empty_proposers_and_bad_dropout():
    with pytest.raises(ConfigurationError, match="proposers"):
        robust_moa([], chat("a"))
    with pytest.raises(ConfigurationError, match="rate"):
        robust_moa([chat("p")], chat("a"), dropout=1.0)


def test_presets_pass_temperature_and_separate_token_budgets():
    proposers, agg = six(), chat("f")
    together_moa(
        proposers, agg, temperature=0.2, reference_max_tokens=512, aggregator_max_tokens=1024
    ).invoke("q")
    assert proposers[0].kwargs(0) == {"temperature": 0.2, "max_tokens": 512}
    assert proposers[0].kwargs(1) == {"temperature": 0.2, "max_tokens": 512}
    assert agg.kwargs() == {"temperature": 0.2, "max_tokens": 1024}


def test_presets_bound_concurrency():
    gauge = Gauge()
    proposers = [chat(f"a{i}", delay=0.03, gauge=gauge) for i in range(6)]
    moa_lite(proposers, chat("f"), max_concurrency=2).invoke("q")
    assert gauge.total == 6 and gauge.peak == 2


async def test_presets_with_a_mixture_llm_function_and_bare_names():
    calls = []

    async def client(model, messages, temp, max_tokens):
        calls.append(model)
        return f"{model} says", 1, 1

    out = await together_moa(["m1", "m2"], "judge", client=client).ainvoke("q")
    assert out.content == "judge says"
    assert calls[:2] == ["m1", "m2"] and calls[-1] == "judge" and len(calls) == 5


def test_unset_agents_are_the_papers_six_proposers(monkeypatch):
    monkeypatch.setenv("TOGETHER_API_KEY", "test-key")
    moa = together_moa()
    steps = moa.bound.steps
    assert [a.name for a in steps[0].agents] == PAPER_PROPOSERS
    assert len(PAPER_PROPOSERS) == 6
    assert [a.name for a in steps[1].agents] == PAPER_PROPOSERS
    assert steps[2].agent.name == "together/Qwen/Qwen1.5-110B-Chat"
    assert moa_lite().bound.steps[1].agent.name == "together/Qwen/Qwen1.5-72B-Chat"


def test_presets_are_named_runs():
    assert together_moa(six(), chat("a")).config["run_name"] == "together_moa"
    assert moa_lite(six(), chat("a")).config["run_name"] == "moa_lite"
    assert self_moa(chat("x")).config["run_name"] == "self_moa"
    assert robust_moa(six(), chat("a")).config["run_name"] == "robust_moa"


@pytest.mark.parametrize("preset", [together_moa, moa_lite, robust_moa])
def test_an_empty_proposer_list_raises_instead_of_using_the_paper_models(preset):
    with pytest.raises(ConfigurationError, match="proposers|agents must be a non-empty list"):
        preset([], chat("agg"))
