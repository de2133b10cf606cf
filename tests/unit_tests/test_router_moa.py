"""The router as an MoA agent: Propose / Aggregate accept it like any chat model."""

from __future__ import annotations

from langchain_core.messages import AIMessage

from langchain_moa.history import MoAHistoryHandler
from langchain_moa.router import Deployment, ProviderRouter
from langchain_moa.steps import Aggregate, Propose
from tests.unit_tests.moa_fakes import ScriptedChat
from tests.unit_tests.router_fakes import http_error, rate_limited


def test_router_as_proposer_and_aggregator_with_failover() -> None:
    def router(name: str, first: object, reply: str, model_name: str) -> ProviderRouter:
        return ProviderRouter(
            deployments=[
                Deployment(
                    llm=ScriptedChat(replies=[first], model_name="down"), name=f"{name}-primary"
                ),
                Deployment(
                    llm=ScriptedChat(replies=[reply], model_name=model_name, input_tokens=7),
                    name=f"{name}-backup",
                    price_in=1.0,
                    price_out=2.0,
                ),
            ],
            name=name,
        )

    proposers = [
        router("p1", rate_limited(), "four", "gpt-4o-mini-2024-07-18"),
        router("p2", http_error(503), "4", "qwen-local"),
    ]
    aggregator = router("agg", http_error(500), "The answer is 4.", "gpt-4o-mini")
    history = MoAHistoryHandler()
    out = (Propose(proposers) | Aggregate(aggregator)).invoke(
        "What is 2+2?", config={"callbacks": [history]}
    )
    assert isinstance(out, AIMessage) and out.content == "The answer is 4."
    # the real model ids reached the MoA layer, and every call's tokens were counted once
    assert out.usage_metadata["input_tokens"] == 3 * 7
    assert out.response_metadata["model_name"] == "gpt-4o-mini"
    # priced by the deployment that answered (1.0 / 2.0 USD per million tokens), not by
    # the price table's entry for the reported model id
    expected = (7 * 1.0 + 1 * 2.0) * 2 / 1e6 + (7 * 1.0 + 4 * 2.0) / 1e6
    assert abs(out.response_metadata["moa"]["cost_usd"] - expected) < 1e-12
    assert out.response_metadata["moa"]["failed_calls"] == 0  # failover is invisible to MoA
    # ... but visible in the history: each call carries the router's decision
    calls = history.calls
    assert [c.router["deployment"] for c in calls] == ["p1-backup", "p2-backup", "agg-backup"]
    assert [a["outcome"] for a in calls[0].router["attempts"]] == ["error", "ok"]


def test_router_in_a_langgraph_node() -> None:
    from langgraph.graph import END, START, MessagesState, StateGraph

    router = ProviderRouter(
        deployments=[
            Deployment(llm=ScriptedChat(replies=[http_error(500)]), name="down"),
            Deployment(llm=ScriptedChat(replies=["graph reply"], model_name="m"), name="up"),
        ]
    )

    def call(state: MessagesState) -> dict:
        return {"messages": [router.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("llm", call)
    graph.add_edge(START, "llm")
    graph.add_edge("llm", END)
    out = graph.compile().invoke({"messages": [("user", "hi")]})
    assert out["messages"][-1].content == "graph reply"
    assert out["messages"][-1].response_metadata["router"]["deployment"] == "up"
