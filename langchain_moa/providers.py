"""Provider registry and model-name parsing.

Every provider here speaks the OpenAI chat-completions protocol, so one client
(``langchain_openai.ChatOpenAI``) reaches all of them; only the base URL and the
environment variable holding the key differ.

Model names are accepted in two spellings:

* ``"provider/model"`` (muxi-llm / LiteLLM style), e.g. ``"groq/llama-3.1-8b-instant"``;
  the model id itself may contain further slashes (``"openrouter/meta-llama/llama-3.3-70b"``).
* ``"provider:model"`` (LangChain ``init_chat_model`` style), e.g. ``"openai:gpt-4o-mini"``.

Sources: each provider's OpenAI-compatibility documentation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel

from langchain_moa.errors import ConfigurationError, MissingAPIKeyError

__all__ = [
    "PROVIDERS",
    "Provider",
    "ModelSpec",
    "parse_model_name",
    "split_model_name",
    "register_provider",
    "LogicalModelMap",
    "LOGICAL_MODELS",
    "register_logical_model",
    "resolve_logical_model",
    "openai_compatible_chat_model",
]


@dataclass(frozen=True)
class Provider:
    """An OpenAI-compatible provider.

    Attributes:
        name: short name used as the ``provider`` part of a model string.
        base_url: the OpenAI-compatible API root (ending in ``/v1`` or similar).
        api_key_env: environment variable holding the key; ``None`` when the
            server needs no key (Ollama, a local llama.cpp or vLLM server).
        base_url_env: optional environment variable that overrides ``base_url``
            (e.g. ``OLLAMA_BASE_URL`` for a remote Ollama host).
    """

    name: str
    base_url: str
    api_key_env: str | None
    base_url_env: str | None = None

    def resolved_base_url(self) -> str:
        if self.base_url_env and os.environ.get(self.base_url_env):
            return os.environ[self.base_url_env]
        return self.base_url

    def api_key(self, required: bool = True) -> str | None:
        """Return the key from the environment.

        Raises:
            MissingAPIKeyError: ``required`` is true and the variable is unset;
                the message names the variable.
        """
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key and required:
            raise MissingAPIKeyError(
                f"provider {self.name!r} needs an API key: set the environment "
                f"variable {self.api_key_env}",
                env_var=self.api_key_env,
            )
        return key

    def has_key(self) -> bool:
        return self.api_key_env is None or bool(os.environ.get(self.api_key_env))


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in [
        Provider("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
        Provider("anthropic", "https://api.anthropic.com/v1/", "ANTHROPIC_API_KEY"),
        Provider("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
        Provider("together", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
        Provider("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
        Provider("deepseek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
        Provider("mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
        Provider("fireworks", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"),
        Provider("deepinfra", "https://api.deepinfra.com/v1/openai", "DEEPINFRA_API_KEY"),
        Provider("xai", "https://api.x.ai/v1", "XAI_API_KEY"),
        Provider("ollama", "http://127.0.0.1:11434/v1", None, "OLLAMA_BASE_URL"),
        Provider("vllm", "http://127.0.0.1:8000/v1", None, "VLLM_BASE_URL"),
        Provider("llamacpp", "http://127.0.0.1:8080/v1", None, "LLAMACPP_BASE_URL"),
        Provider("lmstudio", "http://127.0.0.1:1234/v1", None, "LMSTUDIO_BASE_URL"),
    ]
}

LOCAL_PROVIDER = "local"
"""Provider name of the bundled GGUF models (see :mod:`langchain_moa.local`)."""


def register_provider(
    name: str, base_url: str, api_key_env: str | None = None, base_url_env: str | None = None
) -> Provider:
    """Add (or replace) an OpenAI-compatible provider, e.g. a self-hosted vLLM.

    Returns the registered :class:`Provider`.
    """
    provider = Provider(name, base_url, api_key_env, base_url_env)
    PROVIDERS[name] = provider
    return provider


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model string: ``provider`` and the provider's own ``model`` id."""

    provider: str
    model: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


def split_model_name(name: str) -> tuple[str | None, str]:
    """``(provider, model)`` of ``"provider/model"`` or ``"provider:model"``, cut at
    whichever separator comes first; ``(None, name)`` when there is no prefix. The
    provider is lower-cased and not checked against the registry."""
    cuts = [i for i in (name.find("/"), name.find(":")) if i > 0]
    if not cuts:
        return None, name
    cut = min(cuts)
    return name[:cut].lower(), name[cut + 1 :]


