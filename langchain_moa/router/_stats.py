"""Per-deployment counters: successes, failures, latency, tokens, spend."""

from __future__ import annotations

import math
import threading
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
            }
