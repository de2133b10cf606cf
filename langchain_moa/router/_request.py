"""The state of one routed request, and the waiting primitives it uses.

:class:`Request` is what the planner, the admission gate and the attempts share
while one request is routed (per pass: what was blocked and until when; per
request: errors, attempts, skip counts). :class:`Failover` is the internal signal
"this attempt gave no answer, try the next"; :func:`run_with_timeout` bounds a
blocking call.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage

from langchain_moa.router._deployment import Deployment
from langchain_moa.router._limits import Limits

__all__ = [
    "SLOT_POLL_S",
    "STOP_SIGNALS",
    "Failover",
    "Request",
    "attempt_timeout",
    "context_skip",
    "estimate_tokens",
    "run_with_timeout",
]

SLOT_POLL_S = 0.25
"""Seconds between checks for a concurrency slot freed by another process."""

STOP_SIGNALS = (GeneratorExit, KeyboardInterrupt, SystemExit, asyncio.CancelledError)
"""Exceptions that stop the request instead of counting as a deployment's failure."""


class Failover(Exception):
    """Internal: this attempt did not produce an answer; try the next one."""

    def __init__(self, deployment: str, message: str) -> None:
        super().__init__(f"{deployment}: {message}")


@dataclass
class Request:
    """One request being routed. ``deployments`` are the ones it may use (all, or
    those matching a pinned ``model=``); ``timeout`` (s per attempt, unless the
    deployment sets its own), ``limits`` (router-wide; their window also applies to
    each deployment's limits) and ``deadline`` (s) are the router's settings when the
    request started; times are epoch seconds."""

    messages: list[BaseMessage]
    stop: list[str] | None
    call_kwargs: dict[str, Any]
    streaming: bool
    strategy: str
    prompt_tokens: int
    output_tokens: int
    deployments: list[Deployment]
    timeout: float | None
    limits: Limits
    deadline: float | None
    started: float
    deadline_at: float | None
    passes: int = 0
    waited_s: float = 0.0
    queued_s: float = 0.0
    min_context: int | None = None
    errors: dict[str, Any] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    blocked: dict[str, float | None] = field(default_factory=dict)
    queue_blocked: set[str] = field(default_factory=set)
    pass_failed: set[str] = field(default_factory=set)
    last_kind: dict[str, str] = field(default_factory=dict)
    pending: str | None = None
    slot_blocked: set[str] = field(default_factory=set)
    skipped_once: set[str] = field(default_factory=set)
    skip_counts: dict[str, int] = field(default_factory=dict)
    exhausted: set[str] = field(default_factory=set)
    sent_at: float | None = None
    """Admission time (epoch s) of the attempt in progress, from the health claim."""
    waiter: Any = None  # its place in the planner's admission queue (a _queue.Waiter)
    queue: dict[str, Any] = field(default_factory=dict)  # queue metadata (see Planner)

    def new_pass(self) -> None:
        """Forget what blocked the previous pass."""
        self.passes += 1
        self.blocked.clear()
        self.queue_blocked.clear()
        self.pass_failed.clear()
        self.slot_blocked.clear()


def estimate_tokens(
    messages: list[BaseMessage], counter: Callable[[list[BaseMessage]], int] | None
) -> int:
    """Prompt tokens: ``counter(messages)``, else 4 characters per token + 4 per message."""
    if counter is not None:
        return int(counter(messages))
    chars = 0
    for m in messages:
        c = m.content
        chars += len(c) if isinstance(c, str) else len(json.dumps(c, default=str))
    return chars // 4 + 4 * len(messages)


def context_skip(req: Request, d: Deployment) -> str | None:
    """Why ``d``'s context window cannot hold the request, or ``None``."""
    if req.min_context is not None and (
        d.context_window is None or d.context_window <= req.min_context
    ):
        return (
            f"context window {d.context_window} not larger than {req.min_context} "
            "(context-length error)"
        )
    if d.context_window is not None and req.prompt_tokens > d.context_window:
        return f"prompt ~{req.prompt_tokens} tokens > context_window {d.context_window}"
    return None


def attempt_timeout(req: Request, d: Deployment) -> float | None:
    """Seconds one attempt on ``d`` may take: its timeout, cut to the deadline (>= 0.05)."""
    t = d.timeout or req.timeout
    if req.deadline_at is not None:
        left = req.deadline_at - time.time()
        t = max(0.05, min(t, left)) if t is not None else max(0.05, left)
    return t


def run_with_timeout(fn: Callable[[], Any], timeout: float | None) -> Any:
    """Run ``fn`` with a timeout (sync path): in its own daemon thread, abandoned on
    timeout. One thread per call rather than a bounded pool, so that a queue of calls
    waiting for a pool worker can never time out before it started."""
    if timeout is None:
        return fn()
    ctx = contextvars.copy_context()
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["result"] = ctx.run(fn)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name="moa-router-attempt", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"attempt timed out after {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["result"]
