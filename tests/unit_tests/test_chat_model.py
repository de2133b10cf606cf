"""MoA anywhere a chat model goes (issue 10, items 1 and 6), on scripted fake models.

``MoAChatModel`` as the model of LangChain v1's ``create_agent`` and LangGraph's
prebuilt ReAct agent, with a real tool; ``bind_tools`` / ``with_structured_output``
reaching the aggregator only; usage, streaming, tracing; LangChain's standard
``ChatModelUnitTests``. Then the smaller I/O items: a parser after a state-returning
step, typed ``input_schema``, ``get_graph``, LangGraph ``stream_mode="messages"``
without a repeated final message, and one closing chunk per stream.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from langchain_core.tracers.context import collect_runs
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import BaseModel

from langchain_moa import (
    Aggregate,
    ConfigurationError,
    MoAChatModel,
    Propose,
    Shuffle,
    Synthesize,
    Vote,
)
from tests.unit_tests.moa_fakes import ScriptedChat, chat

# ---------------------------------------------------------------- fakes and tools

CALLS: list[str] = []


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    CALLS.append(city)
    return f"It is sunny and 21 C in {city}."


class ToolUser(ScriptedChat):
    """An aggregator that calls the first bound tool until it sees a tool result,
    then answers with the result's text (a scripted stand-in for a tool-calling LLM)."""

    tool_args: dict[str, Any] = {"city": "Paris"}

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _chunks(self, message: AIMessage) -> Any:
        if not message.tool_calls:
            yield from super()._chunks(message)
            return
        yield AIMessageChunk(
            content="",
            tool_call_chunks=[
                {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
                for i, c in enumerate(message.tool_calls)
            ],
            usage_metadata=message.usage_metadata,
            response_metadata=message.response_metadata,
        )

    def _next(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if "tools" not in kwargs or results:
            reply = f"Answer: {results[-1].text}" if results else "Answer without tools."
            self.replies = [reply]
            return super()._next(messages, kwargs)
        with self.lock:
            self.calls.append({"messages": list(messages), "kwargs": dict(kwargs)})
        name = kwargs["tools"][0]["function"]["name"]
        return AIMessage(
            content="",
            tool_calls=[
                {"name": name, "args": dict(self.tool_args), "id": f"call_{len(self.calls)}"}
            ],
            usage_metadata={"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
            response_metadata={"model_name": self.model_name},
        )


def mixture() -> tuple[MoAChatModel, list[ScriptedChat], ToolUser]:
    proposers = [chat("I would check the weather.", name="p1"), chat("Probably mild.", name="p2")]
    aggregator = ToolUser(model_name="agg")
    return MoAChatModel(Propose(proposers) | Aggregate(aggregator)), proposers, aggregator


def check_agent_run(messages: list[BaseMessage], proposers, aggregator) -> None:
    """One tool round trip: the aggregator called the tool, the tool ran, the final
    answer uses its result; proposers never got tools but saw the tool result."""
    kinds = [type(m).__name__ for m in messages]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert messages[1].tool_calls[0]["name"] == "get_weather"
    assert messages[1].tool_calls[0]["args"] == {"city": "Paris"}
    assert messages[2].text == "It is sunny and 21 C in Paris."
    assert messages[3].text == "Answer: It is sunny and 21 C in Paris."
    assert messages[3].usage_metadata["input_tokens"] == 10 + 10 + 10  # all three calls
    for p in proposers:
        assert len(p.calls) == 2 and all("tools" not in c["kwargs"] for c in p.calls)
        assert any(isinstance(m, ToolMessage) for m in p.received(1))
    assert [("tools" in c["kwargs"]) for c in aggregator.calls] == [True, True]


# ---------------------------------------------------------------- agents


def test_create_agent_runs_with_an_moa_pipeline_as_its_model():
    agents = pytest.importorskip("langchain.agents")
    model, proposers, aggregator = mixture()
    CALLS.clear()
    agent = agents.create_agent(model, tools=[get_weather])
    out = agent.invoke({"messages": [("user", "What is the weather in Paris?")]})
    assert CALLS == ["Paris"]
    check_agent_run(out["messages"], proposers, aggregator)


async def test_create_agent_async():
    agents = pytest.importorskip("langchain.agents")
    model, proposers, aggregator = mixture()
    agent = agents.create_agent(model, tools=[get_weather])
    out = await agent.ainvoke({"messages": [("user", "What is the weather in Paris?")]})
    check_agent_run(out["messages"], proposers, aggregator)


def test_langgraph_react_agent_runs_with_an_moa_pipeline_as_its_model():
    prebuilt = pytest.importorskip("langgraph.prebuilt")
    model, proposers, aggregator = mixture()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_react_agent is deprecated for create_agent
        agent = prebuilt.create_react_agent(model, tools=[get_weather])
    out = agent.invoke({"messages": [("user", "What is the weather in Paris?")]})
    check_agent_run(out["messages"], proposers, aggregator)


def test_agent_stream_mode_messages_shows_each_token_once():
    agents = pytest.importorskip("langchain.agents")
    model, _, _ = mixture()
    agent = agents.create_agent(model, tools=[get_weather])
    pieces = list(agent.stream({"messages": [("user", "weather?")]}, stream_mode="messages"))
    ai = [m for m, _ in pieces if isinstance(m, (AIMessage, AIMessageChunk))]
    final = [m for m in ai if "Answer:" in m.text]
    # the final answer's tokens, once: no inner (aggregator) copy, no whole-message repeat
    assert "".join(m.text for m in ai if m.id == final[0].id) == (
        "Answer: It is sunny and 21 C in Paris."
    )
    assert len({m.id for m in final}) == 1


# ---------------------------------------------------------------- chat-model behaviour


def test_invoke_returns_the_aggregators_answer_with_summed_usage():
    model = MoAChatModel(
        Propose([chat("a b", name="p1"), chat("c", name="p2")])
        | Aggregate(chat("final answer", name="agg"))
    )
    reply = model.invoke("q")
    assert reply.text == "final answer"
    assert reply.usage_metadata == {"input_tokens": 30, "output_tokens": 5, "total_tokens": 35}
    assert reply.response_metadata["moa"]["calls"] == 3


def test_usage_callback_counts_every_call_once():
    model = MoAChatModel(
        Propose([chat("a b", name="p1"), chat("c", name="p2")])
        | Aggregate(chat("final answer", name="agg"))
    )
    with get_usage_metadata_callback() as cb:
        reply = model.invoke("q")
    assert set(cb.usage_metadata) == {"p1", "p2", "agg"}
    assert (
        sum(u["total_tokens"] for u in cb.usage_metadata.values())
        == (reply.usage_metadata["total_tokens"])
    )


def test_stream_adds_up_to_invoke_and_ends_with_one_closing_chunk():
    model = MoAChatModel(Propose([chat("a b"), chat("c")]) | Aggregate(chat("one two three")))
    chunks = list(model.stream("q"))
    assert [c.text for c in chunks] == ["one", " ", "two", " ", "three", ""]
    total = sum(chunks[1:], chunks[0])
    assert total.text == "one two three"
    assert total.usage_metadata == model.invoke("q").usage_metadata


async def test_astream_and_ainvoke():
    model = MoAChatModel(Propose([chat("a b"), chat("c")]) | Aggregate(chat("one two")))
    chunks = [c async for c in model.astream("q")]
    assert "".join(c.text for c in chunks) == "one two"
    assert (await model.ainvoke("q")).text == "one two"


def test_with_structured_output_goes_through_the_aggregators_tools():
    class Weather(BaseModel):
        city: str

    model, proposers, aggregator = mixture()
    assert model.with_structured_output(Weather).invoke("Where?") == Weather(city="Paris")
    assert aggregator.kwargs(0)["tool_choice"] == "any"
    assert all("tools" not in p.kwargs(0) for p in proposers)


def test_bind_tools_on_a_vote_pipeline_raises():
    model = MoAChatModel(Propose([chat("a"), chat("b")]) | Vote(chat('{"choice": 1}')))
    assert model.invoke("q").text in {"a", "b"}
    with pytest.raises(ConfigurationError, match="ending in Aggregate"):
        model.bind_tools([get_weather])


def test_an_aggregator_without_bind_tools_raises_naming_it():
    model = MoAChatModel(Propose([chat("a")]) | Aggregate(chat("b", name="plain")))
    with pytest.raises(ConfigurationError, match="plain cannot call tools"):
        model.bind_tools([get_weather]).invoke("q")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"pipeline": Propose([chat("a")])}, "end with Aggregate or Vote"),
        ({"pipeline": "openai/gpt-4o"}, "Runnable"),
        (
            {"pipeline": [Propose([chat("a")]), Aggregate(chat("b"))], "temperature": 3},
            "temperature",
        ),
        ({"pipeline": [Propose([chat("a")]), Aggregate(chat("b"))], "max_tokns": 3}, "max_tokns"),
    ],
)
def test_bad_parameters_raise_configuration_error(kwargs, fragment):
    with pytest.raises(ConfigurationError, match=fragment):
        MoAChatModel(**kwargs)


