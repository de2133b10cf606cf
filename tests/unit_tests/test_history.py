"""History through callbacks: MoAHistoryHandler, the custom events, and run()."""

from __future__ import annotations

import json

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import HumanMessage, SystemMessage

from langchain_moa import (
    Aggregate,
    AggregatorError,
    LayerFailedError,
    MoAHistoryHandler,
    Propose,
    Shuffle,
    StepRecord,
    Synthesize,
    Take,
    run,
)
from langchain_moa.pricing import PRICES
from tests.unit_tests.moa_fakes import chat


def build():
    props = [
        chat("alpha answer", name="a", input_tokens=11, delay=0.02),
        chat(RuntimeError("quota exceeded"), name="b"),
        chat("gamma", name="openai/gpt-4o-mini", input_tokens=1000),
    ]
    synth = [chat("synth one", name="s1"), chat("synth two", name="s2")]
    agg = chat("the final", name="agg", input_tokens=50)
    moa = (
        Propose(props, temperature=0.5, max_tokens=300, prices={"a": (1.0, 2.0)})
        | Shuffle(seed=4)
        | Synthesize(synth, min_success=2)
        | Aggregate(agg, max_tokens=100)
    )
    return moa, props, synth, agg


def test_steps_are_recorded_with_name_params_inputs_outputs_and_layer():
    moa, *_ = build()
    history = MoAHistoryHandler()
    out = moa.invoke("Q?", config={"callbacks": [history]})
    assert [s.step for s in history.steps] == ["Propose", "Shuffle", "Synthesize", "Aggregate"]
    propose, shuffle, synth, agg = history.steps
    assert propose.params == {
        "agents": ["a", "b", "openai/gpt-4o-mini"],
        "temperature": 0.5,
        "max_tokens": 300,
        "min_success": 1,
    }
    assert shuffle.params == {"seed": 4}
    assert synth.params["min_success"] == 2 and synth.params["agents"] == ["s1", "s2"]
    assert agg.params == {"agent": "agg", "temperature": 0.7, "max_tokens": 100}
    assert propose.inputs == [] and propose.outputs == ["alpha answer", "gamma"]
    assert sorted(shuffle.inputs) == sorted(shuffle.outputs) == ["alpha answer", "gamma"]
    assert synth.inputs == shuffle.outputs and synth.outputs == ["synth one", "synth two"]
    assert agg.inputs == ["synth one", "synth two"] and agg.outputs == [out.content]
    assert [s.layer for s in history.steps] == [1, 1, 2, 3]
    assert all(s.error is None for s in history.steps)
    assert len({s.run_id for s in history.steps}) == 4


def test_calls_are_recorded_with_messages_output_tokens_latency_cost_and_error():
    moa, *_ = build()
    history = MoAHistoryHandler()
    moa.invoke([SystemMessage("sys"), HumanMessage("Q?")], config={"callbacks": [history]})
    propose = history.steps[0]
    assert [c.model for c in propose.calls] == ["a", "b", "openai/gpt-4o-mini"]
    a, b, g = propose.calls
    assert a.messages == [{"role": "system", "content": "sys"}, {"role": "user", "content": "Q?"}]
    assert a.output == "alpha answer"
    assert (a.input_tokens, a.output_tokens) == (11, 2)
    assert 0.02 <= a.latency_s < 2
    assert a.cost_usd == pytest.approx((11 * 1.0 + 2 * 2.0) / 1e6)
    price_in, price_out = PRICES["openai/gpt-4o-mini"]
    assert g.cost_usd == pytest.approx((1000 * price_in + 1 * price_out) / 1e6)
    assert b.error == "RuntimeError: quota exceeded" and b.output is None and not b.ok
    assert (a.step, a.layer, a.agent_index) == ("Propose", 1, 0)
    assert history.steps[1].calls == []  # Shuffle calls no model
    aggregate_call = history.steps[-1].calls[0]
    assert aggregate_call.messages[0]["role"] == "system"
    assert "Responses from models:" in aggregate_call.messages[0]["content"]
    assert aggregate_call.messages[0]["content"].startswith("sys\n\n")
    assert aggregate_call.output == "the final"
    assert history.cost_usd() == pytest.approx(a.cost_usd + g.cost_usd)
    assert history.usage()["input_tokens"] == 11 + 1000 + 10 + 10 + 50
    assert len(history.calls) == 6


