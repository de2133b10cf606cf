"""Error classification, Retry-After parsing, cooldowns and the circuit breaker.

The behaviour table (LiteLLM Router and the router tutorial are the models):

=====================  ==============  ==================================================
error kind             examples        what the router does
=====================  ==============  ==================================================
``rate_limit``         HTTP 429        cool down for Retry-After (``retry-after-ms``,
                                       ``Retry-After`` seconds or HTTP date), else
                                       exponential jittered backoff; fall over
``server``             HTTP 5xx        count toward the circuit breaker; fall over
``timeout``            attempt timeout same as ``server``
``connection``         refused, reset  same as ``server``
``malformed``          bad JSON body,  same as ``server``
                       empty / non-SSE
                       stream
``unknown``            anything else   same as ``server``, but tried once per deployment
                                       and request (no waiting for a retry)
``auth``               HTTP 401 / 403, disable the deployment (message names the env var);
                       missing API key fall over
``not_found``          HTTP 404        disable the deployment (unknown model); fall over
``context_length``     HTTP 400 "too   fall over to a deployment with a larger
                       long"           ``context_window``, else raise
``bad_request``        other 400/422,  raise at once (no failover)
                       length limit
                       hit while
                       parsing
=====================  ==============  ==================================================

Circuit breaker (per deployment): ``failure_threshold`` consecutive breaker
failures open it for ``circuit_cooldown`` seconds (or until a running Retry-After
window ends, if later); then it is *half-open* and exactly one request (the probe)
is let through; the probe's success closes it, its failure re-opens it.

Health state: one record per deployment (a JSON-able dict, see :data:`RECORD_KEYS`),
changed only by :func:`transition` ``(record, event, now) -> record``; the store
applies it atomically (:func:`claim` for the gate, :func:`apply` for outcomes). A
window's end only ever moves later. Client-side errors (:func:`is_client_side`)
never reach it.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal, NamedTuple

import httpx
from langchain_core import exceptions as lc_exc
from tenacity import wait_exponential_jitter

from langchain_moa.errors import ConfigurationError, MissingAPIKeyError

__all__ = [
    "ErrorKind",
    "ErrorInfo",
    "RetryPolicy",
    "DEFAULT_RETRY_POLICY",
    "BREAKER_KINDS",
    "classify_error",
    "is_client_side",
    "parse_retry_after",
]

ErrorKind = str
KINDS = (
    "rate_limit",
    "server",
    "timeout",
    "connection",
    "malformed",
    "unknown",
    "auth",
    "not_found",
    "context_length",
    "bad_request",
)
BREAKER_KINDS = frozenset({"server", "timeout", "connection", "malformed", "unknown"})
"""Error kinds that count toward the circuit breaker."""
DISABLE_KINDS = frozenset({"auth", "not_found"})
"""Error kinds that disable the deployment for the router's lifetime."""


@dataclass(frozen=True)
class RetryPolicy:
    """What to do after an error of one kind.

    Attributes:
        retries: extra attempts on the *same* deployment (after a jittered
            exponential backoff, tenacity ``wait_exponential_jitter``) before
            falling over. Ignored for kinds that disable or cool the deployment.
        failover: try the next deployment; ``False`` raises the error at once.
    """

    retries: int = 0
    failover: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigurationError(
                f"RetryPolicy.retries must be an int >= 0, got {self.retries!r}"
            )


DEFAULT_RETRY_POLICY: dict[str, RetryPolicy] = {
    **{k: RetryPolicy() for k in KINDS},
    "bad_request": RetryPolicy(failover=False),
}


