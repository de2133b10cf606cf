"""The LLM steps: Propose, Synthesize, Aggregate, Refine — behaviour, parameters,
concurrency bounds, every Runnable entry point, and the failure rules."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage

from langchain_moa import (
    Aggregate,
    AggregatorError,
    ConfigurationError,
    LayerFailedError,
    MoAHistoryHandler,
    MoAState,
    Propose,
    Refine,
    Shuffle,
    Synthesize,
    Take,
)
from langchain_moa._prompts import AGGREGATE_PROMPT, REFINE_PROMPT
from tests.unit_tests.moa_fakes import Gauge, chat


def three_proposers():
    return [chat("alpha", name="a"), chat("beta", name="b"), chat("gamma", name="c")]


# -- Propose -------------------------------------------------------------------


def test_propose_every_agent_answers_the_conversation_in_agent_order():
    agents = three_proposers()
    state = Propose(agents).invoke("What is 2+2?")
    assert isinstance(state, MoAState)
    assert state.texts == ["alpha", "beta", "gamma"]
    assert [c.model for c in state.candidates] == ["a", "b", "c"]
    assert [c.agent_index for c in state.candidates] == [0, 1, 2]
    assert state.layer == 1
    for agent in agents:
        assert len(agent.calls) == 1
        assert [m.content for m in agent.received()] == ["What is 2+2?"]


def test_propose_results_keep_agent_order_whatever_order_calls_finish():
    slow = chat("slow", name="slow", delay=0.2)
    fast = chat("fast", name="fast")
    state = Propose([slow, fast]).invoke("q")
    assert state.texts == ["slow", "fast"]


def test_propose_with_langchain_fakes():
    agents = [FakeListChatModel(responses=["one"]), GenericFakeChatModel(messages=iter(["two"]))]
    assert Propose(agents).invoke("q").texts == ["one", "two"]


def test_propose_prompt_is_a_system_instruction_with_literal_braces():
    agent = chat("x")
    prompt = 'Answer as JSON like {"answer": 1} and keep {braces} literal.'
    Propose([agent], prompt=prompt).invoke([SystemMessage("Be brief."), HumanMessage("hi")])
    sent = agent.received()
    assert isinstance(sent[0], SystemMessage)
    assert sent[0].content == "Be brief.\n\n" + prompt
    assert sent[1].content == "hi"


# -- Synthesize ------------------------------------------------------------------


def test_synthesize_each_agent_sees_all_candidates_in_a_system_message():
    synths = [chat("s1", name="s1"), chat("s2", name="s2")]
    state = (Propose(three_proposers()) | Synthesize(synths)).invoke("Q?")
    assert state.texts == ["s1", "s2"]
    assert state.layer == 2
    assert all(c.layer == 2 and c.step == "Synthesize" for c in state.candidates)
    for agent in synths:
        system, user = agent.received()
        assert isinstance(system, SystemMessage)
        assert system.content.startswith(AGGREGATE_PROMPT)
        assert system.content.endswith("Responses from models:\n\n1. alpha\n\n2. beta\n\n3. gamma")
        assert user == HumanMessage("Q?")


def test_synthesize_without_candidates_raises_layer_failed():
    with pytest.raises(LayerFailedError, match="no candidates"):
        Synthesize([chat("s")]).invoke("q")


def test_synthesize_prompt_override_keeps_braces_and_appends_responses():
    synth = chat("s")
    prompt = "Merge {these} responses; output {json}."
    (Propose([chat("p1"), chat("p2")]) | Synthesize([synth], prompt=prompt)).invoke("q")
    system = synth.received()[0].content
    assert system == prompt + "\n\nResponses from models:\n\n1. p1\n\n2. p2"


# -- Aggregate -------------------------------------------------------------------


def test_aggregate_returns_ai_message_with_summed_usage():
    agg = chat("final answer", name="agg", input_tokens=100, output_tokens=20)
    props = [
        chat("a", name="a", input_tokens=5, output_tokens=1),
        chat("b", name="b", input_tokens=6, output_tokens=2),
    ]
    out = (Propose(props) | Aggregate(agg)).invoke("q")
    assert isinstance(out, AIMessage)
    assert out.content == "final answer"
    assert out.usage_metadata == {"input_tokens": 111, "output_tokens": 23, "total_tokens": 134}
    assert out.response_metadata["model_name"] == "agg"
    assert out.response_metadata["moa"]["calls"] == 3
    assert out.response_metadata["moa"]["layers"] == 2


def test_aggregate_prompt_override_with_braces_reaches_model_verbatim():
    agg = chat("done")
    prompt = "Pick the best response {verbatim}; ignore {0} and {name}."
    (Propose([chat("p1")]) | Aggregate(agg, prompt=prompt)).invoke("q")
    assert agg.received()[0].content == prompt + "\n\nResponses from models:\n\n1. p1"


def test_aggregate_without_candidates_raises():
    with pytest.raises(AggregatorError, match="no candidates"):
        Aggregate(chat("x")).invoke("q")


def test_aggregate_rejects_a_list_of_agents():
    with pytest.raises(ConfigurationError, match="agent must be a single agent"):
        Aggregate([chat("x"), chat("y")])


# -- Refine ----------------------------------------------------------------------


def test_refine_improves_each_candidate_individually_round_robin():
    r0 = chat(lambda msgs: "better " + msgs[-2].content, name="r0")
    r1 = chat(lambda msgs: "improved " + msgs[-2].content, name="r1")
    state = (Propose(three_proposers()) | Refine([r0, r1])).invoke("Q")
    assert state.texts == ["better alpha", "improved beta", "better gamma"]
    assert state.layer == 2
    assert [c.agent_index for c in state.candidates] == [0, 1, 0]
    assert len(r0.calls) == 2 and len(r1.calls) == 1
    user, draft, request = r1.received()
    assert user == HumanMessage("Q")
    assert isinstance(draft, AIMessage) and draft.content == "beta"
    assert isinstance(request, HumanMessage) and request.content == REFINE_PROMPT


def test_refine_failed_refinement_keeps_original_and_records_the_failure():
    refiner = chat("fixed", RuntimeError("boom"), name="r")
    moa = Propose([chat("a"), chat("b")]) | Refine([refiner], max_concurrency=1)
    state = moa.invoke("q")
    assert state.texts == ["fixed", "b"]
    assert state.candidates[1].step == "Propose"  # the original, with its provenance
    failed = [c for c in state.calls if not c.ok]
    assert len(failed) == 1 and "RuntimeError: boom" in failed[0].error


def test_refine_prompt_override_with_braces():
    refiner = chat("r")
    (Propose([chat("a")]) | Refine([refiner], prompt="Fix {this} please")).invoke("q")
    assert refiner.received()[-1].content == "Fix {this} please"


# -- composition and entry points ---------------------------------------------


def aggregate_pipeline(agg=None):
    return (
        Propose(three_proposers())
        | Shuffle(seed=1)
        | Aggregate(agg or chat("the final merged answer", name="agg", input_tokens=50))
    )


def transform_pipeline():
    return Propose(three_proposers()) | Take(2)


def test_invoke_ainvoke_batch_abatch_for_aggregate_pipeline():
    moa = aggregate_pipeline()
    assert moa.invoke("q").content == "the final merged answer"
    assert asyncio.run(moa.ainvoke("q")).content == "the final merged answer"
    assert [m.content for m in moa.batch(["q1", "q2"])] == ["the final merged answer"] * 2
    results = asyncio.run(moa.abatch(["q1", "q2", "q3"]))
    assert [m.content for m in results] == ["the final merged answer"] * 3


def test_invoke_ainvoke_batch_abatch_for_transform_pipeline():
    moa = transform_pipeline()
    assert moa.invoke("q").texts == ["alpha", "beta"]
    assert asyncio.run(moa.ainvoke("q")).texts == ["alpha", "beta"]
    assert [s.texts for s in moa.batch(["q1", "q2"])] == [["alpha", "beta"]] * 2
    assert [s.texts for s in asyncio.run(moa.abatch(["q1", "q2"]))] == [["alpha", "beta"]] * 2


def test_step_abatch_keeps_langchains_contract():
    # a step's own abatch: return_exceptions, max_concurrency, one run per input
    gauge = Gauge()
    step = Propose([chat(lambda msgs: "ok " + msgs[-1].content, delay=0.02, gauge=gauge)])
    history = MoAHistoryHandler()
    out = asyncio.run(
        step.abatch([f"q{i}" for i in range(6)], {"callbacks": [history], "max_concurrency": 2})
    )
    assert [s.texts for s in out] == [[f"ok q{i}"] for i in range(6)]
    assert gauge.peak <= 2 and gauge.total == 6
    assert len({s.run_id for s in history.steps}) == 6
    failing = Propose([chat(RuntimeError("down"))])
    results = asyncio.run(failing.abatch(["a", "b"], return_exceptions=True))
    assert [type(r).__name__ for r in results] == ["LayerFailedError"] * 2
    with pytest.raises(LayerFailedError):
        asyncio.run(failing.abatch(["a", "b"]))
    assert asyncio.run(failing.abatch([])) == []


def test_batch_keeps_inputs_apart():
    echo = chat(lambda msgs: "echo " + msgs[-1].content, name="echo")
    agg = chat(lambda msgs: "agg " + msgs[-1].content, name="agg")
    outs = (Propose([echo]) | Aggregate(agg)).batch(["one", "two", "three"])
    assert [o.content for o in outs] == ["agg one", "agg two", "agg three"]


def test_stream_yields_the_aggregator_tokens_and_usage_matches_invoke():
    moa = aggregate_pipeline()
    invoked = moa.invoke("q")
    chunks = list(moa.stream("q"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len([c for c in chunks if c.content]) >= 3  # word by word, not one blob
    assert "".join(c.text for c in chunks) == invoked.content
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.usage_metadata == invoked.usage_metadata
    assert total.usage_metadata["input_tokens"] == 3 * 10 + 50


async def test_astream_yields_the_aggregator_tokens_and_usage_matches_ainvoke():
    moa = aggregate_pipeline()
    invoked = await moa.ainvoke("q")
    chunks = [c async for c in moa.astream("q")]
    assert len([c for c in chunks if c.content]) >= 3
    assert "".join(c.text for c in chunks) == invoked.content
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.usage_metadata == invoked.usage_metadata


def test_stream_tokens_arrive_before_the_aggregator_finishes():
    """The first token reaches the caller while the aggregator is still streaming."""
    from tests.unit_tests.moa_fakes import ScriptedChat

    class Tracked(ScriptedChat):
        finished: list = []

        def _stream(self, *args, **kwargs):
            yield from super()._stream(*args, **kwargs)
            self.finished.append(True)

    agg = Tracked(replies=["one two three four"], finished=[])
    stream = (Propose([chat("p")]) | Aggregate(agg)).stream("q")
    first = next(stream)
    assert first.text == "one"
    assert agg.finished == []  # the aggregator has not finished yet
    rest = list(stream)
    assert agg.finished == [True]
    assert "".join([first.text, *(c.text for c in rest)]) == "one two three four"


def test_stream_and_astream_of_transform_pipeline_yield_the_state():
    moa = transform_pipeline()
    chunks = list(moa.stream("q"))
    assert len(chunks) == 1 and chunks[0].texts == ["alpha", "beta"]
    achunks = asyncio.run(_collect(moa.astream("q")))
    assert len(achunks) == 1 and achunks[0].texts == ["alpha", "beta"]


async def _collect(aiter):
    return [c async for c in aiter]


def test_single_aggregate_step_streams_from_a_state():
    state = Propose([chat("p")]).invoke("q")
    chunks = list(Aggregate(chat("x y z")).stream(state))
    assert "".join(c.text for c in chunks) == "x y z"


# -- sampling parameters -------------------------------------------------------


def test_temperature_and_max_tokens_reach_the_model():
    p, s, a = chat("p"), chat("s"), chat("a")
    (
        Propose([p], temperature=0.3, max_tokens=77)
        | Synthesize([s], temp=1.1, max_tokens=88)
        | Aggregate(a, temperature=0.0, max_tokens=99)
    ).invoke("q")
    assert p.kwargs()["temperature"] == 0.3 and p.kwargs()["max_tokens"] == 77
    assert s.kwargs()["temperature"] == 1.1 and s.kwargs()["max_tokens"] == 88
    assert a.kwargs()["temperature"] == 0.0 and a.kwargs()["max_tokens"] == 99


def test_unset_sampling_is_the_papers_temperature_and_budget():
    p = chat("p")
    Propose([p]).invoke("q")
    assert p.kwargs() == {"temperature": 0.7, "max_tokens": 2048}


def test_none_leaves_the_models_own_settings():
    p = chat("p")
    Propose([p], temperature=None, max_tokens=None).invoke("q")
    assert "temperature" not in p.kwargs() and "max_tokens" not in p.kwargs()


def test_temp_alias_and_conflicting_values():
    assert Propose([chat("p")], temp=0.2).temperature == 0.2
    assert Propose([chat("p")], temperature=0.2, temp=0.2).temperature == 0.2
    with pytest.raises(ConfigurationError, match="temperature or temp"):
        Propose([chat("p")], temperature=0.1, temp=0.9)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"min_success": 0}, "min_success"),
        ({"min_success": 3}, "min_success"),
        ({"prompt": 42}, "prompt"),
    ],
)
def test_bad_parameters_raise_naming_the_parameter(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        Propose([chat("a"), chat("b")], **kwargs)


@pytest.mark.parametrize("step", [Propose, Synthesize, Refine])
@pytest.mark.parametrize("agents", [[], ()])
def test_empty_agent_list_raises_naming_agents(step, agents):
    with pytest.raises(ConfigurationError, match="agents must be a non-empty list"):
        step(agents)


def test_non_agent_raises():
    with pytest.raises(ConfigurationError, match="not a model string"):
        Propose([42])


# -- max_concurrency -----------------------------------------------------------


def test_max_concurrency_bounds_sync_calls():
    gauge = Gauge()
    agents = [chat(f"r{i}", delay=0.1, gauge=gauge) for i in range(6)]
    state = Propose(agents, max_concurrency=2).invoke("q")
    assert len(state.candidates) == 6
    assert gauge.total == 6
    assert gauge.peak == 2


def test_without_bound_sync_calls_run_in_parallel():
    gauge = Gauge()
    agents = [chat(f"r{i}", delay=0.3, gauge=gauge) for i in range(4)]
    Propose(agents).invoke("q")
    assert gauge.peak == 4


async def test_max_concurrency_bounds_async_calls():
    gauge = Gauge()
    agents = [chat(f"r{i}", delay=0.1, gauge=gauge) for i in range(6)]
    state = await Propose(agents, max_concurrency=2).ainvoke("q")
    assert len(state.candidates) == 6
    assert gauge.total == 6
    assert gauge.peak == 2


async def test_without_bound_async_calls_run_concurrently():
    gauge = Gauge()
    agents = [chat(f"r{i}", delay=0.2, gauge=gauge) for i in range(5)]
    await Propose(agents).ainvoke("q")
    assert gauge.peak == 5


def test_config_max_concurrency_bounds_sync_calls():
    gauge = Gauge()
    agents = [chat(f"r{i}", delay=0.1, gauge=gauge) for i in range(6)]
    state = Propose(agents).invoke("q", config={"max_concurrency": 3})
    assert len(state.candidates) == 6
    assert gauge.peak == 3


async def test_config_max_concurrency_bounds_async_calls_with_the_step_bound_winning():
    gauge = Gauge()
    agents = [chat(f"r{i}", delay=0.1, gauge=gauge) for i in range(6)]
    await Propose(agents).ainvoke("q", config={"max_concurrency": 3})
    assert gauge.peak == 3
    gauge = Gauge()
    agents = [chat(f"r{i}", delay=0.1, gauge=gauge) for i in range(6)]
    await Propose(agents, max_concurrency=2).ainvoke("q", config={"max_concurrency": 3})
    assert gauge.peak == 2


async def test_max_concurrency_bounds_refine_async():
    gauge = Gauge()
    refiner = chat("r", delay=0.05, gauge=gauge)
    props = [chat(f"p{i}") for i in range(4)]
    await (Propose(props) | Refine([refiner], max_concurrency=1)).ainvoke("q")
    assert gauge.total == 4 and gauge.peak == 1


# -- failure rules ---------------------------------------------------------------


def test_failed_and_empty_calls_are_recorded_with_their_error():
    agents = [
        chat("good", name="good"),
        chat(RuntimeError("rate limited"), name="bad"),
        chat("", name="empty"),
        chat("   ", name="blank"),
    ]
    state = Propose(agents).invoke("q")
    assert state.texts == ["good"]
    assert len(state.calls) == 4
    by_model = {c.model: c for c in state.calls}
    assert by_model["good"].ok and by_model["good"].output == "good"
    assert by_model["bad"].error == "RuntimeError: rate limited"
    assert by_model["bad"].output is None
    assert "EmptyResponseError" in by_model["empty"].error
    assert "EmptyResponseError" in by_model["blank"].error
    assert [c.model for c in state.errors] == ["bad", "empty", "blank"]


def test_whole_layer_failure_lists_every_cause():
    agents = [
        chat(RuntimeError("timeout A"), name="a"),
        chat(ValueError("bad B"), name="b"),
        chat("", name="c"),
    ]
    with pytest.raises(LayerFailedError) as info:
        Propose(agents).invoke("q")
    err = info.value
    assert err.step == "Propose"
    assert [agent for agent, _ in err.errors] == ["a", "b", "c"]
    message = str(err)
    assert "timeout A" in message and "bad B" in message and "EmptyResponseError" in message


async def test_whole_layer_failure_async():
    agents = [chat(RuntimeError("x"), name="a"), chat(RuntimeError("y"), name="b")]
    with pytest.raises(LayerFailedError, match="x.*y"):
        await Propose(agents).ainvoke("q")


def test_min_success_quorum():
    agents = [chat("ok1"), chat(RuntimeError("down")), chat("ok2")]
    assert Propose(agents, min_success=2).invoke("q").texts == ["ok1", "ok2"]
    agents = [chat("ok1"), chat(RuntimeError("down")), chat(RuntimeError("down too"))]
    with pytest.raises(LayerFailedError, match="fewer than 2") as info:
        Propose(agents, min_success=2).invoke("q")
    assert len(info.value.errors) == 2 and info.value.needed == 2


def test_degrade_keeps_the_previous_candidates_and_records_failures():
    synths = [chat(RuntimeError("s down"), name="s1"), chat("", name="s2")]
    state = (Propose(three_proposers()) | Synthesize(synths, degrade=True)).invoke("q")
    assert state.texts == ["alpha", "beta", "gamma"]
    assert state.layer == 1
    assert len(state.calls) == 5
    assert [c.model for c in state.errors] == ["s1", "s2"]


def test_without_degrade_a_failed_middle_layer_raises_not_erases():
    synths = [chat(RuntimeError("s down"), name="s1")]
    with pytest.raises(LayerFailedError, match="Synthesize"):
        (Propose(three_proposers()) | Synthesize(synths)).invoke("q")


def test_degrade_then_aggregate_sees_the_earlier_candidates():
    agg = chat("merged")
    (
        Propose([chat("p1"), chat("p2")])
        | Synthesize([chat(RuntimeError("x"))], degrade=True)
        | Aggregate(agg)
    ).invoke("q")
    assert agg.received()[0].content.endswith("1. p1\n\n2. p2")


@pytest.mark.parametrize("reply", [RuntimeError("aggregator down"), ""])
def test_failed_aggregator_raises_and_never_returns_a_proposers_answer(reply):
    moa = Propose([chat("proposer answer")]) | Aggregate(chat(reply, name="agg"))
    with pytest.raises(AggregatorError) as info:
        moa.invoke("q")
    assert info.value.step == "Aggregate" and info.value.agent == "agg"
    assert "proposer answer" not in str(info.value)


@pytest.mark.parametrize("reply", [RuntimeError("aggregator down"), ""])
async def test_failed_aggregator_raises_async(reply):
    moa = Propose([chat("proposer answer")]) | Aggregate(chat(reply, name="agg"))
    with pytest.raises(AggregatorError):
        await moa.ainvoke("q")


@pytest.mark.parametrize("reply", [RuntimeError("aggregator down"), ""])
def test_failed_aggregator_raises_when_streaming(reply):
    moa = Propose([chat("proposer answer")]) | Aggregate(chat(reply, name="agg"))
    seen = []
    with pytest.raises(AggregatorError):
        for chunk in moa.stream("q"):
            seen.append(chunk.text)
    assert "proposer answer" not in "".join(seen)


async def test_failed_aggregator_raises_when_astreaming():
    moa = Propose([chat("proposer answer")]) | Aggregate(chat(RuntimeError("down"), name="agg"))
    seen = []
    with pytest.raises(AggregatorError, match="down"):
        async for chunk in moa.astream("q"):
            seen.append(chunk.text)
    assert seen == []


def test_aggregator_failing_mid_stream_raises_aggregator_error():
    agg = chat("one two three", name="agg", fail_mid_stream=True)
    moa = Propose([chat("proposer answer")]) | Aggregate(agg)
    seen = []
    with pytest.raises(AggregatorError, match="mid-stream"):
        for chunk in moa.stream("q"):
            seen.append(chunk.text)
    assert "proposer answer" not in "".join(seen)


def _non_streaming_aggregators():
    async def client(model, messages, temp, max_tokens):
        return "client final", 21, 4

    def lam(messages):
        return AIMessage(
            content="lambda final",
            usage_metadata={"input_tokens": 9, "output_tokens": 2, "total_tokens": 11},
        )

    from langchain_core.runnables import RunnableLambda

    return [client, RunnableLambda(lam, name="lam")]


@pytest.mark.parametrize("agg", _non_streaming_aggregators(), ids=["mixture_fn", "lambda"])
def test_stream_with_a_non_streaming_aggregator_yields_its_reply_and_same_usage(agg):
    moa = Propose([chat("p", input_tokens=5, output_tokens=1)]) | Aggregate(agg)
    invoked = moa.invoke("q")
    chunks = list(moa.stream("q"))
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.text == invoked.content
    assert total.usage_metadata == invoked.usage_metadata
    assert invoked.usage_metadata["input_tokens"] in (5 + 21, 5 + 9)


@pytest.mark.parametrize("agg", _non_streaming_aggregators(), ids=["mixture_fn", "lambda"])
async def test_astream_with_a_non_streaming_aggregator(agg):
    moa = Propose([chat("p", input_tokens=5, output_tokens=1)]) | Aggregate(agg)
    invoked = await moa.ainvoke("q")
    chunks = [c async for c in moa.astream("q")]
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.text == invoked.content
    assert total.usage_metadata == invoked.usage_metadata


def test_degrade_with_nothing_earlier_to_keep_still_raises():
    with pytest.raises(LayerFailedError, match="boom"):
        Propose([chat(RuntimeError("boom"))], degrade=True).invoke("q")


def test_refine_quorum_is_capped_at_the_number_of_candidates():
    refiners = [chat("r0"), chat("r1"), chat("r2")]
    moa = Propose([chat("a"), chat("b")]) | Refine(refiners, min_success=3)
    assert moa.invoke("q").texts == ["r0", "r1"]
    failing = [chat("r0"), chat(RuntimeError("r1 down")), chat("r2")]
    with pytest.raises(LayerFailedError, match="fewer than 2.*r1 down"):
        (Propose([chat("a"), chat("b")]) | Refine(failing, min_success=3)).invoke("q")


def test_sync_fan_out_uses_a_bounded_default_pool() -> None:
    """a6952f6 ran one thread per agent (500 agents -> 500 threads); the default now
    stops at DEFAULT_SYNC_WORKERS, and an explicit max_concurrency still rules."""
    from langchain_moa.steps._base import DEFAULT_SYNC_WORKERS

    gauge = Gauge()
    agent = chat("x", delay=0.02, gauge=gauge)
    out = Propose([agent] * (DEFAULT_SYNC_WORKERS + 36)).invoke("q")
    assert len(out.candidates) == DEFAULT_SYNC_WORKERS + 36
    assert 1 < gauge.peak <= DEFAULT_SYNC_WORKERS
    gauge = Gauge()
    agent = chat("x", delay=0.02, gauge=gauge)
    Propose([agent] * 100, max_concurrency=80).invoke("q")
    assert gauge.peak <= 80


def test_nested_sync_fan_outs_do_not_wait_for_their_parents_threads() -> None:
    """Every thread of the shared pool busy with an outer agent whose model is itself a
    sync MoA layer: the inner layers get threads of their own (no deadlock)."""
    from langchain_core.runnables import RunnableLambda

    from langchain_moa.steps._base import DEFAULT_SYNC_WORKERS

    inner = Propose([chat("x", delay=0.01)] * 3) | Aggregate(chat("inner answer"))

    def nested(messages: list) -> AIMessage:
        return inner.invoke(messages)

    agent = RunnableLambda(nested)
    out = Propose([agent] * (DEFAULT_SYNC_WORKERS + 8)).invoke("q")
    assert out.texts == ["inner answer"] * (DEFAULT_SYNC_WORKERS + 8)


def test_concurrent_sync_runs_share_the_pool() -> None:
    gauge = Gauge()
    step = Propose([chat("x", delay=0.01, gauge=gauge)] * 40)
    outs = step.batch([f"q{i}" for i in range(4)], config={"max_concurrency": 4})
    assert [len(o.candidates) for o in outs] == [40] * 4
    assert gauge.total == 160