def test_step_time_is_wall_time_in_seconds():
    history = MoAHistoryHandler()
    Propose([chat("x", delay=0.15)]).invoke("q", config={"callbacks": [history]})
    assert 0.15 <= history.steps[0].time_s < 2


def test_to_json_round_trips():
    moa, *_ = build()
    history = MoAHistoryHandler()
    moa.invoke("Q?", config={"callbacks": [history]})
    data = json.loads(history.to_json())
    assert data == history.to_list()
    assert [d["step"] for d in data] == ["Propose", "Shuffle", "Synthesize", "Aggregate"]
    assert data[0]["calls"][1]["error"] == "RuntimeError: quota exceeded"
    assert [StepRecord(**d) for d in data] == history.steps
    assert json.loads(history.to_json(indent=None)) == data


def test_failed_layer_is_recorded_with_its_error_and_calls():
    history = MoAHistoryHandler()
    moa = Propose([chat("ok")]) | Synthesize(
        [chat(RuntimeError("s1 down"), name="s1"), chat("", name="s2")]
    )
    with pytest.raises(LayerFailedError):
        moa.invoke("q", config={"callbacks": [history]})
    propose, synth = history.steps
    assert propose.error is None
    assert synth.step == "Synthesize"
    assert synth.error.startswith("LayerFailedError: Synthesize failed")
    assert [c.error.split(":")[0] for c in synth.calls] == ["RuntimeError", "EmptyResponseError"]
    assert synth.outputs == []


def test_failed_aggregator_is_recorded():
    history = MoAHistoryHandler()
    moa = Propose([chat("ok")]) | Aggregate(chat(RuntimeError("agg down"), name="agg"))
    with pytest.raises(AggregatorError):
        moa.invoke("q", config={"callbacks": [history]})
    agg = history.steps[-1]
    assert agg.step == "Aggregate" and "agg down" in agg.error
    assert agg.calls[0].error == "RuntimeError: agg down"
    assert agg.outputs == []


async def test_async_and_streaming_runs_are_recorded_too():
    moa, *_ = build()
    history = MoAHistoryHandler()
    await moa.ainvoke("q", config={"callbacks": [history]})
    assert [s.step for s in history.steps] == ["Propose", "Shuffle", "Synthesize", "Aggregate"]
    history.clear()
    text = "".join([c.text async for c in moa.astream("q", config={"callbacks": [history]})])
    assert [s.step for s in history.steps] == ["Propose", "Shuffle", "Synthesize", "Aggregate"]
    agg = history.steps[-1]
    assert agg.outputs == [text] == ["the final"]
    assert agg.calls[0].output == "the final" and agg.calls[0].input_tokens == 50
    history.clear()
    chunks = list(moa.stream("q", config={"callbacks": [history]}))
    assert "".join(c.text for c in chunks) == "the final"
    assert history.steps[-1].calls[0].output == "the final"


def test_streaming_aggregator_failure_is_recorded():
    history = MoAHistoryHandler()
    moa = Propose([chat("ok")]) | Aggregate(chat("a b c", name="agg", fail_mid_stream=True))
    with pytest.raises(AggregatorError):
        list(moa.stream("q", config={"callbacks": [history]}))
    agg = history.steps[-1]
    assert agg.step == "Aggregate" and "mid-stream" in agg.error
    assert len(agg.calls) == 1 and "mid-stream" in agg.calls[0].error