@dataclass
class ErrorInfo:
    """A classified error.

    Attributes:
        kind: one of the kinds in the module table.
        status: HTTP status code, when there was a response.
        retry_after: seconds the server asked us to wait (``None`` if it did not say).
        message: short human-readable description.
    """

    kind: ErrorKind
    status: int | None
    retry_after: float | None
    message: str


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait according to the response headers, or ``None``.

    Understands ``retry-after-ms`` (milliseconds, float; OpenAI/Azure) first, then
    ``Retry-After`` as delta-seconds (RFC 9110 §10.2.3; fractional accepted) or as
    an HTTP-date (IMF-fixdate and the obsolete formats ``email.utils`` parses).
    A date in the past gives 0. Header names are case-insensitive.
    """
    if headers is None:
        return None
    try:
        h = httpx.Headers(headers)
    except Exception:  # noqa: BLE001 - anything mapping-like that httpx rejects
        return None
    ms = h.get("retry-after-ms")
    if ms is not None:
        try:
            v = float(ms.strip())
            if v >= 0 and v == v and v != float("inf"):
                return v / 1000.0
        except ValueError:
            pass
    ra = h.get("retry-after")
    if ra is None:
        return None
    ra = ra.strip()
    try:
        v = float(ra)
        if v >= 0 and v == v and v != float("inf"):
            return v
        return None
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:  # RFC says GMT
        import datetime as _dt

        dt = dt.replace(tzinfo=_dt.UTC)
    now = time.time() if now is None else now
    return max(0.0, dt.timestamp() - now)


def _optional_httpx2() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """``(timeout, transport)`` exception types of ``httpx2`` (used by openai >= 3) if installed."""
    try:
        import httpx2  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - depends on the openai version
        return (), ()
    return (httpx2.TimeoutException,), (httpx2.TransportError,)


_HTTPX2_TIMEOUT, _HTTPX2_TRANSPORT = _optional_httpx2()

_CONTEXT_RE = re.compile(
    r"context[_ ]length|context window|maximum context|too many tokens|prompt is too long|"
    r"exceeds? the (?:model'?s? )?(?:context|max)|input is too long|reduce the length",
    re.IGNORECASE,
)
_MODEL_NOT_FOUND_RE = re.compile(r"model.*(not found|does not exist|unknown)", re.IGNORECASE)


def _status_and_headers(exc: BaseException) -> tuple[int | None, Any, str]:
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    headers = None
    if response is not None:
        status = status or getattr(response, "status_code", None)
        headers = getattr(response, "headers", None)
    body = getattr(exc, "body", None)
    text = str(exc)
    if body is not None and not isinstance(body, str):
        try:
            text = f"{text} {json.dumps(body)}"
        except (TypeError, ValueError):
            pass
    return (int(status) if isinstance(status, int) else None), headers, text


_LC_ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (lc_exc.ModelRateLimitError, 429),
    (lc_exc.ModelAuthenticationError, 401),
    (lc_exc.ModelPermissionDeniedError, 403),
    (lc_exc.ModelNotFoundError, 404),
    (lc_exc.ModelAPIError, 500),
    (lc_exc.ModelInvalidRequestError, 400),
)
"""LangChain's standard model errors (no HTTP response attached) and the HTTP status
each stands for; the first match wins."""


def classify_error(exc: BaseException, now: float | None = None) -> ErrorInfo:
    """Classify an exception raised while calling a deployment.

    Works on the ``openai`` SDK's exceptions, LangChain's standard
    ``langchain_core.exceptions.Model*Error`` types, ``httpx`` errors and plain
    ``TimeoutError`` / ``ConnectionError``; the status code and headers come from
    the exception's ``.response`` when it has one.
    """
    import openai

    msg = f"{type(exc).__name__}: {exc}"[:500]
    if isinstance(exc, MissingAPIKeyError):
        return ErrorInfo("auth", None, None, str(exc))
    # timeouts before connection errors: APITimeoutError subclasses APIConnectionError
    timeouts = (
        openai.APITimeoutError,
        TimeoutError,
        asyncio.TimeoutError,
        httpx.TimeoutException,
        lc_exc.ModelTimeoutError,
        *_HTTPX2_TIMEOUT,
    )
    if isinstance(exc, timeouts):
        return ErrorInfo("timeout", None, None, msg)
    transport = (
        openai.APIConnectionError,
        httpx.TransportError,
        ConnectionError,
        lc_exc.ModelConnectionError,
        *_HTTPX2_TRANSPORT,
    )
    if isinstance(exc, transport):
        return ErrorInfo("connection", None, None, msg)
    finish = tuple(
        getattr(openai, n)
        for n in ("LengthFinishReasonError", "ContentFilterFinishReasonError")
        if hasattr(openai, n)
    )
    if finish and isinstance(exc, finish):
        # the answer hit max_tokens / a content filter while parsing structured
        # output: the same request fails the same way anywhere
        return ErrorInfo("bad_request", None, None, msg)
    if isinstance(exc, lc_exc.ContextOverflowError):
        status, _, _ = _status_and_headers(exc)
        return ErrorInfo("context_length", status or 400, None, msg)
    if isinstance(
        exc, openai.APIResponseValidationError | json.JSONDecodeError | MalformedResponseError
    ):
        return ErrorInfo("malformed", getattr(exc, "status_code", None), None, msg)
    status, headers, text = _status_and_headers(exc)
    if status is None:
        status = next((st for cls, st in _LC_ERROR_STATUS if isinstance(exc, cls)), None)
    if status is None and isinstance(exc, lc_exc.ModelError):
        # a standard LangChain model error not listed above: its own retryability
        # decides (as for LangChain v1's ModelRetryMiddleware)
        return ErrorInfo("server" if exc.is_retryable else "bad_request", None, None, msg)
    if status is None:
        return ErrorInfo("unknown", None, None, msg)
    if status == 429:
        return ErrorInfo("rate_limit", 429, parse_retry_after(headers, now), msg)
    if status in (401, 403):
        return ErrorInfo("auth", status, None, msg)
    if status == 404:
        return ErrorInfo("not_found", status, None, msg)
    if status == 408:
        return ErrorInfo("timeout", status, None, msg)
    if status in (400, 413, 422):
        if status == 413 or _CONTEXT_RE.search(text):
            return ErrorInfo("context_length", status, None, msg)
        return ErrorInfo("bad_request", status, None, msg)
    if status >= 500:
        return ErrorInfo("server", status, parse_retry_after(headers, now), msg)
    return ErrorInfo("unknown", status, None, msg)


class MalformedResponseError(Exception):
    """A reply that cannot be a complete answer: a stream with no chunk, a 200 body
    that is not server-sent events, a stream closed without ``finish_reason``.
    Classified ``malformed`` (counts toward the circuit breaker, falls over)."""


def is_client_side(exc: BaseException) -> bool:
    """Whether ``exc`` is the request's own fault, found before anything was sent:
    the prompt does not encode (``UnicodeError``, e.g. a lone surrogate) or does not
    validate (``pydantic.ValidationError``), or it is already an
    :class:`~langchain_moa.errors.InvalidRequestError`. Such errors are raised at
    once and never touch a deployment's health."""
    from pydantic import ValidationError

    from langchain_moa.errors import InvalidRequestError

    return isinstance(exc, UnicodeError | ValidationError | InvalidRequestError)


