"""What does the MoA orchestration cost on top of the model calls it makes?

Side by side in one process, on the same mixture-llm style async client function
(every call sleeps ``--delay`` seconds and returns a short text), interleaved over
``--rounds`` rounds:

* ``floor``            — a bare ``asyncio.gather`` of plain LangChain chat-model calls
  (``ClientChatModel.ainvoke`` on the same client), layer after layer: what LangChain
  itself costs per call;
* ``sync floor``       — the same calls from sync code: LangChain's ``invoke`` on a pool
  of 64 threads (langchain-moa's default bound of a sync fan-out) for each layer's
  calls, and a thread per query for many queries (as ``Runnable.batch``): what a sync
  LangChain call costs;
* ``moa ainvoke``      — langchain-moa ``ainvoke`` (``abatch`` for many queries), with a
  ``MoAHistoryHandler`` attached;
* ``moa invoke``       — the same from sync code (``invoke`` / ``batch``; threads);
* ``mixture-llm``      — mixture-llm 0.1.3's ``run()`` (``asyncio.gather`` of runs).

Workloads: Propose 6 -> Synthesize 6 -> Aggregate (13 calls); Propose with 50 and with
200 agents; 50 queries x 3 layers (650 calls). For each: wall time / critical path
(layers x delay) and client CPU (process time, all threads) per model call; the
median over the rounds.

``--gc`` adds what the garbage collector did per run (collections of each generation,
and milliseconds spent in them, via ``gc.callbacks``), averaged over the rounds: a
full (generation 2) collection walks every object the process holds, so it comes
seldom and costs much. ``--gc-freeze`` calls ``gc.freeze()`` after the imports first (what
a long-running service can do once it has loaded everything).

``--agents client`` (default) gives langchain-moa the client function, as mixture-llm
users do (model-name strings served by ``client=``); ``--agents chat-model`` gives it
LangChain chat models instead (a minimal ``BaseChatModel`` around the same client,
also the floor's model), so every call is a LangChain run.

    pip install mixture-llm==0.1.3
    python benchmarks/moa_overhead.py --rounds 5
    python benchmarks/moa_overhead.py --rounds 5 --agents chat-model
    python benchmarks/moa_overhead.py --rounds 5 --gc
    python benchmarks/moa_overhead.py --rounds 5 --gc --gc-freeze
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mixture_llm as mx  # noqa: E402
from langchain_core.language_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage, convert_to_openai_messages  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatResult  # noqa: E402
from langchain_core.runnables.config import ContextThreadPoolExecutor  # noqa: E402

from langchain_moa import (  # noqa: E402
    Aggregate,
    ClientChatModel,
    MoAHistoryHandler,
    Propose,
    Synthesize,
)
from langchain_moa.steps._threads import POOL_SIZE  # noqa: E402

DELAY = 0.1
AGENTS = "client"
SYNC_POOL = ContextThreadPoolExecutor(max_workers=POOL_SIZE)
"""The sync floor's threads: as many as langchain-moa's default bound of a sync fan-out."""
GC_STATS = False


class _Collections:
    """Garbage collections while measuring: per generation, count and seconds."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count[info["generation"]] += 1
            self.seconds[info["generation"]] += time.perf_counter() - self._started


def reply(model: str) -> tuple[str, int, int]:
    """Every call's answer: ``(text, input_tokens, output_tokens)``."""
    return f"an answer from {model}", 20, 5


async def client(model: str, messages: list[dict], temp: float, max_tokens: int) -> tuple:
    await asyncio.sleep(DELAY)
    return reply(model)


class PlainChatModel(BaseChatModel):
    """A minimal LangChain chat model around :func:`client` (not a ClientChatModel)."""

    model: str

    @property
    def _llm_type(self) -> str:
        return "plain"

    def _result(self, answer: tuple) -> ChatResult:
        text, input_tokens, output_tokens = answer
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
        return ChatResult(
            generations=[ChatGeneration(message=AIMessage(text, usage_metadata=usage))]
        )

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(DELAY)
        return self._result(reply(self.model))

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
        answer = await client(
            self.model,
            convert_to_openai_messages(messages),
            kwargs.get("temperature", 0.7),
            kwargs.get("max_tokens", 2048),
        )
        return self._result(answer)


def workloads() -> dict[str, dict[str, Any]]:
    """name -> queries, layer widths (the last 1 = aggregator or nothing)."""
    return {
        "Propose 6 -> Synthesize 6 -> Aggregate": {"queries": 1, "layers": [6, 6, 1]},
        "Propose with 50 agents": {"queries": 1, "layers": [50]},
        "Propose with 200 agents": {"queries": 1, "layers": [200]},
        "50 queries x 3 layers": {"queries": 50, "layers": [6, 6, 1]},
    }


def moa_pipeline(layers: list[int], models: list[Any]) -> Any:
    """``models``: the agents (model names served by ``client``, or chat models)."""
    served = {"client": client} if AGENTS == "client" else {}
    steps: list[Any] = [Propose(models[: layers[0]], **served)]
    for width in layers[1:]:
        if width == 1:
            steps.append(Aggregate(models[0], **served))
        else:
            steps.append(Synthesize(models[:width], **served))
    out = steps[0]
    for step in steps[1:]:
        out = out | step
    return out


