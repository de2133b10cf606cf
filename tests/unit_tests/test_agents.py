"""Agent specs: model strings, chat models, Runnables, and mixture-llm client functions."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableLambda

from langchain_moa import (
    Aggregate,
    ClientChatModel,
    ConfigurationError,
    LayerFailedError,
    MissingAPIKeyError,
    Propose,
    Vote,
    run,
)
from tests.unit_tests.moa_fakes import chat


class ClientLog:
    """A mixture-llm style async client that records its arguments."""

    def __init__(self, reply=None):
        self.calls: list[tuple] = []
        self.reply = reply

    async def __call__(self, model, messages, temp, max_tokens):
        self.calls.append((model, messages, temp, max_tokens))
        await asyncio.sleep(0)
        if self.reply is not None:
            return self.reply(model, messages)
        return f"{model} answers", 12, 3


# -- model strings ---------------------------------------------------------------


@pytest.mark.parametrize("spec", ["ollama/llama3", "ollama:llama3"])
def test_model_string_resolves_to_a_chat_model_without_network(spec):
    step = Propose([spec])
    model = step.agents[0].runnable()
    assert isinstance(model, BaseChatModel)
    assert model.model_name == "llama3"
    assert str(model.openai_api_base).startswith("http://127.0.0.1:11434")
    assert step.agents[0].name == spec


def test_model_id_with_slashes_keeps_them(monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-test")
    model = Propose(["openrouter/meta-llama/llama-3.3-70b"]).agents[0].runnable()
    assert model.model_name == "meta-llama/llama-3.3-70b"
    assert "openrouter.ai" in str(model.openai_api_base)


@pytest.mark.parametrize("spec", ["groq/llama-3.1-8b-instant", "groq:llama-3.1-8b-instant"])
def test_missing_api_key_names_the_variable(monkeypatch, spec):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="GROQ_API_KEY") as info:
        Propose([spec])
    assert info.value.env_var == "GROQ_API_KEY"
    with pytest.raises(MissingAPIKeyError, match="GROQ_API_KEY"):
        Aggregate(spec)
    with pytest.raises(MissingAPIKeyError, match="GROQ_API_KEY"):
        Vote(spec)


def test_api_key_from_environment(monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "gsk-test")
    model = Propose(["groq/llama-3.1-8b-instant"]).agents[0].runnable()
    assert model.openai_api_key.get_secret_value() == "gsk-test"
    assert "api.groq.com" in str(model.openai_api_base)


def test_bare_name_without_a_function_gives_a_clear_error():
    step = Propose(["my-model"])  # may get a client from run(..., client=) later
    with pytest.raises(ConfigurationError, match="'my-model' has no provider.*client"):
        step.invoke("q")


def test_unknown_provider_without_a_function_names_it_at_run_time():
    step = Propose(["nosuch/model-x"])
    with pytest.raises(ConfigurationError, match="unknown provider 'nosuch'.*client"):
        step.invoke("q")


def test_bundled_model_string_is_not_started_at_construction():
    # local/... models are started on first call, never at construction
    step = Propose(["local/qwen2.5-coder-0.5b"])
    assert step.agents[0]._runnable is None


# -- chat models and Runnables ----------------------------------------------------


def test_chat_model_agent_named_after_its_model():
    step = Propose([chat("x", name="my-model")])
    assert step.agents[0].name == "my-model"
    assert step.invoke("q").candidates[0].model == "my-model"


def test_runnable_lambda_returning_ai_message_is_an_agent():
    seen = []

    def answer(messages):
        seen.append(messages)
        return AIMessage(
            content="from lambda",
            usage_metadata={"input_tokens": 4, "output_tokens": 2, "total_tokens": 6},
        )

    agent = RunnableLambda(answer, name="my_chain")
    agg = chat("final")
    out = (Propose([agent, chat("other")]) | Aggregate(agg)).invoke(
        [SystemMessage("sys"), HumanMessage("hi")]
    )
    assert out.content == "final"
    assert [m.content for m in seen[0]] == ["sys", "hi"]
    assert "1. from lambda" in agg.received()[0].content
    assert out.usage_metadata["input_tokens"] == 4 + 10 + 10


def test_runnable_chain_ending_in_a_chat_model_is_an_agent():
    model = chat(lambda msgs: "saw " + msgs[-1].content)
    shout = RunnableLambda(lambda msgs: [*msgs[:-1], HumanMessage(msgs[-1].content.upper())])
    chain = shout | model
    assert Propose([chain]).invoke("hello").texts == ["saw HELLO"]


def test_runnable_returning_a_string_is_a_recorded_failure_with_a_clear_error():
    agent = RunnableLambda(lambda msgs: "just a string", name="str_agent")
    with pytest.raises(LayerFailedError) as info:
        Propose([agent]).invoke("q")
    [(name, error)] = info.value.errors
    assert name == "str_agent"
    assert "AIMessage" in error and "str" in error


# -- mixture-llm client functions --------------------------------------------------


async def test_mixture_llm_function_as_an_agent():
    client = ClientLog()
    out = await (Propose([client], temp=0.3, max_tokens=99) | Aggregate(chat("final"))).ainvoke(
        [SystemMessage("be brief"), HumanMessage("hi")]
    )
    assert out.content == "final"
    model, messages, temp, max_tokens = client.calls[0]
    assert messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert (temp, max_tokens) == (0.3, 99)
    assert out.usage_metadata["input_tokens"] == 12 + 10


def test_sync_mixture_llm_function_and_sync_invoke():
    calls = []

    def client(model, messages, temp, max_tokens):
        calls.append(model)
        return "sync answer", 1, 2

    async def aclient(model, messages, temp, max_tokens):
        return "async answer", 1, 2

    state = Propose([client, aclient]).invoke("q")
    assert state.texts == ["sync answer", "async answer"]
    assert state.calls[0].input_tokens == 1 and state.calls[0].output_tokens == 2


async def test_step_function_serves_bare_names():
    client = ClientLog()
    out = await (
        Propose(["gpt-4o", "claude-sonnet"], client=client) | Aggregate("gpt-4o", client=client)
    ).ainvoke("q")
    assert out.content == "gpt-4o answers"
    assert [c[0] for c in client.calls] == ["gpt-4o", "claude-sonnet", "gpt-4o"]
    assert "1. gpt-4o answers\n\n2. claude-sonnet answers" in client.calls[-1][1][0]["content"]


async def test_run_with_a_function_serves_bare_and_slashed_names(monkeypatch):
    """mixture-llm's OpenRouter example passes ids like "qwen/qwen-2.5-72b-instruct"."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    client = ClientLog()
    steps = [
        Propose(
            ["qwen/qwen-2.5-72b-instruct", "meta-llama/llama-3.3-70b-instruct"],
            temp=0.7,
            max_tokens=512,
        ),
        Aggregate("qwen/qwen-2.5-72b-instruct"),
    ]
    text, history = await run(steps, "What is quantum computing?", client)
    assert text == "qwen/qwen-2.5-72b-instruct answers"
    assert [c[0] for c in client.calls] == [
        "qwen/qwen-2.5-72b-instruct",
        "meta-llama/llama-3.3-70b-instruct",
        "qwen/qwen-2.5-72b-instruct",
    ]
    assert client.calls[0][2:] == (0.7, 512)
    assert [s["step"] for s in history] == ["Propose", "Aggregate"]


