"""Recording how an attempt ended: counters, health (cooldowns, circuit breaker,
disabling), the request's attempt log, and, on error, what happens next (fail over,
or raise to the caller) by the retry policy of the error's kind (see :mod:`._health`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk

from langchain_moa.errors import DeploymentDisabledError
from langchain_moa.router._deployment import Deployment
from langchain_moa.router._health import (
    BREAKER_KINDS,
    HealthConfig,
    RetryPolicy,
    classify_error,
    record_failure,
    record_success,
    unclaim,
)
from langchain_moa.router._limits import Lease
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


@dataclass
class Outcomes:
    """Records successes and failures of the attempts of one router's requests.

    Attributes:
        store: health state (per deployment).
        stats: per deployment name, its counters.
        health_cfg: circuit breaker / cooldown settings.
        policies: retry policy per error kind (``failover=False`` raises at once).
    """

    store: RouterStore
    stats: dict[str, DeploymentStats]
    health_cfg: HealthConfig
    policies: dict[str, RetryPolicy]

    def failed(
        self,
        req: Request,
        d: Deployment,
        exc: BaseException,
        latency: float,
        probe: bool,
        after_first: bool = False,
    ) -> None:
        """Record a failed attempt and raise what the policy says (always raises):
        ``exc`` itself (stop signals, bad requests, errors after the first streamed
        token, no other deployment can take the request) or ``Failover``."""
        name = str(d.name)
        if isinstance(exc, STOP_SIGNALS):
            if probe:
                self.store.health_update(name, unclaim)
            raise exc
        info = classify_error(exc)
        self.stats[name].failure(info.kind, info.message, latency)
        disable_reason = _disable_reason(d, info.kind, info.status, info.message)
        now = time.time()
        state = self.store.health_update(
            name, lambda r: record_failure(r, info, now, self.health_cfg, disable_reason)
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
            raise exc
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
    ) -> dict[str, Any]:
        """Record a success, settle and release ``lease``; returns the routing decision
        (``response_metadata["router"]``)."""
        name = str(d.name)
        usage = msg.usage_metadata or {}
        tin, tout = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
        prices = d.prices()
        cost = (tin * prices[0] + tout * prices[1]) / 1e6 if prices else None
        self.stats[name].success(latency, ttft, tin, tout, cost)
        self.store.health_update(name, record_success)
        if usage:
            lease.reconcile_tokens(tin + tout)
        lease.release()
        req.attempts.append(
            {
                "deployment": name,
                "outcome": "ok",
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
            "cost_usd": cost,
            "prompt_tokens_estimate": req.prompt_tokens,
        }
