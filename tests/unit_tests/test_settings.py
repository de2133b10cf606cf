"""One rule for a step's temperature / max_tokens, for every agent kind.

Every case sends real requests to the fault server on 127.0.0.1 and reads what
arrived in the request bodies (no mock of our code):

* a value given to the step is sent, whatever the agent says;
* the step's default (0.7 / 2048; judges 0 / 512) is sent only when the agent did not
  set that setting itself (constructor field, ``.bind``, ``init_chat_model`` kwargs);
* ``None`` on the step sends nothing of ours.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from langchain.chat_models import init_chat_model
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableLambda
from langchain_openai import ChatOpenAI

from langchain_moa import ClientChatModel, ConfigurationError
from langchain_moa.router import Deployment, ProviderRouter
from langchain_moa.steps import Aggregate, Propose, Vote
from tests import fault_server as _fs
from tests.fault_server import Fault, FaultServer

fault_server = _fs.fault_server
fault_server_factory = _fs.fault_server_factory


def openai(server: FaultServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o-mini", base_url=server.base_url, api_key="sk-test", max_retries=0, **kwargs
    )


def sent(server: FaultServer) -> list[tuple[Any, Any]]:
    """(temperature, max_tokens) of every request, in arrival order."""
    return [(r.body.get("temperature"), r.max_tokens) for r in server.requests]


def test_constructor_fields_win_over_the_step_default(fault_server: FaultServer) -> None:
    # a6952f6 sent 0.7 and 2048 here
    Propose([openai(fault_server, temperature=0, max_tokens=50)]).invoke("q")
    assert sent(fault_server) == [(0, 50)]


def test_a_value_given_to_the_step_wins_over_the_constructor(fault_server: FaultServer) -> None:
    Propose(
        [openai(fault_server, temperature=0, max_tokens=50)], temperature=0.2, max_tokens=7
    ).invoke("q")
    assert sent(fault_server) == [(0.2, 7)]


def test_unset_settings_get_the_step_default(fault_server: FaultServer) -> None:
    Propose([openai(fault_server, temperature=0)]).invoke("q")  # max_tokens not set
    assert sent(fault_server) == [(0, 2048)]


def test_none_on_the_step_sends_nothing_of_ours(fault_server: FaultServer) -> None:
    Propose([openai(fault_server)], temperature=None, max_tokens=None).invoke("q")
    assert sent(fault_server) == [(None, None)]


def test_bound_settings_win_over_the_step_default(fault_server: FaultServer) -> None:
    # a6952f6 sent 0.7: the step's bind overrode the user's
    llm = openai(fault_server).bind(temperature=0.1)
    Propose([llm]).invoke("q")
    Propose([llm], temperature=0.3, max_tokens=9).invoke("q")
    assert sent(fault_server) == [(0.1, 2048), (0.3, 9)]


def test_bound_tools_are_kept(fault_server: FaultServer) -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    Propose([openai(fault_server).bind_tools([add])], temperature=0.2).invoke("q")
    [request] = fault_server.requests
    assert request.body["temperature"] == 0.2
    assert request.body["tools"][0]["function"]["name"] == "add"


def test_fallbacks_each_get_the_rule(fault_server_factory: Any) -> None:
    # a6952f6 sent neither setting to a with_fallbacks agent
    down, up = fault_server_factory("down"), fault_server_factory("up")
    down.set_default(Fault.status(500))
    agent = openai(down, temperature=0).with_fallbacks([openai(up)])
    Propose([agent], max_tokens=7).invoke("q")
    Propose([agent], temperature=0.2).invoke("q")
    # the primary keeps its own temperature 0; the fallback gets the step default 0.7
    assert sent(down) == [(0, 7), (0.2, 2048)]
    assert sent(up) == [(0.7, 7), (0.2, 2048)]


def test_configurable_model_gets_the_rule(fault_server: FaultServer) -> None:
    # a6952f6 sent neither setting to an init_chat_model(configurable_fields=...) agent
    model = init_chat_model(
        "openai:gpt-4o-mini",
        configurable_fields="any",
        base_url=fault_server.base_url,
        api_key="sk-test",
        max_retries=0,
    )
    Propose([model], temperature=0.2, max_tokens=7).invoke("q")
    Propose([model]).invoke("q")
    # a run-config value counts as set by the agent
    Propose([model]).invoke("q", config={"configurable": {"temperature": 0.0}})
    assert sent(fault_server) == [(0.2, 7), (0.7, 2048), (0.0, 2048)]


def test_configurable_model_constructor_kwargs_win_over_the_default(
    fault_server: FaultServer,
) -> None:
    model = init_chat_model(
        "openai:gpt-4o-mini",
        configurable_fields=("model",),
        temperature=0.0,
        base_url=fault_server.base_url,
        api_key="sk-test",
        max_retries=0,
    )
    Propose([model]).invoke("q")
    assert sent(fault_server) == [(0.0, 2048)]


def test_router_gets_the_rule(fault_server: FaultServer) -> None:
    router = ProviderRouter(
        deployments=[Deployment(llm=openai(fault_server), name="only")], max_tokens=50
    )
    Propose([router]).invoke("q")  # the router's own max_tokens stays
    Propose([router], temperature=0.2, max_tokens=7).invoke("q")
    assert sent(fault_server) == [(0.7, 50), (0.2, 7)]


def test_client_function_gets_the_rule(fault_server: FaultServer) -> None:
    def client(model: str, messages: list[dict], temp: float, max_tokens: int) -> tuple:
        body = {"model": model, "messages": messages, "temperature": temp, "max_tokens": max_tokens}
        reply = httpx.post(f"{fault_server.base_url}/chat/completions", json=body).json()
        usage = reply["usage"]
        text = reply["choices"][0]["message"]["content"]
        return text, usage["prompt_tokens"], usage["completion_tokens"]

    Propose([client]).invoke("q")
    Propose(["m"], client=client, temperature=0.2, max_tokens=7).invoke("q")
    Propose([ClientChatModel(client=client, model="m", temperature=0.1)]).invoke("q")
    assert sent(fault_server) == [(0.7, 2048), (0.2, 7), (0.1, 2048)]


def test_judge_default_is_left_to_the_agent(fault_server: FaultServer) -> None:
    fault_server.set_default(Fault.ok('{"choice": 1}'))
    judge = openai(fault_server, temperature=0.5)
    candidates = Propose([openai(fault_server)], max_tokens=5)
    (candidates | Vote(judge, structured="json")).invoke("q")
    (candidates | Aggregate(judge, temperature=0.1)).invoke("q")
    assert sent(fault_server) == [(0.7, 5), (0.5, 512), (0.7, 5), (0.1, 2048)]


def test_explicit_settings_for_an_agent_with_no_model_inside_raise() -> None:
    opaque = RunnableLambda(lambda _: AIMessage(content="x"))
    with pytest.raises(ConfigurationError, match="temperature=0.2"):
        Propose([opaque], temperature=0.2)
    # the step default leaves such an agent alone
    assert Propose([opaque]).invoke("q").texts == ["x"]


def test_a_chain_gets_the_rule_on_its_model(fault_server: FaultServer) -> None:
    from langchain_core.prompts import ChatPromptTemplate

    chain = ChatPromptTemplate.from_messages([("human", "{input}")]) | openai(
        fault_server, temperature=0
    )
    Propose([RunnableLambda(lambda msgs: {"input": msgs[-1].text}) | chain], max_tokens=7).invoke(
        "q"
    )
    assert sent(fault_server) == [(0, 7)]
