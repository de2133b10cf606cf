"""Chat models (``BaseChatOpenAI``) for OpenAI-compatible servers (local or self-hosted)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from langchain_moa.errors import ConfigurationError

__all__ = ["LlamaServerChatModel", "chat_model_for_base_url", "loopback_async_http_client"]

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def loopback_async_http_client() -> Any:
    """An async HTTP client for the OpenAI SDK that keeps no idle connections.

    ``ChatOpenAI`` shares one cached async client per (base_url, timeout) across all
    its instances; a kept-alive connection opened in one event loop then breaks the
    first request made from another loop (``RuntimeError: Event loop is closed``),
    as with ``asyncio.run`` called twice or pytest-asyncio's per-test loops. Over
    loopback a fresh connection per request costs well under a millisecond, so local
    servers get a client without keep-alive. Built from the SDK's own
    ``DefaultAsyncHttpxClient`` so it matches the SDK's httpx flavour.
    """
    import openai

    defaults = openai.DEFAULT_CONNECTION_LIMITS
    limits = type(defaults)(max_connections=defaults.max_connections, max_keepalive_connections=0)
    return openai.DefaultAsyncHttpxClient(limits=limits)


def _llama_server_chat_model_class() -> type:
    from langchain_openai.chat_models.base import BaseChatOpenAI

    class LlamaServerChatModel(BaseChatOpenAI):
        """``BaseChatOpenAI`` whose ``with_structured_output`` defaults to
        ``method="json_schema"``: OpenAI's ``response_format`` with the JSON schema,
        which llama.cpp's server enforces with a grammar, so every reply parses.
        ``BaseChatOpenAI``'s own default, ``"function_calling"``, sends a
        ``tool_choice`` naming the function, which llama.cpp's server does not honour
        (it accepts ``"auto"``, ``"none"`` and ``"required"`` only), so the model
        could answer in prose. Everything else is ``BaseChatOpenAI`` unchanged."""

        def with_structured_output(  # type: ignore[override]
            self, schema: Any = None, *, method: str = "json_schema", **kwargs: Any
        ) -> Any:
            return super().with_structured_output(schema, method=method, **kwargs)

    LlamaServerChatModel.__module__ = __name__
    LlamaServerChatModel.__qualname__ = "LlamaServerChatModel"
    return LlamaServerChatModel


def __getattr__(name: str) -> Any:  # the class is built lazily: langchain_openai is heavy
    if name == "LlamaServerChatModel":
        cls = _llama_server_chat_model_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def chat_model_for_base_url(
    base_url: str, model: str, api_key: str | None = None, **kwargs: Any
) -> Any:
    """A chat model for any OpenAI-compatible server (``BaseChatOpenAI``).

    ``BaseChatOpenAI`` rather than ``ChatOpenAI``: ``ChatOpenAI`` sends ``max_tokens``
    as ``max_completion_tokens``, which llama-cpp-python's server (and vLLM and others)
    ignore, so replies would run on to the context limit. Same class as
    :func:`langchain_moa.providers.openai_compatible_chat_model` uses for every
    provider but OpenAI.

    Works with llama.cpp's server, llama-cpp-python's server, vLLM, Ollama
    (``http://127.0.0.1:11434/v1``), LM Studio, or :class:`LocalServer`.

    Args:
        base_url: the API root, usually ending in ``/v1``
            (``http://127.0.0.1:8080/v1``).
        model: the model id the server expects (servers holding one model usually
            accept any id).
        api_key: sent as a bearer token; default ``"not-needed"`` (local servers
            ignore it, the OpenAI client insists on one).
        **kwargs: any ``ChatOpenAI`` field (``temperature``, ``max_tokens``,
            ``timeout`` in seconds, ...). Defaults set here, overridable:
            ``max_retries=0`` (the router, not the SDK, retries and falls over) and
            ``stream_usage=True`` (ChatOpenAI asks for usage in streams only for
            OpenAI's own URL otherwise); for a loopback URL also
            ``http_async_client=loopback_async_http_client()``, so one model can be
            used from several event loops.

    Raises:
        ConfigurationError: ``base_url`` is not an ``http(s)://`` URL or ``model``
            is empty.
    """
    from langchain_moa.providers import openai_compatible_chat_model

    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"base_url must be an http:// or https:// URL such as "
            f"'http://127.0.0.1:8080/v1', got {base_url!r}"
        )
    if not isinstance(model, str) or not model.strip():
        raise ConfigurationError(f"model must be a non-empty string, got {model!r}")
    if urlsplit(base_url).hostname in _LOOPBACK_HOSTS and "http_async_client" not in kwargs:
        kwargs["http_async_client"] = loopback_async_http_client()
    # the package's one client factory: BaseChatOpenAI, max_retries=0, stream_usage=True
    base = openai_compatible_chat_model(
        "llamacpp", model, base_url=base_url.rstrip("/"), api_key=api_key or "not-needed", **kwargs
    )
    # the same fields (clients included, nothing rebuilt) on the llama.cpp subclass
    cls = globals().get("LlamaServerChatModel") or __getattr__("LlamaServerChatModel")
    return cls(**{name: getattr(base, name) for name in base.model_fields_set})
