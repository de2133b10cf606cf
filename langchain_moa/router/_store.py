"""State the router shares between requests (and, with Redis, between processes).

Two kinds of state live behind :class:`RouterStore`:

* **limiter state**: one GCRA schedule per RPM / TPM key (its theoretical
  arrival time, see :mod:`._limits`; O(1) per admission) and in-flight counters
  for concurrency;
* **health records**: one small dict per deployment (state, cooldown end,
  consecutive failures, half-open probe claim, last error).

Every method is atomic, so the router's check-then-act steps (admit a request,
claim the single half-open probe) stay correct under threads, asyncio tasks and,
with a shared store, several worker processes. Times are wall-clock seconds
(``time.time()``) so that processes agree on them.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from langchain_moa.router._limits import gcra, tolerance

__all__ = ["RouterStore", "InMemoryStore", "RedisStore"]

T = TypeVar("T")


class RouterStore(ABC):
    """Atomic operations on limiter and health state. Implement this to share state."""

    # --- rate limits (RPM / TPM, GCRA) and concurrency -----------------------------
    @abstractmethod
    def limits_admit(
        self,
        rates: Sequence[tuple[str, float]],
        slots: Sequence[tuple[str, int | None]],
        now: float,
    ) -> tuple[float, int]:
        """Admit one request into every rate schedule and concurrency slot, or none.

        ``rates`` are ``(key, cost_s)``: the GCRA schedule ``key`` (see
        :func:`~langchain_moa.router._limits.gcra`) and the seconds this request
        occupies on it; ``slots`` are ``(key, limit)`` in-flight counters
        (``limit=None``: only count). Atomic and O(1) per key.

        Returns ``(0.0, -1)`` when admitted (every schedule moved, every slot
        taken), else ``(wait_s, i)`` with ``i`` the index of the first refusing
        entry in ``rates + slots`` (``wait_s`` is ``-1.0`` for a full slot: until
        one is given back).
        """

    @abstractmethod
    def limits_adjust(self, key: str, seconds: float) -> None:
        """Move schedule ``key`` by ``seconds`` (negative = earlier): TPM
        reconciliation, or a refund for a request that was never sent."""

    def limits_peek(self, keys: Sequence[str]) -> float | None:
        """The latest theoretical arrival time (epoch s) of the schedules ``keys``
        (``None``: none set), without admitting anything. The queue's head uses it
        to sleep until its start instead of planning a pass that would be refused."""
        return None

    # --- concurrency slots -----------------------------------------------------------
    @abstractmethod
    def slot_acquire(self, key: str, limit: int | None) -> bool:
        """Take a slot if fewer than ``limit`` are taken (``None``: always, just count)."""

    @abstractmethod
    def slot_release(self, key: str) -> None:
        """Give a slot back."""

    @abstractmethod
    def slot_count(self, key: str) -> int:
        """Slots currently taken (requests in flight)."""

    # --- health records --------------------------------------------------------------
    @abstractmethod
    def health_get(self, name: str) -> dict[str, Any]:
        """The deployment's health record (``{}`` when never touched)."""

    @abstractmethod
    def health_update(
        self, name: str, fn: Callable[[dict[str, Any]], tuple[dict[str, Any], T]]
    ) -> T:
        """Atomically replace the record by ``fn(record)[0]`` and return ``fn(record)[1]``.

        ``fn`` may be called more than once (optimistic stores retry on conflict),
        so it must be a pure function of the record.
        """

    def reset(self) -> None:
        """Forget all state (tests, or after changing deployments). Optional."""
        raise NotImplementedError(f"{type(self).__name__} cannot reset")


class InMemoryStore(RouterStore):
    """Process-local store (the default). Thread-safe; usable from asyncio code."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}
        self._slots: dict[str, int] = {}
        self._health: dict[str, dict[str, Any]] = {}

    def limits_admit(
        self,
        rates: Sequence[tuple[str, float]],
        slots: Sequence[tuple[str, int | None]],
        now: float,
    ) -> tuple[float, int]:
        with self._lock:
            for i, (key, cost) in enumerate(rates):
                wait = gcra(self._tat.get(key), cost, now)[0]
                if wait > 0:
                    return wait, i
            for j, (key, limit) in enumerate(slots):
                if limit is not None and self._slots.get(key, 0) >= limit:
                    return -1.0, len(rates) + j
            for key, cost in rates:
                self._tat[key] = gcra(self._tat.get(key), cost, now)[1]  # type: ignore[assignment]
            for key, _ in slots:
                self._slots[key] = self._slots.get(key, 0) + 1
            return 0.0, -1

    def limits_adjust(self, key: str, seconds: float) -> None:
        with self._lock:
            if key in self._tat:
                self._tat[key] += seconds

    def limits_peek(self, keys: Sequence[str]) -> float | None:
        tats = [t for t in map(self._tat.get, keys) if t is not None]
        return max(tats) if tats else None

    def slot_acquire(self, key: str, limit: int | None) -> bool:
        with self._lock:
            n = self._slots.get(key, 0)
            if limit is not None and n >= limit:
                return False
            self._slots[key] = n + 1
            return True

    def slot_release(self, key: str) -> None:
        with self._lock:
            self._slots[key] = max(0, self._slots.get(key, 0) - 1)

    def slot_count(self, key: str) -> int:
        with self._lock:
            return self._slots.get(key, 0)

    def health_get(self, name: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._health.get(name, {}))

    def health_update(
        self, name: str, fn: Callable[[dict[str, Any]], tuple[dict[str, Any], T]]
    ) -> T:
        with self._lock:
            new, out = fn(dict(self._health.get(name, {})))
            self._health[name] = new
            return out

    def reset(self) -> None:
        with self._lock:
            self._tat.clear()
            self._slots.clear()
            self._health.clear()


_ADMIT_LUA = """
-- KEYS: the rate schedules, then the slot counters; ARGV[1] = number of rate keys,
-- ARGV[2] = now, then one cost (s) per rate key, one tolerance (s) per rate key,
-- then one limit per slot (-1: none). The rule of _limits.gcra.
local nr = tonumber(ARGV[1]); local now = tonumber(ARGV[2])
local tats = {}
for i = 1, nr do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '')
  local tol = tonumber(ARGV[2 + nr + i])
  if tat and tat - tol > now then return {i - 1, string.format('%.6f', tat - tol - now)} end
  tats[i] = tat
