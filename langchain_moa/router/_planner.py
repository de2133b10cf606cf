"""Planning one request: which deployments to try and in what order, which to skip
and why, whether an attempt may be sent now (the gate), and how long to wait
before the next pass when none could answer.

Waiting goes through the admission queue (:mod:`._queue`): a request that finds
others queued for the same deployments queues behind them without planning; only
the queue's head plans, and it sleeps exactly until the limiter's or the health
record's next possible start, or until capacity frees. Time spent queued (behind
other requests, or for a rate / concurrency limit) does not count against the
request's deadline; waiting for a cooldown does."""

from __future__ import annotations

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
from langchain_moa.router._limits import Lease, Limits, admit, tolerance
from langchain_moa.router._queue import WaitQueue
from langchain_moa.router._request import SLOT_POLL_S, Failover, Request, context_skip
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
        self.queues: dict[tuple[str, ...], WaitQueue] = {}
        self._queues_lock = threading.Lock()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    # ------------------------------------------------------------------ ordering
    def plan(self, req: Request) -> list[tuple[Deployment, int]]:
        """Start a pass: rank the deployments that can serve ``req`` now, record the
        others' skip reasons in ``req.candidates``; returns ``(deployment, retry)``
        entries, retries of a deployment right after its first try.

        A new request that finds others queued for the same deployments, or every
        deployment at a rate / concurrency limit, joins the queue instead (returns no
        entries; :meth:`sleep` waits for its turn): no pass is planned only to be
        refused."""
        if req.waiter is None and req.passes == 0 and self._limits_set(req):
            now = time.time()
            q = self._queue(req)
            if (
                q.head is not None
                or (q.planning > 0 and q.planning >= self._free(req, now))
                or self._at_limit(req, now)
            ):
                self._join(req, now)
                req.queue["nap_queued"] = True
                return []
            q.begin_planning()  # arrivals queue behind this pass until it is admitted
            req.queue["planning"] = True
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
                self._drop_pending(req)
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
        """The request ends (answered or raised): give back its least-busy
        reservation and its place in the queue."""
        self._end_planning(req)
        self._leave(req)
        self._drop_pending(req)

    def _drop_pending(self, req: Request) -> None:
        """Give back the least-busy reservation of ``req``, if it holds one."""
        if req.pending is not None:
            self.store.slot_release(f"pending:{req.pending}")
            req.pending = None

    # ------------------------------------------------------------------ admission
    def gate(self, req: Request, d: Deployment) -> tuple[Lease, bool]:
        """Take the limits and claim the deployment, or raise ``Failover`` (skipped).

        Returns the lease (release it when the attempt ends) and whether the
        attempt is the half-open circuit's probe. The limiter's answer is an
        :class:`~langchain_moa.router._limits.Admission` value; a refusal records
        when to try again (``req.blocked``) and why (``req.queue["limited_by"]``)."""
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
        adm = admit(self.store, scopes, req.prompt_tokens + req.output_tokens, now)
        if adm.lease is None:
            req.blocked[name] = adm.until if adm.until is not None else now + SLOT_POLL_S
            req.queue_blocked.add(name)
            if adm.factor == "concurrency":
                req.slot_blocked.add(name)
            self._limited(req, name, str(adm.factor), req.blocked[name])
            self.note_skip(req, d, f"limit: {adm.reason}")
            raise Failover(name, adm.reason)
        lease = adm.lease
        lease.on_change = self.capacity_changed
        stale_after = self._probe_timeout(req, d)
        # the clock is read inside the store's atomic update (now=None), so the
        # admission time is ordered with every cooldown the store records
        allowed, reason, ready_at, is_probe, req.sent_at = self.store.health_update(
            name, lambda r: claim(r, None, self.health_cfg, stale_after)
        )
        if not allowed:
            lease.release(refund=True)
            req.blocked[name] = ready_at
            self._limited(req, name, "cooldown", ready_at)
            self.note_skip(req, d, reason)
            raise Failover(name, reason)
        self._drop_pending(req)
        self._admitted(req, name, now)
        return lease, is_probe

    def _limited(self, req: Request, name: str, factor: str, until: float | None) -> None:
        req.queue["limited_by"] = factor
        req.queue["limited_deployment"] = name
        self._queue(req).limited = (factor, name)
        self.stats[name].limited(factor, until)

    def _admitted(self, req: Request, name: str, now: float) -> None:
        """The request got capacity: it leaves the queue (the next one becomes head)."""
        if req.waiter is not None:
            q = self._queue(req)
            req.queue["was_head"] = q.is_head(req.waiter)
            if "limited_by" not in req.queue and q.limited is not None:
                # it waited behind others: what held the queue up held it up
                req.queue["limited_by"], req.queue["limited_deployment"] = q.limited
            self._leave(req)
        self._end_planning(req)
        self.stats[name].admitted(req.queued_s)

    # ------------------------------------------------------------------ the queue
    def _queue(self, req: Request) -> WaitQueue:
        key = req.queue.get("key")
        if key is None:
            key = req.queue["key"] = tuple(str(d.name) for d in req.deployments)
        q = self.queues.get(key)
        if q is None:
            with self._queues_lock:
                q = self.queues.setdefault(key, WaitQueue())
        return q

    def _join(self, req: Request, now: float) -> bool:
        """Queue ``req`` (if not queued yet); whether it is the head."""
        q = self._queue(req)
        if req.waiter is None:
            front = bool(req.queue.get("was_head"))
            req.waiter, head = q.join(now, front=front)
            req.queue.setdefault("position", req.waiter.position)
            for name in req.queue["key"]:
                self.stats[name].queue_depth_add(1)
            return head
        return q.is_head(req.waiter)

    def _leave(self, req: Request) -> None:
        w = req.waiter
        if w is not None:
            self._queue(req).leave(w)
            req.waiter = None
            for name in req.queue["key"]:
                self.stats[name].queue_depth_add(-1)

    def capacity_changed(self) -> None:
        """A slot was given back or a schedule moved earlier: wake every queue's head."""
        for q in list(self.queues.values()):
            q.notify()

    def queue_depth(self, name: str) -> int:
        """Requests queued that may use deployment ``name``."""
        return sum(len(q) for key, q in list(self.queues.items()) if name in key)

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
        """Seconds until the earliest deployment may serve the request (0 for a
        request waiting its turn in the queue: :meth:`sleep` waits for that).

        Raises:
            NoDeploymentAvailableError: none ever can, or not within the deadline
                (time queued behind limits does not count).
        """
        if req.waiter is not None and (req.passes == 0 or not self._queue(req).is_head(req.waiter)):
            return 0.0  # queued on arrival, or waiting its turn
        self._end_planning(req)  # the pass ended without an admission
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
        req.queue["nap_queued"] = queued
        if not queued:
            req.queue["limited_by"] = "cooldown"
            req.queue["limited_deployment"] = name
        if not queued and req.deadline_at is not None and now + wait > req.deadline_at:
            raise NoDeploymentAvailableError(
                f"no deployment available within the deadline of {req.deadline:g} s "
                f"(earliest: {name} in {wait:.2f} s)",
                errors=self.error_report(req),
            )
        return wait

    def sleep(self, req: Request, wait: float) -> None:
        """Wait in the queue: the head sleeps ``wait`` seconds (or until capacity
        frees), the others until it is their turn; then, as head, until
        :meth:`ready_at` (so that its next pass is not refused)."""
        t0 = time.time()
        head = self._join(req, t0)
        req.waiter.sleep(wait if head else None)
        while (nap := self._nap(req)) is not None:
            req.waiter.sleep(nap)
        self._slept(req, t0, head)

    async def asleep(self, req: Request, wait: float) -> None:
        """:meth:`sleep` for asyncio tasks."""
        t0 = time.time()
        head = self._join(req, t0)
        await req.waiter.asleep(wait if head else None)
        while (nap := self._nap(req)) is not None:
            await req.waiter.asleep(nap)
        self._slept(req, t0, head)

    def _nap(self, req: Request) -> float | None:
        """Seconds the head should still sleep before planning (``None``: plan now)."""
        if self._queue(req).planning > 0:
            return 0.05  # an arrival's pass is under way; its end wakes the head
        now = time.time()
        t = self.ready_at(req, now)
        return t - now if now < t < math.inf else None

    def ready_at(self, req: Request, now: float) -> float:
        """Earliest time (epoch s) one of ``req``'s deployments could admit it, read
        without taking anything: health windows, the GCRA schedules, full
        concurrency slots (``now + SLOT_POLL_S``: a release wakes the head sooner).
        ``math.inf`` when none can (planning will say why). Records what limits
        (``req.queue["limited_by"]``, the deployment's stats)."""
        best, name, factor = self._ready(req, now)
        if name is not None and factor is not None and best > now:
            self._limited(req, name, factor, best)
        return best

    @staticmethod
    def _limits_set(req: Request) -> bool:
        lim = req.limits
        return bool(lim.rpm or lim.tpm or lim.max_concurrency) or any(
            d.rpm or d.tpm or d.max_concurrency for d in req.deployments
        )

    def _end_planning(self, req: Request) -> None:
        if req.queue.pop("planning", None):
            self._queue(req).end_planning()

    def _at_limit(self, req: Request, now: float) -> bool:
        """Whether every deployment of ``req`` is at a rate or concurrency limit now."""
        t, name, factor = self._ready(req, now)
        limited = factor in ("rpm", "tpm", "concurrency")
        if now < t < math.inf and name is not None and limited:
            self._limited(req, name, factor, t)
            return True
        return False

    @staticmethod
    def _costs(req: Request, own: list[tuple[str, float]]) -> list[float]:
        """Seconds ``req`` occupies on each schedule it needs (router and ``own``)."""
        lim, tokens = req.limits, req.prompt_tokens + req.output_tokens
        pairs = [(k, v) for k, v in (("rpm", lim.rpm), ("tpm", lim.tpm)) if v] + own
        return [lim.window / v * (1.0 if k == "rpm" else tokens) for k, v in pairs]

    def _ready(self, req: Request, now: float) -> tuple[float, str | None, str | None]:
        best, best_name, best_factor = math.inf, None, None
        lim = req.limits
        router_keys = [f"{k}:{ROUTER_SCOPE}" for k, v in (("rpm", lim.rpm), ("tpm", lim.tpm)) if v]
        router_full = (
            lim.max_concurrency is not None
            and self.store.slot_count(f"inflight:{ROUTER_SCOPE}") >= lim.max_concurrency
        )
        for d in req.deployments:
            name = str(d.name)
            if name in req.exhausted or context_skip(req, d):
                continue
            state, until = state_of(self.store.health_get(name), now)
            if state == "disabled":
                continue
            t, factor = now, None
            if state in ("cooling", "open") and until is not None:
                t, factor = until, "cooldown"
            own = [(k, v) for k, v in (("rpm", d.rpm), ("tpm", d.tpm)) if v]
            keys = router_keys + [f"{k}:{name}" for k, _ in own]
            slot = self.store.limits_peek(keys) if keys else None
            if slot is not None:
                # admissible this much before the slot (see _limits.tolerance)
                early = slot - min(tolerance(c) for c in self._costs(req, own))
                if early > t:
                    t, factor = early, self._binding_kind(keys, slot)
            if router_full or (
                d.max_concurrency is not None
                and self.store.slot_count(f"inflight:{name}") >= d.max_concurrency
            ):
                if now + SLOT_POLL_S > t:
                    t, factor = now + SLOT_POLL_S, "concurrency"
            if t < best:
                best, best_name, best_factor = t, name, factor
        return best, best_name, best_factor

    def _binding_kind(self, keys: list[str], slot: float) -> str:
        """``"rpm"`` or ``"tpm"``: the kind of schedule among ``keys`` whose next slot is
        ``slot`` (the latest of them)."""
        kinds = {k.split(":", 1)[0] for k in keys}
        if len(kinds) == 1:
            return kinds.pop()
        tpm = self.store.limits_peek([k for k in keys if k.startswith("tpm:")])
        return "tpm" if tpm == slot else "rpm"

    def _free(self, req: Request, now: float) -> float:
        """How many requests ``req``'s deployments could admit right now (read, not
        taken): a rate schedule that is free admits one, a concurrency limit its free
        slots, a deployment without limits any number. Arrivals plan alongside the
        passes under way only while that leaves room; otherwise they queue."""
        lim = req.limits
        router_keys = [f"{k}:{ROUTER_SCOPE}" for k, v in (("rpm", lim.rpm), ("tpm", lim.tpm)) if v]
        cap = math.inf
        if router_keys:
            tat = self.store.limits_peek(router_keys)
            cap = 0.0 if tat is not None and tat > now else 1.0
        if lim.max_concurrency is not None:
            used = self.store.slot_count(f"inflight:{ROUTER_SCOPE}")
            cap = min(cap, max(0, lim.max_concurrency - used))
        total = 0.0
        for d in req.deployments:
            name = str(d.name)
            state, _ = state_of(self.store.health_get(name), now)
            if state in ("disabled", "cooling", "open") or name in req.exhausted:
                continue
            free = math.inf
            keys = [f"{k}:{name}" for k, v in (("rpm", d.rpm), ("tpm", d.tpm)) if v]
            if keys:
                tat = self.store.limits_peek(keys)
                free = 0.0 if tat is not None and tat > now else 1.0
            if d.max_concurrency is not None:
                used = self.store.slot_count(f"inflight:{name}")
                free = min(free, max(0, d.max_concurrency - used))
            total += free
        return min(cap, total)

    def _slept(self, req: Request, t0: float, head: bool) -> None:
        elapsed = time.time() - t0
        req.waited_s += elapsed
        if not head or req.queue.get("nap_queued"):
            # queued behind other requests or a rate / concurrency limit: the
            # deadline is about the request's own failures and cooldowns
            req.queued_s += elapsed
            if req.deadline_at is not None:
                req.deadline_at += elapsed
        req.queue["waits"] = req.queue.get("waits", 0) + 1

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
