"""Rate and concurrency limits that make requests wait, not fail.

A :class:`Limits` is checked per scope (the router as a whole, and each
deployment). RPM and TPM are kept as **GCRA** state (the Generic Cell Rate
Algorithm of ATM networks, ITU-T I.371; a token bucket of depth one request):
one number per limit, the *theoretical arrival time* ``tat`` (epoch seconds) at
which the schedule next has room. Admitting ``a`` units (1 request, or ``a``
tokens) under a limit of ``L`` per ``W`` seconds needs ``now >= tat - tolerance``
and moves ``tat = max(tat, now) + a * W / L``. So:

* admission is O(1) whatever the traffic (no log of the last minute is kept);
* two admissions are never closer than the first one's interval (``W / L`` per
  unit) less a fixed **2 ms** (at most 10 % of the interval): a request may be
  admitted that much before its slot, so that the queue's head has time to plan
  its pass without lowering the rate, and then takes the slot itself
  (``tat = tat + a * W / L``). There is no other burst tolerance: a request
  admitted late is never "made up for" by the next one coming early, and idle time
  earns no credit;
* a TPM reservation (prompt estimate + ``max_tokens``, or the router's
  ``expected_output_tokens`` when ``max_tokens`` is unset) is reconciled with the
  real ``usage_metadata`` when the answer arrives by moving ``tat`` by
  ``(real - reserved) * W / L``: the schedule of every queued request moves with it.

Admission across scopes (router-wide and per deployment; RPM, TPM and
``max_concurrency``) is one atomic store call, all or nothing
(:meth:`~langchain_moa.router._store.RouterStore.limits_admit`), and its answer
is a value: :class:`Admission`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from langchain_moa.errors import ConfigurationError

if TYPE_CHECKING:
    from langchain_moa.router._store import RouterStore

__all__ = ["FACTORS", "TOLERANCE_S", "Admission", "Lease", "Limits", "admit", "gcra", "tolerance"]

FACTORS = ("rpm", "tpm", "concurrency", "cooldown")
"""Why a request waits: a rate limit, the concurrency limit, or a health window."""


TOLERANCE_S = 0.002
"""Seconds a request may be admitted before its slot (capped at 10 % of its interval)."""


def tolerance(cost_s: float) -> float:
    """How early (s) an admission occupying ``cost_s`` of a schedule may come."""
    return min(TOLERANCE_S, 0.1 * cost_s)


@dataclass(frozen=True)
class Limits:
    """Limits of one scope. ``None`` = unlimited.

    Attributes:
        rpm: requests per ``window`` seconds (default window 60 s = per minute).
        tpm: tokens (prompt + completion) per ``window`` seconds.
        max_concurrency: requests in flight.
        window: the window length in seconds (60 for "per minute").
        pace: kept for compatibility; admissions are always paced (GCRA).

    Raises:
        ConfigurationError: ``rpm`` / ``tpm`` not > 0, ``max_concurrency`` < 1,
            ``window`` not > 0.
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


def gcra(tat: float | None, cost_s: float, now: float) -> tuple[float, float | None]:
    """One GCRA decision: ``(wait_s, new_tat)``.

    ``tat`` is the key's theoretical arrival time (``None``: never used) and
    ``cost_s`` the seconds this admission occupies on the schedule (``amount *
    window / limit``). Admitted (``wait_s == 0``, ``new_tat = max(tat, now) +
    cost_s``) when ``now >= tat - tolerance(cost_s)``, else ``wait_s`` is the time
    until then and ``new_tat`` is ``None`` (nothing changes). The Redis store runs
    the same rule in Lua."""
    if tat is not None and tat - tolerance(cost_s) > now:
        return tat - tolerance(cost_s) - now, None
    return 0.0, max(tat or now, now) + cost_s


