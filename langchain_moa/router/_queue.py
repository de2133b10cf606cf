"""The admission queue: requests that cannot be admitted now wait here in FIFO order.

One :class:`WaitQueue` per set of deployments a request may use (normally one per
router; requests pinned to a ``model=`` get their own). Only the queue's **head**
plans: it sleeps until the time the limiter or the health record named (a GCRA
slot, a cooldown's end) or until capacity frees (a concurrency slot given back, a
TPM reservation reconciled downwards), then plans one pass. The others sleep
without a timer until the head is admitted or leaves; then the next one becomes
head. So each wake-up is one planning pass of one request: no stampede of
re-planning waiters, whatever the queue's length.

Waiters are threads (``invoke`` / ``stream`` / ``batch``) or asyncio tasks
(``ainvoke`` / ``astream``) on any event loop; wake-ups cross threads safely.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

__all__ = ["WaitQueue", "Waiter"]


class Waiter:
    """One queued request: a threading event (sync) or a future on its loop (async)."""

    __slots__ = ("_event", "_fut", "_loop", "joined_at", "position")

    def __init__(self, joined_at: float, position: int) -> None:
        self._event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fut: asyncio.Future[None] | None = None
        self.joined_at = joined_at
        self.position = position

    def wake(self) -> None:
        self._event.set()
        loop, fut = self._loop, self._fut
        if loop is not None and fut is not None:
            try:
                loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))
            except RuntimeError:  # loop closed
                pass

    def sleep(self, timeout: float | None) -> None:
        """Block until woken or ``timeout`` seconds (``None``: until woken)."""
        self._event.wait(timeout)
        self._event.clear()

    async def asleep(self, timeout: float | None) -> None:
        """Await a wake-up or ``timeout`` seconds (``None``: until woken)."""
        if self._event.is_set():
            self._event.clear()
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._loop, self._fut = loop, fut
        if self._event.is_set():  # woken between the check and the future
            self._event.clear()
            return
        try:
            await asyncio.wait({fut}, timeout=timeout)
        finally:
            self._fut = None
            self._event.clear()


class WaitQueue:
    """FIFO queue of waiters for one set of deployments, with one head that plans."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.head: Waiter | None = None
        self.line: deque[Waiter] = deque()
        self.wakeups = 0
        """Times a waiter was woken (head promotions and capacity notices)."""
        self.planning = 0
        """Requests not queued that are planning a pass right now (arrivals)."""
        self.limited: tuple[str, str] | None = None
        """The last ``(factor, deployment)`` that made a request of this queue wait."""

    def __len__(self) -> int:
        with self._lock:
            return len(self.line) + (self.head is not None)

    def busy(self) -> bool:
        """Whether someone is waiting or planning (a new request queues behind them)."""
        return self.head is not None or self.planning > 0

    def begin_planning(self) -> None:
        with self._lock:
            self.planning += 1

    def end_planning(self) -> None:
        """A pass planned outside the queue ended (admitted or refused): wake the head."""
        with self._lock:
            self.planning = max(0, self.planning - 1)
        self.notify()

    def join(self, now: float, front: bool = False) -> tuple[Waiter, bool]:
        """Queue a request: ``(waiter, is_head)``. ``front``: it was at the head
        before (admitted, then its attempt failed): it keeps its turn."""
        with self._lock:
            w = Waiter(now, len(self.line) + (self.head is not None))
            if self.head is None:
                self.head = w
                return w, True
            if front:
                self.line.appendleft(w)
            else:
                self.line.append(w)
            return w, False

    def is_head(self, w: Waiter) -> bool:
        return self.head is w

    def leave(self, w: Waiter) -> None:
        """``w`` is admitted or gives up: the next in line becomes head (woken)."""
        nxt = None
        with self._lock:
            if self.head is w:
                self.head = self.line.popleft() if self.line else None
                nxt = self.head
            else:
                try:
                    self.line.remove(w)
                except ValueError:
                    pass
            if nxt is not None:
                self.wakeups += 1
        if nxt is not None:
            nxt.wake()

    def notify(self) -> None:
        """Capacity changed: wake the head so it plans again."""
        head = self.head
        if head is not None:
            with self._lock:
                self.wakeups += 1
            head.wake()
