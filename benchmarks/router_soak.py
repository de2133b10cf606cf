"""Router soak, large: 10,000 requests (async and sync, invoke and stream, mixed) through
a ``ProviderRouter`` over three fault-injecting servers on 127.0.0.1.

The same workload and checks as ``tests/integration_tests/test_router_soak.py`` (2,000
requests), see ``tests/integration_tests/soak.py``: 429s with ``Retry-After`` in seconds,
``retry-after-ms`` and HTTP-date form, 500/503, slow answers, attempts past the 1 s
timeout, dropped connections, malformed JSON, non-SSE and empty streams, streams cut
before and after the first token or closed without ``finish_reason``. Asserted from the
servers' logs and the router's record of its own transitions: 0 lost, 0 mixed up, 0
admissions inside a cooldown window, at most one half-open probe in flight. Prints the
figures (the servers run in a child process; client CPU is the router's process).

    flock /tmp/heavy.lock python benchmarks/router_soak.py --n 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration_tests import soak  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="requests (default 10,000)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the fault scripts")
    args = ap.parse_args()
    s = soak.make_soak(args.n, seed=args.seed)
    try:
        asyncio.run(soak.run(s))
        figures = soak.check(s)
    finally:
        s.servers.stop()
    figures["requests_per_s"] = round(args.n / figures["wall_s"], 1)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
