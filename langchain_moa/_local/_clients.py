"""Chat models (``BaseChatOpenAI``) for OpenAI-compatible servers (local or self-hosted)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_moa.providers import openai_compatible_chat_model, validate_base_url

if TYPE_CHECKING:  # langchain_openai (and the openai SDK) load when a model is made
    from langchain_moa._llamacpp import LlamaServerChatModel

__all__ = ["chat_model_for_base_url"]


def chat_model_for_base_url(
    base_url: str, model: str, api_key: str | None = None, **kwargs: Any
) -> LlamaServerChatModel:
    """A chat model for any OpenAI-compatible server (``BaseChatOpenAI``).

    ``BaseChatOpenAI`` rather than ``ChatOpenAI``: ``ChatOpenAI`` sends ``max_tokens``
    as ``max_completion_tokens``, which llama.cpp's server (and vLLM and others)
    ignore, so replies would run on to the context limit. Built by the package's one
    client factory, :func:`langchain_moa.providers.openai_compatible_chat_model`.

    Works with llama.cpp's server, vLLM, Ollama (``http://127.0.0.1:11434/v1``),
    LM Studio, or :class:`LocalServer`.

    Args:
        base_url: the API root, usually ending in ``/v1``
            (``http://127.0.0.1:8080/v1``).
        model: the model id the server expects (servers holding one model usually
            accept any id).
        api_key: sent as a bearer token; default ``"not-needed"`` (local servers
            ignore it, the OpenAI client insists on one).
        **kwargs: any ``ChatOpenAI`` field (``temperature``, ``max_tokens``,
            ``timeout`` in seconds, ...). The factory's defaults, overridable:
            ``max_retries=0`` (the router, not the SDK, retries and falls over),
            ``stream_usage=True``, and for a loopback URL an async client without
            keep-alive, so one model can be used from several event loops.

    Raises:
        ConfigurationError: ``base_url`` is not an ``http(s)://`` URL with a host, or
            ``model`` is empty.
    """
    return openai_compatible_chat_model(  # type: ignore[return-value]
        "llamacpp",
        model,
        base_url=validate_base_url(base_url).rstrip("/"),
        api_key=api_key or "not-needed",
        **kwargs,
    )
