"""LangChain's cache keeps the samples of a step distinct, for every agent kind.

``Propose([m] * 3)`` with a cache in effect (``set_llm_cache`` or the model's own
``cache=``) makes three requests the first time (three different replies) and none
the second time (the same three replies, read from the cache). The fault server's
default reply names the request (``[server#n] ...``), so distinct requests give
distinct texts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from langchain.chat_models import init_chat_model
from langchain_core.caches import InMemoryCache
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_openai import ChatOpenAI

from langchain_moa import ClientChatModel
from langchain_moa.router import Deployment, ProviderRouter
from langchain_moa.steps import Aggregate, Propose
from tests import fault_server as _fs
from tests.fault_server import Fault, FaultServer

fault_server = _fs.fault_server
fault_server_factory = _fs.fault_server_factory


@pytest.fixture
def global_cache() -> Iterator[InMemoryCache]:
    before = get_llm_cache()
    cache = InMemoryCache()
    set_llm_cache(cache)
    try:
        yield cache
    finally:
        set_llm_cache(before)


def openai(server: FaultServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o-mini", base_url=server.base_url, api_key="sk-test", max_retries=0, **kwargs
    )


def client_for(server: FaultServer) -> Callable[..., tuple[str, int, int]]:
    def client(model: str, messages: list[dict], temp: float, max_tokens: int) -> tuple:
        body = {"model": model, "messages": messages, "temperature": temp, "max_tokens": max_tokens}
        reply = httpx.post(f"{server.base_url}/chat/completions", json=body).json()
        usage = reply["usage"]
        return reply["choices"][0]["message"]["content"], usage["prompt_tokens"], 1

    return client


def three_samples_then_rerun(agent: Any, server: FaultServer) -> None:
    step = Propose([agent] * 3, temperature=0.7)
    first = step.invoke("question").texts
    assert len(server.requests) == 3
    assert len(set(first)) == 3, first  # a6952f6: ['a', 'a', 'a'] (one call, read thrice)
    again = step.invoke("question").texts
    assert again == first  # every sample hit its own cache entry
    assert len(server.requests) == 3


@pytest.mark.usefixtures("global_cache")
def test_chat_model_samples_stay_distinct(fault_server: FaultServer) -> None:
    three_samples_then_rerun(openai(fault_server), fault_server)


def test_model_own_cache_keeps_samples_distinct(fault_server: FaultServer) -> None:
    three_samples_then_rerun(openai(fault_server, cache=InMemoryCache()), fault_server)


@pytest.mark.usefixtures("global_cache")
def test_bound_model_samples_stay_distinct(fault_server: FaultServer) -> None:
    three_samples_then_rerun(openai(fault_server).bind(temperature=0.1), fault_server)


@pytest.mark.usefixtures("global_cache")
def test_fallback_samples_stay_distinct(fault_server_factory: Any) -> None:
    down, up = fault_server_factory("down"), fault_server_factory("up")
    down.set_default(Fault.status(500))
    agent = openai(down).with_fallbacks([openai(up)])
    three_samples_then_rerun(agent, up)


@pytest.mark.usefixtures("global_cache")
def test_configurable_model_samples_stay_distinct(fault_server: FaultServer) -> None:
    model = init_chat_model(
        "openai:gpt-4o-mini",
        configurable_fields="any",
        base_url=fault_server.base_url,
        api_key="sk-test",
        max_retries=0,
    )
    three_samples_then_rerun(model, fault_server)


@pytest.mark.usefixtures("global_cache")
def test_client_function_samples_stay_distinct(fault_server: FaultServer) -> None:
    three_samples_then_rerun(
        ClientChatModel(client=client_for(fault_server), model="m"), fault_server
    )


@pytest.mark.usefixtures("global_cache")
def test_router_samples_stay_distinct(fault_server: FaultServer) -> None:
    router = ProviderRouter(deployments=[Deployment(llm=openai(fault_server), name="only")])
    three_samples_then_rerun(router, fault_server)


def test_router_answer_is_cached_under_what_was_asked(fault_server_factory: Any) -> None:
    """A router that fell over from A to B caches B's answer for the router's request;
    deployment A's own key never holds it (a later direct call of A asks A)."""
    a, b = fault_server_factory("a"), fault_server_factory("b")
    a.script(Fault.status(500))
    cache = InMemoryCache()
    model_a, model_b = openai(a, cache=cache), openai(b, cache=cache)
    router = ProviderRouter(
        deployments=[Deployment(llm=model_a, name="a"), Deployment(llm=model_b, name="b")],
        cache=cache,
    )
    first = router.invoke("question").text
    assert first.startswith("[b#")
    assert router.invoke("question").text == first  # a hit: no new request
    assert (len(a.requests), len(b.requests)) == (1, 1)
    direct = model_a.invoke("question").text  # not B's answer from the cache
    assert direct.startswith("[a#") and len(a.requests) == 2


@pytest.mark.usefixtures("global_cache")
def test_aggregator_and_rerun_of_a_whole_pipeline(fault_server: FaultServer) -> None:
    model = openai(fault_server)
    moa = Propose([model] * 2) | Aggregate(model)
    first = moa.invoke("question").content
    assert len(fault_server.requests) == 3
    assert moa.invoke("question").content == first
    assert len(fault_server.requests) == 3