async def test_live_progress_custom_events_in_astream_events():
    moa, *_ = build()
    events = [e async for e in moa.astream_events("q", version="v2")]
    custom = [e for e in events if e["event"] == "on_custom_event"]
    names = [e["name"] for e in custom]
    assert names.count("moa_step") == 4
    assert names.count("moa_call") == 3 + 2 + 1
    # each step's calls are reported before the step itself
    assert names.index("moa_call") < names.index("moa_step")
    steps = [e["data"]["step"] for e in custom if e["name"] == "moa_step"]
    assert steps == ["Propose", "Shuffle", "Synthesize", "Aggregate"]
    calls = [e["data"] for e in custom if e["name"] == "moa_call"]
    assert {c["model"] for c in calls} >= {"a", "b", "s1", "s2", "agg"}
    assert any(c["error"] == "RuntimeError: quota exceeded" for c in calls)


def test_custom_events_reach_any_callback_handler_live():
    """A plain handler sees each call as it finishes (for progress bars)."""

    class Progress(BaseCallbackHandler):
        def __init__(self):
            self.seen = []

        def on_custom_event(self, name, data, **kwargs):
            self.seen.append((name, data.get("step")))

    progress = Progress()
    Propose([chat("a"), chat("b")]).invoke("q", config={"callbacks": [progress]})
    assert progress.seen == [
        ("moa_call", "Propose"),
        ("moa_call", "Propose"),
        ("moa_step", "Propose"),
    ]


async def test_run_returns_text_and_history():
    moa_steps = [
        Propose([chat("p1", name="p1"), chat("p2", name="p2")]),
        Aggregate(chat("answer", name="agg")),
    ]
    text, history = await run(moa_steps, "What?")
    assert text == "answer"
    assert isinstance(history, list) and all(isinstance(s, dict) for s in history)
    assert [s["step"] for s in history] == ["Propose", "Aggregate"]
    assert [c["model"] for c in history[0]["calls"]] == ["p1", "p2"]
    json.dumps(history)


async def test_run_with_a_non_final_pipeline_returns_the_first_candidate():
    text, history = await run(Propose([chat("x1"), chat("x2")]) | Take(1), "q")
    assert text == "x1"
    assert [s["step"] for s in history] == ["Propose", "Take"]


async def test_run_keeps_the_callers_callbacks():
    mine = MoAHistoryHandler()
    text, history = await run(
        [Propose([chat("p")]), Aggregate(chat("a"))], "q", config={"callbacks": [mine]}
    )
    assert text == "a"
    assert mine.to_list() == history


async def test_run_raises_the_pipelines_error():
    with pytest.raises(LayerFailedError):
        await run([Propose([chat(RuntimeError("x"))]), Aggregate(chat("a"))], "q")


def test_batch_steps_carry_distinct_run_ids():
    history = MoAHistoryHandler()
    (Propose([chat("p")]) | Aggregate(chat("a"))).batch(
        ["q1", "q2"], config={"callbacks": [history]}
    )
    assert len(history.steps) == 4
    assert len({s.run_id for s in history.steps}) == 4


# -- the handler on the hot path -------------------------------------------------------


def test_handler_runs_inline_in_the_calling_thread() -> None:
    """No thread-pool hop per event (a6952f6 sent every event of an async run through
    an executor thread)."""
    import threading

    seen: list[int] = []

    class Recording(MoAHistoryHandler):
        def on_custom_event(self, name, data, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(threading.get_ident())
            super().on_custom_event(name, data, **kwargs)

    history = Recording()

    async def main() -> int:
        await (Propose([chat("a"), chat("b")]) | Aggregate(chat("c"))).ainvoke(
            "q", config={"callbacks": [history]}
        )
        return threading.get_ident()

    import asyncio

    loop_thread = asyncio.run(main())
    assert seen and set(seen) == {loop_thread}
    assert [s.step for s in history.steps] == ["Propose", "Aggregate"]


def test_handler_is_thread_safe_under_batch() -> None:
    history = MoAHistoryHandler()
    moa = Propose([chat("a", delay=0.01)] * 4) | Aggregate(chat("c"))
    moa.batch([f"q{i}" for i in range(16)], config={"callbacks": [history], "max_concurrency": 16})
    assert len(history.steps) == 32
    assert len(history.calls) == 16 * 5
