"""Rate and concurrency limits that make requests wait, not fail.

A :class:`Limits` is checked per scope (the router as a whole, and each
deployment). Admission is all-or-nothing across scopes: RPM and TPM windows are
reserved first (see :func:`~langchain_moa.router._store.window_decision`), then a
concurrency slot; if any step refuses, what was taken is given back and the
caller gets the time to wait.

TPM reservations hold the *estimated* tokens (prompt estimate + ``max_tokens``)
and are reconciled with the real ``usage_metadata.total_tokens`` afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from langchain_moa.errors import ConfigurationError
from langchain_moa.router._store import RouterStore

__all__ = ["Limits", "Lease", "try_acquire"]

CONCURRENCY_POLL_S = 0.02
"""Wait reported for a full concurrency limit (seconds); the router wakes waiters
when a slot is released in-process and polls every 0.25 s for other processes."""


@dataclass(frozen=True)
class Limits:
    """Limits of one scope. ``None`` = unlimited.

    Attributes:
        rpm: requests per ``window`` seconds (default window 60 s = per minute).
        tpm: tokens (prompt + completion) per ``window`` seconds.
        max_concurrency: requests in flight.
        window: the window length in seconds (60 for "per minute").
        pace: spread admissions evenly at the limit's rate (see ``window_decision``).
    """

    rpm: float | None = None
    tpm: float | None = None
    max_concurrency: int | None = None
    window: float = 60.0
    pace: bool = True

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigurationError(
                    f"{name} must be > 0 (per {self.window:g} s) or None, got {v!r}"
                )
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigurationError(
                f"max_concurrency must be >= 1 or None, got {self.max_concurrency!r}"
            )
        if not self.window > 0:
            raise ConfigurationError(f"window must be > 0 seconds, got {self.window!r}")


@dataclass
class Lease:
    """What one admitted request holds; give it back with :meth:`release`."""

    store: RouterStore
    windows: list[tuple[str, str, str]] = field(default_factory=list)  # (key, rid, "rpm"|"tpm")
    slots: list[str] = field(default_factory=list)
    released: bool = False
    on_release: Callable[[], None] | None = None

    def reconcile_tokens(self, tokens: float) -> None:
        """Replace the TPM reservations' estimate by the real token count."""
        for key, rid, kind in self.windows:
            if kind == "tpm":
                self.store.window_adjust(key, rid, tokens)

    def release(self, refund: bool = False) -> None:
        """Free the concurrency slots; with ``refund`` also drop the window reservations
        (for requests that were never sent)."""
        if self.released:
            return
        self.released = True
        for key in self.slots:
            self.store.slot_release(key)
        if self.slots and self.on_release is not None:
            self.on_release()
        if refund:
            for key, rid, _ in self.windows:
                self.store.window_release(key, rid)


def try_acquire(
    store: RouterStore,
    scopes: list[tuple[str, Limits]],
    tokens: float,
    now: float,
) -> tuple[Lease | None, float, str]:
    """Admit one request of ``tokens`` estimated tokens into every scope, or none.

    Every scope also gets its in-flight counter (``inflight:<scope>``) incremented,
    limited by ``max_concurrency``; that counter feeds the least-busy strategy.

    Returns ``(lease, 0.0, "")`` or ``(None, wait_seconds, reason)``.
    """
    lease = Lease(store)
    for scope, lim in scopes:
        for kind, limit in (("rpm", lim.rpm), ("tpm", lim.tpm)):
            if limit is None:
                continue
            amount = 1.0 if kind == "rpm" else float(tokens)
            key = f"{kind}:{scope}"
            rid, wait = store.window_acquire(key, amount, float(limit), lim.window, now, lim.pace)
            if rid is None:
                lease.release(refund=True)
                return (
                    None,
                    wait,
                    f"{scope}: {kind} limit {limit:g}/{lim.window:g}s, next slot in {wait:.2f} s",
                )
            lease.windows.append((key, rid, kind))
    for scope, lim in scopes:
        key = f"inflight:{scope}"
        if not store.slot_acquire(key, lim.max_concurrency):
            lease.release(refund=True)
            return (
                None,
                CONCURRENCY_POLL_S,
                f"{scope}: max_concurrency {lim.max_concurrency} reached",
            )
        lease.slots.append(key)
    return lease, 0.0, ""
