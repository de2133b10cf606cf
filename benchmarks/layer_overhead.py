"""How much does an MoA layer cost on top of the model calls it makes?

Runs, side by side in one process, against the repository's OpenAI-compatible test
server on 127.0.0.1 (every reply delayed by ``--delay`` seconds, like a provider):

* ``raw gather``      — ``asyncio.gather`` of N ``ChatOpenAI.ainvoke`` calls (the floor);
* ``Propose.ainvoke`` — one MoA layer of N agents, async;
* ``Propose.invoke``  — the same layer from sync code (a thread per call);
* ``sequential``      — ``Propose(..., max_concurrency=1)``, one call at a time;
* ``Propose|Aggregate`` — a 2-layer pipeline (N + 1 calls, two rounds of latency).

and prints the mean wall time of each over ``--rounds`` and its ratio to the floor.

    python benchmarks/layer_overhead.py --agents 6 --delay 0.2 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain_moa import Aggregate, Propose  # noqa: E402
from langchain_moa.providers import openai_compatible_chat_model  # noqa: E402
from tests.fault_server import Fault, FaultServer  # noqa: E402


async def _timed(fn: Callable[[], Awaitable[object]], rounds: int) -> float:
    await fn()  # warm-up: connection pool, imports
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return statistics.mean(times)


async def main(agents: int, delay: float, rounds: int) -> None:
    with FaultServer("bench").start() as server:
        server.set_default(Fault.slow(delay, then=Fault.ok("an answer of a few words")))
        models = [
            openai_compatible_chat_model("llamacpp", "fake", base_url=server.base_url)
            for _ in range(agents)
        ]
        parallel = Propose(models, max_tokens=16)
        sequential = Propose(models, max_tokens=16, max_concurrency=1)
        two_layers = Propose(models, max_tokens=16) | Aggregate(models[0], max_tokens=16)

        async def raw() -> object:
            return await asyncio.gather(*(m.ainvoke("question", max_tokens=16) for m in models))

        cases = {
            "raw gather": raw,
            "Propose.ainvoke": lambda: parallel.ainvoke("question"),
            "Propose.invoke": lambda: asyncio.to_thread(parallel.invoke, "question"),
            "sequential": lambda: sequential.ainvoke("question"),
            "Propose|Aggregate": lambda: two_layers.ainvoke("question"),
        }
        results = {name: await _timed(fn, rounds) for name, fn in cases.items()}
    floor = results["raw gather"]
    print(f"{agents} agents, {delay * 1000:.0f} ms per reply, mean of {rounds} rounds")
    print(f"{'case':<20}{'seconds':>10}{'x raw':>8}")
    for name, seconds in results.items():
        print(f"{name:<20}{seconds:>10.3f}{seconds / floor:>8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=6)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds per reply")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.agents, args.delay, args.rounds))
