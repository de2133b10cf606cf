"""The router soak: many requests, streamed and not, async and sync, through a router
over three fault-injecting servers; checked from the servers' logs and the router's own
record of its health transitions. Shared by ``test_router_soak.py`` (2,000 requests)
and ``benchmarks/router_soak.py`` (10,000).

What is checked (:func:`check`):

* **0 lost, 0 mixed up**: every request ends with its own answer. The servers echo the
  prompt (a request id) in a reply that also names the server and its request index,
  and that record must be a 200 for this very prompt. A stream that broke after its
  first token raises ``StreamInterruptedError``; the client then sends the request
  again (as a caller would), and the server log must show that stream was cut.
* **0 admissions inside a cooldown window**: the router's store records every health
  transition; no admission (claim) falls inside a ``[since, until)`` window it
  recorded, and no server saw more arrivals inside a window than requests admitted
  before the window that had not arrived yet (so every arrival in a window was sent
  before the window began).
* **at most one half-open probe in flight** per deployment.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import multiprocessing
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from langchain_moa.errors import StreamInterruptedError
from langchain_moa.router import Deployment, InMemoryStore, ProviderRouter
from langchain_moa.router._health import Claim, settle
from tests.fault_server import Fault, FaultServer, RequestRecord

TIMEOUT = 1.0  # per attempt (s)
MODES = ("ainvoke", "astream", "invoke", "stream")


def fault_mix(rng: random.Random) -> Fault:
    """One scripted behaviour: mostly answers, and every fault the soak covers."""
    r = rng.random()
    table: list[tuple[float, Any]] = [
        (0.010, lambda: Fault.rate_limited(retry_after=1)),  # Retry-After: seconds
        (0.010, lambda: Fault.rate_limited(retry_after_ms=rng.randint(150, 500))),
        (0.005, lambda: Fault.rate_limited(retry_after_date_s=0.5)),  # HTTP date
        (0.020, Fault.server_error),
        (0.010, lambda: Fault.unavailable()),
        (0.004, lambda: Fault.slow(TIMEOUT + 0.5)),  # past the attempt timeout
        (0.050, lambda: Fault.ok(delay_s=rng.uniform(0.05, 0.3))),  # slow answer
        (0.015, Fault.drop),
        (0.015, Fault.malformed),
        (0.010, Fault.not_sse),
        (0.010, Fault.stream_empty),
        (0.010, lambda: Fault.stream_cut_before_first_token(role_chunk=rng.random() < 0.5)),
        (0.008, lambda: Fault.stream_cut_after_first_token("Partial")),
        (0.008, lambda: Fault.stream_without_finish("Partial answer")),
    ]
    for p, make in table:
        if r < p:
            return make()
        r -= p
    return Fault.ok()


class RecordingStore(InMemoryStore):
    """The default store, also keeping every health transition it applied (inside its
    lock, so the log's order is the order the router saw): ``(name, old, new, out)``."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, dict[str, Any], dict[str, Any], Any]] = []

    def health_update(self, name, fn):  # type: ignore[no-untyped-def]
        def wrapped(rec):  # type: ignore[no-untyped-def]
            new, out = fn(rec)
            self.log.append((name, dict(rec), dict(new), out))
            return new, out

        return super().health_update(name, wrapped)


class ServerProcess:
    """Fault servers run in a child process, so that their CPU time is spent on the
    other core (one Python process holds one core at a time); the request logs come
    back over a pipe (:meth:`records`).

    Args:
        scripts: per server name, its scripted faults (consumed one per request).
    """

    def __init__(self, scripts: dict[str, list[Fault]]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, scripts), daemon=True)
        self._proc.start()
        self.base_urls: dict[str, str] = self._conn.recv()

    def records(self) -> dict[str, list[RequestRecord]]:
        """Every chat request each server logged, once no server has logged a new one
        for 0.5 s (a request the client gave up on may still sit in a socket buffer)."""
        self._conn.send("records")
        return self._conn.recv()

    def stop(self) -> None:
        try:
            self._conn.send("stop")
        except OSError:
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


