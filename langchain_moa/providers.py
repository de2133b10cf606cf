"""Provider registry, model-name parsing, and the one factory that builds chat models.

Provider names are ``init_chat_model``'s (LangChain v1: ``openai``, ``anthropic``,
``mistralai``, ``google_genai``, ``azure_openai``, ``bedrock``, ``groq``, ...) plus a
few OpenAI-compatible ones of our own (``deepinfra``, ``vllm``, ``llamacpp``,
``lmstudio``, ``local``). A provider is reached through its LangChain package when
that package is installed (``anthropic`` -> ``ChatAnthropic`` with
``langchain-anthropic``), else through its OpenAI-compatible endpoint with
``BaseChatOpenAI``; a provider with neither raises :class:`ConfigurationError` naming
the package to install.

Model names are accepted in three spellings:

* ``"provider/model"`` (muxi-llm / LiteLLM style), e.g. ``"groq/llama-3.1-8b-instant"``;
  the model id itself may contain further slashes (``"openrouter/meta-llama/llama-3.3-70b"``).
* ``"provider:model"`` (LangChain ``init_chat_model`` style), e.g. ``"openai:gpt-4o-mini"``.
* a bare model id whose provider ``init_chat_model`` infers from its prefix
  (``"gpt-4o-mini"`` -> ``openai``, ``"claude-..."`` -> ``anthropic``,
  ``"mistral-..."`` -> ``mistralai``; see :func:`infer_provider`).

Every client built here goes through :func:`openai_compatible_chat_model` (an
OpenAI-compatible endpoint) or :func:`build_chat_model` (the package or the endpoint),
so agents, router deployments, the ``moa`` command and local servers share one set
of defaults: SDK retries off, streamed usage on, ``base_url`` checked at construction,
and a keep-alive-free async client for loopback servers (several event loops).

Sources: ``langchain.chat_models.init_chat_model`` (provider keys, packages, name
inference) and each provider's OpenAI-compatibility documentation.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from langchain_core.language_models import BaseChatModel

from langchain_moa.errors import ConfigurationError, MissingAPIKeyError

__all__ = [
    "PROVIDERS",
    "PROVIDER_ALIASES",
    "Provider",
    "ModelSpec",
    "build_chat_model",
    "infer_provider",
    "parse_model_name",
    "split_model_name",
    "register_provider",
    "validate_base_url",
    "LogicalModelMap",
    "LOGICAL_MODELS",
    "register_logical_model",
    "resolve_logical_model",
    "openai_compatible_chat_model",
    "loopback_async_http_client",
]


@dataclass(frozen=True)
class Provider:
    """A model provider.

    Attributes:
        name: short name used as the ``provider`` part of a model string
            (``init_chat_model``'s key where LangChain has one).
        base_url: the OpenAI-compatible API root (ending in ``/v1`` or similar);
            ``None`` when the provider has no OpenAI-compatible endpoint (then its
            LangChain package is required).
        api_key_env: environment variable holding the key; ``None`` when the
            server needs no key (Ollama, a local llama.cpp or vLLM server) or the
            LangChain package finds its own credentials (Bedrock, Vertex AI, Azure).
        base_url_env: optional environment variable that overrides ``base_url``
            (e.g. ``OLLAMA_BASE_URL`` for a remote Ollama host).
        package: ``"module:Class"`` of the provider's LangChain chat model
            (``"langchain_anthropic:ChatAnthropic"``), used when importable.
        creator: how the package class takes the model id: ``"model"`` (the
            usual ``Class(model=...)``), ``"model_id"`` (``Class(model_id=...)``)
            or ``"from_model_id"`` (``Class.from_model_id(model_id=...)``), as in
            ``init_chat_model``.
    """

    name: str
    base_url: str | None
    api_key_env: str | None
    base_url_env: str | None = None
    package: str | None = None
    creator: str = "model"

    def resolved_base_url(self) -> str | None:
        """The OpenAI-compatible root: ``base_url_env``'s value if set, else ``base_url``."""
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

    @property
    def pip_name(self) -> str | None:
        """The pip name of the LangChain package (``"langchain-anthropic"``)."""
        if self.package is None:
            return None
        return self.package.split(":")[0].split(".")[0].replace("_", "-")

    def package_installed(self) -> bool:
        """Whether the LangChain package's module can be imported (not imported here)."""
        if self.package is None:
            return False
        module = self.package.split(":")[0]
        try:
            return importlib.util.find_spec(module.split(".")[0]) is not None
        except (ImportError, ValueError):
            return False


def _p(
    name: str,
    base_url: str | None,
    api_key_env: str | None,
    package: str | None = None,
    base_url_env: str | None = None,
    creator: str = "model",
) -> Provider:
    return Provider(name, base_url, api_key_env, base_url_env, package, creator)


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in [
        # init_chat_model's providers (langchain 1.x), same keys and packages
        _p(
            "openai",
            "https://api.openai.com/v1",
            "OPENAI_API_KEY",
            "langchain_openai:ChatOpenAI",
            "OPENAI_BASE_URL",
        ),
        _p(
            "anthropic",
            "https://api.anthropic.com/v1/",
            "ANTHROPIC_API_KEY",
            "langchain_anthropic:ChatAnthropic",
        ),
        _p("anthropic_bedrock", None, None, "langchain_aws:ChatAnthropicBedrock"),
        _p("azure_ai", None, None, "langchain_azure_ai.chat_models:AzureAIOpenAIApiChatModel"),
        _p("azure_openai", None, None, "langchain_openai:AzureChatOpenAI"),
        _p(
            "baseten",
            "https://inference.baseten.co/v1",
            "BASETEN_API_KEY",
            "langchain_baseten:ChatBaseten",
        ),
        _p("bedrock", None, None, "langchain_aws:ChatBedrock"),
        _p("bedrock_converse", None, None, "langchain_aws:ChatBedrockConverse"),
        _p("bedrock_mantle_anthropic", None, None, "langchain_aws:ChatAnthropicMantle"),
        _p("bedrock_mantle_openai", None, None, "langchain_aws:ChatOpenAIMantle"),
        _p(
            "cohere",
            "https://api.cohere.ai/compatibility/v1",
            "COHERE_API_KEY",
            "langchain_cohere:ChatCohere",
        ),
        _p(
            "deepseek",
            "https://api.deepseek.com/v1",
            "DEEPSEEK_API_KEY",
            "langchain_deepseek:ChatDeepSeek",
        ),
        _p(
            "fireworks",
            "https://api.fireworks.ai/inference/v1",
            "FIREWORKS_API_KEY",
            "langchain_fireworks:ChatFireworks",
        ),
        _p(
            "google_anthropic_vertex",
            None,
            None,
            "langchain_google_vertexai.model_garden:ChatAnthropicVertex",
        ),
        _p(
            "google_genai",
            "https://generativelanguage.googleapis.com/v1beta/openai/",
            "GOOGLE_API_KEY",
            "langchain_google_genai:ChatGoogleGenerativeAI",
        ),
        _p("google_vertexai", None, None, "langchain_google_vertexai:ChatVertexAI"),
        _p("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", "langchain_groq:ChatGroq"),
        _p(
            "huggingface",
            None,
            None,
            "langchain_huggingface:ChatHuggingFace",
            creator="from_model_id",
        ),
        _p("ibm", None, None, "langchain_ibm:ChatWatsonx", creator="model_id"),
        _p("litellm", None, None, "langchain_litellm:ChatLiteLLM"),
        _p(
            "meta",
            "https://api.llama.com/compat/v1/",
            "LLAMA_API_KEY",
            "langchain_meta:ChatMetaModel",
        ),
        _p(
            "mistralai",
            "https://api.mistral.ai/v1",
            "MISTRAL_API_KEY",
            "langchain_mistralai:ChatMistralAI",
        ),
        _p(
            "nvidia",
            "https://integrate.api.nvidia.com/v1",
            "NVIDIA_API_KEY",
            "langchain_nvidia_ai_endpoints:ChatNVIDIA",
        ),
        _p(
            "ollama",
            "http://127.0.0.1:11434/v1",
            None,
            "langchain_ollama:ChatOllama",
            "OLLAMA_BASE_URL",
        ),
        _p(
            "openrouter",
            "https://openrouter.ai/api/v1",
            "OPENROUTER_API_KEY",
            "langchain_openrouter:ChatOpenRouter",
        ),
        _p(
            "perplexity",
            "https://api.perplexity.ai",
            "PPLX_API_KEY",
            "langchain_perplexity:ChatPerplexity",
        ),
        _p(
            "together",
            "https://api.together.xyz/v1",
            "TOGETHER_API_KEY",
            "langchain_together:ChatTogether",
        ),
        _p(
            "upstage",
            "https://api.upstage.ai/v1",
            "UPSTAGE_API_KEY",
            "langchain_upstage:ChatUpstage",
        ),
        _p("xai", "https://api.x.ai/v1", "XAI_API_KEY", "langchain_xai:ChatXAI"),
        # OpenAI-compatible only (no init_chat_model key)
        _p("deepinfra", "https://api.deepinfra.com/v1/openai", "DEEPINFRA_API_KEY"),
        _p("vllm", "http://127.0.0.1:8000/v1", None, base_url_env="VLLM_BASE_URL"),
        _p("llamacpp", "http://127.0.0.1:8080/v1", None, base_url_env="LLAMACPP_BASE_URL"),
        _p("lmstudio", "http://127.0.0.1:1234/v1", None, base_url_env="LMSTUDIO_BASE_URL"),
    ]
}
"""Provider name -> :class:`Provider` (``init_chat_model``'s keys plus our own)."""