def parse_model_name(name: str) -> ModelSpec:
    """Split ``"provider/model"`` or ``"provider:model"`` into a :class:`ModelSpec`.

    The provider is whichever of the two separators comes first, so
    ``"ollama:llama3.2:1b"`` is provider ``ollama``, model ``llama3.2:1b``, and
    ``"openrouter/meta-llama/llama-3.3-70b"`` is provider ``openrouter``.

    Raises:
        ConfigurationError: the name has no provider prefix, or the provider is
            neither registered nor ``"local"``; the message lists the known providers.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"model name must be a non-empty string, got {name!r}")
    provider, model = split_model_name(name)
    if provider is None:
        raise ConfigurationError(
            f"model name {name!r} has no provider: write 'provider/model' or "
            f"'provider:model' with provider one of {sorted([*PROVIDERS, LOCAL_PROVIDER])}"
        )
    if provider != LOCAL_PROVIDER and provider not in PROVIDERS:
        raise ConfigurationError(
            f"unknown provider {provider!r} in model name {name!r}; known providers: "
            f"{sorted([*PROVIDERS, LOCAL_PROVIDER])} (add one with register_provider())"
        )
    if not model:
        raise ConfigurationError(f"model name {name!r} has an empty model id")
    return ModelSpec(provider, model)


def openai_compatible_chat_model(
    provider: str | Provider,
    model: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    **kwargs: Any,
) -> BaseChatModel:
    """Build the LangChain chat model that talks to ``provider``'s OpenAI-compatible API.

    Use this (not ``ChatOpenAI`` directly) for every OpenAI-compatible server:

    * ``provider == "openai"`` gets ``ChatOpenAI``; every other provider gets
      ``BaseChatOpenAI``, because ``ChatOpenAI`` renames ``max_tokens`` to
      ``max_completion_tokens``, which llama.cpp, vLLM and several hosted
      providers ignore (the reply would then run to the context limit).
    * SDK retries are off (``max_retries=0``) so a router's failover is prompt, and
      ``stream_usage=True`` so streamed replies carry token usage (``ChatOpenAI``
      only turns it on by itself for OpenAI's own URL).

    Args:
        provider: a registered provider name or :class:`Provider`.
        model: the provider's model id.
        base_url: overrides the provider's URL (a self-hosted server).
        api_key: overrides the key from the provider's environment variable; keyless
            providers get a placeholder because the OpenAI SDK insists on one.
        **kwargs: passed to the chat model (``temperature``, ``max_tokens``,
            ``timeout`` in seconds, ...).

    Raises:
        MissingAPIKeyError: no ``api_key`` given and the provider's variable is unset.
        ConfigurationError: ``provider`` is not registered.
    """
    from langchain_openai import ChatOpenAI
    from langchain_openai.chat_models.base import BaseChatOpenAI

    if isinstance(provider, str):
        if provider not in PROVIDERS:
            raise ConfigurationError(
                f"unknown provider {provider!r}; known providers: {sorted(PROVIDERS)}"
            )
        provider = PROVIDERS[provider]
    key = api_key or provider.api_key(required=base_url is None) or "not-needed"
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("stream_usage", True)
    cls = ChatOpenAI if provider.name == "openai" else BaseChatOpenAI
    return cls(
        model=model, base_url=base_url or provider.resolved_base_url(), api_key=key, **kwargs
    )


LogicalModelMap = dict[str, dict[str, str]]
"""logical model name -> {provider name: that provider's model id}."""

LOGICAL_MODELS: LogicalModelMap = {
    "llama-3.1-8b": {
        "groq": "llama-3.1-8b-instant",
        "together": "meta-llama/Llama-3.1-8B-Instruct-Turbo",
        "openrouter": "meta-llama/llama-3.1-8b-instruct",
        "deepinfra": "meta-llama/Meta-Llama-3.1-8B-Instruct",
        "fireworks": "accounts/fireworks/models/llama-v3p1-8b-instruct",
        "ollama": "llama3.1:8b",
    },
    "llama-3.3-70b": {
        "groq": "llama-3.3-70b-versatile",
        "together": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "openrouter": "meta-llama/llama-3.3-70b-instruct",
        "deepinfra": "meta-llama/Llama-3.3-70B-Instruct",
    },
    "gpt-4o-mini": {"openai": "gpt-4o-mini", "openrouter": "openai/gpt-4o-mini"},
    "deepseek-v3": {
        "deepseek": "deepseek-chat",
        "together": "deepseek-ai/DeepSeek-V3",
        "openrouter": "deepseek/deepseek-chat",
    },
}
"""Built-in logical names (one model, a different id on each provider). Ids as listed
in each provider's model catalogue; extend with :func:`register_logical_model`."""


def register_logical_model(name: str, ids: dict[str, str]) -> None:
    """Add or replace a logical model: ``ids`` maps provider name -> model id.

    Raises:
        ConfigurationError: a provider is not registered, or ``ids`` is empty.
    """
    if not ids:
        raise ConfigurationError(f"logical model {name!r} needs at least one provider id")
    unknown = [p for p in ids if p not in PROVIDERS and p != LOCAL_PROVIDER]
    if unknown:
        raise ConfigurationError(
            f"logical model {name!r}: unknown providers {unknown}; known: {sorted(PROVIDERS)}"
        )
    LOGICAL_MODELS[name] = dict(ids)


def resolve_logical_model(
    name: str, providers: list[str] | None = None, models: LogicalModelMap | None = None
) -> list[str]:
    """The ``"provider/model"`` strings of a logical model, in ``providers`` order
    (default: the map's order).

    Raises:
        ConfigurationError: unknown logical name, or a requested provider has no id for it.
    """
    table = LOGICAL_MODELS if models is None else models
    if name not in table:
        raise ConfigurationError(f"unknown logical model {name!r}; known: {sorted(table)}")
    ids = table[name]
    wanted = list(ids) if providers is None else providers
    missing = [p for p in wanted if p not in ids]
    if missing:
        raise ConfigurationError(
            f"logical model {name!r} has no id on providers {missing}; it is on {list(ids)}"
        )
    return [f"{p}/{ids[p]}" for p in wanted]
