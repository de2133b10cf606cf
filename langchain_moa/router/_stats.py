"""Per-deployment counters: successes, failures, latency, tokens, spend, and the
admission queue (depth, time waited, what limits)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DeploymentStats", "percentile"]

SAMPLES = 1000
"""Latency samples kept per deployment for the percentiles."""


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; ``None`` if empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(1, math.ceil(q / 100.0 * len(s)))
    return s[k - 1]


@dataclass
class DeploymentStats:
    """Counters of one deployment in this process (thread-safe)."""

    alpha: float = 0.3
    successes: int = 0
    failures: int = 0
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    skips: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    spend_usd: float = 0.0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    ttfts: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    ewma_latency: float | None = None
    ewma_ttft: float | None = None
    last_error: str | None = None
    queue_depth: int = 0
    queued_requests: int = 0
    queue_waits: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    limited_by: str | None = None
    limited_until: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _ewma(self, old: float | None, x: float) -> float:
        return x if old is None else self.alpha * x + (1 - self.alpha) * old

    def success(
        self,
        latency_s: float,
        ttft_s: float | None,
        tokens_in: int,
        tokens_out: int,
        cost: float | None,
    ) -> None:
        with self._lock:
            self.successes += 1
            self.latencies.append(latency_s)
            self.ewma_latency = self._ewma(self.ewma_latency, latency_s)
            if ttft_s is not None:
                self.ttfts.append(ttft_s)
                self.ewma_ttft = self._ewma(self.ewma_ttft, ttft_s)
            self.input_tokens += tokens_in
            self.output_tokens += tokens_out
            if cost:
                self.spend_usd += cost

    def queue_depth_add(self, n: int) -> None:
        with self._lock:
            self.queue_depth = max(0, self.queue_depth + n)

    def limited(self, factor: str, until: float | None) -> None:
        """The deployment refused a request: ``factor`` (rpm, tpm, concurrency,
        cooldown) until ``until`` (epoch s; ``None``: until a slot frees)."""
        with self._lock:
            self.limited_by, self.limited_until = factor, until

    def admitted(self, queued_s: float) -> None:
        """A request was admitted after ``queued_s`` seconds in the queue."""
        with self._lock:
            if queued_s > 0:
                self.queued_requests += 1
                self.queue_waits.append(queued_s)
            if self.limited_by in ("concurrency", "cooldown") or (
                self.limited_until is not None and self.limited_until <= time.time()
            ):
                self.limited_by = self.limited_until = None

    def skip(self) -> None:
        with self._lock:
            self.skips += 1

    def failure(self, kind: str, message: str, latency_s: float | None) -> None:
        with self._lock:
            self.failures += 1
            self.failures_by_kind[kind] = self.failures_by_kind.get(kind, 0) + 1
            self.last_error = message
            if latency_s is not None and kind == "timeout":
                # a timeout says something about latency too
                self.ewma_latency = self._ewma(self.ewma_latency, latency_s)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = list(self.latencies)
            ttft = list(self.ttfts)
            waits = list(self.queue_waits)
            limited = self.limited_by
            if self.limited_until is not None and self.limited_until <= time.time():
                limited = None
            return {
                "successes": self.successes,
                "failures": self.failures,
                "failures_by_kind": dict(self.failures_by_kind),
                "skips": self.skips,
                "latency_p50_s": percentile(lat, 50),
                "latency_p95_s": percentile(lat, 95),
                "ttft_p50_s": percentile(ttft, 50),
                "ttft_p95_s": percentile(ttft, 95),
                "ewma_latency_s": self.ewma_latency,
                "ewma_ttft_s": self.ewma_ttft,
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "tokens": self.input_tokens + self.output_tokens,
                "spend_usd": self.spend_usd,
                "last_error": self.last_error,
                "queue_depth": self.queue_depth,
                "limited_by": limited,
                "queued_requests": self.queued_requests,
                "queue_wait_p50_s": percentile(waits, 50),
                "queue_wait_p95_s": percentile(waits, 95),
                "queue_wait_max_s": max(waits) if waits else None,
            }
