"""Soak: 2,000 requests (async and sync, invoke and stream, mixed) through a router over
three fault-injecting servers: 429s in all three Retry-After forms, 5xx, slow answers,
timeouts, dropped connections, malformed bodies, non-SSE and empty streams, streams cut
before and after the first token. Invariants only (see :mod:`soak`): 0 lost, 0 mixed up,
0 admissions inside a cooldown window the router recorded, at most one half-open probe in
flight. ``benchmarks/router_soak.py`` runs the 10,000-request version.
"""

from __future__ import annotations

import os

from tests.integration_tests import soak

N = int(os.environ.get("ROUTER_SOAK_N", "2000"))


async def test_router_soak_loses_nothing_and_never_sends_inside_a_window() -> None:
    s = soak.make_soak(N)
    try:
        await soak.run(s)
        figures = soak.check(s)
    finally:
        s.servers.stop()
    print(figures)
    assert figures["requests"] == N >= 2000 or "ROUTER_SOAK_N" in os.environ
    # the faults really happened
    assert figures["windows_recorded"] > 0 and figures["half_open_probes"] > 0
    assert figures["interrupted_streams_resent"] > 0