# --------------------------------------------------------------------------- health
#
# One record per deployment, changed only by :func:`transition`. The record is a
# plain JSON-able dict (so a shared store can keep it as one string) with the keys
# of :data:`RECORD_KEYS`; :func:`claim` and :func:`apply` are the only two
# functions the router passes to ``RouterStore.health_update``.


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with jitter for the ``attempt``-th consecutive failure (1-based).

    Delegates to tenacity's ``wait_exponential_jitter`` (``initial * 2**(n-1)``
    plus up to ``initial`` seconds of jitter, capped at ``maximum``).
    """
    wait = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)
    return float(wait(SimpleNamespace(attempt_number=max(1, attempt))))  # type: ignore[arg-type]


@dataclass(frozen=True)
class HealthConfig:
    failure_threshold: int = 3
    circuit_cooldown: float = 30.0
    rate_limit_initial: float = 1.0
    rate_limit_max: float = 60.0
    probe_timeout: float = 60.0
    """Least seconds before an unanswered half-open probe counts as lost (see
    :func:`probe_timeout`)."""


def probe_timeout(cfg: HealthConfig, attempt_timeout: float | None) -> float:
    """Seconds after which a half-open probe still unanswered counts as lost (its claim
    goes to the next request): twice the deployment's attempt timeout (its own
    ``timeout``, else the router's; 30 s when neither is set), at least
    ``cfg.probe_timeout``. A probe ends (answer or timeout) within one attempt
    timeout, so with a timeout set only a probe whose process died counts as lost."""
    return max(cfg.probe_timeout, 2 * (attempt_timeout or 30.0))


STATES = ("healthy", "cooling", "open", "half-open", "disabled")
"""Health states. ``cooling``: a 429's Retry-After (or backoff) window; ``open``: the
circuit breaker's window; ``half-open``: the open window ended, one probe may go."""

