"""Tracing (a local tracer, never LangSmith) and LangGraph integration."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.tracers.context import collect_runs

from langchain_moa import Aggregate, Propose, Rank, Shuffle, Synthesize, Vote
from tests.unit_tests.moa_fakes import chat

langgraph = pytest.importorskip("langgraph")
from langgraph.graph import END, START, MessagesState, StateGraph  # noqa: E402


def walk(run, depth=0):
    yield run, depth
    for child in sorted(run.child_runs, key=lambda r: r.dotted_order or ""):
        yield from walk(child, depth + 1)


def build():
    props = [chat("alpha", name="model-a"), chat("beta", name="model-b")]
    synth = [chat("s1", name="model-s")]
    agg = chat("final words here", name="model-agg")
    return Propose(props) | Shuffle(seed=1) | Synthesize(synth) | Aggregate(agg)


def check_trace(root):
    runs = list(walk(root))
    steps = [r for r, d in runs if d == 1]
    assert [r.name for r in steps] == ["Propose", "Shuffle", "Synthesize", "Aggregate"]
    assert all(r.run_type == "chain" for r in steps)
    models = {r.name: r for r, d in runs if r.run_type == "llm"}
    assert set(models) == {
        "Propose[0] model-a",
        "Propose[1] model-b",
        "Synthesize[0] model-s",
        "Aggregate[0] model-agg",
    }
    b = models["Propose[1] model-b"]
    assert b.parent_run_id == steps[0].id
    assert {"moa:step:Propose", "moa:layer:1", "moa:agent:1"} <= set(b.tags)
    assert b.metadata["moa_step"] == "Propose"
    assert b.metadata["moa_layer"] == 1
    assert b.metadata["moa_agent_index"] == 1
    s = models["Synthesize[0] model-s"]
    assert s.parent_run_id == steps[2].id
    assert (s.metadata["moa_layer"], s.metadata["moa_agent_index"]) == (2, 0)
    g = models["Aggregate[0] model-agg"]
    assert g.parent_run_id == steps[3].id
    assert (g.metadata["moa_step"], g.metadata["moa_layer"]) == ("Aggregate", 3)
    assert "moa:step:Aggregate" in g.tags
    # step tags do not leak onto sibling calls
    assert not any(t.startswith("moa:step:Synthesize") for t in b.tags)


def test_child_runs_are_named_after_steps_and_tagged_sync():
    with collect_runs() as cb:
        build().invoke("q")
    [root] = cb.traced_runs
    check_trace(root)


async def test_child_runs_are_named_after_steps_and_tagged_async():
    with collect_runs() as cb:
        await build().ainvoke("q")
    [root] = cb.traced_runs
    check_trace(root)


def test_child_runs_are_named_and_tagged_when_streaming():
    with collect_runs() as cb:
        list(build().stream("q"))
    [root] = cb.traced_runs
    check_trace(root)


def test_judges_are_traced_with_their_step_names():
    moa = (
        Propose([chat("a"), chat("b")])
        | Rank(chat('{"ranking": [2, 1]}', name="j"), n=1)
        | Vote(chat('{"choice": 1}', name="v"))
    )
    with collect_runs() as cb:
        assert moa.invoke("q").content == "b"
    [root] = cb.traced_runs
    names = [r.name for r, d in walk(root) if d == 1]
    assert names == ["Propose", "Rank", "Vote"]
    llm = [r for r, _ in walk(root) if r.name.startswith("Vote[0]")]
    assert llm and llm[0].metadata["moa_step"] == "Vote"


def test_caller_tags_and_run_name_are_kept():
    with collect_runs() as cb:
        build().with_config(run_name="my_moa", tags=["team-x"]).invoke("q")
    [root] = cb.traced_runs
    assert root.name == "my_moa"
    calls = [r for r, _ in walk(root) if r.run_type == "llm"]
    assert calls and all("team-x" in r.tags for r in calls)


# -- LangGraph ------------------------------------------------------------------


def graph_with(moa):
    graph = StateGraph(MessagesState)
    # the documented one-liner
    graph.add_node("moa", lambda state: {"messages": [moa.invoke(state["messages"])]})
    graph.add_edge(START, "moa")
    graph.add_edge("moa", END)
    return graph.compile()


def test_langgraph_node_runs_a_pipeline():
    agg = chat("graph answer", name="agg")
    moa = Propose([chat("p1"), chat("p2")]) | Aggregate(agg)
    result = graph_with(moa).invoke({"messages": [HumanMessage("hi")]})
    last = result["messages"][-1]
    assert isinstance(last, AIMessage) and last.content == "graph answer"
    assert last.usage_metadata["total_tokens"] > 0
    assert agg.received()[-1] == HumanMessage(content="hi", id=result["messages"][0].id)


def test_langgraph_multi_turn_state_reaches_the_pipeline():
    props = [chat("p1")]
    moa = Propose(props) | Aggregate(chat("second answer"))
    app = graph_with(moa)
    state = app.invoke({"messages": [HumanMessage("first")]})
    state = app.invoke({"messages": [*state["messages"], HumanMessage("second")]})
    assert [m.content for m in props[0].received()] == ["first", "second answer", "second"]


def test_langgraph_stream_messages_keeps_only_the_aggregators_tokens():
    props = [chat("proposal one", name="p1"), chat("proposal two", name="p2")]
    moa = Propose(props) | Aggregate(chat("the aggregated final answer", name="agg"))
    app = graph_with(moa)
    everything = list(app.stream({"messages": [HumanMessage("hi")]}, stream_mode="messages"))
    agg_tokens = [chunk for chunk, meta in everything if meta.get("moa_step") == "Aggregate"]
    assert len(agg_tokens) >= 5  # token by token
    assert all(isinstance(c, AIMessageChunk) for c in agg_tokens)
    assert "".join(c.text for c in agg_tokens) == "the aggregated final answer"
    others = "".join(c.text for c, meta in everything if meta.get("moa_step") == "Propose")
    assert "proposal" in others  # the filter is what removes them
    assert all(meta["langgraph_node"] == "moa" for _, meta in everything)


async def test_langgraph_astream_messages_with_an_async_node():
    moa = Propose([chat("proposal")]) | Aggregate(chat("async final answer", name="agg"))

    async def node(state):
        return {"messages": [await moa.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("moa", node)
    graph.add_edge(START, "moa")
    graph.add_edge("moa", END)
    app = graph.compile()
    tokens = [
        chunk.text
        async for chunk, meta in app.astream(
            {"messages": [HumanMessage("hi")]}, stream_mode="messages"
        )
        if meta.get("moa_step") == "Aggregate"
    ]
    assert len(tokens) >= 3
    assert "".join(tokens) == "async final answer"