def mixture_pipeline(layers: list[int]) -> list[Any]:
    names = [f"model-{i}" for i in range(max(layers))]
    steps: list[Any] = [mx.Propose(names[: layers[0]])]
    for width in layers[1:]:
        steps.append(mx.Aggregate(names[0]) if width == 1 else mx.Synthesize(names[:width]))
    return steps


def cases(spec: dict[str, Any]) -> dict[str, Callable[[], Awaitable[Any]]]:
    queries = [f"question {i}" for i in range(spec["queries"])]
    layers = spec["layers"]
    names = [f"model-{i}" for i in range(max(layers))]
    if AGENTS == "client":  # the floor's models; langchain-moa gets the names
        models: list[Any] = [ClientChatModel(client=client, model=name) for name in names]
        moa = moa_pipeline(layers, names)
    else:  # both get the same chat models
        models = [PlainChatModel(model=name) for name in names]
        moa = moa_pipeline(layers, models)
    mix = mixture_pipeline(layers)

    async def floor() -> Any:
        async def one(q: str) -> Any:
            for width in layers:
                await asyncio.gather(*(m.ainvoke(q) for m in models[:width]))

        await asyncio.gather(*(one(q) for q in queries))

    def sync_floor() -> Any:
        def one(q: str) -> Any:
            for width in layers:
                list(SYNC_POOL.map(lambda m: m.invoke(q), models[:width]))

        if len(queries) == 1:
            return one(queries[0])
        with ContextThreadPoolExecutor(max_workers=len(queries)) as batch:  # as Runnable.batch
            return list(batch.map(one, queries))

    async def sync_floor_threads() -> Any:
        return await asyncio.to_thread(sync_floor)

    async def moa_async() -> Any:
        history = MoAHistoryHandler()
        config = {"callbacks": [history]}
        if len(queries) == 1:
            return await moa.ainvoke(queries[0], config)
        return await moa.abatch(queries, config)

    def moa_sync() -> Any:
        history = MoAHistoryHandler()
        if len(queries) == 1:
            return moa.invoke(queries[0], {"callbacks": [history]})
        return moa.batch(queries, {"callbacks": [history], "max_concurrency": len(queries)})

    async def moa_threads() -> Any:
        return await asyncio.to_thread(moa_sync)

    async def mixture() -> Any:
        return await asyncio.gather(*(mx.run(mix, q, client) for q in queries))

    return {
        "floor (gather of LangChain calls)": floor,
        "sync floor (invoke, 64 threads)": sync_floor_threads,
        "moa ainvoke/abatch": moa_async,
        "moa invoke/batch (sync)": moa_threads,
        "mixture-llm run()": mixture,
    }


async def measure(fn: Callable[[], Awaitable[Any]]) -> tuple[float, float, _Collections]:
    """Wall seconds, CPU seconds, and the garbage collections of one run of ``fn``."""
    collections = _Collections()
    gc.callbacks.append(collections)
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        await fn()
        return time.perf_counter() - wall, time.process_time() - cpu, collections
    finally:
        gc.callbacks.remove(collections)


async def main(rounds: int) -> None:
    print(
        f"delay {DELAY * 1000:.0f} ms per call, median of {rounds} interleaved rounds, "
        f"langchain-moa agents: {AGENTS}"
    )
    for name, spec in workloads().items():
        calls = spec["queries"] * sum(spec["layers"])
        critical = len(spec["layers"]) * DELAY
        fns = cases(spec)
        for fn in fns.values():  # warm-up
            await measure(fn)
        samples: dict[str, list[tuple[float, float, _Collections]]] = {k: [] for k in fns}
        for _ in range(rounds):
            for case, fn in fns.items():
                samples[case].append(await measure(fn))
        print(f"\n{name} ({calls} calls, critical path {critical:.1f} s)")
        gc_header = f"{'GC per run: g0 / g1 / g2 collections, ms':>45}" if GC_STATS else ""
        print(f"  {'case':<36}{'wall/critical':>14}{'CPU ms/call':>13}{gc_header}")
        for case, values in samples.items():
            wall = statistics.median(v[0] for v in values)
            cpu = statistics.median(v[1] for v in values)
            line = f"  {case:<36}{wall / critical:>14.2f}{cpu / calls * 1000:>13.3f}"
            if GC_STATS:
                counts = [sum(v[2].count[g] for v in values) / rounds for g in range(3)]
                ms = sum(sum(v[2].seconds) for v in values) / rounds * 1000
                line += f"{' / '.join(f'{c:.1f}' for c in counts):>34}{ms:>8.1f} ms"
            print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.1, help="seconds per call")
    parser.add_argument(
        "--agents",
        choices=["client", "chat-model"],
        default="client",
        help="what langchain-moa's agents are: model names served by the client "
        "function (default), or LangChain chat models around it",
    )
    parser.add_argument(
        "--gc", action="store_true", help="also report the garbage collections per run"
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() after the imports: what the imports left is never collected again",
    )
    args = parser.parse_args()
    DELAY = args.delay
    AGENTS = args.agents
    GC_STATS = args.gc
    if args.gc_freeze:
        gc.collect()
        gc.freeze()
    asyncio.run(main(args.rounds))
