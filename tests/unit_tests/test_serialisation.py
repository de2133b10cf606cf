"""Steps are RunnableSerializable: LangChain's dumpd / loads, configurable fields and
alternatives, and pickling (as far as the agents' own models allow it).

Pipelines are run against the fault server on 127.0.0.1 through the ``llamacpp``
provider, whose URL comes from ``LLAMACPP_BASE_URL``.
"""

from __future__ import annotations

import json
import pickle

import pytest
from langchain_core.load import dumpd, dumps, loads
from langchain_core.runnables import ConfigurableField, RunnableSequence
from langchain_openai import ChatOpenAI

from langchain_moa import MoAHistoryHandler
from langchain_moa._settings import DEFAULT
from langchain_moa.steps import Aggregate, Propose, Shuffle, Take, Vote
from tests import fault_server as _fs
from tests.fault_server import Fault, FaultServer

fault_server = _fs.fault_server
fault_server_factory = _fs.fault_server_factory

ALLOWED = [Propose, Shuffle, Take, Aggregate, Vote, RunnableSequence]


@pytest.fixture
def server(fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> FaultServer:
    monkeypatch.setenv("LLAMACPP_BASE_URL", fault_server.base_url)
    return fault_server


def pipeline() -> RunnableSequence:
    return (
        Propose(["llamacpp/a", "llamacpp/b"], temperature=0.3, max_tokens=40)
        | Shuffle(seed=3)
        | Take(2)
        | Aggregate("llamacpp/c", max_tokens=60)
    )


def test_dumpd_loads_round_trip_of_model_strings(server: FaultServer) -> None:
    text = dumps(pipeline())
    payload = json.loads(text)
    assert payload["kwargs"]["first"]["id"] == ["langchain_moa", "Propose"]
    assert payload["kwargs"]["first"]["kwargs"]["agents"] == ["llamacpp/a", "llamacpp/b"]
    loaded = loads(text, valid_namespaces=["langchain_moa"], allowed_objects=ALLOWED)
    assert isinstance(loaded, RunnableSequence)
    assert [type(s).__name__ for s in loaded.steps] == ["Propose", "Shuffle", "Take", "Aggregate"]
    assert repr(loaded.steps) == repr(pipeline().steps)
    assert dumpd(loaded) == dumpd(pipeline())
    # the loaded pipeline runs, with the settings it was saved with
    loaded.invoke("question")
    sent = [(r.model, r.body.get("temperature"), r.max_tokens) for r in server.requests]
    assert sorted(sent[:2]) == [("a", 0.3, 40), ("b", 0.3, 40)]
    assert sent[2] == ("c", 0.7, 60)


def test_step_defaults_are_not_written() -> None:
    kwargs = dumpd(Propose(["llamacpp/a"]))["kwargs"]
    assert "temperature" not in kwargs and "max_tokens" not in kwargs
    loaded = loads(
        json.dumps(dumpd(Propose(["llamacpp/a"]))),
        valid_namespaces=["langchain_moa"],
        allowed_objects=ALLOWED,
    )
    assert loaded.temperature is DEFAULT and loaded.max_tokens is DEFAULT


def test_secrets_are_lc_secrets_never_in_the_payload() -> None:
    model = ChatOpenAI(
        model="gpt-4o-mini", api_key="sk-very-secret", base_url="http://127.0.0.1:9/v1"
    )
    text = dumps(Propose([model]) | Aggregate(model))
    assert "sk-very-secret" not in text
    agent = json.loads(text)["kwargs"]["first"]["kwargs"]["agents"][0]
    assert agent["kwargs"]["openai_api_key"] == {
        "lc": 1,
        "type": "secret",
        "id": ["OPENAI_API_KEY"],
    }
    loaded = loads(
        text,
        valid_namespaces=["langchain_moa"],
        allowed_objects=[*ALLOWED, ChatOpenAI],
        secrets_map={"OPENAI_API_KEY": "sk-from-map"},
    )
    restored = loaded.first.agents[0].runnable()
    assert restored.openai_api_key.get_secret_value() == "sk-from-map"


def test_configurable_fields_on_a_step(server: FaultServer) -> None:
    step = Propose(["llamacpp/a"]).configurable_fields(
        temperature=ConfigurableField(id="proposer_temperature"),
        max_tokens=ConfigurableField(id="proposer_max_tokens"),
    )
    step.invoke("q")
    step.invoke(
        "q", config={"configurable": {"proposer_temperature": 0.1, "proposer_max_tokens": 5}}
    )
    assert [(r.body["temperature"], r.max_tokens) for r in server.requests] == [
        (0.7, 2048),
        (0.1, 5),
    ]


def test_configurable_alternatives_on_a_step(server: FaultServer) -> None:
    server.set_default(Fault.ok('{"choice": 2}'))
    final = Aggregate("llamacpp/c").configurable_alternatives(
        ConfigurableField(id="final"),
        default_key="aggregate",
        vote=Vote("llamacpp/c", structured="json"),
    )
    moa = Propose(["llamacpp/a", "llamacpp/b"]) | final
    voted = moa.invoke("q", config={"configurable": {"final": "vote"}})
    assert voted.response_metadata["moa"]["chosen"] == 1
    aggregated = moa.invoke("q")
    assert "chosen" not in aggregated.response_metadata["moa"]


def test_pickle_round_trip(server: FaultServer) -> None:
    restored = pickle.loads(pickle.dumps(pipeline()))
    assert repr(restored.steps) == repr(pipeline().steps)
    assert restored.first.temperature == 0.3 and restored.last.temperature is DEFAULT
    history = MoAHistoryHandler()
    restored.invoke("question", config={"callbacks": [history]})
    assert len(server.requests) == 3
    again = pickle.loads(pickle.dumps(history))  # the handler's lock is recreated
    assert [s.step for s in again.steps] == ["Propose", "Shuffle", "Take", "Aggregate"]


def test_router_round_trip_keeps_its_settings_and_keys_out(server: FaultServer) -> None:
    """The router serialises as constructor kwargs; a key is a secret reference."""
    from langchain_moa import Deployment, ProviderRouter
    from langchain_moa.router import RetryPolicy

    router = ProviderRouter(
        deployments=[
            Deployment(model="llamacpp/a", api_key="sk-router-secret", rpm=600, priority=1),
            Deployment(model="llamacpp/b", name="backup", priority=2),
        ],
        strategy="priority",
        retry_policy={"server": RetryPolicy(retries=2)},
        max_tokens=33,
    )
    text = dumps(router)
    assert "sk-router-secret" not in text
    first = json.loads(text)["kwargs"]["deployments"][0]["kwargs"]
    assert first["api_key"] == {"lc": 1, "type": "secret", "id": ["LLAMACPP_API_KEY"]}
    loaded = loads(
        text,
        valid_namespaces=["langchain_moa"],
        allowed_objects=[ProviderRouter, Deployment],
        secrets_map={"LLAMACPP_API_KEY": "sk-from-map"},
    )
    assert loaded.deployments[0].api_key.get_secret_value() == "sk-from-map"
    assert [d.name for d in loaded.deployments] == ["llamacpp/a", "backup"]
    assert loaded.retry_policy == {"server": RetryPolicy(retries=2)}
    assert dumpd(loaded) == dumpd(router)
    # the loaded router answers through its first deployment with its own max_tokens
    out = loaded.invoke("q")
    assert out.response_metadata["router"]["deployment"] == "llamacpp/a"
    assert [(r.model, r.max_tokens) for r in server.requests] == [("a", 33)]


def test_moa_chat_model_round_trip_with_a_router_agent(server: FaultServer) -> None:
    from langchain_moa import Deployment, MoAChatModel, ProviderRouter

    router = ProviderRouter(deployments=[Deployment(model="llamacpp/r")])
    model = MoAChatModel(Propose([router, "llamacpp/a"]) | Aggregate("llamacpp/c"), max_tokens=21)
    text = dumps(model)
    loaded = loads(
        text,
        valid_namespaces=["langchain_moa"],
        allowed_objects=[*ALLOWED, MoAChatModel, ProviderRouter, Deployment],
    )
    assert isinstance(loaded, MoAChatModel) and loaded.max_tokens == 21
    assert dumpd(loaded) == dumpd(model)
    loaded.invoke("q")
    sent = sorted((r.model, r.max_tokens) for r in server.requests)
    assert sent == [("a", 2048), ("c", 21), ("r", 2048)]
