"""Planning one request: which deployments to try and in what order, which to skip
and why, whether an attempt may be sent now (the gate), and how long to wait
before the next pass when none could answer."""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from typing import Any

from langchain_moa.errors import NoDeploymentAvailableError
from langchain_moa.router._deployment import Deployment
from langchain_moa.router._health import (
    HealthConfig,
    RetryPolicy,
    backoff,
    claim,
    probe_timeout,
    state_of,
)
from langchain_moa.router._limits import Lease, Limits, try_acquire
from langchain_moa.router._request import SLOT_POLL_S, Failover, Request, Waker, context_skip
from langchain_moa.router._stats import DeploymentStats
from langchain_moa.router._store import RouterStore
from langchain_moa.router._strategies import rank

__all__ = ["ROUTER_SCOPE", "Planner"]

ROUTER_SCOPE = "__router__"
"""Limiter scope of the router-wide limits."""


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


class Planner:
    """Orders deployments, admits attempts and times the waits of the requests of
    one router. Shares the router's store, stats and health settings.

    Args:
        store: limiter and health state.
        stats: per deployment name, its counters (ranking input; skips are counted).
        health_cfg: circuit breaker / cooldown settings.
        policies: retry policy per error kind (the most retries sets how many retry
            entries each ranked deployment gets).
        seed: seed of the ``"weighted"`` strategy's random generator.
    """

    def __init__(
        self,
        *,
        store: RouterStore,
        stats: dict[str, DeploymentStats],
        health_cfg: HealthConfig,
        policies: dict[str, RetryPolicy],
        seed: int | None,
    ) -> None:
        self.store = store
        self.stats = stats
        self.health_cfg = health_cfg
        self.policies = policies
        self.waker = Waker()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    # ------------------------------------------------------------------ ordering
    def plan(self, req: Request) -> list[tuple[Deployment, int]]:
        """Start a pass: rank the deployments that can serve ``req`` now, record the
        others' skip reasons in ``req.candidates``; returns ``(deployment, retry)``
        entries, retries of a deployment right after its first try."""
        req.new_pass()
        now = time.time()
        eligible: list[Deployment] = []
        skipped: list[dict[str, Any]] = []
        for d in req.deployments:
            rec = self.store.health_get(str(d.name))
            state, until = state_of(rec, now)
            reason = None
            if state == "disabled":
                reason = f"disabled: {rec.get('reason', '')}"
            elif state in ("cooling", "open") and until is not None:
                word = "cooling down" if state == "cooling" else "circuit open"
                reason = f"{word} for {until - now:.2f} s ({rec.get('reason', '')})"
            elif (
                state == "half-open"
                and rec.get("probe_at") is not None
                and now - rec["probe_at"] < self._probe_timeout(req, d)
            ):
                reason = "half-open: probe in flight"
            else:
                reason = context_skip(req, d)
            if reason:
                skipped.append(
                    {"deployment": d.name, "score": None, "note": None, "skipped": reason}
                )
            else:
                eligible.append(d)
        with self._rng_lock:
            ranked = rank(
                req.strategy,
                eligible,
                prompt_tokens=req.prompt_tokens,
                output_tokens=req.output_tokens,
                streaming=req.streaming,
                stats=self.stats,
                in_flight=self._busy,
                rng=self._rng,
            )
            if req.strategy == "least-busy" and ranked:
                # count the request against its first choice right away, so that
                # concurrent requests planned before this one is sent spread out
                self.release_pending(req)
                req.pending = str(ranked[0][0].name)
                self.store.slot_acquire(f"pending:{req.pending}", None)
        req.candidates = [
            {
                "deployment": d.name,
                "rank": i + 1,
                "score": _finite(s),
                "note": note,
                "skipped": None,
            }
            for i, (d, s, note) in enumerate(ranked)
        ] + skipped
        max_retries = max((p.retries for p in self.policies.values()), default=0)
        entries: list[tuple[Deployment, int]] = []
        for d, _, _ in ranked:
            entries.append((d, 0))
            entries.extend((d, i) for i in range(1, max_retries + 1))
        return entries

    def _busy(self, name: str) -> int:
        return self.store.slot_count(f"inflight:{name}") + self.store.slot_count(f"pending:{name}")

    def release_pending(self, req: Request) -> None:
        """Give back the least-busy reservation of ``req``, if it holds one."""
        if req.pending is not None:
            self.store.slot_release(f"pending:{req.pending}")
            req.pending = None

    # ------------------------------------------------------------------ admission
    def gate(self, req: Request, d: Deployment) -> tuple[Lease, bool]:
        """Take the limits and claim the deployment, or raise ``Failover`` (skipped).

        Returns the lease (release it when the attempt ends) and whether the
        attempt is the half-open circuit's probe."""
        name = str(d.name)
        ctx_reason = context_skip(req, d)
        if ctx_reason:
            req.blocked[name] = None
            self.note_skip(req, d, ctx_reason)
            raise Failover(name, ctx_reason)
        now = time.time()
        scopes = [
            (ROUTER_SCOPE, req.limits),
            (name, Limits(d.rpm, d.tpm, d.max_concurrency, window=req.limits.window)),
        ]
        tokens = req.prompt_tokens + req.output_tokens
        lease, wait, why = try_acquire(self.store, scopes, tokens, now)
        if lease is not None:
            self.release_pending(req)
            lease.on_release = self.waker.notify
        if lease is None:
            req.blocked[name] = now + wait
            req.queue_blocked.add(name)
            if "max_concurrency" in why:
                req.slot_blocked.add(name)
            self.note_skip(req, d, f"limit: {why}")
            raise Failover(name, why)
        stale_after = self._probe_timeout(req, d)
        # the clock is read inside the store's atomic update (now=None), so the
        # admission time is ordered with every cooldown the store records
        allowed, reason, ready_at, is_probe, req.sent_at = self.store.health_update(
            name, lambda r: claim(r, None, self.health_cfg, stale_after)
        )
        if not allowed:
            lease.release(refund=True)
            req.blocked[name] = ready_at
            self.note_skip(req, d, reason)
            raise Failover(name, reason)
        return lease, is_probe

    def _probe_timeout(self, req: Request, d: Deployment) -> float:
        """Age (s) at which ``d``'s half-open probe in flight counts as lost."""
        return probe_timeout(self.health_cfg, d.timeout or req.timeout)

    def note_skip(self, req: Request, d: Deployment, reason: str) -> None:
        """Record a skip once per deployment and request (queued requests re-check
        often; repeats only bump the entry's ``count``)."""
        name = str(d.name)
        req.skip_counts[name] = req.skip_counts.get(name, 0) + 1
        if name in req.skipped_once:
            for a in reversed(req.attempts):
                if a["deployment"] == name and a["outcome"] == "skipped":
                    a["reason"], a["count"] = reason, req.skip_counts[name]
                    break
            return
        req.skipped_once.add(name)
        self.stats[name].skip()
        req.attempts.append(
            {
                "deployment": name,
                "outcome": "skipped",
                "reason": reason,
                "count": 1,
                "pass": req.passes,
            }
        )

    # ------------------------------------------------------------------ waiting
    def next_wait(self, req: Request) -> float:
        """Seconds until the earliest deployment may serve the request.

        Raises:
            NoDeploymentAvailableError: none ever can, or not within the deadline.
        """
        now = time.time()
        ready: dict[str, tuple[float, bool]] = {}
        for d in req.deployments:
            name = str(d.name)
            if context_skip(req, d) or name in req.exhausted:
                continue
            rec = self.store.health_get(name)
            state, until = state_of(rec, now)
            if state == "disabled":
                continue
            t = now
            if state in ("cooling", "open") and until is not None:
                t = until
            elif state == "half-open" and rec.get("probe_at") is not None:
                t = now + 0.05
            queued = False
            if name in req.blocked:
                b = req.blocked[name]
                if b is None:
                    continue
                if name in req.queue_blocked and b >= t:
                    queued = True
                t = max(t, b)
            if name in req.pass_failed:
                t = max(t, now + backoff(req.passes, 0.25, 5.0))
            ready[name] = (t, queued)
        if not ready:
            raise NoDeploymentAvailableError(
                "no deployment can serve this request", errors=self.error_report(req)
            )
        name, (t, queued) = min(ready.items(), key=lambda kv: kv[1][0])
        wait = max(0.0, t - now)
        if name in req.slot_blocked:
            # woken when a slot is given back; the poll interval bounds the wait
            req.wait_for_slot = True
            wait = SLOT_POLL_S
        if queued:
            req.queued_s += wait
            if req.deadline_at is not None:
                req.deadline_at += wait
        if req.deadline_at is not None and now + wait > req.deadline_at:
            raise NoDeploymentAvailableError(
                f"no deployment available within the deadline of {req.deadline:g} s "
                f"(earliest: {name} in {wait:.2f} s)",
                errors=self.error_report(req),
            )
        req.waited_s += wait
        return wait

    def sleep(self, req: Request, wait: float) -> None:
        if req.wait_for_slot:
            self.waker.wait(wait)  # queue time already added by next_wait
        else:
            time.sleep(wait)

    async def asleep(self, req: Request, wait: float) -> None:
        if req.wait_for_slot:
            await self.waker.await_(wait)  # queue time already added by next_wait
        else:
            await asyncio.sleep(wait)

    def error_report(self, req: Request) -> dict[str, Any]:
        """Per deployment: its last error, skip reason, health reason or ``"not tried"``."""
        out: dict[str, Any] = {}
        skip = {c["deployment"]: c["skipped"] for c in req.candidates if c.get("skipped")}
        for d in req.deployments:
            name = str(d.name)
            if name in req.errors:
                out[name] = req.errors[name]
            elif name in skip:
                out[name] = skip[name]
            else:
                rec = self.store.health_get(name)
                out[name] = rec.get("reason") or rec.get("last_error") or "not tried"
        return out
