"""Run-wide budgets: calls, tokens and USD capped before each call, shared by every
step through the run config; a typed error or the best answer so far."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage

from langchain_moa import (
    Aggregate,
    Budget,
    BudgetExceededError,
    ConfigurationError,
    MajorityVote,
    MoAHistoryHandler,
    Propose,
    with_budget,
)
from tests.unit_tests.moa_fakes import chat


def config(budget, history=None):
    cfg = {"configurable": {"moa_budget": budget}}
    if history is not None:
        cfg["callbacks"] = [history]
    return cfg


def test_calls_cap_stops_before_the_aggregator_and_history_records_it():
    props = [chat("Answer: 4", name=f"p{i}") for i in range(3)]
    agg = chat("never", name="agg")
    budget = Budget(max_calls=3)
    history = MoAHistoryHandler()
    with pytest.raises(BudgetExceededError) as info:
        (Propose(props) | Aggregate(agg)).invoke("q", config=config(budget, history))
    assert info.value.limit == "calls" and info.value.maximum == 3
    assert agg.calls == []  # refused before the call
    assert budget.spent()["calls"] == 3
    assert [s.step for s in history.steps] == ["Propose", "Aggregate"]
    assert history.steps[-1].error.startswith("BudgetExceededError")
    # the best answer so far is carried by the error
    assert info.value.best.content == "Answer: 4"


def test_budget_is_shared_by_every_step_and_settles_real_usage():
    props = [chat("a b", name="p0", input_tokens=10), chat("c d", name="p1", input_tokens=10)]
    agg = chat("final", name="agg", input_tokens=30)
    budget = Budget(max_calls=10, max_tokens=10_000)
    out = (Propose(props, max_tokens=50) | Aggregate(agg, max_tokens=50)).invoke(
        "q", config=config(budget)
    )
    assert out.content == "final"
    spent = budget.spent()
    assert spent["calls"] == 3
    # reservations (prompt estimate + max_tokens) were replaced by the real usage
    assert spent["tokens"] == out.usage_metadata["total_tokens"] == 10 + 2 + 10 + 2 + 30 + 1


def test_token_cap_reserves_max_tokens_before_the_call():
    model = chat("x", name="m", input_tokens=5, output_tokens=1)
    budget = Budget(max_tokens=110)
    # each call reserves 1 prompt token + max_tokens=100 and settles to 6 real tokens:
    # 0 + 101, then 6 + 101 fit in 110; 12 + 101 does not
    with pytest.raises(BudgetExceededError) as info:
        Propose([model], max_tokens=100).invoke("q", config=config(budget))
        Propose([model], max_tokens=100).invoke("q", config=config(budget))
        Propose([model], max_tokens=100).invoke("q", config=config(budget))
    assert info.value.limit == "tokens"
    assert len(model.calls) == 2  # 6 tokens settled after each; the third reservation fails


def test_usd_cap_uses_the_price_table():
    model = chat("x", name="m", input_tokens=1000, output_tokens=1000)
    prices = {"m": (1000.0, 1000.0)}  # USD per million tokens: 1 + 1 = 2 USD per call
    budget = Budget(max_cost_usd=3.0)
    Propose([model], max_tokens=10, prices=prices).invoke("q", config=config(budget))
    assert budget.spent()["cost_usd"] == pytest.approx(2.0)
    with pytest.raises(BudgetExceededError) as info:
        Propose([model], max_tokens=1000, prices=prices).invoke("q", config=config(budget))
    assert info.value.limit == "cost_usd"


def test_with_budget_best_returns_the_best_answer_so_far():
    props = [chat("Answer: 1", name="p0"), chat("Answer: 2", name="p1")]
    agg = chat("never", name="agg")
    budget = Budget(max_calls=2)
    events = []

    from langchain_core.callbacks import BaseCallbackHandler

    class Events(BaseCallbackHandler):
        def on_custom_event(self, name, data, **kwargs):
            events.append(name)

    moa = with_budget(Propose(props) | Aggregate(agg), budget, on_exceed="best")
    out = moa.invoke("q", config={"callbacks": [Events()]})
    assert isinstance(out, AIMessage)
    assert out.content in ("Answer: 1", "Answer: 2")
    assert out.response_metadata["moa"]["budget_exhausted"] is True
    assert out.response_metadata["moa"]["calls"] == 2
    assert out.usage_metadata["input_tokens"] == 20
    assert "moa_budget" in events and agg.calls == []


def test_with_budget_raise_and_nothing_to_fall_back_on():
    budget = Budget(max_calls=1)
    moa = with_budget(Propose([chat("a"), chat("b")], max_concurrency=1), budget)
    with pytest.raises(BudgetExceededError):
        moa.invoke("q")
    # "best", but the only call made so far failed: nothing to fall back on
    failing = Propose([chat(RuntimeError("down")), chat("b")], max_concurrency=1)
    with pytest.raises(BudgetExceededError) as info:
        with_budget(failing, Budget(max_calls=1), "best").invoke("q")
    assert info.value.best is None


def test_budget_async_and_no_budget_is_free():
    budget = Budget(max_calls=2)
    out = asyncio.run(
        (Propose([chat("Answer: 3"), chat("Answer: 3")]) | MajorityVote()).ainvoke(
            "q", config=config(budget)
        )
    )
    assert out.content == "Answer: 3" and budget.spent()["calls"] == 2
    with pytest.raises(BudgetExceededError):
        asyncio.run(Propose([chat("x")]).ainvoke("q", config=config(budget)))
    # without a budget nothing is counted or refused
    assert Propose([chat("x")] * 3).invoke("q").texts == ["x", "x", "x"]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_calls": 0}, "max_calls"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_cost_usd": 0}, "max_cost_usd"),
        ({}, "at least one"),
    ],
)
def test_budget_rejects_bad_limits(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        Budget(**kwargs)


def test_bad_budget_objects_are_rejected():
    with pytest.raises(ConfigurationError, match="on_exceed"):
        with_budget(Propose([chat("x")]), Budget(max_calls=1), on_exceed="ignore")
    with pytest.raises(ConfigurationError, match="must be a Budget"):
        Propose([chat("x")]).invoke("q", config={"configurable": {"moa_budget": 5}})


def test_streamed_aggregator_is_metered_like_an_invoked_one():
    """Aggregate.stream reserves its call and settles the real usage on the budget."""
    props = [chat("a b", name="p0", input_tokens=10), chat("c d", name="p1", input_tokens=10)]
    agg = chat("final answer", name="agg", input_tokens=30)
    budget = Budget(max_calls=3, max_tokens=10_000)
    chunks = list((Propose(props) | Aggregate(agg)).stream("q", config=config(budget)))
    assert "".join(c.content for c in chunks) == "final answer"
    assert budget.spent()["calls"] == 3
    assert budget.spent()["tokens"] == 10 + 2 + 10 + 2 + 30 + 2
    # a cap the aggregator would pass refuses it before its first token
    refused = chat("never", name="agg2")
    with pytest.raises(BudgetExceededError) as info:
        list((Propose(props) | Aggregate(refused)).stream("q", config=config(Budget(max_calls=2))))
    assert refused.calls == [] and info.value.limit == "calls"


def test_with_budget_streams_tokens_and_falls_back_to_the_best_answer():
    props = [chat("Answer: 1", name="p0"), chat("Answer: 2", name="p1")]
    moa = with_budget(Propose(props) | Aggregate(chat("one two three")), Budget(max_calls=3))
    chunks = list(moa.stream("q"))
    assert len(chunks) > 1  # token by token, not one invoke
    assert "".join(c.content for c in chunks) == "one two three"
    agg = chat("never", name="agg")
    best = with_budget(Propose(props) | Aggregate(agg), Budget(max_calls=2), on_exceed="best")
    [only] = list(best.stream("q"))
    assert only.content in ("Answer: 1", "Answer: 2") and agg.calls == []
    again = with_budget(Propose(props) | Aggregate(agg), Budget(max_calls=2), on_exceed="best")
    [aonly] = asyncio.run(_collect(again.astream("q")))
    assert aonly.response_metadata["moa"]["budget_exhausted"] is True


async def _collect(stream):
    return [chunk async for chunk in stream]


def test_a_shared_budget_never_answers_with_another_runs_reply():
    """One budget serving several with_budget runs: each run's best is its own."""
    budget = Budget(max_calls=3)
    first = with_budget(
        Propose([chat("Answer: 1", name="a"), chat("Answer: 1", name="b")]) | MajorityVote(),
        budget,
        on_exceed="best",
    )
    assert first.invoke("q1").content == "Answer: 1"
    # the second run's first call fits, its second does not: its own reply is the best
    second = with_budget(
        Propose([chat("Answer: 2", name="c"), chat("Answer: 9", name="d")], max_concurrency=1)
        | MajorityVote(),
        budget,
        on_exceed="best",
    )
    out = second.invoke("q2")
    assert out.content == "Answer: 2"
    assert out.response_metadata["moa"]["calls"] == 1
    # nothing of the third run succeeded: it raises instead of answering with q2's reply
    third = with_budget(Propose([chat("Answer: 3")]), budget, on_exceed="best")
    with pytest.raises(BudgetExceededError) as info:
        third.invoke("q3")
    assert info.value.best is None