def test_standard_parameters_reach_the_aggregator_only():
    proposer, aggregator = chat("a"), chat("b")
    model = MoAChatModel(
        Propose([proposer], temperature=0.7, max_tokens=50) | Aggregate(aggregator),
        temperature=0.1,
        max_tokens=9,
        stop=["END"],
    )
    with collect_runs() as cb:
        model.invoke("q")
    assert aggregator.kwargs()["temperature"] == 0.1 and aggregator.kwargs()["max_tokens"] == 9
    assert proposer.kwargs()["temperature"] == 0.7 and proposer.kwargs()["max_tokens"] == 50

    def llm_runs(run):
        if run.run_type == "llm" and run.name != "MoAChatModel":
            yield run
        for child in run.child_runs:
            yield from llm_runs(child)

    stops = {r.name: r.extra["invocation_params"].get("stop") for r in llm_runs(cb.traced_runs[0])}
    assert stops == {"Propose[0] fake": None, "Aggregate[0] fake": ["END"]}


def test_a_list_of_steps_is_a_pipeline():
    model = MoAChatModel([Propose([chat("a")]), Aggregate(chat("b"))])
    assert model.invoke("q").text == "b"


def test_inner_runs_nest_under_the_model_run():
    model = MoAChatModel(Propose([chat("a", name="p1")]) | Aggregate(chat("b", name="agg")))
    with collect_runs() as cb:
        model.invoke("q")
    [root] = cb.traced_runs
    assert root.run_type == "llm" and root.name == "MoAChatModel"
    [sequence] = root.child_runs
    assert [r.name for r in sequence.child_runs] == ["Propose", "Aggregate"]
    inner = [r for step in sequence.child_runs for r in step.child_runs]
    assert {r.name for r in inner} == {"Propose[0] p1", "Aggregate[0] agg"}


