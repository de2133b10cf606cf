"""Provider names as in LangChain's ``init_chat_model`` (issue 10, item 5).

The keys, packages and bare-name inference are pinned against the installed
``langchain`` itself, so a drift in either table fails here. Clients are exercised
over real HTTP to ``tests/fault_server.py`` where a provider is reached through its
OpenAI-compatible endpoint.
"""

from __future__ import annotations

import importlib.util

import pytest
from langchain_openai import AzureChatOpenAI
from langchain_openai.chat_models.base import BaseChatOpenAI

from langchain_moa import ConfigurationError, Deployment, MissingAPIKeyError, Propose
from langchain_moa._llamacpp import LlamaServerChatModel
from langchain_moa.providers import (
    PROVIDERS,
    build_chat_model,
    infer_provider,
    parse_model_name,
)
from tests import fault_server as _fs
from tests.fault_server import FaultServer

fault_server = _fs.fault_server
fault_server_factory = _fs.fault_server_factory

OURS_ONLY = {"deepinfra", "vllm", "llamacpp", "lmstudio"}
"""OpenAI-compatible providers that ``init_chat_model`` has no key for."""


def langchain_table() -> dict:
    base = pytest.importorskip("langchain.chat_models.base")
    table = getattr(base, "_BUILTIN_PROVIDERS", None)
    if table is None:
        pytest.skip("this langchain keeps no _BUILTIN_PROVIDERS table")
    return table


def test_provider_keys_and_packages_are_init_chat_models():
    table = langchain_table()
    # every init_chat_model key but its LangSmith gateway, which is no model provider
    assert set(PROVIDERS) - OURS_ONLY == set(table) - {"langsmith"}
    for name, (module, class_name, _) in table.items():
        if name == "langsmith":
            continue
        assert PROVIDERS[name].package == f"{module}:{class_name}", name


NAMES = [
    "gpt-4o-mini",
    "o3-mini",
    "chatgpt-4o-latest",
    "claude-3-5-haiku-latest",
    "command-r-plus",
    "accounts/fireworks/models/llama-v3p1-8b-instruct",
    "gemini-2.0-flash",
    "amazon.nova-lite-v1:0",
    "anthropic.claude-3-haiku-20240307-v1:0",
    "meta.llama3-8b-instruct-v1:0",
    "mistral-large-latest",
    "mixtral-8x7b",
    "deepseek-chat",
    "grok-3-mini",
    "sonar-pro",
    "solar-pro",
    "llama-3.1-8b-instant",
    "qwen2.5",
]


@pytest.mark.parametrize("name", NAMES)
def test_bare_names_are_inferred_as_init_chat_model_does(name: str):
    base = pytest.importorskip("langchain.chat_models.base")
    infer = getattr(base, "_attempt_infer_model_provider", None)
    if infer is None:
        pytest.skip("this langchain has no _attempt_infer_model_provider")
    assert infer_provider(name) == infer(name)


@pytest.mark.parametrize(
    ("name", "provider", "model"),
    [
        ("gpt-4o-mini", "openai", "gpt-4o-mini"),
        ("claude-3-5-haiku-latest", "anthropic", "claude-3-5-haiku-latest"),
        ("mistral-small-latest", "mistralai", "mistral-small-latest"),
        ("mistralai:mistral-small-latest", "mistralai", "mistral-small-latest"),
        ("mistral/mistral-small-latest", "mistralai", "mistral-small-latest"),  # old alias
        ("google_genai:gemini-2.0-flash", "google_genai", "gemini-2.0-flash"),
        ("google-genai:gemini-2.0-flash", "google_genai", "gemini-2.0-flash"),
        ("azure_openai:gpt-4o", "azure_openai", "gpt-4o"),
        ("bedrock:anthropic.claude-3-haiku", "bedrock", "anthropic.claude-3-haiku"),
        (
            "anthropic.claude-3-haiku-20240307-v1:0",
            "bedrock",
            "anthropic.claude-3-haiku-20240307-v1:0",
        ),
        ("accounts/fireworks/models/x", "fireworks", "accounts/fireworks/models/x"),
        ("ollama:llama3.2:1b", "ollama", "llama3.2:1b"),
        (
            "openrouter/meta-llama/llama-3.3-70b-instruct",
            "openrouter",
            "meta-llama/llama-3.3-70b-instruct",
        ),
        ("local/qwen2.5-coder-0.5b", "local", "qwen2.5-coder-0.5b"),
    ],
)
def test_parse_model_name(name: str, provider: str, model: str):
    spec = parse_model_name(name)
    assert (spec.provider, spec.model) == (provider, model)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("my-model", "has no provider"),
        ("nowhere/x", "unknown provider 'nowhere'"),
        ("openai/", "empty model id"),
        ("", "non-empty"),
    ],
)
def test_bad_names_raise_configuration_error(name: str, fragment: str):
    with pytest.raises(ConfigurationError, match=fragment):
        parse_model_name(name)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"model": "nowhere/x"}, "model"),
        ({"model": "my-model"}, "model"),
        ({"model": "mistralai:x", "rpm": -1}, "rpm"),
        ({"model": "mistralai:x", "price_in": -1.0}, "price_in"),
        ({"model": "mistralai:x", "weight": 0}, "weight"),
        ({"model": "mistralai:x", "base_url": "htp://x/v1"}, "base_url"),
        ({"model": "mistralai:x", "temprature": 0.2}, "temprature"),
    ],
)
def test_deployment_raises_configuration_error_naming_the_parameter(kwargs, parameter):
    """``Deployment(model="mistralai:x")`` was a raw pydantic ``ValidationError``."""
    with pytest.raises(ConfigurationError, match=parameter) as info:
        Deployment(**kwargs)
    assert "validation error" not in str(info.value)


