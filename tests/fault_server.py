"""A fault-injecting OpenAI-compatible HTTP server for the router's tests.

Real HTTP on ``127.0.0.1`` (a free port), served by the standard library's
:class:`http.server.ThreadingHTTPServer` in a background thread. The stdlib server
was chosen over uvicorn/starlette because the faults we need are *transport*
faults — closing a socket without a response, cutting a chunked SSE body in the
middle — and those are direct with a raw request handler.

Endpoints (the subset of the OpenAI API that ``ChatOpenAI`` uses):

* ``POST /v1/chat/completions`` — a JSON ``chat.completion``, or with ``"stream": true``
  an SSE stream of ``chat.completion.chunk`` events (``Transfer-Encoding: chunked``,
  ended by ``data: [DONE]``); with ``stream_options.include_usage`` a last chunk with
  empty ``choices`` carries ``usage`` (as OpenAI does).
* ``GET /v1/models`` — the model list.

Scripting
---------
Each request to ``/v1/chat/completions`` consumes the next :class:`Fault` of the
server's script (a FIFO queue); when the script is empty the server's default
behaviour answers (``Fault.ok()`` unless changed with :meth:`FaultServer.set_default`)::

    server.script(
        Fault.rate_limited(retry_after=2),       # 429, Retry-After: 2
        Fault.status(500),                       # 500 with OpenAI's error body
        Fault.ok("hello"),                       # 200
    )

Faults: :meth:`Fault.ok`, :meth:`Fault.status` (and the shortcuts
:meth:`~Fault.rate_limited`, :meth:`~Fault.server_error`, :meth:`~Fault.unavailable`,
:meth:`~Fault.unauthorized`, :meth:`~Fault.forbidden`, :meth:`~Fault.model_not_found`,
:meth:`~Fault.context_length_exceeded`, :meth:`~Fault.bad_request`),
:meth:`Fault.slow`, :meth:`Fault.drop`, :meth:`Fault.malformed`,
:meth:`Fault.stream_cut_before_first_token`, :meth:`Fault.stream_cut_after_first_token`,
:meth:`Fault.not_sse`, :meth:`Fault.stream_empty`, :meth:`Fault.stream_without_finish`,
:meth:`Fault.echo_auth`.
Error bodies have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

The default reply text identifies the request — ``"[<server>#<n>] <last user message>"``
— so a test can check that every prompt got its own answer (no request lost or swapped).

Server-side limits
------------------
:meth:`FaultServer.set_limits` makes the server enforce its own RPM / TPM like a
provider: a request that would exceed a limit gets ``429`` with ``Retry-After``
(whole seconds, rounded up) and ``retry-after-ms`` (exact), and is *not* counted.
Limits are given per minute but enforced over a sliding window of ``window_s``
seconds with the budget scaled to it (``rpm * window_s / 60``), i.e. *quantized*
as OpenAI documents ("60,000 requests/minute may be enforced as 1,000
requests/second"). A short window keeps tests short and is stricter than a
one-minute window: traffic that passes every ``window_s`` window passes every
minute. Tokens are counted at arrival either as ``prompt + max_tokens``
(``token_count="reserve"``, OpenAI's rule: the rate limiter counts the request's
``max_tokens``) or as ``prompt + completion`` actually sent
(``token_count="usage"``). Prompt tokens are estimated by :func:`estimate_prompt_tokens`
(4 characters per token, plus 3 per message and 3 for the reply), unless a
fault gives ``prompt_tokens`` explicitly. A server can also have a
``context_window``: a request with ``prompt + max_tokens`` above it gets OpenAI's
``400 context_length_exceeded``.

Request log
-----------
Every request is recorded as a :class:`RequestRecord` (arrival and end times on
``time.monotonic()`` and wall clock, a global sequence number shared by all servers
in the process so order *across* servers is checkable, headers, parsed body,
model, what was sent back). Read it with :attr:`FaultServer.requests`.

Pytest fixtures: make them module attributes of a test module (pytest finds
fixtures there; a plain ``from ... import fault_server`` works too but trips
ruff's F811 on every test that takes the fixture)::

    from tests import fault_server as _fs

    fault_server = _fs.fault_server
    fault_server_factory = _fs.fault_server_factory

``fault_server`` is one started server; ``fault_server_factory(name)`` starts more
(all stopped at the end of the test).
"""