class TestMoAChatModelStandard(ChatModelUnitTests):
    """LangChain's offline standard suite for chat models."""

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return MoAChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"pipeline": Propose([chat("a"), chat("b")]) | Aggregate(ToolUser())}

    @property
    def standard_chat_model_params(self) -> dict:
        # timeout and max_retries belong to each agent's client, not to the mixture
        return {"temperature": 0, "max_tokens": 100, "stop": []}

    @pytest.mark.xfail(
        reason="langchain-core's load(allowed_objects='all') admits only core and partner "
        "classes, never langchain_moa's, and the fake agents do not serialise; the round "
        "trip is tested by test_moa_chat_model_serdes below",
        strict=True,
    )
    def test_serdes(self, model: BaseChatModel, snapshot: Any) -> None:
        super().test_serdes(model, snapshot)


def test_moa_chat_model_serdes():
    """The standard test's round trip on agents that serialise (model strings), loaded
    with ``allowed_objects`` naming our classes."""
    from langchain_core.load import dumpd, load
    from langchain_core.runnables import RunnableSequence

    moa = MoAChatModel(
        Propose(["llamacpp/a", "llamacpp/b"], temperature=0.2) | Aggregate("llamacpp/c"),
        temperature=0,
        max_tokens=100,
        stop=[],
    )
    loaded = load(
        dumpd(moa),
        valid_namespaces=moa.get_lc_namespace()[:1],
        allowed_objects=[MoAChatModel, Propose, Aggregate, RunnableSequence],
        secrets_from_env=True,
    )
    assert loaded.dict() == moa.dict()
    assert dumpd(loaded) == dumpd(moa)


# ---------------------------------------------------------------- item 6: pipelines in LangChain