def test_deployment_accepts_init_chat_model_names():
    for name in ("mistralai:mistral-small-latest", "gpt-4o-mini", "google_genai:gemini-2.0-flash"):
        deployment = Deployment(model=name)
        assert deployment.provider == parse_model_name(name).provider
    assert Deployment(model="mistralai:x").api_key_env == "MISTRAL_API_KEY"


# ------------------------------------------------------------------ which client is built


def _installed(provider: str) -> bool:
    return PROVIDERS[provider].package_installed()


@pytest.mark.parametrize(
    "provider",
    sorted(p for p, spec in PROVIDERS.items() if spec.base_url and p != "openai"),
)
def test_package_when_installed_else_openai_compatible_endpoint(provider, monkeypatch):
    spec = PROVIDERS[provider]
    if spec.api_key_env:
        monkeypatch.setenv(spec.api_key_env, "test-key")
    if spec.base_url_env:
        monkeypatch.delenv(spec.base_url_env, raising=False)
    llm = build_chat_model(provider, "some-model")
    if spec.package and _installed(provider):
        assert type(llm).__name__ == spec.package.split(":")[1]
    else:  # max_tokens sent as max_tokens; llama.cpp's server gets its own subclass
        expected = LlamaServerChatModel if provider == "llamacpp" else BaseChatOpenAI
        assert type(llm) is expected
        assert llm.openai_api_base == spec.base_url.rstrip("/")
        assert llm.max_retries == 0 and llm.stream_usage is True


def test_anthropic_uses_chat_anthropic_when_langchain_anthropic_is_installed(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    llm = build_chat_model("anthropic", "claude-3-5-haiku-latest", max_tokens=64)
    if importlib.util.find_spec("langchain_anthropic") is None:
        assert type(llm) is BaseChatOpenAI
        assert "api.anthropic.com" in llm.openai_api_base
    else:
        from langchain_anthropic import ChatAnthropic

        assert isinstance(llm, ChatAnthropic)
        assert llm.max_retries == 0 and llm.max_tokens == 64


def test_agent_strings_use_the_same_choice(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    agent = Propose(["anthropic:claude-3-5-haiku-latest"]).agents[0].runnable()
    expected = "ChatAnthropic" if _installed("anthropic") else "BaseChatOpenAI"
    assert type(agent).__name__ == expected


def test_package_only_provider_without_its_package_names_the_pip_command():
    for provider, pip_name in (
        ("bedrock", "langchain-aws"),
        ("google_vertexai", "langchain-google-vertexai"),
    ):
        if _installed(provider):
            continue
        with pytest.raises(ConfigurationError, match=f"pip install {pip_name}"):
            build_chat_model(provider, "x")
        with pytest.raises(ConfigurationError, match=f"pip install {pip_name}"):
            Deployment(model=f"{provider}:x").chat_model(10)


def test_azure_openai_uses_azure_chat_openai_from_langchain_openai():
    llm = build_chat_model(
        "azure_openai",
        "gpt-4o-mini",
        api_key="azure-test",
        azure_endpoint="https://example.openai.azure.com",
        api_version="2024-10-21",
    )
    assert isinstance(llm, AzureChatOpenAI)
    assert llm.max_retries == 0 and llm.stream_usage is True


def test_a_package_that_refuses_its_arguments_raises_configuration_error(monkeypatch):
    for var in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "OPENAI_API_VERSION"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigurationError, match="azure_openai"):
        build_chat_model("azure_openai", "gpt-4o-mini")


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="MISTRAL_API_KEY"):
        build_chat_model("mistralai", "mistral-small-latest")


# ------------------------------------------------------------------ over real HTTP


def test_bare_openai_name_reaches_the_openai_endpoint(fault_server: FaultServer, monkeypatch):
    """A bare ``"gpt-4o-mini"`` agent is OpenAI's (``init_chat_model``'s inference)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", fault_server.base_url)
    state = Propose(["gpt-4o-mini"], max_tokens=20).invoke("which model?")
    [request] = fault_server.chat_requests
    assert request.body["model"] == "gpt-4o-mini"
    assert request.headers.get("authorization") == "Bearer sk-test"
    assert state.candidates[0].text.endswith("which model?")


def test_url_variable_means_the_openai_compatible_endpoint(fault_server: FaultServer, monkeypatch):
    """``OLLAMA_BASE_URL`` is an OpenAI-compatible root, whatever package is installed."""
    monkeypatch.setenv("OLLAMA_BASE_URL", fault_server.base_url)
    reply = Deployment(model="ollama:llama3.2:1b").chat_model(10).invoke("hi there")
    assert reply.text.endswith("hi there")
    assert fault_server.chat_requests[0].body["model"] == "llama3.2:1b"