async def test_run_function_wins_over_a_provider_model_string(monkeypatch):
    """run(..., client=) serves every model string, even one with a known provider."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-used")
    client = ClientLog()
    text, _ = await run([Propose(["openai/gpt-4o"]), Aggregate("openai/gpt-4o")], "q", client)
    assert text == "openai/gpt-4o answers"
    assert len(client.calls) == 2


async def test_run_without_a_function_and_bare_names_raises():
    with pytest.raises(ConfigurationError, match="has no provider"):
        await run([Propose(["my-model"]), Aggregate("my-model")], "q")


async def test_function_errors_and_empty_replies_are_recorded():
    async def flaky(model, messages, temp, max_tokens):
        if model == "bad":
            raise TimeoutError("upstream timeout")
        if model == "empty":
            return None, 5, 0
        return "fine", 5, 1

    state = await Propose(["good", "bad", "empty"], client=flaky).ainvoke("q")
    assert state.texts == ["fine"]
    errors = {c.model: c.error for c in state.errors}
    assert errors["bad"] == "TimeoutError: upstream timeout"
    assert "EmptyResponseError" in errors["empty"]


def test_wrapper_chat_model_directly():
    client = ClientLog()
    model = ClientChatModel(client=client, model="m")
    reply = model.invoke("hi", temperature=0.1, max_tokens=5)
    assert reply.content == "m answers"
    assert reply.usage_metadata == {"input_tokens": 12, "output_tokens": 3, "total_tokens": 15}
    assert reply.response_metadata["model_name"] == "m"
    assert client.calls[0][2:] == (0.1, 5)
    model.invoke("hi", temp=0.9)
    assert client.calls[1][2:] == (0.9, 2048)
    model.invoke("hi")
    assert client.calls[2][2:] == (0.7, 2048)


async def test_sync_call_of_an_async_function_inside_a_running_loop():
    client = ClientLog()
    # sync invoke while an event loop runs in this thread
    assert Propose(["x"], client=client).invoke("q").texts == ["x answers"]


def test_single_agent_forms_are_accepted_as_a_list_of_one():
    assert len(Propose(chat("x")).agents) == 1
    assert len(Propose("ollama/llama3").agents) == 1


@pytest.mark.parametrize("cls", [ClientChatModel, RunnableLambda, Propose])
def test_a_class_as_agent_raises_at_construction(cls):
    with pytest.raises(ConfigurationError, match=f"agent {cls.__name__} is a class"):
        Propose([chat("ok"), cls])
    with pytest.raises(ConfigurationError, match=f"agent {cls.__name__} is a class"):
        Aggregate(cls)


def test_a_function_returning_the_wrong_shape_is_a_clear_recorded_error():
    async def just_text(model, messages, temp, max_tokens):
        return "only text"

    with pytest.raises(LayerFailedError) as info:
        Propose(["m"], client=just_text).invoke("q")
    [(_, error)] = info.value.errors
    assert error.startswith("TypeError: the client function must return (text, input_tokens")


def test_a_client_agent_builds_its_model_once() -> None:
    """a6952f6 built a new ClientChatModel on every call (and LangChain recomputed its
    serialised form each time)."""
    from langchain_moa._agents import CLIENT_CONFIG_KEY, Agent

    async def client(model, messages, temp, max_tokens):  # type: ignore[no-untyped-def]
        return "x", 1, 1

    step_client = Agent("gpt-4o", client=client)
    assert step_client.runnable() is step_client.runnable()
    from_config = Agent("gpt-4o")
    config = {"configurable": {CLIENT_CONFIG_KEY: client}}
    assert from_config.runnable(config) is from_config.runnable(config)