RECORD_KEYS = (
    "state",  # one of STATES (as stored; see settle() for the time-derived state)
    "until",  # epoch s: end of the cooling / open window (None: no window)
    "since",  # epoch s: when the current window was set or last extended
    "failures",  # consecutive circuit-breaker failures
    "rate_limits",  # consecutive 429s (exponent of the backoff without Retry-After)
    "opens",  # times the circuit opened since it last closed
    "probe_at",  # epoch s: the half-open probe in flight was sent then (None: no probe)
    "reason",  # why the deployment is cooling / open / disabled
    "last_error",  # the last error's message (keys redacted)
)
"""Keys of a health record (missing keys take their defaults)."""


@dataclass(frozen=True)
class Event:
    """Something that happened to a deployment; build with the class methods.

    Attributes:
        kind: ``"sent"`` (a request was admitted; ``probe``: it is the half-open
            probe), ``"succeeded"``, ``"failed"`` (``error``: the classified error),
            ``"probe_lost"`` (the probe was never sent or its answer will never
            come), ``"enabled"`` (``ProviderRouter.enable``: the operator's reset).
        probe: the request was the half-open probe.
        error: the classified error of a ``failed`` event.
        disable_reason: for ``auth`` / ``not_found`` errors, the message naming the
            key variable or the model.
    """

    kind: Literal["sent", "succeeded", "failed", "probe_lost", "enabled"]
    probe: bool = False
    error: ErrorInfo | None = None
    disable_reason: str = ""

    @classmethod
    def sent(cls, probe: bool = False) -> Event:
        return cls("sent", probe=probe)

    @classmethod
    def succeeded(cls, probe: bool = False) -> Event:
        return cls("succeeded", probe=probe)

    @classmethod
    def failed(cls, error: ErrorInfo, probe: bool = False, disable_reason: str = "") -> Event:
        return cls("failed", probe=probe, error=error, disable_reason=disable_reason)

    @classmethod
    def probe_lost(cls) -> Event:
        return cls("probe_lost")

    @classmethod
    def enabled(cls) -> Event:
        return cls("enabled")


def settle(rec: dict[str, Any], now: float) -> dict[str, Any]:
    """The record as of ``now``: a ``cooling`` window that has ended is ``healthy``,
    an ``open`` window that has ended is ``half-open`` (no probe yet). Pure."""
    rec = dict(rec)
    state = rec.get("state", "healthy")
    until = rec.get("until")
    if state == "cooling" and (until is None or now >= until):
        rec["state"] = "healthy"
        rec.pop("until", None)
    elif state == "open" and (until is None or now >= until):
        rec["state"] = "half-open"
        rec.pop("until", None)
        rec.pop("probe_at", None)
    return rec


def _extend(rec: dict[str, Any], state: str, until: float, now: float, reason: str) -> None:
    """Set a window ending at ``until`` unless the running one ends later (a window's
    end only ever moves later)."""
    old = rec.get("until")
    if old is not None and old >= until:
        if state == "open" and rec.get("state") == "cooling":
            # the circuit opens inside a longer Retry-After window: keep its end
            rec.update(state="open", reason=reason, since=now)
        return
    rec.update(state=state, until=until, since=now, reason=reason)


