"""The threads of sync fan-outs: one shared, bounded pool per process.

A sync step (``invoke``, ``batch``) runs its calls on a process-wide pool of
:data:`POOL_SIZE` threads that outlive the step, so a layer does not start (and a
500-agent layer does not start 500) threads of its own. A step takes at most its
``workers`` threads of the pool at once: it submits that many runners, each running
the step's next job until none is left. Two cases get a private pool instead, sized to
``workers``: a fan-out started *from* a pool thread (an agent that is itself a sync
MoA pipeline), so nested fan-outs never wait for threads their parents hold, and a
step whose ``max_concurrency`` asks for more threads than the pool has. A layer whose
calls all go to async client functions nobody observes takes no thread of the pool: it
runs on the shared client loop (:func:`langchain_moa.client_model.run_in_background`).
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

POOL_SIZE = 64
"""Threads of the shared pool; also the default bound of one sync step's calls."""

_local = threading.local()
_pool: tuple[ThreadPoolExecutor, int] | None = None
_pool_lock = threading.Lock()


def _mark_worker() -> None:
    _local.in_pool = True


def _shared_pool() -> ThreadPoolExecutor:
    """The process's pool, started on first use (again in a forked child)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[1] != os.getpid():
            executor = ThreadPoolExecutor(
                max_workers=POOL_SIZE,
                thread_name_prefix="langchain-moa-fanout",
                initializer=_mark_worker,
            )
            _pool = (executor, os.getpid())
        return _pool[0]


def map_bounded(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``[fn(item) for item in items]``, run on at most ``workers`` threads at once;
    results in item order. Each call runs in a copy of the caller's context
    (contextvars: LangChain's run config, tracing), as ``ContextThreadPoolExecutor``
    does. The first exception raised by ``fn`` is re-raised after every call ended.
    """
    workers = max(1, min(workers, len(items)))
    base = contextvars.copy_context()
    results: list[Any] = [None] * len(items)
    order = iter(range(len(items)))
    take = threading.Lock()

    def runner() -> None:
        while True:
            with take:
                i = next(order, None)
            if i is None:
                return
            results[i] = base.copy().run(fn, items[i])

    if getattr(_local, "in_pool", False) or workers > POOL_SIZE:
        with ThreadPoolExecutor(max_workers=workers) as private:
            futures = [private.submit(runner) for _ in range(workers)]
    else:
        pool = _shared_pool()
        futures = [pool.submit(runner) for _ in range(workers)]
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return results
