"""Fixtures for tests on the real bundled model (Qwen2.5-Coder-0.5B-Instruct GGUF).

* ``local_model_path`` (session): the assembled, verified GGUF in the user cache
  (``$LANGCHAIN_MOA_CACHE/models`` or ``~/.cache/langchain-moa/models``).
* ``local_server_factory`` (session): ``start(**kwargs) -> LocalServer`` starts a new,
  independent server on its own free port (kwargs go to :class:`LocalServer`, e.g.
  ``n_ctx=...``; ``model_path`` overrides the model). Every server it started is
  stopped at session end; stopping or killing one earlier is fine.
* ``local_server``: the shared server of the session; if a test stopped it, it is
  started again (on a new port) before the next test that asks for it.
* ``local_chat_model``: a fresh ``ChatOpenAI`` on ``local_server`` per test,
  ``temperature=0``, ``max_tokens=32``, ``timeout=120`` s.
* ``local_model_name``: the model id the servers report (``"qwen2.5-coder-0.5b"``).
* ``local_1_5b_model_path`` (session): the bundled Qwen2.5-Coder-1.5B-Instruct GGUF of
  the ``local-1-5b`` extra (CI installs it; skipped or failed like the others).

Servers are llama.cpp's ``llama-server`` (:class:`LocalServer`), built once from the
``local`` extra's llama.cpp sources into the user cache by ``local_model_path`` if no
build is cached yet (``python -m langchain_moa.local build`` does it ahead of time).

Tests using any of them get the ``local_model`` marker automatically. When the
``local`` extra (llama.cpp sources, chunk packages) or a build tool is missing they
are skipped with what to install; set ``LANGCHAIN_MOA_REQUIRE_LOCAL_MODEL=1`` (CI) to
make that a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from langchain_moa._local._server import require_engine
from langchain_moa.errors import LocalModelError
from langchain_moa.local import (
    DEFAULT_LOCAL_MODEL,
    LocalServer,
    chat_model_for_base_url,
    ensure_llama_server,
    ensure_model,
)

LOCAL_FIXTURES = {
    "local_model_path",
    "local_server",
    "local_server_factory",
    "local_chat_model",
    "local_model_name",
    "local_1_5b_model_path",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if LOCAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.local_model)


def _unavailable(reason: str) -> None:
    if os.environ.get("LANGCHAIN_MOA_REQUIRE_LOCAL_MODEL"):
        pytest.fail(f"local model required but unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def local_model_name() -> str:
    return DEFAULT_LOCAL_MODEL


@pytest.fixture(scope="session")
def local_model_path(local_model_name: str) -> Path:
    try:
        require_engine()
        path = ensure_model(local_model_name, progress=False)
        ensure_llama_server()  # a no-op once built; else minutes, once per machine
    except LocalModelError as exc:
        if "not installed" in str(exc) or "this machine lacks" in str(exc):
            _unavailable(str(exc))
        raise
    return path


@pytest.fixture(scope="session")
def local_1_5b_model_path(local_model_path: Path) -> Path:
    """The bundled 1.5B GGUF (the ``local-1-5b`` extra); skipped without it, a failure
    under ``LANGCHAIN_MOA_REQUIRE_LOCAL_MODEL=1`` (CI installs the extra)."""
    try:
        return ensure_model("qwen2.5-coder-1.5b", progress=False)
    except LocalModelError as exc:
        if "not installed" in str(exc):
            _unavailable(str(exc))
        raise


@pytest.fixture(scope="session")
def local_server_factory(
    local_model_path: Path, local_model_name: str
) -> Iterator[Callable[..., LocalServer]]:
    started: list[LocalServer] = []

    def start(**kwargs: Any) -> LocalServer:
        kwargs.setdefault("model_alias", local_model_name)
        model_path = kwargs.pop("model_path", local_model_path)
        server = LocalServer(model_path, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def _session_local_server(local_server_factory: Callable[..., LocalServer]) -> LocalServer:
    return local_server_factory()


@pytest.fixture
def local_server(_session_local_server: LocalServer) -> LocalServer:
    return _session_local_server.start()  # no-op while running; restarts if a test stopped it


@pytest.fixture
def local_chat_model(local_server: LocalServer) -> Any:
    return chat_model_for_base_url(
        local_server.base_url,
        local_server.model_alias,
        temperature=0.0,
        max_tokens=32,
        timeout=120.0,
    )