PROVIDER_ALIASES: dict[str, str] = {"mistral": "mistralai"}
"""Earlier names still accepted (``"mistral/..."`` is ``mistralai``)."""

LOCAL_PROVIDER = "local"
_LLAMA_SERVER_PROVIDERS = frozenset({"llamacpp", LOCAL_PROVIDER})
"""Provider name of the bundled GGUF models (see :mod:`langchain_moa.local`)."""


def register_provider(
    name: str,
    base_url: str | None,
    api_key_env: str | None = None,
    base_url_env: str | None = None,
    package: str | None = None,
) -> Provider:
    """Add (or replace) a provider, e.g. a self-hosted vLLM.

    Args:
        name: the provider part of model strings.
        base_url: its OpenAI-compatible API root (checked like any ``base_url``).
        api_key_env: environment variable with its key (``None``: keyless).
        base_url_env: environment variable overriding ``base_url``.
        package: optional ``"module:Class"`` of a LangChain chat model to prefer.

    Returns the registered :class:`Provider`.

    Raises:
        ConfigurationError: ``base_url`` is not an ``http(s)://`` URL, or neither
            ``base_url`` nor ``package`` is given.
    """
    if base_url is None and package is None:
        raise ConfigurationError(
            f"provider {name!r} needs base_url= (an OpenAI-compatible API root) or package="
        )
    if base_url is not None:
        validate_base_url(base_url)
    provider = Provider(name, base_url, api_key_env, base_url_env, package)
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


