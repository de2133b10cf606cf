"""Helpers for the router unit tests: real ``openai`` SDK exceptions without sockets.

The exceptions are the SDK's own types built on real ``httpx2``/``httpx`` response
objects carrying real headers, exactly what ``ChatOpenAI`` raises when a server
answers that way, so the router's classification is exercised as in production.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

try:  # openai >= 3 is built on httpx2
    import httpx2 as _http
except ImportError:  # pragma: no cover
    import httpx as _http  # type: ignore[no-redef]

from tests.unit_tests.moa_fakes import ScriptedChat

URL = "http://127.0.0.1:9/v1/chat/completions"

_CLASSES: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def http_error(
    status: int,
    headers: dict[str, str] | None = None,
    message: str | None = None,
    code: str | None = None,
) -> openai.APIStatusError:
    """The exception the openai SDK raises for an HTTP ``status`` answer."""
    body = {"error": {"message": message or f"HTTP {status}", "type": "test", "code": code}}
    request = _http.Request("POST", URL)
    response = _http.Response(status, headers=headers or {}, json=body, request=request)
    cls = _CLASSES.get(
        status, openai.InternalServerError if status >= 500 else openai.APIStatusError
    )
    return cls(message or f"Error code: {status}", response=response, body=body["error"])


def rate_limited(**headers: str) -> openai.RateLimitError:
    return http_error(429, {k.replace("_", "-"): v for k, v in headers.items()})  # type: ignore[return-value]


def timeout_error() -> openai.APITimeoutError:
    return openai.APITimeoutError(request=_http.Request("POST", URL))


def connection_error() -> openai.APIConnectionError:
    return openai.APIConnectionError(request=_http.Request("POST", URL))


def context_error() -> openai.BadRequestError:
    return http_error(  # type: ignore[return-value]
        400,
        message="This model's maximum context length is 4096 tokens. "
        "However, you requested 9000 tokens.",
        code="context_length_exceeded",
    )


class TimedChat(ScriptedChat):
    """``ScriptedChat`` that also records the wall-clock time of every call."""

    times: list[float] = []

    def model_post_init(self, __context: Any) -> None:
        self.times = []

    def _next(self, messages, kwargs):  # type: ignore[no-untyped-def]
        self.times.append(time.time())
        return super()._next(messages, kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_client() -> Iterator[object]:
    redis = pytest.importorskip("redis")
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server binary not installed (apt-get install redis-server)")
    port = _free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail("redis-server did not start")
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
