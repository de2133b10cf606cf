"""Error classification, Retry-After parsing, cooldowns and the circuit breaker.

The behaviour table (DESIGN §4; LiteLLM Router and the router tutorial are the models):

=====================  ==============  ==================================================
error kind             examples        what the router does
=====================  ==============  ==================================================
``rate_limit``         HTTP 429        cool down for Retry-After (``retry-after-ms``,
                                       ``Retry-After`` seconds or HTTP date), else
                                       exponential jittered backoff; fall over
``server``             HTTP 5xx        count toward the circuit breaker; fall over
``timeout``            attempt timeout same as ``server``
``connection``         refused, reset  same as ``server``
``malformed``          bad JSON body   same as ``server``
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
failures open it for ``circuit_cooldown`` seconds; then it is *half-open* and
exactly one request (the probe) is let through; success closes it, failure
re-opens it.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

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
    if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError):
        return ErrorInfo("malformed", getattr(exc, "status_code", None), None, msg)
    status, headers, text = _status_and_headers(exc)
    if status is None:
        status = next((st for cls, st in _LC_ERROR_STATUS if isinstance(exc, cls)), None)
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


# --------------------------------------------------------------------------- health


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


def state_of(rec: dict[str, Any], now: float) -> tuple[str, float | None]:
    """The displayed state and the time it ends (``None``: no end)."""
    state = rec.get("state", "healthy")
    until = rec.get("until")
    if state == "disabled":
        return "disabled", None
    if state == "cooling":
        return ("cooling", until) if until and now < until else ("healthy", None)
    if state == "open":
        return ("open", until) if until and now < until else ("half-open", None)
    return state, None


def claim(
    rec: dict[str, Any], now: float, cfg: HealthConfig, stale_after: float | None = None
) -> tuple[dict[str, Any], tuple[bool, str, float | None, bool]]:
    """Ask to send a request now. Pure function for :meth:`RouterStore.health_update`.

    ``stale_after`` (s, default ``cfg.probe_timeout``): age at which a half-open
    probe in flight counts as lost (:func:`probe_timeout` of the deployment).
    Returns ``(new_record, (allowed, reason, ready_at, is_probe))``; ``ready_at`` is
    when to ask again (``None``: never, the deployment is disabled).
    """
    limit = cfg.probe_timeout if stale_after is None else stale_after
    rec = dict(rec)
    state = rec.get("state", "healthy")
    until = rec.get("until") or 0.0
    if state == "disabled":
        return rec, (False, f"disabled: {rec.get('reason', '')}", None, False)
    if state == "cooling":
        if now < until:
            return rec, (
                False,
                f"cooling down ({rec.get('reason', '')}) for {until - now:.2f} s",
                until,
                False,
            )
        rec["state"] = "healthy"
        rec.pop("until", None)
        return rec, (True, "", None, False)
    if state == "open":
        if now < until:
            return rec, (
                False,
                f"circuit open ({rec.get('reason', '')}) for {until - now:.2f} s",
                until,
                False,
            )
        state = rec["state"] = "half-open"
        rec.pop("probe_at", None)
    if state == "half-open":
        probe_at = rec.get("probe_at")
        if probe_at is not None and now - probe_at < limit:
            return rec, (False, "half-open: probe in flight", now + 0.05, False)
        rec["probe_at"] = now
        return rec, (True, "", None, True)
    return rec, (True, "", None, False)


def unclaim(rec: dict[str, Any]) -> tuple[dict[str, Any], None]:
    """Give back a probe claim that was never used (the request was not sent)."""
    rec = dict(rec)
    rec.pop("probe_at", None)
    return rec, None


def record_success(rec: dict[str, Any]) -> tuple[dict[str, Any], None]:
    rec = dict(rec)
    if rec.get("state") == "disabled":
        return rec, None
    if rec.get("state") in ("half-open", "open") or rec.get("failures"):
        rec = {"state": "healthy", "opens": 0}
    elif rec.get("state") == "cooling":
        pass  # a request sent before the 429 finished; keep the Retry-After window
    else:
        rec["state"] = "healthy"
    rec["failures"] = 0
    rec["rate_limits"] = 0
    rec.pop("probe_at", None)
    return rec, None


def record_failure(
    rec: dict[str, Any], info: ErrorInfo, now: float, cfg: HealthConfig, disable_reason: str = ""
) -> tuple[dict[str, Any], str]:
    """Apply an error to the record; returns the resulting state name."""
    rec = dict(rec)
    rec["last_error"] = info.message
    was_probe = rec.get("state") == "half-open"
    rec.pop("probe_at", None)
    if rec.get("state") == "disabled":
        return rec, "disabled"
    if info.kind in DISABLE_KINDS:
        rec.update(state="disabled", reason=disable_reason or info.message)
        rec.pop("until", None)
        return rec, "disabled"
    if info.kind == "rate_limit":
        n = int(rec.get("rate_limits", 0)) + 1
        rec["rate_limits"] = n
        if info.retry_after is not None:
            delay, why = info.retry_after, f"429 Retry-After {info.retry_after:g} s"
        else:
            delay = backoff(n, cfg.rate_limit_initial, cfg.rate_limit_max)
            why = f"429 without Retry-After, backoff #{n}"
        until = now + delay
        # never shorten an existing window (several 429s in flight)
        if rec.get("state") in ("cooling", "open") and (rec.get("until") or 0) > until:
            return rec, rec["state"]
        rec.update(state="cooling", until=until, reason=why)
        return rec, "cooling"
    if info.kind in BREAKER_KINDS:
        n = int(rec.get("failures", 0)) + 1
        rec["failures"] = n
        if was_probe or n >= cfg.failure_threshold:
            opens = int(rec.get("opens", 0)) + 1
            rec.update(
                state="open",
                until=now + cfg.circuit_cooldown,
                opens=opens,
                reason=("half-open probe failed: " if was_probe else f"{n} consecutive failures: ")
                + info.kind,
            )
            return rec, "open"
        if was_probe:
            rec["state"] = "half-open"
        return rec, rec.get("state", "healthy")
    if was_probe:  # probe answered (e.g. bad request): the server is alive
        rec.update(state="healthy", failures=0)
    return rec, rec.get("state", "healthy")