end
for j = nr + 1, #KEYS do
  local limit = tonumber(ARGV[2 + nr + j])
  if limit >= 0 and tonumber(redis.call('GET', KEYS[j]) or '0') >= limit then
    return {j - 1, '-1'}
  end
end
for i = 1, nr do
  local t = tats[i]
  if not t or t < now then t = now end
  t = t + tonumber(ARGV[2 + i])
  -- kept 60 s after the schedule's end (relative TTL: callers' clocks are theirs)
  redis.call('SET', KEYS[i], string.format('%.6f', t), 'PX', math.ceil((t - now + 60) * 1000))
end
for j = nr + 1, #KEYS do redis.call('INCR', KEYS[j]) end
return {-1, '0'}
"""

_ADJUST_LUA = """
local tat = tonumber(redis.call('GET', KEYS[1]) or '')
if not tat then return 0 end
local delta = tonumber(ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then ttl = 60000 end
if delta > 0 then ttl = ttl + math.ceil(delta * 1000) end
redis.call('SET', KEYS[1], string.format('%.6f', tat + delta), 'PX', ttl)
return 1
"""

_SLOT_LUA = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local limit = tonumber(ARGV[1])
if limit >= 0 and n >= limit then return 0 end
redis.call('INCR', KEYS[1])
return 1
"""


class RedisStore(RouterStore):
    """Store shared by several processes through Redis (``pip install redis``).

    Limiter admission runs as a Lua script (atomic on the server); health records
    are JSON strings updated with ``WATCH``/``MULTI`` optimistic transactions.
    Keys are prefixed with ``prefix`` so several routers can share one Redis.

    Args:
        client: a ``redis.Redis`` client (sync), e.g. ``redis.Redis(port=6379)``.
        prefix: key prefix.
    """

    def __init__(self, client: Any, prefix: str = "moa-router:") -> None:
        self._r = client
        self._p = prefix
        self._admit = client.register_script(_ADMIT_LUA)
        self._adjust = client.register_script(_ADJUST_LUA)
        self._slot = client.register_script(_SLOT_LUA)

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    def limits_admit(
        self,
        rates: Sequence[tuple[str, float]],
        slots: Sequence[tuple[str, int | None]],
        now: float,
    ) -> tuple[float, int]:
        keys = [self._k("gcra", k) for k, _ in rates] + [self._k("slot", k) for k, _ in slots]
        args: list[Any] = [len(rates), repr(float(now))]
        args += [repr(float(c)) for _, c in rates]
        args += [repr(tolerance(float(c))) for _, c in rates]
        args += [-1 if limit is None else int(limit) for _, limit in slots]
        index, wait = self._admit(keys=keys, args=args)
        return float(wait), int(index)

    def limits_adjust(self, key: str, seconds: float) -> None:
        self._adjust(keys=[self._k("gcra", key)], args=[repr(float(seconds))])

    def limits_peek(self, keys: Sequence[str]) -> float | None:
        if not keys:
            return None
        tats = [float(v) for v in self._r.mget([self._k("gcra", k) for k in keys]) if v]
        return max(tats) if tats else None

    def slot_acquire(self, key: str, limit: int | None) -> bool:
        return (
            int(self._slot(keys=[self._k("slot", key)], args=[-1 if limit is None else limit])) == 1
        )

    def slot_release(self, key: str) -> None:
        k = self._k("slot", key)
        if int(self._r.decr(k)) < 0:
            self._r.set(k, 0)

    def slot_count(self, key: str) -> int:
        return int(self._r.get(self._k("slot", key)) or 0)

    def health_get(self, name: str) -> dict[str, Any]:
        raw = self._r.get(self._k("health", name))
        return json.loads(raw) if raw else {}

    def health_update(
        self, name: str, fn: Callable[[dict[str, Any]], tuple[dict[str, Any], T]]
    ) -> T:
        import redis  # local import: optional dependency

        k = self._k("health", name)
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(k)
                    raw = pipe.get(k)
                    new, out = fn(json.loads(raw) if raw else {})
                    pipe.multi()
                    pipe.set(k, json.dumps(new))
                    pipe.execute()
                    return out
                except redis.WatchError:
                    continue

    def reset(self) -> None:
        for k in self._r.scan_iter(match=self._p + "*"):
            self._r.delete(k)
