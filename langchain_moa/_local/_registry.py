"""Process-wide registry: one :class:`LocalServer` per model, started on first use."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

from langchain_moa._local._assembly import ensure_model
from langchain_moa._local._catalog import DEFAULT_LOCAL_MODEL, resolve_bundled_model
from langchain_moa._local._clients import chat_model_for_base_url
from langchain_moa._local._server import DEFAULT_SLOTS, LocalServer, require_engine
from langchain_moa.errors import ConfigurationError

__all__ = [
    "LOCAL_BASE_URL_ENV",
    "LOCAL_API_KEY_ENV",
    "get_local_server",
    "get_local_chat_model",
    "aget_local_chat_model",
    "chat_model_for_gguf",
    "shutdown_local_servers",
]

LOCAL_BASE_URL_ENV = "LANGCHAIN_MOA_LOCAL_BASE_URL"
"""If set (e.g. ``http://127.0.0.1:8080/v1``), local models are served by that
already-running OpenAI-compatible server instead of a spawned one."""

LOCAL_API_KEY_ENV = "LANGCHAIN_MOA_LOCAL_API_KEY"
"""Optional bearer token for the server named by :data:`LOCAL_BASE_URL_ENV`."""

_registry_lock = threading.Lock()
_servers: dict[tuple, LocalServer] = {}
_key_locks: dict[tuple, threading.Lock] = {}


def _model_path(name: str) -> tuple[Path, str]:
    """(GGUF path, model alias) for a bundled name or a ``.gguf`` path."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"local model name must be a non-empty string, got {name!r}")
    if name.lower().endswith(".gguf"):
        path = Path(name).expanduser().resolve()
        return path, path.stem
    model = resolve_bundled_model(name)
    require_engine()  # before spending seconds on assembly
    return ensure_model(model.name), model.name


def get_local_server(
    name: str = DEFAULT_LOCAL_MODEL,
    *,
    n_ctx: int = 4096,
    slots: int = DEFAULT_SLOTS,
    n_threads: int | None = None,
    chat_template: str | None = None,
    startup_timeout: float = 120.0,
) -> LocalServer:
    """The running shared server for ``name``, started (and the model assembled and the
    engine built) if needed.

    One server per (model, n_ctx, slots, n_threads, chat_template) per process; a
    server that died is restarted. Thread-safe: concurrent callers wait for one start.

    Args:
        name: ``"qwen2.5-coder-0.5b"``, ``"qwen2.5-coder-1.5b"`` or a ``.gguf`` path.
        n_ctx, slots, n_threads, chat_template, startup_timeout: see :class:`LocalServer`.

    Raises:
        ConfigurationError: unknown name or bad parameter.
        LocalModelError: runtime or model not installed, or the server failed to start.
    """
    path, alias = _model_path(name)
    return _shared_server(
        path,
        alias,
        n_ctx=n_ctx,
        slots=slots,
        n_threads=n_threads,
        chat_template=chat_template,
        startup_timeout=startup_timeout,
    )


def _shared_server(
    path: Path,
    alias: str,
    *,
    n_ctx: int = 4096,
    slots: int = DEFAULT_SLOTS,
    n_threads: int | None = None,
    chat_template: str | None = None,
    startup_timeout: float = 120.0,
) -> LocalServer:
    key = (str(path), n_ctx, slots, n_threads, chat_template)
    with _registry_lock:
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        server = _servers.get(key)
        if server is None or not server.is_running():
            server = LocalServer(
                path,
                n_ctx=n_ctx,
                slots=slots,
                n_threads=n_threads,
                chat_template=chat_template,
                model_alias=alias,
                startup_timeout=startup_timeout,
            ).start()
            with _registry_lock:
                _servers[key] = server
        return server


def get_local_chat_model(
    name: str = DEFAULT_LOCAL_MODEL,
    *,
    n_ctx: int = 4096,
    slots: int = DEFAULT_SLOTS,
    n_threads: int | None = None,
    chat_template: str | None = None,
    startup_timeout: float = 120.0,
    **kwargs: Any,
) -> Any:
    """A chat model on the bundled local model ``name``; no API key needed.

    The first call assembles the model into the cache (once per machine, see
    :func:`ensure_model`), builds llama.cpp's ``llama-server`` if no build is cached
    (once per machine, minutes; see :func:`ensure_llama_server`) and starts the
    server (a few seconds); later calls reuse the server. If :data:`LOCAL_BASE_URL_ENV`
    is set, nothing is spawned and the client points at that server.

    Args:
        name: ``"qwen2.5-coder-0.5b"`` (default), ``"qwen2.5-coder-1.5b"`` (needs the
            ``local-1-5b`` extra) or the path of any ``.gguf`` file.
        n_ctx, slots, n_threads, chat_template, startup_timeout: server settings,
            see :class:`LocalServer`.
        **kwargs: chat model fields such as ``temperature``, ``max_tokens``,
            ``timeout`` (seconds).

    Returns:
        a ``langchain_openai`` ``BaseChatOpenAI`` (ChatOpenAI's base class, which
        sends ``max_tokens`` as such) with ``max_retries=0`` and
        ``stream_usage=True``, so ``usage_metadata`` is filled for invoke and stream.

    Raises:
        ConfigurationError: unknown name or bad parameter.
        LocalModelError: not installed (the message says
            ``pip install "langchain-moa[local]"``), a build tool missing or the engine
            build failed (the message names the tool or the build log), corrupt beyond
            repair, or the server failed to start (the message holds its output).
    """
    base_url = os.environ.get(LOCAL_BASE_URL_ENV)
    if base_url:
        if name.lower().endswith(".gguf"):
            model_id = Path(name).stem
        else:
            model_id = resolve_bundled_model(name).name
        return chat_model_for_base_url(
            base_url, model_id, api_key=os.environ.get(LOCAL_API_KEY_ENV), **kwargs
        )
    server = get_local_server(
        name,
        n_ctx=n_ctx,
        slots=slots,
        n_threads=n_threads,
        chat_template=chat_template,
        startup_timeout=startup_timeout,
    )
    return server.chat_model(**kwargs)


async def aget_local_chat_model(name: str = DEFAULT_LOCAL_MODEL, **kwargs: Any) -> Any:
    """:func:`get_local_chat_model` run in a worker thread, so the event loop keeps running
    while the model is assembled and the server starts."""
    return await asyncio.to_thread(get_local_chat_model, name, **kwargs)


def chat_model_for_gguf(path: Path | str, **kwargs: Any) -> Any:
    """A chat model on a shared server for any GGUF file (started on first use).

    Args:
        path: a GGUF file (any name; the model id is the file's stem).
        **kwargs: server settings ``n_ctx``, ``slots``, ``n_threads``,
            ``chat_template``, ``startup_timeout`` (see :class:`LocalServer`);
            everything else goes to the chat model.

    Raises:
        LocalModelError: the runtime is not installed, the file does not exist, or
            the server failed to start.
    """
    path = Path(path).expanduser().resolve()
    server_keys = ("n_ctx", "slots", "n_threads", "chat_template", "startup_timeout")
    server_kw = {k: kwargs.pop(k) for k in server_keys if k in kwargs}
    return _shared_server(path, path.stem, **server_kw).chat_model(**kwargs)


def shutdown_local_servers() -> None:
    """Stop every server started by this registry (also done at interpreter exit)."""
    with _registry_lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        server.stop()
