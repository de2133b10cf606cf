"""Recording how an attempt ended: counters, health (cooldowns, circuit breaker,
disabling), the request's attempt log, and, on error, what happens next (fail over,
or raise to the caller) by the retry policy of the error's kind (see :mod:`._health`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk

from langchain_moa.errors import (
    DeploymentDisabledError,
    InvalidRequestError,
    StreamInterruptedError,
)
from langchain_moa.router._deployment import Deployment
from langchain_moa.router._health import (
    BREAKER_KINDS,
    Event,
    HealthConfig,
    RetryPolicy,
    apply,
    classify_error,
    is_client_side,
)
from langchain_moa.router._limits import Lease
from langchain_moa.router._redact import Redactor
from langchain_moa.router._request import STOP_SIGNALS, Failover, Request, context_skip
from langchain_moa.router._stats import DeploymentStats
from langchain_moa.router._store import RouterStore

__all__ = ["Outcomes"]


def _disable_reason(d: Deployment, kind: str, status: int | None, message: str) -> str:
    """Why an ``auth`` / ``not_found`` error disables ``d`` ("" for other kinds)."""
    name = str(d.name)
    if kind == "auth":
        env = d.api_key_env
        where = f"the environment variable {env}" if env else "the api_key given to the deployment"
        what = f"HTTP {status}" if status else "missing key"
        return f"{what} from {name}: check the API key in {where} ({message})"
    if kind == "not_found":
        return (
            f"HTTP 404 from {name}: model {d.model_id!r} not found on provider "
            f"{d.provider or 'custom'} ({message})"
        )
    return ""


def _queue_meta(req: Request) -> dict[str, Any]:
    """The admission queue's part of the decision: time queued, what limited."""
    q = req.queue
    return {
        "queued_s": round(req.queued_s, 4),
        "limited_by": q.get("limited_by"),
        "limited_deployment": q.get("limited_deployment"),
        "position": q.get("position"),
        "waits": q.get("waits", 0),
    }


@dataclass
class Outcomes:
    """Records successes and failures of the attempts of one router's requests.

    Attributes:
        store: health state (per deployment).
        stats: per deployment name, its counters.
        health_cfg: circuit breaker / cooldown settings.
        policies: retry policy per error kind (``failover=False`` raises at once).
        redactor: masks the router's API keys in every error before it is
            classified, recorded (stats, health, attempt log) or raised.
    """

    store: RouterStore
    stats: dict[str, DeploymentStats]
    health_cfg: HealthConfig
    policies: dict[str, RetryPolicy]
    redactor: Redactor

    def client_side(
        self, req: Request, d: Deployment, exc: BaseException, probe: bool
    ) -> InvalidRequestError:
        """An error raised before anything was sent (encoding, validation): give back
        a probe claim and return the :class:`InvalidRequestError` to raise at once.
        Health and stats are not touched (the deployment did nothing wrong)."""
        name = str(d.name)
        if probe:
            self.store.health_update(name, apply(Event.probe_lost(), self.health_cfg))
        self.redactor.exception(exc)
        req.attempts.append(
            {
                "deployment": name,
                "outcome": "invalid_request",
                "error": str(exc)[:500],
                "pass": req.passes,
            }
        )
        err = InvalidRequestError(
            f"the request cannot be sent ({type(exc).__name__}: {exc}); nothing was sent "
            "and no deployment was charged with it"
        )
        err.__cause__ = exc
        return err

    def failed(
        self,
        req: Request,
        d: Deployment,
        exc: BaseException,
        latency: float,
        probe: bool,
        after_first: bool = False,
        sent_at: float | None = None,
    ) -> None:
        """Record a failed attempt and raise what the policy says (always raises):
        ``exc`` itself, keys redacted (stop signals, bad requests, no other deployment
        can take the request), :class:`InvalidRequestError` (a client-side error:
        nothing was sent, health untouched), :class:`StreamInterruptedError` (the
        stream broke after its first token) or ``Failover``."""
        name = str(d.name)
        if isinstance(exc, STOP_SIGNALS):
            if probe:
                self.store.health_update(name, apply(Event.probe_lost(), self.health_cfg))
            raise exc
        if is_client_side(exc):
            raise self.client_side(req, d, exc, probe) from exc
        self.redactor.exception(exc)
        info = classify_error(exc)
        self.stats[name].failure(info.kind, info.message, latency)
        disable_reason = _disable_reason(d, info.kind, info.status, info.message)
        state = self.store.health_update(
            name, apply(Event.failed(info, probe, disable_reason), self.health_cfg)
        )
        err: Any = exc
        if disable_reason:
            err = DeploymentDisabledError(f"deployment {name!r} disabled: {disable_reason}")
            err.__cause__ = exc
        req.errors[name] = err
        req.last_kind[name] = info.kind
        if info.kind in BREAKER_KINDS:
            req.pass_failed.add(name)
        if info.kind == "unknown":
            # not an HTTP or transport failure (a bug, an unexpected reply type):
            # try each deployment once per request rather than retry until the deadline
            req.exhausted.add(name)
        req.attempts.append(
            {
                "deployment": name,
                "outcome": "error",
                "sent_at": sent_at,
                "probe": probe,
                "error_kind": info.kind,
                "status": info.status,
                "retry_after_s": info.retry_after,
                "error": info.message,
                "state_after": state,
                "latency_s": round(latency, 4),
                "after_first_token": after_first,
                "pass": req.passes,
            }
        )
        if after_first:
            raise StreamInterruptedError(
                f"the stream from deployment {name!r} broke after its first token "
                f"({info.message}); the chunks already yielded are all there is",
                deployment=name,
            ) from exc
        policy = self.policies[info.kind]
        if not policy.failover:
            raise exc
        if info.kind == "context_length":
            req.min_context = max(req.min_context or 0, d.context_window or req.prompt_tokens)
            if not any(
                context_skip(req, o) is None
                and self.store.health_get(str(o.name)).get("state") != "disabled"
                for o in req.deployments
            ):
                raise exc
        raise Failover(name, info.message) from exc

    def succeeded(
        self,
        req: Request,
        d: Deployment,
        msg: AIMessage | AIMessageChunk,
        lease: Lease,
        latency: float,
        ttft: float | None,
        probe: bool = False,
        sent_at: float | None = None,
    ) -> dict[str, Any]:
        """Record a success, settle and release ``lease``; returns the routing decision
        (``response_metadata["router"]``)."""
        name = str(d.name)
        usage = msg.usage_metadata or {}
        tin, tout = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
        prices = d.prices()
        cost = (tin * prices[0] + tout * prices[1]) / 1e6 if prices else None
        self.stats[name].success(latency, ttft, tin, tout, cost)
        self.store.health_update(name, apply(Event.succeeded(probe), self.health_cfg))
        if usage:
            lease.reconcile_tokens(tin + tout)
        lease.release()
        req.attempts.append(
            {
                "deployment": name,
                "outcome": "ok",
                "sent_at": sent_at,
                "probe": probe,
                "latency_s": round(latency, 4),
                "ttft_s": None if ttft is None else round(ttft, 4),
                "pass": req.passes,
            }
        )
        return {
            "deployment": name,
            "model": d.model or d.model_id,
            "strategy": req.strategy,
            "candidates": req.candidates,
            "attempts": req.attempts,
            "passes": req.passes,
            "waited_s": round(req.waited_s, 4),
            "queued_s": round(req.queued_s, 4),
            "queue": _queue_meta(req),
            "cost_usd": cost,
            "prompt_tokens_estimate": req.prompt_tokens,
        }
