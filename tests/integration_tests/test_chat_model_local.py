"""``MoAChatModel`` on the bundled model (Qwen2.5-Coder-0.5B-Instruct, llama.cpp's
``llama-server`` with ``--jinja``): real generations over real HTTP.

What the 0.5B model does with tools, measured while writing these tests: asked "What
is the weather in Paris? Use the tool." through ``create_agent`` with a
``get_weather`` tool, the aggregator wrote the call as plain JSON text
(``{"name": "get_weather", "arguments": {"city": "Paris"}}``) instead of a tool call in
3 of 3 runs, so the server returned no ``tool_calls``. The tool round trip is therefore
tested on scripted models (``tests/unit_tests/test_chat_model.py``); here: structured
output through the aggregator's ``response_format`` (the server enforces the JSON
schema by grammar) and a plain agent turn with a tool bound.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.tools import tool
from langchain_core.tracers.context import collect_runs
from pydantic import BaseModel

from langchain_moa import Aggregate, MoAChatModel, MoAHistoryHandler, Propose


class Sum(BaseModel):
    """The result of an addition."""

    value: int


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"Sunny, 21 degrees Celsius in {city}."


def mixture(server: Any) -> MoAChatModel:
    proposers = [server.chat_model(temperature=0.7, timeout=300) for _ in range(2)]
    aggregator = server.chat_model(temperature=0.0, timeout=300)
    return MoAChatModel(
        Propose(proposers, max_tokens=48) | Aggregate(aggregator, temperature=0.0, max_tokens=48)
    )


def llm_runs(run: Any) -> list[Any]:
    found = [run] if run.run_type == "llm" else []
    for child in run.child_runs:
        found += llm_runs(child)
    return found


def test_structured_output_through_the_aggregators_json_schema(local_server):
    model = mixture(local_server)
    history = MoAHistoryHandler()
    with collect_runs() as cb:
        answer = model.with_structured_output(Sum, method="json_schema").invoke(
            "What is 2 + 3?", config={"callbacks": [history]}
        )
    assert isinstance(answer, Sum)
    calls = {r.name: r.extra["invocation_params"] for r in llm_runs(cb.traced_runs[0])}
    inner = {name: params for name, params in calls.items() if name != "MoAChatModel"}
    assert len(inner) == 3
    for name, params in inner.items():
        assert ("response_format" in params) == name.startswith("Aggregate"), name
    [final] = [c for s in history.steps for c in s.calls if c.step == "Aggregate"]
    assert Sum.model_validate_json(final.output) == answer  # the aggregator's own JSON


@pytest.mark.parametrize("question", ["Say hello in French."])
def test_create_agent_turn_with_a_tool_bound(local_server, question):
    agents = pytest.importorskip("langchain.agents")
    model = mixture(local_server)
    agent = agents.create_agent(model, tools=[get_weather])
    history = MoAHistoryHandler()
    with collect_runs() as cb:
        out = agent.invoke({"messages": [("user", question)]}, config={"callbacks": [history]})
    final = out["messages"][-1]
    assert final.type == "ai" and (final.text.strip() or final.tool_calls)
    runs = [r for root in cb.traced_runs for r in llm_runs(root)]
    inner = [r for r in runs if r.name != "MoAChatModel"]
    # the tool schema reached the aggregator's request only
    with_tools = {r.name for r in inner if "tools" in r.extra["invocation_params"]}
    assert with_tools == {"Aggregate[0] qwen2.5-coder-0.5b"}
    # the answer's usage is the sum of the real calls of its model turn (Propose, Aggregate)
    last_turn = history.steps[-2:]
    assert [s.step for s in last_turn] == ["Propose", "Aggregate"]
    reported = sum(c.input_tokens for s in last_turn for c in s.calls)
    assert final.usage_metadata["input_tokens"] == reported > 0