from __future__ import annotations

import email.utils
import itertools
import json
import math
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

__all__ = [
    "Fault",
    "FaultServer",
    "RequestRecord",
    "estimate_prompt_tokens",
    "fault_server",
    "fault_server_factory",
]

_GLOBAL_SEQ = itertools.count(1)
_SEQ_LOCK = threading.Lock()


def _next_seq() -> int:
    with _SEQ_LOCK:
        return next(_GLOBAL_SEQ)


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Estimate the prompt tokens of chat ``messages`` (OpenAI's rough rules).

    ``ceil(characters / 4)`` of every message's text, plus 3 tokens per message and
    3 for priming the reply (the OpenAI cookbook's per-message overhead).
    """
    total = 3
    for message in messages or []:
        total += 3 + math.ceil(len(_content_text(message.get("content"))) / 4)
    return total


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal parts
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


# --------------------------------------------------------------------------- faults

_ERROR_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    # status: (message, type, code)
    400: ("Invalid request.", "invalid_request_error", None),
    401: (
        "Incorrect API key provided: sk-fault***. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: ("You are not allowed to access this resource.", "permission_error", None),
    404: ("The requested resource was not found.", "invalid_request_error", None),
    429: ("Rate limit reached. Please try again later.", "requests", "rate_limit_exceeded"),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: (
        "The engine is currently overloaded, please try again later.",
        "server_error",
        None,
    ),
}


def error_body(
    status: int,
    message: str | None = None,
    type_: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``."""
    d_message, d_type, d_code = _ERROR_DEFAULTS.get(status, (f"HTTP {status}", "api_error", None))
    return {
        "error": {
            "message": message if message is not None else d_message,
            "type": type_ if type_ is not None else d_type,
            "param": param,
            "code": code if code is not None else d_code,
        }
    }


@dataclass(frozen=True)
class Fault:
    """One scripted behaviour of the server; build with the class methods.

    ``kind`` is one of ``"ok"``, ``"status"``, ``"slow"``, ``"drop"``, ``"malformed"``,
    ``"cut_before_first_token"``, ``"cut_after_first_token"``.
    """

    kind: str
    text: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status_code: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_after_date_s: float | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    then: Fault | None = None
    role_chunk: bool = True

    # -- successes ---------------------------------------------------------------
    @classmethod
    def ok(
        cls,
        text: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        delay_s: float = 0.0,
        chunk_delay_s: float = 0.0,
    ) -> Fault:
        """A 200 answer.

        Args:
            text: the reply; default ``"[<server>#<n>] <last user message>"``. Truncated
                to ``max_tokens`` words (``finish_reason="length"``) when longer.
            prompt_tokens: reported (and rate-limited) prompt tokens; default
                :func:`estimate_prompt_tokens`.
            completion_tokens: reported completion tokens; default one per word sent.
            delay_s: seconds to wait before answering (latency).
            chunk_delay_s: seconds between SSE chunks when streaming.
        """
        return cls(
            "ok",
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            delay_s=delay_s,
            chunk_delay_s=chunk_delay_s,
        )

    # -- HTTP errors -------------------------------------------------------------
    @classmethod
    def status(
        cls,
        code: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
        message: str | None = None,
        error_code: str | None = None,
    ) -> Fault:
        """Answer HTTP ``code`` with ``body`` (default: OpenAI's error body for the code)."""
        if body is None:
            body = error_body(code, message=message, code=error_code)
        return cls("status", status_code=code, body=body, headers=dict(headers or {}))

    @classmethod
    def rate_limited(
        cls,
        retry_after: float | None = None,
        retry_after_ms: float | None = None,
        retry_after_date_s: float | None = None,
    ) -> Fault:
        """429. ``retry_after``: ``Retry-After`` in seconds (sent as given, e.g. ``2``);
        ``retry_after_ms``: the ``retry-after-ms`` header; ``retry_after_date_s``:
        ``Retry-After`` as an HTTP date that many seconds after the answer is sent
        (rounded *up* to the next whole second, since HTTP dates have 1 s resolution).
        With none of them the 429 has no hint at all."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            value = int(retry_after) if float(retry_after).is_integer() else retry_after
            headers["Retry-After"] = str(value)
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        fault = cls.status(429, headers=headers)
        return replace(fault, retry_after_date_s=retry_after_date_s)

    @classmethod
    def server_error(cls) -> Fault:
        """500 with OpenAI's ``server_error`` body."""
        return cls.status(500)

    @classmethod
    def unavailable(cls, retry_after: float | None = None) -> Fault:
        """503 (overloaded), optionally with ``Retry-After``."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return cls.status(503, headers=headers)

    @classmethod
    def unauthorized(cls) -> Fault:
        """401 ``invalid_api_key`` (a bad key)."""
        return cls.status(401)

    @classmethod
    def forbidden(cls) -> Fault:
        """403 (key not allowed)."""
        return cls.status(403)

    @classmethod
    def model_not_found(cls, model: str = "fake") -> Fault:
        """404 ``model_not_found``, OpenAI's wording."""
        return cls.status(
            404,
            message=f"The model `{model}` does not exist or you do not have access to it.",
            error_code="model_not_found",
        )

    @classmethod
    def context_length_exceeded(cls, max_context: int = 4096, requested: int = 5000) -> Fault:
        """400 ``context_length_exceeded`` with OpenAI's body."""
        body = error_body(
            400,
            message=(
                f"This model's maximum context length is {max_context} tokens. However, "
                f"your messages resulted in {requested} tokens. Please reduce the length "
                "of the messages."
            ),
            type_="invalid_request_error",
            code="context_length_exceeded",
            param="messages",
        )
        return cls.status(400, body=body)

    @classmethod
    def bad_request(
        cls,
        message: str = "Invalid value for 'temperature': must be <= 2.",
        param: str | None = "temperature",
    ) -> Fault:
        """A plain 400 (``invalid_value``): retrying elsewhere does not help."""
        body = error_body(400, message=message, code="invalid_value", param=param)
        return cls.status(400, body=body)

    # -- transport faults --------------------------------------------------------
    @classmethod
    def slow(cls, seconds: float, then: Fault | None = None) -> Fault:
        """Wait ``seconds`` (past the client's timeout) and then behave as ``then``
        (default ``Fault.ok()``). The wait ends early when the server stops."""
        return cls("slow", delay_s=seconds, then=then)

    @classmethod
    def drop(cls) -> Fault:
        """Read the request, then close the connection without any response."""
        return cls("drop")

    @classmethod
    def malformed(cls, body: str = '{"id": "chatcmpl-broken", "choices": [{"mess') -> Fault:
        """200 ``application/json`` whose body is not valid JSON."""
        return cls("malformed", body=body)

    @classmethod
    def stream_cut_before_first_token(cls, role_chunk: bool = True) -> Fault:
        """Streaming: send ``200`` and the SSE headers, optionally the opening chunk
        with ``{"role": "assistant", "content": ""}`` (as OpenAI sends first), then close
        the connection mid-body (no chunked terminator), before any content token.
        A non-streaming request gets 200 headers with a ``Content-Length`` and no body."""
        return cls("cut_before_first_token", role_chunk=role_chunk)

    @classmethod
    def not_sse(cls) -> Fault:
        """Answer a streaming request with a plain ``application/json`` chat completion
        (not server-sent events), as a misconfigured proxy does. Non-streaming: ``ok``."""
        return cls("not_sse")

    @classmethod
    def stream_empty(cls) -> Fault:
        """Streaming: SSE headers, then ``data: [DONE]`` and a clean end, no chunk at all."""
        return cls("stream_empty")

    @classmethod
    def stream_without_finish(cls, text: str = "Partial answer") -> Fault:
        """Streaming: the opening chunk and ``text`` as content chunks, then ``[DONE]`` and
        a clean end of the body, but no chunk with a ``finish_reason`` (cut short upstream).
        Non-streaming: ``ok`` (the default reply)."""
        return cls("stream_without_finish", text=text)

    @classmethod
    def echo_auth(cls, code: int = 401) -> Fault:
        """HTTP ``code`` whose error message echoes the request's ``Authorization`` header
        (as some gateways do); for key-redaction tests."""
        return cls("echo_auth", status_code=code)

    @classmethod
    def stream_cut_after_first_token(cls, text: str = "Partial") -> Fault:
        """Streaming: send the opening chunk and one content chunk ``text``, then close
        the connection mid-body. A non-streaming request gets half of its JSON body."""
        return cls("cut_after_first_token", text=text)


# --------------------------------------------------------------------------- records


@dataclass
class RequestRecord:
    """One request the server received and what it did about it.

    Times: ``t_start`` / ``t_end`` are ``time.monotonic()`` seconds when the request was
    read / the answer finished (or the connection was closed); ``wall_start`` /
    ``wall_end`` the same on ``time.time()`` (for HTTP-date ``Retry-After`` checks).
    ``status`` is the HTTP status sent, ``None`` when no status line was sent (drop).
    ``outcome`` is the fault kind or ``"limited"`` (429 from the server's own limits),
    ``"context_window"`` (400 from the server's context window), ``"not_found"``.
    ``client_gone`` is true when writing the answer failed (client timed out / left).
    """

    seq: int
    server: str
    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    t_start: float
    wall_start: float
    t_end: float | None = None
    wall_end: float | None = None
    status: int | None = None
    outcome: str = ""
    response_headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    tokens_counted: int = 0
    client_gone: bool = False

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream")) if isinstance(self.body, dict) else False

    @property
    def max_tokens(self) -> int | None:
        if not isinstance(self.body, dict):
            return None
        value = self.body.get("max_completion_tokens", self.body.get("max_tokens"))
        return int(value) if value is not None else None

    @property
    def last_user_text(self) -> str:
        if not isinstance(self.body, dict):
            return ""
        for message in reversed(self.body.get("messages") or []):
            if message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""


class _Limiter:
    """Sliding-window RPM/TPM enforcement (see the module docstring)."""

    def __init__(
        self, rpm: float | None, tpm: float | None, window_s: float, token_count: str
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0 seconds, got {window_s}")
        if token_count not in ("reserve", "usage"):
            raise ValueError(f"token_count must be 'reserve' or 'usage', got {token_count!r}")
        self.rpm, self.tpm, self.window_s, self.token_count = rpm, tpm, window_s, token_count
        self.request_budget = None if rpm is None else rpm * window_s / 60.0
        self.token_budget = None if tpm is None else tpm * window_s / 60.0
        self._admitted: deque[tuple[float, int]] = deque()

    def admit(self, now: float, tokens: int) -> float | None:
        """Admit and count the request, or return the seconds until it would fit."""
        while self._admitted and self._admitted[0][0] <= now - self.window_s:
            self._admitted.popleft()
        waits = [0.0]
        if self.request_budget is not None and len(self._admitted) + 1 > self.request_budget:
            # the oldest entries must leave until one slot is free
            excess = int(len(self._admitted) + 1 - math.floor(self.request_budget))
            waits.append(self._admitted[excess - 1][0] + self.window_s - now)
        if self.token_budget is not None:
            used = sum(t for _, t in self._admitted)
            if tokens > self.token_budget:
                return math.inf
            if used + tokens > self.token_budget:
                for ts, t in self._admitted:
                    used -= t
                    if used + tokens <= self.token_budget:
                        waits.append(ts + self.window_s - now)
                        break
        wait = max(waits)
        if wait > 0:
            return wait
        self._admitted.append((now, tokens))
        return None


# --------------------------------------------------------------------------- server


class FaultServer:
    """An OpenAI-compatible server on ``127.0.0.1`` that answers from a script.

    Args:
        name: shown in default replies and records (e.g. the deployment name).
        models: ids listed by ``GET /v1/models``.
        context_window: if set, requests with ``prompt + max_tokens`` above it get
            ``400 context_length_exceeded`` (before the script is consulted).

    Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        name: str = "fault",
        models: tuple[str, ...] = ("fake",),
        context_window: int | None = None,
    ) -> None:
        self.name = name
        self.models = tuple(models)
        self.context_window = context_window
        self._lock = threading.Lock()
        self._script: deque[Fault] = deque()
        self._default = Fault.ok()
        self._records: list[RequestRecord] = []
        self._limiter: _Limiter | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self, port: int = 0) -> FaultServer:
        """Bind ``127.0.0.1:port`` (0 = a free port) and serve in a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError(f"fault server {self.name!r} is already running")
        self._stopping.clear()
        httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        httpd.fault_server = self
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fault-server-{self.name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: wake slow handlers, close every open connection, join the thread.

        Afterwards connections to the port are refused. Safe to call twice."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1`` — what a client's ``base_url`` wants."""
        if self.port is None:
            raise RuntimeError(f"fault server {self.name!r} was never started")
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting ---------------------------------------------------------------
    def script(self, *faults: Fault) -> FaultServer:
        """Append ``faults``; each chat request consumes one, in order."""
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"script() takes Fault objects, got {fault!r}")
        with self._lock:
            self._script.extend(faults)
        return self

    def set_default(self, fault: Fault) -> FaultServer:
        """Behaviour once the script is used up (initially ``Fault.ok()``)."""
        with self._lock:
            self._default = fault
        return self

    def clear(self) -> FaultServer:
        """Forget the script, the log and the limiter's window; default back to ``ok``."""
        with self._lock:
            self._script.clear()
            self._records.clear()
            self._default = Fault.ok()
            if self._limiter is not None:
                self._limiter._admitted.clear()
        return self

    @property
    def pending(self) -> int:
        """Scripted faults not consumed yet."""
        with self._lock:
            return len(self._script)

    def set_limits(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        window_s: float = 60.0,
        token_count: str = "reserve",
    ) -> FaultServer:
        """Enforce RPM / TPM over a sliding ``window_s`` window (see the module docs).

        ``rpm=None`` and ``tpm=None`` remove the limits. Raises ``ValueError`` for
        ``window_s <= 0`` or an unknown ``token_count``."""
        limiter = None if rpm is None and tpm is None else _Limiter(rpm, tpm, window_s, token_count)
        with self._lock:
            self._limiter = limiter
        return self

    # -- the log -----------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        """Every request received so far (all paths), in arrival order (a copy)."""
        with self._lock:
            return list(self._records)

    @property
    def chat_requests(self) -> list[RequestRecord]:
        """Only ``POST /v1/chat/completions`` requests."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def statuses(self) -> list[int | None]:
        """Status sent for every chat request, in order (``None`` = dropped)."""
        return [r.status for r in self.chat_requests]

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RequestRecord]:
        """Block until ``n`` chat requests have *finished*; raise ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        while True:
            done = [r for r in self.chat_requests if r.t_end is not None]
            if len(done) >= n:
                return done
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"fault server {self.name!r}: {len(done)} of {n} requests finished "
                    f"within {timeout} s"
                )
            time.sleep(0.01)

    # -- internals used by the handler -----------------------------------------------
    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            record.index = len(self._records) + 1
            self._records.append(record)

    def _decide(self, record: RequestRecord) -> tuple[Fault, str | None]:
        """Pick the behaviour for a chat request: context window, limits, script, default.

        Returns the fault and, for an admission failure, its reason."""
        body = record.body if isinstance(record.body, dict) else {}
        prompt = estimate_prompt_tokens(body.get("messages") or [])
        max_tokens = record.max_tokens
        with self._lock:
            if self.context_window is not None and prompt + (max_tokens or 0) > self.context_window:
                return Fault.context_length_exceeded(
                    self.context_window, prompt + (max_tokens or 0)
                ), "context_window"
            fault = self._script[0] if self._script else self._default
            if self._limiter is not None:
                inner = fault.then if fault.kind == "slow" and fault.then else fault
                p = inner.prompt_tokens if inner.prompt_tokens is not None else prompt
                if self._limiter.token_count == "reserve":
                    tokens = p + (max_tokens if max_tokens is not None else 0)
                else:
                    text = _reply_text(inner, self, record)
                    words = _truncate(text, max_tokens)[0]
                    tokens = p + (
                        inner.completion_tokens
                        if inner.completion_tokens is not None
                        else len(words)
                    )
                wait = self._limiter.admit(time.monotonic(), tokens)
                if wait is not None:
                    return _limited_fault(wait, self._limiter), "limited"
                record.tokens_counted = tokens
            if self._script:
                self._script.popleft()
            return fault, None


def _limited_fault(wait: float, limiter: _Limiter) -> Fault:
    if math.isinf(wait):
        return Fault.status(
            429,
            message=(
                f"Request too large: it needs more tokens than the whole budget of "
                f"{limiter.token_budget:g} per {limiter.window_s:g} s."
            ),
            error_code="rate_limit_exceeded",
        )
    return Fault.status(
        429,
        headers={
            "Retry-After": str(max(1, math.ceil(wait))),
            "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
        },
        message=(
            f"Rate limit reached (rpm={limiter.rpm}, tpm={limiter.tpm}, enforced per "
            f"{limiter.window_s:g} s). Please try again in {wait:.3f}s."
        ),
        error_code="rate_limit_exceeded",
    )


def _reply_text(fault: Fault, server: FaultServer, record: RequestRecord) -> str:
    if fault.text is not None:
        return fault.text
    return f"[{server.name}#{record.index}] {record.last_user_text}".rstrip()


def _truncate(text: str, max_tokens: int | None) -> tuple[list[str], str]:
    """Split into word tokens (one per word, whitespace kept) and cut to ``max_tokens``."""
    pieces = list(_word_pieces(text))
    if max_tokens is not None and len(pieces) > max_tokens:
        return pieces[:max_tokens], "length"
    return pieces, "stop"


def _word_pieces(text: str) -> Iterator[str]:
    words = text.split(" ")
    for i, word in enumerate(words):
        yield word if i == 0 else " " + word


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True
    fault_server: FaultServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client resetting an idle keep-alive connection (or leaving mid-request)
        # is normal here; anything else is a bug in the server and is printed
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _ClientGone(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    # -- plumbing ----------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        fs = self.server.fault_server
        with fs._lock:
            fs._connections.add(self.connection)

    def finish(self) -> None:
        fs = self.server.fault_server
        with fs._lock:
            fs._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # keep test output clean; the request log is the record

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
        except OSError as exc:  # client timed out / went away
            raise _ClientGone from exc

    def _send_head(self, status: int, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()  # writes the buffered head
        except OSError as exc:
            raise _ClientGone from exc

    def _sever(self) -> None:
        """Close the TCP connection now, mid-whatever."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- routing -----------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._handle("POST")

    def _handle(self, method: str) -> None:
        fs = self.server.fault_server
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        record = RequestRecord(
            seq=_next_seq(),
            server=fs.name,
            index=0,
            method=method,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            t_start=time.monotonic(),
            wall_start=time.time(),
        )
        fs._record(record)
        try:
            self._dispatch(fs, record, method)
        except _ClientGone:
            record.client_gone = True
            self.close_connection = True
        finally:
            record.t_end = time.monotonic()
            record.wall_end = time.time()

    def _dispatch(self, fs: FaultServer, record: RequestRecord, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if method == "GET" and path.endswith("/models"):
            data = {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": fs.name}
                    for m in fs.models
                ],
            }
            record.outcome = "models"
            self._send_json(record, 200, data)
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            record.outcome = "not_found"
            self._send_json(record, 404, error_body(404, message=f"Unknown path {self.path}"))
            return
        if not isinstance(record.body, dict) or not isinstance(record.body.get("messages"), list):
            record.outcome = "bad_json"
            self._send_json(
                record,
                400,
                error_body(
                    400,
                    message="The request body must be a JSON object with 'messages'.",
                    param="messages",
                ),
            )
            return
        fault, reason = fs._decide(record)
        self._perform(fs, record, fault, reason)

    # -- behaviours --------------------------------------------------------------
    def _perform(
        self, fs: FaultServer, record: RequestRecord, fault: Fault, reason: str | None = None
    ) -> None:
        if record.outcome != "slow":  # a slow fault keeps its name while doing ``then``
            record.outcome = reason or fault.kind
        if fault.kind == "slow":
            if fs._stopping.wait(fault.delay_s):
                self._sever()
                return
            self._perform(fs, record, fault.then or Fault.ok(), None)
            return
        if fault.kind == "ok":
            if fault.delay_s and fs._stopping.wait(fault.delay_s):
                self._sever()
                return
            if record.stream:
                self._stream_ok(fs, record, fault)
            else:
                self._json_ok(fs, record, fault)
        elif fault.kind == "status":
            headers = dict(fault.headers)
            if fault.retry_after_date_s is not None:
                when = math.ceil(time.time() + fault.retry_after_date_s)
                headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
            self._send_json(record, fault.status_code, fault.body, headers)
        elif fault.kind == "not_sse":
            if record.stream:
                self._json_ok(fs, record, Fault.ok())
            else:
                self._json_ok(fs, record, fault)
        elif fault.kind == "stream_empty":
            if not record.stream:
                self._json_ok(fs, record, Fault.ok())
                return
            self._start_sse(record)
            self._chunk(b"data: [DONE]\n\n")
            self._write(b"0\r\n\r\n")
        elif fault.kind == "stream_without_finish":
            if not record.stream:
                self._json_ok(fs, record, Fault.ok())
                return
            record.text = fault.text
            self._start_sse(record)
            self._event(fs, record, {"role": "assistant", "content": "", "refusal": None})
            for piece in _word_pieces(fault.text or ""):
                self._event(fs, record, {"content": piece})
            self._chunk(b"data: [DONE]\n\n")
            self._write(b"0\r\n\r\n")
        elif fault.kind == "echo_auth":
            auth = record.headers.get("authorization", "")
            self._send_json(
                record,
                fault.status_code,
                error_body(fault.status_code, message=f"Invalid credentials in header: {auth}"),
            )
        elif fault.kind == "drop":
            self._sever()
        elif fault.kind == "malformed":
            data = str(fault.body).encode()
            record.status = 200
            self._send_head(
                200, {"Content-Type": "application/json", "Content-Length": str(len(data))}
            )
            self._write(data)
        elif fault.kind in ("cut_before_first_token", "cut_after_first_token"):
            self._cut(fs, record, fault)
        else:  # pragma: no cover - guarded by the constructors
            raise ValueError(f"unknown fault kind {fault.kind!r}")

    def _send_json(
        self, record: RequestRecord, status: int, data: Any, headers: dict[str, str] | None = None
    ) -> None:
        payload = data if isinstance(data, (bytes, str)) else json.dumps(data)
        raw = payload.encode() if isinstance(payload, str) else payload
        head = {
            "Content-Type": "application/json",
            "Content-Length": str(len(raw)),
            "x-request-id": f"req-{record.seq}",
            **(headers or {}),
        }
        record.status = status
        record.response_headers = head
        self._send_head(status, head)
        self._write(raw)

    def _usage(self, record: RequestRecord, fault: Fault, n_words: int) -> dict[str, int]:
        body = record.body
        prompt = (
            fault.prompt_tokens
            if fault.prompt_tokens is not None
            else estimate_prompt_tokens(body.get("messages") or [])
        )
        completion = fault.completion_tokens if fault.completion_tokens is not None else n_words
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _json_ok(self, fs: FaultServer, record: RequestRecord, fault: Fault) -> None:
        pieces, finish = _truncate(_reply_text(fault, fs, record), record.max_tokens)
        text = "".join(pieces)
        record.text = text
        self._send_json(
            record,
            200,
            {
                "id": f"chatcmpl-{fs.name}-{record.seq}",
                "object": "chat.completion",
                "created": int(record.wall_start),
                "model": record.model or fs.models[0],
                "system_fingerprint": "fault-server",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": self._usage(record, fault, len(pieces)),
            },
        )

    # SSE over chunked transfer encoding, like real providers: a cut then shows up
    # client-side as an incomplete chunked read, not as a clean end of stream.
    def _start_sse(self, record: RequestRecord) -> None:
        head = {
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "Transfer-Encoding": "chunked",
            "x-request-id": f"req-{record.seq}",
        }
        record.status = 200
        record.response_headers = head
        self._send_head(200, head)

    def _chunk(self, data: bytes) -> None:
        self._write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def _event(
        self,
        fs: FaultServer,
        record: RequestRecord,
        delta: dict[str, Any] | None,
        finish: str | None = None,
        usage: dict[str, int] | None = None,
    ) -> None:
        chunk: dict[str, Any] = {
            "id": f"chatcmpl-{fs.name}-{record.seq}",
            "object": "chat.completion.chunk",
            "created": int(record.wall_start),
            "model": record.model or fs.models[0],
            "system_fingerprint": "fault-server",
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if usage is not None:
            chunk["usage"] = usage
        self._chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")

    def _stream_ok(self, fs: FaultServer, record: RequestRecord, fault: Fault) -> None:
        pieces, finish = _truncate(_reply_text(fault, fs, record), record.max_tokens)
        record.text = "".join(pieces)
        self._start_sse(record)
        self._event(fs, record, {"role": "assistant", "content": "", "refusal": None})
        for piece in pieces:
            if fault.chunk_delay_s and fs._stopping.wait(fault.chunk_delay_s):
                self._sever()
                return
            self._event(fs, record, {"content": piece})
        self._event(fs, record, {}, finish=finish)
        options = record.body.get("stream_options") or {}
        if options.get("include_usage"):
            self._event(fs, record, None, usage=self._usage(record, fault, len(pieces)))
        self._chunk(b"data: [DONE]\n\n")
        self._write(b"0\r\n\r\n")

    def _cut(self, fs: FaultServer, record: RequestRecord, fault: Fault) -> None:
        if not record.stream:
            # a truncated JSON body: Content-Length promises more than is sent
            record.status = 200
            full = json.dumps(
                {
                    "id": "chatcmpl-cut",
                    "object": "chat.completion",
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": fault.text or ""}}
                    ],
                }
            )
            half = full[: len(full) // 2].encode()
            sent = b"" if fault.kind == "cut_before_first_token" else half
            self._send_head(
                200, {"Content-Type": "application/json", "Content-Length": str(len(full))}
            )
            self._write(sent)
            self._sever()
            return
        self._start_sse(record)
        if fault.kind == "cut_after_first_token":
            self._event(fs, record, {"role": "assistant", "content": "", "refusal": None})
            self._event(fs, record, {"content": fault.text})
            record.text = fault.text
        elif fault.role_chunk:
            self._event(fs, record, {"role": "assistant", "content": "", "refusal": None})
        time.sleep(0.05)  # let the client read what was sent before the cut
        self._sever()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def fault_server_factory() -> Iterator[Callable[..., FaultServer]]:
    """A function ``(name="fault", **FaultServer kwargs) -> started FaultServer``;
    every server it started is stopped when the test ends."""
    started: list[FaultServer] = []

    def make(name: str = "fault", **kwargs: Any) -> FaultServer:
        server = FaultServer(name, **kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def fault_server(fault_server_factory: Callable[..., FaultServer]) -> FaultServer:
    """One started :class:`FaultServer` named ``"fault"``, stopped after the test."""
    return fault_server_factory("fault")
