"""The llama.cpp chat model (``LlamaServerChatModel``) over real HTTP to the fault
server: tool calls a small model writes as text become ``tool_calls``; a named
``tool_choice`` is sent as ``"required"`` with that one tool; anything else is left as
the server returned it."""

from __future__ import annotations

import asyncio
import json

import pytest
from langchain_core.tools import tool

from langchain_moa import Deployment, ProviderRouter
from langchain_moa._llamacpp import LlamaServerChatModel
from langchain_moa.local import chat_model_for_base_url
from tests import fault_server as _fs
from tests.fault_server import Fault, FaultServer

fault_server = _fs.fault_server
fault_server_factory = _fs.fault_server_factory


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"sunny in {city}"


@tool
def get_time(zone: str) -> str:
    """Get the current time in a time zone."""
    return "noon"


CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(CALL),
        "```json\n" + json.dumps(CALL, indent=2) + "\n```\n\n\n",
        "<tool_call>\n" + json.dumps(CALL) + "\n</tool_call>",
        json.dumps({"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}),
        # seen from the 0.5B model in the standard suite: an imagined tool result after
        # the call, and the same call repeated until max_tokens cut it off
        json.dumps(CALL) + '\n{"result": "sunny"}',
        (json.dumps(CALL) + "\n") * 3 + '{"name": "get_weather", "argu',
        "```json\n" + json.dumps(CALL) + "\n```\nThis asks for the weather.",
    ],
)
def test_a_call_written_as_text_becomes_a_tool_call(fault_server: FaultServer, text: str):
    fault_server.set_default(Fault.ok(text))
    llm = chat_model_for_base_url(fault_server.base_url, "m")
    message = llm.bind_tools([get_weather, get_time]).invoke("weather in Paris?")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert message.content == "" and message.response_metadata["finish_reason"] == "tool_calls"
    assert message.tool_calls[0]["id"].startswith("call_")
    assert message.usage_metadata["output_tokens"] > 0


@pytest.mark.parametrize(
    "text",
    [
        "It is sunny in Paris.",
        json.dumps({"name": "get_stock", "arguments": {"symbol": "X"}}),  # not a bound tool
        json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}, "note": 1}),
        "Sure: " + json.dumps(CALL),  # prose before it: left alone
        '{"result": 1}\n' + json.dumps(CALL),  # another object first: left alone
        "[]",
        json.dumps({"name": "get_weather", "arguments": "not json"}),
    ],
)
def test_anything_else_is_left_as_the_server_sent_it(fault_server: FaultServer, text: str):
    fault_server.set_default(Fault.ok(text))
    llm = chat_model_for_base_url(fault_server.base_url, "m")
    message = llm.bind_tools([get_weather]).invoke("q")
    assert message.tool_calls == [] and message.content == text


def test_calls_of_two_tools_in_a_row_are_both_kept_and_a_repeat_counts_once(
    fault_server: FaultServer,
):
    time_call = {"name": "get_time", "arguments": {"zone": "CET"}}
    text = "\n".join(json.dumps(c) for c in (CALL, time_call, CALL)) + '\n{"result": "noon"}'
    fault_server.set_default(Fault.ok(text))
    llm = chat_model_for_base_url(fault_server.base_url, "m")
    message = llm.bind_tools([get_weather, get_time]).invoke("weather and time in Paris?")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "CET"}),
    ]
    assert len({c["id"] for c in message.tool_calls}) == 2


def test_without_bound_tools_json_stays_text(fault_server: FaultServer):
    fault_server.set_default(Fault.ok(json.dumps(CALL)))
    message = chat_model_for_base_url(fault_server.base_url, "m").invoke("q")
    assert message.tool_calls == [] and json.loads(message.content) == CALL


def test_a_named_tool_choice_is_sent_as_required_with_that_tool(fault_server: FaultServer):
    fault_server.set_default(Fault.ok(json.dumps(CALL)))
    llm = chat_model_for_base_url(fault_server.base_url, "m")
    for choice in ("get_weather", {"type": "function", "function": {"name": "get_weather"}}):
        llm.bind_tools([get_time, get_weather], tool_choice=choice).invoke("q")
    for request in fault_server.requests:
        assert request.body["tool_choice"] == "required"
        assert [t["function"]["name"] for t in request.body["tools"]] == ["get_weather"]


def test_through_the_router_and_async(fault_server: FaultServer):
    """``llamacpp/...`` deployments use the same client: the router returns the call."""
    fault_server.set_default(Fault.ok("```json\n" + json.dumps(CALL) + "\n```"))
    router = ProviderRouter(
        deployments=[Deployment(model="llamacpp/m", base_url=fault_server.base_url)]
    )
    assert isinstance(router.deployments[0].chat_model(None), LlamaServerChatModel)
    bound = router.bind_tools([get_weather], tool_choice="any")
    message = asyncio.run(bound.ainvoke("weather in Paris?"))
    assert message.tool_calls[0]["name"] == "get_weather"
    assert message.tool_calls[0]["args"] == {"city": "Paris"}
    assert fault_server.requests[0].body["tool_choice"] == "required"


def test_a_required_call_is_sent_with_a_json_schema_of_one_call(fault_server: FaultServer):
    fault_server.set_default(Fault.ok(json.dumps(CALL)))
    llm = chat_model_for_base_url(fault_server.base_url, "m")
    llm.bind_tools([get_weather, get_time], tool_choice="required").invoke("q")
    llm.bind_tools([get_weather, get_time], tool_choice="auto").invoke("q")
    required, auto = fault_server.requests
    schema = required.body["response_format"]["json_schema"]["schema"]
    assert [c["properties"]["name"] for c in schema["anyOf"]] == [
        {"const": "get_weather"},
        {"const": "get_time"},
    ]
    assert schema["anyOf"][0]["properties"]["arguments"]["required"] == ["city"]
    assert "response_format" not in auto.body  # "auto" may answer in prose


def test_a_streamed_call_written_as_text_comes_as_one_tool_call_chunk(
    fault_server: FaultServer,
):
    fault_server.set_default(Fault.ok("```json\n" + json.dumps(CALL) + "\n```"))
    llm = chat_model_for_base_url(fault_server.base_url, "m").bind_tools([get_weather])
    chunks = list(llm.stream("weather in Paris?"))
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert total.content == "" and total.usage_metadata["output_tokens"] > 0
    async_chunks = asyncio.run(_collect(llm.astream("weather in Paris?")))
    assert sum(async_chunks[1:], async_chunks[0]).tool_calls[0]["args"] == {"city": "Paris"}


def test_a_streamed_prose_reply_still_streams_token_by_token(fault_server: FaultServer):
    fault_server.set_default(Fault.ok("It is sunny in Paris today."))
    llm = chat_model_for_base_url(fault_server.base_url, "m").bind_tools([get_weather])
    chunks = list(llm.stream("q"))
    assert len([c for c in chunks if c.content]) > 3
    assert "".join(c.content for c in chunks) == "It is sunny in Paris today."


async def _collect(stream):
    return [chunk async for chunk in stream]