def transition(rec: dict[str, Any], event: Event, now: float, cfg: HealthConfig) -> dict[str, Any]:
    """The one function that changes a deployment's health record. Pure.

    Invariants (the table in ``tests/unit_tests/test_router_health.py``):

    * a window's end (``until``) only ever moves later: no event but ``enabled``
      shortens or removes a cooling / open window that is still running;
    * a success never ends a running window (a request sent before a 429 may
      answer after it: defect "late success wipes a cooldown"); in ``half-open``
      only the probe's success closes the circuit;
    * opening the circuit keeps the longer of ``circuit_cooldown`` and a running
      Retry-After window;
    * at most one probe: ``probe_at`` is set only by ``sent(probe=True)`` in
      ``half-open`` and cleared by the probe's end or ``probe_lost``;
    * ``disabled`` stays until ``enabled``.
    """
    rec = settle(rec, now)
    state = rec.get("state", "healthy")
    kind = event.kind
    if kind == "enabled":
        return {"state": "healthy"}
    if kind == "failed" and event.error is not None:
        rec["last_error"] = event.error.message
    if state == "disabled":
        return rec
    if kind == "sent":
        if event.probe and state == "half-open" and rec.get("probe_at") is None:
            rec["probe_at"] = now
        return rec
    if kind == "probe_lost":
        rec.pop("probe_at", None)
        return rec
    if kind == "succeeded":
        if state == "half-open":
            if event.probe:  # the probe answered: close the circuit
                return {"state": "healthy", "last_error": rec.get("last_error", "")}
            return rec  # a request sent before the circuit opened: the probe decides
        if state == "healthy":
            rec["failures"] = 0
            rec["rate_limits"] = 0
        elif state == "cooling":
            rec["failures"] = 0  # the window stays: the 429 came after this was sent
        return rec
    # failed
    info = event.error
    assert info is not None, "a failed event carries its ErrorInfo"
    was_probe = event.probe and state == "half-open"
    if was_probe:
        rec.pop("probe_at", None)
    if info.kind in DISABLE_KINDS:
        rec.update(state="disabled", reason=event.disable_reason or info.message, since=now)
        for k in ("until", "probe_at"):
            rec.pop(k, None)
        return rec
    if info.kind == "rate_limit":
        n = int(rec.get("rate_limits", 0)) + 1
        rec["rate_limits"] = n
        if info.retry_after is not None:
            delay, why = info.retry_after, f"429 Retry-After {info.retry_after:g} s"
        else:
            delay = backoff(n, cfg.rate_limit_initial, cfg.rate_limit_max)
            why = f"429 without Retry-After, backoff #{n}"
        if state == "half-open":
            rec.pop("probe_at", None)  # any 429 ends the half-open state: wait it out
            rec["state"] = "cooling"
        new_state = "open" if rec.get("state") == "open" else "cooling"
        _extend(rec, new_state, now + delay, now, why)
        return rec
    if info.kind in BREAKER_KINDS:
        n = int(rec.get("failures", 0)) + 1
        rec["failures"] = n
        if state == "open":
            return rec  # sent before the circuit opened; the window stands
        if state == "half-open":
            if not was_probe:
                return rec  # sent before the circuit opened: the probe decides
            why = f"half-open probe failed: {info.kind}"
        elif n >= cfg.failure_threshold:
            why = f"{n} consecutive failures: {info.kind}"
        else:
            return rec
        rec["opens"] = int(rec.get("opens", 0)) + 1
        if state == "half-open":
            rec["state"] = "healthy"  # no window runs: open a fresh one
        _extend(rec, "open", now + cfg.circuit_cooldown, now, why)
        return rec
    if was_probe:  # the probe got an answer (e.g. a 400): the server is alive
        return {"state": "healthy", "last_error": rec.get("last_error", "")}
    return rec


class Claim(NamedTuple):
    """The health gate's answer to "may a request be sent to this deployment now?".

    Attributes:
        allowed: send it.
        reason: why not (empty when allowed).
        ready_at: epoch s when to ask again (``None``: never, disabled).
        probe: the request is the half-open circuit's single probe.
        at: the time (epoch s) the decision was taken, inside the store's atomic
            update (the admission time).
    """

    allowed: bool
    reason: str
    ready_at: float | None
    probe: bool
    at: float = 0.0