def canonical_provider(name: str) -> str:
    """``init_chat_model``'s normalisation (``-`` -> ``_``, lower case) plus
    :data:`PROVIDER_ALIASES`."""
    key = name.replace("-", "_").lower()
    return PROVIDER_ALIASES.get(key, key)


def infer_provider(model: str) -> str | None:
    """The provider ``init_chat_model`` infers from a bare model id, or ``None``.

    The same prefixes as LangChain v1: ``gpt-``, ``o1``, ``o3``, ``chatgpt``,
    ``text-davinci`` -> ``openai``; ``claude`` -> ``anthropic``; ``command`` ->
    ``cohere``; ``accounts/fireworks`` -> ``fireworks``; ``gemini`` ->
    ``google_vertexai``; ``amazon.``, ``anthropic.``, ``meta.`` -> ``bedrock``;
    ``mistral``, ``mixtral`` -> ``mistralai``; ``deepseek`` -> ``deepseek``;
    ``grok`` -> ``xai``; ``sonar`` -> ``perplexity``; ``solar`` -> ``upstage``.
    """
    m = model.lower()
    table: list[tuple[tuple[str, ...], str]] = [
        (("gpt-", "o1", "o3", "chatgpt", "text-davinci"), "openai"),
        (("claude",), "anthropic"),
        (("command",), "cohere"),
        (("accounts/fireworks",), "fireworks"),
        (("gemini",), "google_vertexai"),
        (("amazon.", "anthropic.", "meta."), "bedrock"),
        (("mistral", "mixtral"), "mistralai"),
        (("deepseek",), "deepseek"),
        (("grok",), "xai"),
        (("sonar",), "perplexity"),
        (("solar",), "upstage"),
    ]
    for prefixes, provider in table:
        if m.startswith(prefixes):
            return provider
    return None


