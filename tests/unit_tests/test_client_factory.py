"""One client factory (issue 7, defects 6 and 8), over real HTTP to ``tests/fault_server.py``.

Every OpenAI-compatible client the package builds (agents, router deployments, the
``moa`` command, local servers) comes from ``providers.openai_compatible_chat_model``:
``max_retries=0``, ``stream_usage=True``, ``base_url`` checked at construction, and a
keep-alive-free async client for loopback servers so a model survives several event
loops (``asyncio.run`` twice, pytest-asyncio's per-test loops, notebooks).
"""

from __future__ import annotations

import asyncio

import pytest

from langchain_moa import ConfigurationError, Deployment, Propose, ProviderRouter
from langchain_moa.providers import openai_compatible_chat_model
from tests import fault_server as _fs
from tests.fault_server import FaultServer

fault_server = _fs.fault_server
fault_server_factory = _fs.fault_server_factory


# ---------------------------------------------------------------- defect 8: event loops


def test_deployment_on_a_loopback_server_survives_two_event_loops(fault_server: FaultServer):
    """``Deployment(model="llamacpp/x", base_url=...)`` answered the first ``asyncio.run``
    and failed the second with "Event loop is closed" (a kept-alive connection of the
    first loop was reused)."""
    llm = Deployment(model="llamacpp/x", base_url=fault_server.base_url).chat_model(10)
    first = asyncio.run(llm.ainvoke("one"))
    second = asyncio.run(llm.ainvoke("two"))
    assert first.text.endswith("one") and second.text.endswith("two")
    assert [r.last_user_text for r in fault_server.chat_requests] == ["one", "two"]
    assert fault_server.statuses() == [200, 200]


def test_router_over_a_loopback_deployment_survives_two_event_loops(fault_server: FaultServer):
    router = ProviderRouter(
        deployments=[Deployment(model="llamacpp/x", base_url=fault_server.base_url)]
    )
    texts = [asyncio.run(router.ainvoke(q)).text for q in ("one", "two", "three")]
    assert [t.rsplit(" ", 1)[-1] for t in texts] == ["one", "two", "three"]
    assert fault_server.statuses() == [200, 200, 200]


def test_string_agent_on_a_loopback_server_survives_two_event_loops(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
):
    """``Propose(["llamacpp/x"])`` built its client without the loopback fix."""
    monkeypatch.setenv("LLAMACPP_BASE_URL", fault_server.base_url)
    step = Propose(["llamacpp/x"])
    for q in ("one", "two"):
        state = asyncio.run(step.ainvoke(q))
        assert [c.text.rsplit(" ", 1)[-1] for c in state.candidates] == [q]
    assert fault_server.statuses() == [200, 200]


def test_factory_defaults_are_the_same_for_every_caller(fault_server: FaultServer):
    llm = openai_compatible_chat_model("llamacpp", "x", base_url=fault_server.base_url)
    assert llm.max_retries == 0 and llm.stream_usage is True
    assert llm.http_async_client is not None  # loopback: no keep-alive
    remote = openai_compatible_chat_model(
        "groq", "llama-3.1-8b-instant", api_key="gsk-test", max_retries=2
    )
    assert remote.max_retries == 2  # defaults, not overrides
    assert remote.http_async_client is None  # remote hosts keep their connections
    # streamed usage really arrives (stream_usage=True asks the server for it)
    chunks = list(llm.stream("count me"))
    usage = sum(chunks[1:], chunks[0]).usage_metadata
    assert usage and usage["output_tokens"] > 0
    assert fault_server.chat_requests[-1].body["stream_options"] == {"include_usage": True}


# ---------------------------------------------------------------- defect 6: base_url


@pytest.mark.parametrize(
    "bad", ["htp://127.0.0.1:8080/v1", "localhost:8080", "http://", "http://h:99999/v1", ""]
)
def test_bad_base_url_fails_at_construction_naming_it(bad: str):
    """``base_url="htp://..."`` was accepted and retried as a connection error for 92 s."""
    with pytest.raises(ConfigurationError, match="base_url"):
        Deployment(model="llamacpp/x", base_url=bad)
    with pytest.raises(ConfigurationError, match="base_url"):
        openai_compatible_chat_model("llamacpp", "x", base_url=bad)


def test_bad_base_url_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLAMACPP_BASE_URL", "htp://127.0.0.1:8080/v1")
    with pytest.raises(ConfigurationError, match="LLAMACPP_BASE_URL"):
        Propose(["llamacpp/x"])


def test_router_never_sends_to_a_misspelt_url(fault_server: FaultServer):
    good = fault_server.base_url
    with pytest.raises(ConfigurationError, match="base_url"):
        ProviderRouter(
            deployments=[
                Deployment(model="llamacpp/x", base_url=good.replace("http://", "htp://")),
            ]
        )
    assert fault_server.requests == []