def _serve(conn: Any, scripts: dict[str, list[Fault]]) -> None:
    servers = {name: FaultServer(name).start().script(*faults) for name, faults in scripts.items()}
    conn.send({name: s.base_url for name, s in servers.items()})
    try:
        while conn.recv() == "records":
            last = -1
            for _ in range(40):  # at most ~20 s
                n = sum(len(s.chat_requests) for s in servers.values())
                busy = any(r.t_end is None for s in servers.values() for r in s.chat_requests)
                if n == last and not busy:
                    break
                last = n
                time.sleep(0.5)
            conn.send({name: s.chat_requests for name, s in servers.items()})
    except EOFError:
        pass
    finally:
        for s in servers.values():
            s.stop()


@dataclass
class Soak:
    servers: ServerProcess
    router: ProviderRouter
    store: RecordingStore
    n: int
    answers: dict[int, str] = field(default_factory=dict)
    modes: dict[int, str] = field(default_factory=dict)
    interrupted: collections.Counter = field(default_factory=collections.Counter)
    errors: dict[int, BaseException] = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_s: float = 0.0


NAMES = ("a", "b", "c")


def make_soak(n: int, seed: int = 7) -> Soak:
    """Start the servers (in a child process; call ``soak.servers.stop()`` at the end)
    and build the router over them."""
    rng = random.Random(seed)
    scripts = {name: [fault_mix(rng) for _ in range(n)] for name in NAMES}  # more than needed
    servers = ServerProcess(scripts)
    store = RecordingStore()
    router = ProviderRouter(
        deployments=[
            Deployment(
                model="llamacpp/fake", base_url=servers.base_urls[name], name=name, timeout=TIMEOUT
            )
            for name in NAMES
        ],
        strategy="least-busy",
        deadline=60.0,
        failure_threshold=2,
        circuit_cooldown=0.5,
        store=store,
    )
    return Soak(servers, router, store, n)


def _prompt(i: int) -> str:
    return f"rid-{i}"


def _one_sync(soak: Soak, i: int, mode: str) -> None:
    for _ in range(20):
        try:
            if mode == "invoke":
                text = soak.router.invoke(_prompt(i)).content
            else:
                text = "".join(str(c.content) for c in soak.router.stream(_prompt(i)))
            soak.answers[i] = str(text)
            return
        except StreamInterruptedError:
            soak.interrupted[i] += 1
        except Exception as e:  # noqa: BLE001 - recorded as lost
            soak.errors[i] = e
            return


async def _one_async(soak: Soak, i: int, mode: str) -> None:
    for _ in range(20):
        try:
            if mode == "ainvoke":
                text = (await soak.router.ainvoke(_prompt(i))).content
            else:
                text = "".join([str(c.content) async for c in soak.router.astream(_prompt(i))])
            soak.answers[i] = str(text)
            return
        except StreamInterruptedError:
            soak.interrupted[i] += 1
        except Exception as e:  # noqa: BLE001 - recorded as lost
            soak.errors[i] = e
            return


async def run(soak: Soak, async_workers: int = 12, sync_workers: int = 6) -> Soak:
    """Send the ``n`` requests: modes round-robin, async ones on ``async_workers`` tasks,
    sync ones on ``sync_workers`` threads, all at the same time."""
    rng = random.Random(11)
    ids = list(range(soak.n))
    for i in ids:
        soak.modes[i] = MODES[rng.randrange(4)]
    async_ids = collections.deque(i for i in ids if soak.modes[i] in ("ainvoke", "astream"))
    sync_ids = collections.deque(i for i in ids if soak.modes[i] in ("invoke", "stream"))
    lock = threading.Lock()

    def sync_worker() -> None:
        while True:
            with lock:
                if not sync_ids:
                    return
                i = sync_ids.popleft()
            _one_sync(soak, i, soak.modes[i])

    async def async_worker() -> None:
        while async_ids:
            i = async_ids.popleft()
            await _one_async(soak, i, soak.modes[i])

    t0, c0 = time.monotonic(), time.process_time()
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(sync_workers) as pool:
        sync_done = [loop.run_in_executor(pool, sync_worker) for _ in range(sync_workers)]
        await asyncio.gather(*(async_worker() for _ in range(async_workers)), *sync_done)
    soak.wall_s, soak.cpu_s = time.monotonic() - t0, time.process_time() - c0
    return soak


# --------------------------------------------------------------------------- checks