def test_a_state_returning_step_before_a_parser_says_how_to_fix_it():
    with pytest.raises(ConfigurationError, match="end the pipeline with Aggregate or Vote"):
        Propose([chat("a")]) | StrOutputParser()
    with pytest.raises(ConfigurationError, match="end the pipeline with Aggregate or Vote"):
        Shuffle(seed=0) | StrOutputParser()


def test_input_schema_is_typed():
    moa = Propose([chat("a")]) | Aggregate(chat("b"))
    schema = json.dumps(moa.get_input_jsonschema())
    for name in ("HumanMessage", "SystemMessage", "MoAState"):
        assert name in schema
    assert Propose([chat("a")]).get_input_jsonschema().get("anyOf")


def test_chain_stream_ends_with_one_closing_chunk():
    moa = Propose([chat("a b"), chat("c d")]) | Aggregate(chat("final words here"))
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | moa | StrOutputParser()
    assert list(chain.stream({"q": "x"})) == ["final", " ", "words", " ", "here", ""]
    chunks = list(moa.stream("q"))
    assert [c.text for c in chunks].count("") == 1
    assert chunks[-1].chunk_position == "last"
    total = sum(chunks[1:], chunks[0])
    assert total.usage_metadata == moa.invoke("q").usage_metadata


def test_langgraph_messages_mode_does_not_repeat_the_final_answer():
    graph_mod = pytest.importorskip("langgraph.graph")
    moa = Propose([chat("alpha", name="p1")]) | Aggregate(chat("final words", name="agg"))
    builder = graph_mod.StateGraph(graph_mod.MessagesState)
    builder.add_node("moa", lambda state: {"messages": [moa.invoke(state["messages"])]})
    builder.add_edge(graph_mod.START, "moa")
    builder.add_edge("moa", graph_mod.END)
    graph = builder.compile()
    pieces = list(graph.stream({"messages": [("user", "q")]}, stream_mode="messages"))
    agg = [m for m, meta in pieces if meta.get("moa_step") == "Aggregate"]
    whole = [m for m, _ in pieces if isinstance(m, AIMessage) and not isinstance(m, AIMessageChunk)]
    assert "".join(m.text for m in agg) == "final words"
    assert whole == []  # the node's returned message has the streamed tokens' id
    final = graph.invoke({"messages": [("user", "q")]})["messages"][-1]
    assert final.id and final.id.startswith("lc_run--")


def test_get_graph_shows_the_agents():
    moa = (
        Propose([chat("a", name="model-a"), chat("b", name="model-b")])
        | Synthesize([chat("s", name="model-s")])
        | Aggregate(chat("f", name="model-agg"))
    )
    names = {node.name for node in moa.get_graph().nodes.values()}
    assert {"model-a", "model-b", "model-s", "model-agg"} <= names


def test_tools_keep_the_aggregate_steps_settings():
    """``RunnableBinding.bind_tools`` would drop the step's bound temperature/max_tokens."""
    aggregator = ToolUser(model_name="agg")
    model = MoAChatModel(
        Propose([chat("a")]) | Aggregate(aggregator, temperature=0.3, max_tokens=11)
    )
    reply = model.bind_tools([get_weather]).invoke("q")
    assert reply.tool_calls[0]["args"] == {"city": "Paris"}
    kwargs = aggregator.kwargs()
    assert (kwargs["temperature"], kwargs["max_tokens"]) == (0.3, 11) and "tools" in kwargs


@pytest.mark.parametrize("method", ["json_schema", "json_mode"])
def test_json_structured_output_asks_the_aggregator_only(method):
    class Sum(BaseModel):
        value: int

    proposer, aggregator = chat("five"), chat('{"value": 5}')
    model = MoAChatModel(Propose([proposer]) | Aggregate(aggregator))
    assert model.with_structured_output(Sum, method=method).invoke("2+3?") == Sum(value=5)
    fmt = aggregator.kwargs()["response_format"]
    assert fmt["type"] == ("json_schema" if method == "json_schema" else "json_object")
    if method == "json_schema":
        assert fmt["json_schema"]["schema"]["properties"] == {"value": {"type": "integer"}}
    assert "response_format" not in proposer.kwargs()
    raw = model.with_structured_output(Sum, method=method, include_raw=True).invoke("2+3?")
    assert raw["parsed"] == Sum(value=5) and raw["parsing_error"] is None
