"""State the router shares between requests (and, with Redis, between processes).

Two kinds of state live behind :class:`RouterStore`:

* **limiter state**: sliding-window logs for RPM / TPM (one entry per admitted
  request: time and amount) and in-flight counters for concurrency;
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
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["RouterStore", "InMemoryStore", "RedisStore", "window_decision"]

T = TypeVar("T")


PACE_TOLERANCE = 0.25
"""Fraction of one request's pacing interval by which a late admission is made up
for on the next one (so scheduling delays do not lower the achieved rate)."""


def window_decision(
    entries: list[tuple[float, float]],
    amount: float,
    limit: float,
    window: float,
    now: float,
    pace: bool,
    next_at: float | None = None,
) -> float:
    """Seconds to wait before ``amount`` may be admitted (0 = admit now).

    ``entries`` are the ``(time, amount)`` pairs still inside the window, oldest
    first. Two rules, both must hold:

    * **window**: the amounts admitted in the last ``window`` seconds plus
      ``amount`` stay within ``limit`` (a hard cap, whatever the server's own
      accounting: sliding window, fixed window or token bucket);
    * **pacing** (``pace=True``): admissions follow a schedule spaced
      ``a * window / limit`` seconds after each admitted amount ``a`` (a GCRA /
      virtual-clock schedule), so traffic is spread evenly at the limit's rate
      instead of bursting the whole minute's quota at once. ``next_at`` is the
      schedule's next slot (see :func:`pace_after`); without it the last entry's
      time plus its interval is used.

    A single request larger than ``limit`` is admitted only when the window is empty.
    """
    total = sum(a for _, a in entries)
    wait = 0.0
    if entries and total + amount > limit:
        need = total + amount - limit
        freed = 0.0
        wait = entries[-1][0] + window - now
        for t, a in entries:
            freed += a
            if freed >= need:
                wait = t + window - now
                break
    if pace:
        if next_at is not None:
            wait = max(wait, next_at - now)
        elif entries:
            t_last, a_last = entries[-1]
            wait = max(wait, t_last + a_last * window / limit - now)
    return max(0.0, wait)


def pace_after(
    next_at: float | None,
    prev_gap: float | None,
    amount: float,
    limit: float,
    window: float,
    now: float,
) -> tuple[float, float]:
    """The schedule after admitting ``amount`` at ``now``: ``(next_at, gap)``.

    The admission's slot on the schedule is ``max(next_at, now - PACE_TOLERANCE *
    prev_gap)``: an admission that came late (the waiting task woke up late) keeps
    its scheduled slot, up to a quarter of an interval, so the next one is not
    pushed back by the delay. Admissions are never earlier than ``next_at``, so any
    span of ``T`` seconds holds at most ``(T + PACE_TOLERANCE * gap) / gap + 1``
    admissions.
    """
    gap = amount * window / limit
    if next_at is None or prev_gap is None:
        slot = now
    else:
        slot = max(next_at, now - PACE_TOLERANCE * prev_gap)
    return slot + gap, gap


class RouterStore(ABC):
    """Atomic operations on limiter and health state. Implement this to share state."""

    # --- sliding windows (RPM / TPM) -------------------------------------------------
    @abstractmethod
    def window_acquire(
        self, key: str, amount: float, limit: float, window: float, now: float, pace: bool = True
    ) -> tuple[str | None, float]:
        """Admit ``amount`` into ``key``'s window.

        Returns ``(reservation_id, 0.0)`` when admitted, else ``(None, wait_seconds)``.
        """

    @abstractmethod
    def window_adjust(self, key: str, reservation_id: str, amount: float) -> None:
        """Replace a reservation's amount (TPM: estimated -> real usage)."""

    @abstractmethod
    def window_release(self, key: str, reservation_id: str) -> None:
        """Remove a reservation (the request was never sent)."""

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
        self._windows: dict[str, dict[str, tuple[float, float]]] = {}
        self._pace: dict[str, dict[str, Any]] = {}
        self._slots: dict[str, int] = {}
        self._health: dict[str, dict[str, Any]] = {}

    def window_acquire(
        self, key: str, amount: float, limit: float, window: float, now: float, pace: bool = True
    ) -> tuple[str | None, float]:
        with self._lock:
            log = self._windows.setdefault(key, {})
            for rid in [r for r, (t, _) in log.items() if t <= now - window]:
                del log[rid]
            st = self._pace.get(key) if pace else None
            next_at = st["next_at"] if st else None
            wait = window_decision(list(log.values()), amount, limit, window, now, pace, next_at)
            if wait > 0:
                return None, wait
            rid = uuid.uuid4().hex
            log[rid] = (now, float(amount))
            if pace:
                nxt, gap = pace_after(
                    next_at, st["gap"] if st else None, amount, limit, window, now
                )
                self._pace[key] = {"next_at": nxt, "gap": gap, "last": rid, "undo": st}
            return rid, 0.0

    def window_adjust(self, key: str, reservation_id: str, amount: float) -> None:
        with self._lock:
            log = self._windows.get(key, {})
            if reservation_id in log:
                t, old = log[reservation_id]
                log[reservation_id] = (t, float(amount))
                st = self._pace.get(key)
                if st and st["last"] == reservation_id and old > 0:
                    # the schedule moves with the real amount of the latest admission
                    new_gap = st["gap"] * amount / old
                    st["next_at"] += new_gap - st["gap"]
                    st["gap"] = new_gap

    def window_release(self, key: str, reservation_id: str) -> None:
        with self._lock:
            self._windows.get(key, {}).pop(reservation_id, None)
            st = self._pace.get(key)
            if st and st["last"] == reservation_id:
                if st["undo"] is None:
                    del self._pace[key]
                else:
                    self._pace[key] = st["undo"]

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
            self._windows.clear()
            self._pace.clear()
            self._slots.clear()
            self._health.clear()


