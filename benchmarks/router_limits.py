"""Does the router's limiter fill the quota without ever exceeding it?

Side by side in one run, against ``tests/fault_server.py`` servers that enforce the
limit themselves (each in its own process, so the server's CPU is not the
client's): RPM and TPM limits with 10, 100 and 1,000 requests queued at once
(``asyncio.gather`` of ``ainvoke``; one case with threads, ``batch``), TPM with
real usage at 20 % of the reservation (``max_tokens`` unset), and two processes
sharing one ``RedisStore`` (a ``redis-server`` started on a free loopback port).

Every server enforces its limit over a sliding **1 s** window (a per-minute limit
quantized to the second, as OpenAI documents), 3 % above the router's limit. For
each case the table gives, from the server's own log: 429s, the most requests
(tokens) in any 1 s window against the router's pace, and the achieved rate
``(n - 1) / (t_last - t_first)`` in % of the router's limit; plus the client's
CPU time per request (``time.process_time``, this process only) and planning
passes per request. A first table compares client CPU per request of a direct
``ChatOpenAI`` call and the router without limits (the per-request overhead).

    python benchmarks/router_limits.py                 # everything (~3 min)
    python benchmarks/router_limits.py --part rpm      # or tpm, tpm20, redis, overhead
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from langchain_moa.router import Deployment, ProviderRouter, RedisStore  # noqa: E402
from tests.fault_server import Fault, FaultServer  # noqa: E402

SERVER_RPM = 1200.0  # 20 requests per 1 s window
SERVER_TPM = 60_000.0  # 1,000 tokens per 1 s window
UNDER = 0.97  # the router's limit, relative to the server's
WINDOW_S = 1.0
PROMPT_TOKENS = 20  # reported by the server; the router's token_counter says the same
MAX_TOKENS = 30  # rpm / tpm cases: reservation = real usage = 20 + 30 tokens
REAL_COMPLETION_20 = 35  # tpm20: real 20 + 35 = 55 of 20 + 256 reserved (20 %)


# --------------------------------------------------------------------------- server process
def _serve(conn: Any, rpm: float | None, tpm: float | None, text_words: int) -> None:
    server = FaultServer("bench").start()
    if rpm or tpm:
        server.set_limits(rpm=rpm, tpm=tpm, window_s=WINDOW_S, token_count="usage")
    server.set_default(Fault.ok(" ".join(["tok"] * text_words), prompt_tokens=PROMPT_TOKENS))
    conn.send(server.base_url)
    while True:
        cmd = conn.recv()
        if cmd == "log":
            conn.send([(r.wall_start, r.status, r.tokens_counted) for r in server.chat_requests])
        else:
            server.stop()
            conn.send(True)
            return


class ServerProcess:
    """A FaultServer enforcing ``rpm`` / ``tpm`` (per minute, over 1 s) in a child process."""

    def __init__(
        self, rpm: float | None = None, tpm: float | None = None, text_words: int = 100
    ) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, rpm, tpm, text_words), daemon=True)
        self._proc.start()
        self.base_url: str = self._conn.recv()

    def log(self) -> list[tuple[float, int, int]]:
        self._conn.send("log")
        return self._conn.recv()

    def stop(self) -> None:
        self._conn.send("stop")
        self._conn.recv()
        self._proc.join(5)


# --------------------------------------------------------------------------- measures
def _max_in_window(points: list[tuple[float, float]], window: float) -> float:
    """Largest sum of weights of ``(time, weight)`` points in any ``[t, t + window)``."""
    pts = sorted(points)
    best = total = 0.0
    lo = 0
    for hi, (t, w) in enumerate(pts):
        total += w
        while pts[lo][0] <= t - window:
            total -= pts[lo][1]
            lo += 1
        best = max(best, total)
        del hi
    return best


def _summary(
    log: list[tuple[float, int, int]],
    skip: int,
    kind: str,
    router_limit: float,
    server_limit: float,
    per_request_cap: float,
) -> dict[str, Any]:
    measured = sorted(log)[skip:]
    ok = [r for r in measured if r[1] == 200]
    n429 = sum(r[1] == 429 for r in measured)
    times = [r[0] for r in ok]
    if kind == "rpm":
        pts = [(t, 1.0) for t in times]
        achieved = (len(times) - 1) / (times[-1] - times[0]) * 60 if len(times) > 1 else 0.0
        pace = math.ceil(router_limit / 60 * WINDOW_S)
    else:
        pts = [(r[0], float(r[2])) for r in ok]
        tokens = sum(r[2] for r in ok[:-1])
        achieved = tokens / (times[-1] - times[0]) * 60 if len(times) > 1 else 0.0
        pace = router_limit / 60 * WINDOW_S + per_request_cap
    return {
        "n429": n429,
        "ok": len(ok),
        "max_1s": _max_in_window(pts, WINDOW_S),
        "pace_1s": pace,
        "server_1s": server_limit / 60 * WINDOW_S,
        "achieved": achieved,
        "pct_router": 100 * achieved / router_limit,
        "pct_server": 100 * achieved / server_limit,
    }


def _router(base_url: str, kind: str, store: Any = None) -> ProviderRouter:
    lim = {"rpm": SERVER_RPM * UNDER} if kind == "rpm" else {"tpm": SERVER_TPM * UNDER}
    return ProviderRouter(
        deployments=[
            Deployment(model="llamacpp/fake", base_url=base_url, name="d", timeout=30.0, **lim)
        ],
        deadline=900.0,
        token_counter=lambda msgs: PROMPT_TOKENS,
        **({"store": store} if store is not None else {}),
    )


async def _queued_async(
    router: ProviderRouter, n: int, max_tokens: int | None, clock: dict[str, float] | None = None
) -> list[Any]:
    """Warm up on this loop (its connection), then queue ``n`` requests at once."""
    kw = {} if max_tokens is None else {"max_tokens": max_tokens}
    await router.ainvoke("warm-up", **kw)
    if clock is not None:
        clock["cpu"], clock["wall"] = time.process_time(), time.perf_counter()
    return await asyncio.gather(*[router.ainvoke(f"q{i}", **kw) for i in range(n)])


def run_case(kind: str, n: int, mode: str = "async", real_share: float = 1.0) -> dict[str, Any]:
    """``n`` requests queued at once under an ``kind`` limit; ``real_share`` < 1: tpm
    with ``max_tokens`` unset and real usage at that share of the reservation."""
    if real_share < 1.0:
        words, max_tokens = REAL_COMPLETION_20, None
    else:
        words, max_tokens = 100, MAX_TOKENS
    server = ServerProcess(
        rpm=SERVER_RPM if kind == "rpm" else None,
        tpm=SERVER_TPM if kind == "tpm" else None,
        text_words=words,
    )
    try:
        router = _router(server.base_url, kind)
        clock: dict[str, float] = {}
        if mode == "async":
            out = asyncio.run(_queued_async(router, n, max_tokens, clock))
        else:
            kw = {} if max_tokens is None else {"max_tokens": max_tokens}
            router.invoke("warm-up", **kw)
            clock["cpu"], clock["wall"] = time.process_time(), time.perf_counter()
            out = router.batch([f"q{i}" for i in range(n)], config={"max_concurrency": n}, **kw)
        cpu, wall = time.process_time() - clock["cpu"], time.perf_counter() - clock["wall"]
        log = server.log()
    finally:
        server.stop()
    meta = [m.response_metadata["router"] for m in out]
    real = PROMPT_TOKENS + (words if max_tokens is None else max_tokens)
    limit = (SERVER_RPM if kind == "rpm" else SERVER_TPM) * UNDER
    row = _summary(log, 1, kind, limit, SERVER_RPM if kind == "rpm" else SERVER_TPM, real)
    row.update(
        case=f"{kind}{'' if real_share == 1 else ' (real 20 % of reserved)'}",
        queued=n,
        mode=mode,
        router_limit=limit,
        wall_s=wall,
        cpu_ms_per_request=1000 * cpu / n,
        passes_mean=sum(m["passes"] for m in meta) / n,
        passes_max=max(m["passes"] for m in meta),
        answered=len(out),
    )
    return row


# --------------------------------------------------------------------------- redis, 2 processes
def _redis_worker(port: int, base_url: str, n: int, start_at: float, conn: Any) -> None:
    import redis

    store = RedisStore(redis.Redis(host="127.0.0.1", port=port), prefix="bench:")
    router = _router(base_url, "rpm", store)
    time.sleep(max(0.0, start_at - time.time()))
    clock: dict[str, float] = {}
    out = asyncio.run(_queued_async(router, n, MAX_TOKENS, clock))
    cpu = time.process_time() - clock["cpu"]
    conn.send(
        {
            "answered": len(out),
            "cpu_ms_per_request": 1000 * cpu / n,
            "passes_mean": sum(m.response_metadata["router"]["passes"] for m in out) / n,
        }
    )


def run_redis(n_each: int) -> dict[str, Any]:
    if shutil.which("redis-server") is None:
        return {"case": "rpm, 2 processes, RedisStore", "skipped": "redis-server not installed"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = ServerProcess(rpm=SERVER_RPM)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        ctx = mp.get_context("spawn")
        start_at = time.time() + 3.0
        pipes, workers = [], []
        for _ in range(2):
            parent, child = ctx.Pipe()
            w = ctx.Process(
                target=_redis_worker, args=(port, server.base_url, n_each, start_at, child)
            )
            w.start()
            pipes.append(parent)
            workers.append(w)
        results = [p.recv() for p in pipes]
        for w in workers:
            w.join(10)
        log = server.log()
    finally:
        server.stop()
        proc.terminate()
        proc.wait(10)
    limit = SERVER_RPM * UNDER
    row = _summary(log, 2, "rpm", limit, SERVER_RPM, 1)
    row.update(
        case="rpm, 2 processes, RedisStore",
        queued=2 * n_each,
        mode="2 x async",
        router_limit=limit,
        answered=sum(r["answered"] for r in results),
        cpu_ms_per_request=sum(r["cpu_ms_per_request"] for r in results) / 2,
        passes_mean=sum(r["passes_mean"] for r in results) / 2,
        passes_max=None,
        wall_s=None,
    )
    return row


# --------------------------------------------------------------------------- overhead
def run_overhead(n: int, rounds: int) -> list[dict[str, Any]]:
    """Client CPU per request: direct ChatOpenAI vs the router without limits,
    interleaved over ``rounds`` (no server limits, same server process)."""
    from langchain_moa.providers import openai_compatible_chat_model

    server = ServerProcess(text_words=5)
    try:
        direct = openai_compatible_chat_model(
            None, "fake", base_url=server.base_url, api_key="x", max_retries=0
        )
        router = ProviderRouter(
            deployments=[Deployment(model="llamacpp/fake", base_url=server.base_url, name="d")]
        )
        cases = {"direct ChatOpenAI": direct, "ProviderRouter (no limits)": router}
        cpu: dict[str, list[float]] = {k: [] for k in cases}
        for llm in cases.values():
            asyncio.run(llm.abatch(["warm-up"] * 10))
        for _ in range(rounds):
            for name, llm in cases.items():
                c0 = time.process_time()
                asyncio.run(_gather_plain(llm, n))
                cpu[name].append(1000 * (time.process_time() - c0) / n)
    finally:
        server.stop()
    return [{"case": k, "cpu_ms_per_request": min(v), "rounds": v} for k, v in cpu.items()]


def run_direct_paced(n: int) -> dict[str, Any]:
    """Baseline for the queued cases' CPU: ``n`` direct ``ChatOpenAI`` calls, one
    every router interval (``asyncio.sleep``), no router, same server setup."""
    from langchain_moa.providers import openai_compatible_chat_model

    interval = 60 / (SERVER_RPM * UNDER)
    server = ServerProcess()
    try:
        llm = openai_compatible_chat_model(
            None, "fake", base_url=server.base_url, api_key="x", max_retries=0
        )

        async def go() -> float:
            await llm.ainvoke("warm-up", max_tokens=MAX_TOKENS)
            c0 = time.process_time()
            for i in range(n):
                await llm.ainvoke(f"q{i}", max_tokens=MAX_TOKENS)
                await asyncio.sleep(interval)
            return time.process_time() - c0

        cpu = asyncio.run(go())
    finally:
        server.stop()
    return {
        "case": f"direct ChatOpenAI, one per {interval * 1000:.1f} ms (no router)",
        "cpu_ms_per_request": 1000 * cpu / n,
        "rounds": [1000 * cpu / n],
    }


async def _gather_plain(llm: Any, n: int) -> None:
    sem = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        async with sem:
            await llm.ainvoke(f"q{i}")

    await asyncio.gather(*[one(i) for i in range(n)])


# --------------------------------------------------------------------------- main
def _print(rows: list[dict[str, Any]]) -> None:
    print(
        "| case | queued | 429s | max in 1 s (pace / server) | achieved, % of router limit "
        "| client CPU ms/request | passes/request |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['case']} | skipped: {r['skipped']} |")
            continue
        print(
            f"| {r['case']} ({r['mode']}) | {r['queued']} | {r['n429']} | "
            f"{r['max_1s']:g} ({r['pace_1s']:g} / {r['server_1s']:g}) | "
            f"{r['achieved']:.0f} ({r['pct_router']:.1f} %) | "
            f"{r['cpu_ms_per_request']:.2f} | {r['passes_mean']:.2f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--part", choices=["all", "overhead", "rpm", "tpm", "tpm20", "redis"], default="all"
    )
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--redis-each", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    parts = ["overhead", "rpm", "tpm", "tpm20", "redis"] if args.part == "all" else [args.part]
    rows: list[dict[str, Any]] = []
    for part in parts:
        if part == "overhead":
            for r in [*run_overhead(300, 3), run_direct_paced(100)]:
                print(
                    f"{r['case']}: {r['cpu_ms_per_request']:.3f} ms client CPU per request "
                    f"(min of rounds {[round(x, 3) for x in r['rounds']]})",
                    flush=True,
                )
                rows.append(r)
            continue
        if part in ("rpm", "tpm"):
            for n in sizes:
                rows.append(run_case(part, n))
                _print(rows[-1:])
            if part == "rpm":
                rows.append(run_case("rpm", 100, mode="threads"))
                _print(rows[-1:])
        elif part == "tpm20":
            for n in sizes:
                rows.append(run_case("tpm", n, real_share=0.2))
                _print(rows[-1:])
        elif part == "redis":
            rows.append(run_redis(args.redis_each))
            _print(rows[-1:])
    print()
    _print([r for r in rows if "queued" in r or "skipped" in r])
    out = Path(args.out) / f"router_limits_{args.part}.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