def admission(rec: dict[str, Any], now: float, stale_after: float) -> Claim:
    """Decide whether a request may be sent now (a value; changes nothing)."""
    rec = settle(rec, now)
    state = rec.get("state", "healthy")
    until = rec.get("until") or 0.0
    why = rec.get("reason", "")
    if state == "disabled":
        return Claim(False, f"disabled: {why}", None, False, now)
    if state == "cooling":
        return Claim(False, f"cooling down ({why}) for {until - now:.2f} s", until, False, now)
    if state == "open":
        return Claim(False, f"circuit open ({why}) for {until - now:.2f} s", until, False, now)
    if state == "half-open":
        probe_at = rec.get("probe_at")
        if probe_at is not None and now - probe_at < stale_after:
            return Claim(
                False,
                "half-open: probe in flight",
                min(now + 0.05, probe_at + stale_after),
                False,
                now,
            )
        return Claim(True, "", None, True, now)
    return Claim(True, "", None, False, now)


def claim(
    rec: dict[str, Any], now: float | None, cfg: HealthConfig, stale_after: float | None = None
) -> tuple[dict[str, Any], Claim]:
    """Ask to send a request; for :meth:`RouterStore.health_update` (pure but for the
    clock: ``now=None`` reads ``time.time()`` inside the store's atomic update, so the
    admission time is ordered with every other change of the record).

    ``stale_after`` (s, default ``cfg.probe_timeout``): age at which a half-open
    probe in flight counts as lost (:func:`probe_timeout` of the deployment); the
    lost probe's claim goes to this request. Returns ``(new_record, Claim)``.
    """
    t = time.time() if now is None else now
    limit = cfg.probe_timeout if stale_after is None else stale_after
    decision = admission(rec, t, limit)
    if not decision.allowed:
        return settle(rec, t), decision
    if decision.probe and settle(rec, t).get("probe_at") is not None:
        rec = transition(rec, Event.probe_lost(), t, cfg)
    return transition(rec, Event.sent(decision.probe), t, cfg), decision


def apply(
    event: Event, cfg: HealthConfig, now: float | None = None
) -> Callable[[dict[str, Any]], tuple[dict[str, Any], str]]:
    """``record -> (new_record, displayed state)`` for :meth:`RouterStore.health_update`;
    ``now=None`` reads the clock inside the store's atomic update."""

    def fn(rec: dict[str, Any]) -> tuple[dict[str, Any], str]:
        t = time.time() if now is None else now
        new = transition(rec, event, t, cfg)
        return new, state_of(new, t)[0]

    return fn


def state_of(rec: dict[str, Any], now: float) -> tuple[str, float | None]:
    """The displayed state and the time it ends (``None``: no end)."""
    rec = settle(rec, now)
    state = rec.get("state", "healthy")
    if state in ("cooling", "open"):
        return state, rec.get("until")
    return state, None


# ---- the record-level helpers the router used before `transition` (kept as thin
# ---- wrappers for readability in tests)


def unclaim(rec: dict[str, Any]) -> tuple[dict[str, Any], None]:
    """Give back a probe claim that was never used (the request was not sent)."""
    return transition(rec, Event.probe_lost(), time.time(), HealthConfig()), None


def record_success(
    rec: dict[str, Any], probe: bool = False, now: float | None = None
) -> tuple[dict[str, Any], None]:
    """Apply a success (see :func:`transition`)."""
    t = time.time() if now is None else now
    return transition(rec, Event.succeeded(probe), t, HealthConfig()), None


def record_failure(
    rec: dict[str, Any],
    info: ErrorInfo,
    now: float,
    cfg: HealthConfig,
    disable_reason: str = "",
    probe: bool = False,
) -> tuple[dict[str, Any], str]:
    """Apply an error (see :func:`transition`); returns the new displayed state."""
    new = transition(rec, Event.failed(info, probe, disable_reason), now, cfg)
    return new, state_of(new, now)[0]