@dataclass
class Lease:
    """What one admitted request holds; give it back with :meth:`release`.

    Attributes:
        rates: ``(key, cost_s, kind, seconds_per_unit)`` per rate limit taken.
        slots: concurrency keys taken (``inflight:<scope>``).
        limited_slots: whether one of them has a ``max_concurrency`` (only then
            does giving it back wake the queue).
        on_change: called when capacity frees (a slot is given back, or a TPM
            reconciliation moves a schedule earlier): wakes the queue.
    """

    store: RouterStore
    rates: list[tuple[str, float, str, float]] = field(default_factory=list)
    slots: list[str] = field(default_factory=list)
    limited_slots: bool = False
    released: bool = False
    on_change: Callable[[], None] | None = None

    def reconcile_tokens(self, tokens: float) -> None:
        """Move each TPM schedule by ``(tokens - reserved) * seconds_per_token``."""
        moved_earlier = False
        for i, (key, cost, kind, per_unit) in enumerate(self.rates):
            if kind != "tpm":
                continue
            delta = float(tokens) * per_unit - cost
            if delta:
                self.store.limits_adjust(key, delta)
                self.rates[i] = (key, cost + delta, kind, per_unit)
                moved_earlier = moved_earlier or delta < 0
        if moved_earlier and self.on_change is not None:
            self.on_change()

    def release(self, refund: bool = False) -> None:
        """Free the concurrency slots; with ``refund`` also give the rate schedule
        back (for requests that were never sent)."""
        if self.released:
            return
        self.released = True
        for key in self.slots:
            self.store.slot_release(key)
        if refund:
            for key, cost, _, _ in self.rates:
                self.store.limits_adjust(key, -cost)
        if (self.limited_slots or refund) and self.on_change is not None:
            self.on_change()


@dataclass(frozen=True)
class Admission:
    """The limiter's answer for one request on one deployment (a value, not an
    exception).

    Attributes:
        verdict: ``"admitted"`` (``lease`` holds what was taken), ``"wait"`` (retry
            at ``until``; ``None`` = when a concurrency slot is given back) or
            ``"skip"`` (this deployment will not take the request; see ``reason``).
        factor: what limits: ``"rpm"``, ``"tpm"``, ``"concurrency"`` or
            ``"cooldown"`` (``None`` when admitted).
        scope: the limiting scope (a deployment name or the router scope).
        reason: a sentence for the decision metadata.
    """

    verdict: Literal["admitted", "wait", "skip"]
    lease: Lease | None = None
    until: float | None = None
    factor: str | None = None
    scope: str | None = None
    reason: str = ""


def admit(
    store: RouterStore,
    scopes: list[tuple[str, Limits]],
    tokens: float,
    now: float,
) -> Admission:
    """Admit one request of ``tokens`` estimated tokens into every scope, or none.

    Every scope also gets its in-flight counter (``inflight:<scope>``) incremented,
    limited by ``max_concurrency``; that counter feeds the least-busy strategy.
    One atomic store call: O(1) in the traffic, whatever the window.
    """
    rates: list[tuple[str, float, str, float]] = []
    for scope, lim in scopes:
        for kind, limit in (("rpm", lim.rpm), ("tpm", lim.tpm)):
            if limit is None:
                continue
            per_unit = lim.window / float(limit)
            amount = 1.0 if kind == "rpm" else float(tokens)
            rates.append((f"{kind}:{scope}", amount * per_unit, kind, per_unit))
    slots = [(f"inflight:{scope}", lim.max_concurrency) for scope, lim in scopes]
    wait, index = store.limits_admit([(k, c) for k, c, _, _ in rates], slots, now)
    if index < 0:
        limited = any(c is not None for _, c in slots)
        return Admission("admitted", lease=Lease(store, rates, [k for k, _ in slots], limited))
    if index < len(rates):
        key, _, kind, _ = rates[index]
        scope = key.split(":", 1)[1]
        lim = dict(scopes)[scope]
        limit = lim.rpm if kind == "rpm" else lim.tpm
        return Admission(
            "wait",
            until=now + wait,
            factor=kind,
            scope=scope,
            reason=f"{scope}: {kind} limit {limit:g}/{lim.window:g}s, next slot in {wait:.3f} s",
        )
    key, limit_c = slots[index - len(rates)]
    scope = key.split(":", 1)[1]
    return Admission(
        "wait",
        until=None,
        factor="concurrency",
        scope=scope,
        reason=f"{scope}: max_concurrency {limit_c} reached",
    )