_WINDOW_LUA = """
local key = KEYS[1]
local pk = key .. ':pace'
local amount = tonumber(ARGV[1]); local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3]); local now = tonumber(ARGV[4])
local pace = ARGV[5] == '1'; local rid = ARGV[6]; local tol = tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local ids = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
local total = 0
local ts = {}; local am = {}
for i = 1, #ids, 2 do
  local a = tonumber(redis.call('HGET', key .. ':amt', ids[i]) or '0')
  table.insert(ts, tonumber(ids[i+1])); table.insert(am, a); total = total + a
end
local st = {false, false, false}
if pace then st = redis.call('HMGET', pk, 'next_at', 'gap', 'last') end
local wait = 0
local n = #ts
if n > 0 and total + amount > limit then
  local need = total + amount - limit
  local freed = 0
  wait = ts[n] + window - now
  for i = 1, n do
    freed = freed + am[i]
    if freed >= need then wait = ts[i] + window - now; break end
  end
end
if pace then
  local w2 = 0
  if st[1] then w2 = tonumber(st[1]) - now
  elseif n > 0 then w2 = ts[n] + am[n] * window / limit - now end
  if w2 > wait then wait = w2 end
end
if wait > 0 then return {0, string.format('%.6f', wait)} end
redis.call('ZADD', key, now, rid)
redis.call('HSET', key .. ':amt', rid, amount)
local ttl = math.ceil(window) + 60
redis.call('EXPIRE', key, ttl)
redis.call('EXPIRE', key .. ':amt', ttl)
if pace then
  local gap = amount * window / limit
  local slot = now
  if st[1] then
    slot = math.max(tonumber(st[1]), now - tol * tonumber(st[2]))
    redis.call('HSET', pk, 'u_next_at', st[1], 'u_gap', st[2], 'u_last', st[3], 'has_undo', '1')
  else
    redis.call('HSET', pk, 'has_undo', '0')
  end
  redis.call('HSET', pk, 'next_at', string.format('%.6f', slot + gap),
             'gap', string.format('%.9f', gap), 'last', rid)
  redis.call('EXPIRE', pk, ttl)
end
return {1, '0'}
"""

_ADJUST_LUA = """
local key = KEYS[1]; local pk = key .. ':pace'
local rid = ARGV[1]; local amount = tonumber(ARGV[2])
if not redis.call('ZSCORE', key, rid) then return 0 end
local old = tonumber(redis.call('HGET', key .. ':amt', rid) or '0')
redis.call('HSET', key .. ':amt', rid, amount)
if redis.call('HGET', pk, 'last') == rid and old > 0 then
  local gap = tonumber(redis.call('HGET', pk, 'gap'))
  local nxt = tonumber(redis.call('HGET', pk, 'next_at'))
  local ng = gap * amount / old
  redis.call('HSET', pk, 'next_at', string.format('%.6f', nxt + ng - gap),
             'gap', string.format('%.9f', ng))
end
return 1
"""

_RELEASE_LUA = """
local key = KEYS[1]; local pk = key .. ':pace'; local rid = ARGV[1]
redis.call('ZREM', key, rid)
redis.call('HDEL', key .. ':amt', rid)
if redis.call('HGET', pk, 'last') == rid then
  if redis.call('HGET', pk, 'has_undo') == '1' then
    local v = redis.call('HMGET', pk, 'u_next_at', 'u_gap', 'u_last')
    redis.call('HSET', pk, 'next_at', v[1], 'gap', v[2], 'last', v[3], 'has_undo', '0')
  else
    redis.call('DEL', pk)
  end
end
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
        self._window = client.register_script(_WINDOW_LUA)
        self._adjust = client.register_script(_ADJUST_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._slot = client.register_script(_SLOT_LUA)

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    def window_acquire(
        self, key: str, amount: float, limit: float, window: float, now: float, pace: bool = True
    ) -> tuple[str | None, float]:
        rid = uuid.uuid4().hex
        ok, wait = self._window(
            keys=[self._k("win", key)],
            args=[amount, limit, window, now, "1" if pace else "0", rid, PACE_TOLERANCE],
        )
        if int(ok) == 1:
            return rid, 0.0
        return None, max(0.0, float(wait))

    def window_adjust(self, key: str, reservation_id: str, amount: float) -> None:
        self._adjust(keys=[self._k("win", key)], args=[reservation_id, float(amount)])

    def window_release(self, key: str, reservation_id: str) -> None:
        self._release(keys=[self._k("win", key)], args=[reservation_id])

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