def _known_names() -> list[str]:
    return sorted([*PROVIDERS, LOCAL_PROVIDER])


def parse_model_name(name: str, parameter: str = "model") -> ModelSpec:
    """Split a model string into a :class:`ModelSpec`.

    ``"provider/model"`` or ``"provider:model"``: the provider is whichever of the two
    separators comes first, so ``"ollama:llama3.2:1b"`` is provider ``ollama``, model
    ``llama3.2:1b``, and ``"openrouter/meta-llama/llama-3.3-70b"`` is ``openrouter``.
    Provider names are normalised as ``init_chat_model`` does (``google-genai`` ->
    ``google_genai``; the alias ``mistral`` -> ``mistralai``). A bare id is given the
    provider :func:`infer_provider` finds (``"gpt-4o-mini"`` -> ``openai``).

    Args:
        name: the model string.
        parameter: the parameter's name in error messages (``"model"``, ``"agents[0]"``).

    Raises:
        ConfigurationError: not a non-empty string, no provider and none inferable,
            an unknown provider (the message lists the known ones), or an empty model id.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"{parameter} must be a non-empty model string, got {name!r}")
    prefix, model = split_model_name(name)
    provider = canonical_provider(prefix) if prefix is not None else None
    if provider is not None and provider != LOCAL_PROVIDER and provider not in PROVIDERS:
        inferred = infer_provider(name)  # "accounts/fireworks/...", "meta.llama3:0"
        if inferred is None:
            raise ConfigurationError(
                f"{parameter}: unknown provider {prefix!r} in model name {name!r}; known "
                f"providers: {_known_names()} (add one with register_provider())"
            )
        provider, model = inferred, name
    if provider is None:
        provider = infer_provider(name)
        if provider is None:
            raise ConfigurationError(
                f"{parameter}: model name {name!r} has no provider: write 'provider/model' or "
                f"'provider:model' with provider one of {_known_names()}"
            )
        model = name
    if not model:
        raise ConfigurationError(f"{parameter}: model name {name!r} has an empty model id")
    return ModelSpec(provider, model)


def validate_base_url(base_url: Any, parameter: str = "base_url") -> str:
    """Return ``base_url`` when it is an ``http://`` or ``https://`` URL with a host.

    Raises:
        ConfigurationError: anything else (``"htp://..."``, ``"localhost:8080"``, a bad
            port), naming ``parameter``.
    """
    example = "'http://127.0.0.1:8080/v1' or 'https://api.openai.com/v1'"
    if not isinstance(base_url, str):
        raise ConfigurationError(
            f"{parameter} must be an http:// or https:// URL such as {example}, got {base_url!r}"
        )
    try:
        parts = urlsplit(base_url.strip())
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ConfigurationError(
            f"{parameter} must be an http:// or https:// URL with a host (and a port in "
            f"1-65535 if given), such as {example}; got {base_url!r}"
        )
    return base_url


_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def loopback_async_http_client() -> Any:
    """An async HTTP client for the OpenAI SDK that keeps no idle connections.

    ``ChatOpenAI`` shares one cached async client per (base_url, timeout) across all
    its instances; a kept-alive connection opened in one event loop then breaks the
    first request made from another loop (``RuntimeError: Event loop is closed``),
    as with ``asyncio.run`` called twice, pytest-asyncio's per-test loops, notebooks
    and web servers. Over loopback a fresh connection per request costs well under a
    millisecond, so loopback servers get a client without keep-alive. Built from the
    SDK's own ``DefaultAsyncHttpxClient`` so it matches the SDK's httpx flavour.
    """
    import openai

    defaults = openai.DEFAULT_CONNECTION_LIMITS
    limits = type(defaults)(max_connections=defaults.max_connections, max_keepalive_connections=0)
    return openai.DefaultAsyncHttpxClient(limits=limits)


_GENERIC = Provider("openai-compatible", None, None)
"""The provider of a bare ``base_url`` (any OpenAI-compatible server, no key variable)."""


def _provider(provider: str | Provider | None) -> Provider:
    if provider is None:
        return _GENERIC
    if isinstance(provider, Provider):
        return provider
    key = canonical_provider(provider)
    if key not in PROVIDERS:
        raise ConfigurationError(
            f"unknown provider {provider!r}; known providers: {sorted(PROVIDERS)}"
        )
    return PROVIDERS[key]


def openai_compatible_chat_model(
    provider: str | Provider | None,
    model: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    **kwargs: Any,
) -> BaseChatModel:
    """Build the LangChain chat model for an OpenAI-compatible endpoint.

    The one place that builds ``BaseChatOpenAI`` clients: agents, router deployments,
    the ``moa`` command and local servers all come here, so they share:

    * ``ChatOpenAI`` for ``provider == "openai"`` and ``BaseChatOpenAI`` for every
      other provider, because ``ChatOpenAI`` renames ``max_tokens`` to
      ``max_completion_tokens``, which llama.cpp, vLLM and several hosted providers
      ignore (the reply would then run to the context limit); for ``llamacpp`` and
      ``local``, its subclass ``LlamaServerChatModel`` (structured output as a JSON
      schema, tool calls written as text recovered: see ``langchain_moa._llamacpp``);
    * SDK retries off (``max_retries=0``), so a router's failover is prompt;
    * ``stream_usage=True``, so streamed replies carry token usage (``ChatOpenAI``
      only turns it on by itself for OpenAI's own URL);
    * a loopback ``base_url`` (``127.0.0.1``, ``localhost``, ``::1``) gets
      :func:`loopback_async_http_client`, so one model works from several event loops
      (two ``asyncio.run`` calls, pytest-asyncio, notebooks);
    * ``base_url`` checked at construction (:func:`validate_base_url`).

    All of these are defaults: ``kwargs`` may set ``max_retries``, ``stream_usage`` or
    ``http_async_client`` themselves.

    Args:
        provider: a registered provider name or :class:`Provider`; ``None`` for any
            OpenAI-compatible server at ``base_url`` (then required).
        model: the provider's model id.
        base_url: overrides the provider's URL (a self-hosted server).
        api_key: overrides the key from the provider's environment variable; keyless
            providers, and any explicit ``base_url``, get a placeholder when no key is
            set, because the OpenAI SDK insists on one.
        **kwargs: passed to the chat model (``temperature``, ``max_tokens``,
            ``timeout`` in seconds, ...).

    Raises:
        MissingAPIKeyError: no ``api_key`` given and the provider's variable is unset.
        ConfigurationError: ``provider`` is not registered or has no OpenAI-compatible
            endpoint (the message names its LangChain package); ``base_url`` (or the
            provider's URL variable) is not an ``http(s)://`` URL; ``model`` is empty.
    """
    from langchain_openai import ChatOpenAI
    from langchain_openai.chat_models.base import BaseChatOpenAI

    spec = _provider(provider)
    if not isinstance(model, str) or not model.strip():
        raise ConfigurationError(f"model must be a non-empty string, got {model!r}")
    if base_url is not None:
        url = validate_base_url(base_url, "base_url")
    else:
        url = spec.resolved_base_url()
        if url is None and spec is _GENERIC:
            raise ConfigurationError("base_url is required when no provider is given")
        if url is None:
            raise ConfigurationError(
                f"provider {spec.name!r} has no OpenAI-compatible endpoint: pip install "
                f"{spec.pip_name}, or give base_url="
            )
        uses_env = bool(spec.base_url_env and os.environ.get(spec.base_url_env))
        validate_base_url(url, spec.base_url_env if uses_env else "base_url")
    key = api_key or spec.api_key(required=base_url is None) or "not-needed"
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("stream_usage", True)
    if urlsplit(url).hostname in _LOOPBACK_HOSTS and "http_async_client" not in kwargs:
        kwargs["http_async_client"] = loopback_async_http_client()
    cls = ChatOpenAI if spec.name == "openai" else BaseChatOpenAI
    if spec.name in _LLAMA_SERVER_PROVIDERS:
        from langchain_moa._llamacpp import LlamaServerChatModel

        cls = LlamaServerChatModel
    return cls(model=model, base_url=url.rstrip("/"), api_key=key, **kwargs)


def _field_names(cls: type) -> set[str]:
    fields = getattr(cls, "model_fields", {}) or {}
    names = set(fields)
    names.update(f.alias for f in fields.values() if getattr(f, "alias", None))
    return names


def _package_chat_model(
    spec: Provider, model: str, api_key: str | None, kwargs: dict[str, Any]
) -> BaseChatModel:
    module_name, class_name = str(spec.package).split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    names = _field_names(cls)
    if api_key is not None:
        kwargs.setdefault("api_key", api_key)
    elif spec.api_key_env is not None:
        spec.api_key(required=True)  # MissingAPIKeyError naming the variable
    for name, value in (("max_retries", 0), ("stream_usage", True)):
        if name in names:
            kwargs.setdefault(name, value)
    try:
        if spec.creator == "from_model_id":
            return cls.from_model_id(model_id=model, **kwargs)
        if spec.creator == "model_id":
            return cls(model_id=model, **kwargs)
        return cls(model=model, **kwargs)
    except Exception as exc:  # a package's own validation: surface as ours, naming it
        raise ConfigurationError(
            f"provider {spec.name!r}: {class_name}(model={model!r}) could not be built "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def build_chat_model(
    provider: str | Provider,
    model: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    **kwargs: Any,
) -> BaseChatModel:
    """The chat model for ``provider``/``model``, as ``init_chat_model`` would pick it.

    * ``base_url`` given (or the provider's URL variable set, e.g. ``OLLAMA_BASE_URL``):
      always the OpenAI-compatible client (:func:`openai_compatible_chat_model`) on it.
    * else the provider's LangChain package when it is installed (``ChatAnthropic``
      for ``anthropic`` with ``langchain-anthropic``), with ``max_retries=0`` and
      ``stream_usage=True`` when the class has those fields, and ``api_key`` passed on;
    * else its OpenAI-compatible endpoint (``openai`` always uses ``ChatOpenAI``).

    Raises:
        MissingAPIKeyError: no ``api_key`` and the provider's key variable is unset.
        ConfigurationError: unknown provider; a provider without an OpenAI-compatible
            endpoint whose package is missing (the message gives ``pip install ...``);
            the package class refused the arguments; a bad ``base_url``.
    """
    spec = _provider(provider)
    env_url = bool(spec.base_url_env and os.environ.get(spec.base_url_env))
    if (
        base_url is None
        and not env_url
        and spec.package is not None
        and spec.name != "openai"
        and spec.package_installed()
    ):
        return _package_chat_model(spec, model, api_key, dict(kwargs))
    return openai_compatible_chat_model(spec, model, base_url=base_url, api_key=api_key, **kwargs)


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