def check(soak: Soak) -> dict[str, Any]:
    """Assert the soak's invariants; return its figures."""
    records = soak.servers.records()
    by_key = {(r.server, r.index): r for rs in records.values() for r in rs}
    # every request finished, with its own answer, from a 200 for its own prompt
    assert not soak.errors, {i: repr(e)[:300] for i, e in list(soak.errors.items())[:5]}
    lost = [i for i in range(soak.n) if i not in soak.answers]
    assert not lost, f"{len(lost)} lost: {lost[:10]}"
    mixed = []
    for i, text in soak.answers.items():
        head, _, prompt = text.partition("] ")
        server, _, index = head.lstrip("[").partition("#")
        rec = by_key.get((server, int(index))) if index.isdigit() else None
        if (
            prompt != _prompt(i)
            or rec is None
            or rec.status != 200
            or rec.last_user_text != _prompt(i)
        ):
            mixed.append((i, text))
    assert not mixed, f"{len(mixed)} mixed up: {mixed[:5]}"
    # every interrupted stream was really cut after its first token
    for i, k in soak.interrupted.items():
        cuts = [
            r
            for rs in records.values()
            for r in rs
            if r.last_user_text == _prompt(i)
            and r.outcome in ("cut_after_first_token", "stream_without_finish")
        ]
        assert len(cuts) >= k, (
            i,
            k,
            [r.outcome for rs in records.values() for r in rs if r.last_user_text == _prompt(i)],
        )

    # the router's own record: admissions, windows, probes
    admissions: dict[str, list[tuple[float, bool]]] = collections.defaultdict(list)
    windows: dict[str, set[tuple[float, float]]] = collections.defaultdict(set)
    probe_out: dict[str, float | None] = {}
    probes = 0
    for name, old, new, out in soak.store.log:
        if isinstance(out, Claim):
            if out.allowed:
                admissions[name].append((out.at, out.probe))
                if out.probe:
                    probes += 1
                    # at most one probe in flight: none out (or lost) when this one goes
                    assert probe_out.get(name) is None or out.at - probe_out[name] >= 60, (
                        name,
                        out.at,
                        probe_out[name],
                    )
                    probe_out[name] = out.at
        if (
            settle(old, new.get("since") or 0).get("probe_at") is not None
            and new.get("probe_at") is None
        ):
            probe_out[name] = None
        if new.get("state") in ("cooling", "open") and new.get("until"):
            windows[name].add((new["since"], new["until"]))
    inside = [
        (name, at, w)
        for name, ws in windows.items()
        for w in ws
        for at, _ in admissions[name]
        if w[0] <= at < w[1]
    ]
    assert not inside, f"{len(inside)} admissions inside recorded windows: {inside[:5]}"
    # the servers' logs agree: every arrival was admitted first, none inside a window
    arrivals_in_windows = 0
    not_arrived = 0
    for name in NAMES:
        arr = sorted(r.wall_start for r in records[name])
        adm = sorted(at for at, _ in admissions[name])
        # each arrival has its own earlier admission (an admitted attempt may time out
        # on a loaded client before its request is written: admitted, never arrived)
        assert len(arr) <= len(adm), (name, len(arr), len(adm))
        for k, t_arr in enumerate(arr):
            assert t_arr >= adm[k], (name, k, t_arr, adm[k])
        not_arrived += len(adm) - len(arr)
        for since, until in windows[name]:
            in_w = sum(since <= t < until for t in arr)
            before = sum(t < since for t in adm) - sum(t < since for t in arr)
            arrivals_in_windows += in_w
            assert in_w <= max(0, before), (name, since, until, in_w, before)
    outcomes = collections.Counter(r.outcome for rs in records.values() for r in rs)
    return {
        "requests": soak.n,
        "modes": dict(collections.Counter(soak.modes.values())),
        "attempts_sent": sum(len(rs) for rs in records.values()),
        "server_outcomes": dict(outcomes),
        "windows_recorded": sum(len(w) for w in windows.values()),
        "admissions_inside_windows": len(inside),
        "arrivals_inside_windows_sent_before": arrivals_in_windows,
        "admitted_never_arrived": not_arrived,
        "half_open_probes": probes,
        "interrupted_streams_resent": sum(soak.interrupted.values()),
        "lost": 0,
        "mixed_up": 0,
        "wall_s": round(soak.wall_s, 2),
        "client_cpu_s": round(soak.cpu_s, 2),
    }
