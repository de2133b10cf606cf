"""How long does ``import langchain_moa`` take, and how many objects does it leave?

Each round imports the package in a fresh interpreter per tree (the trees alternate,
interleaved), and reports wall and CPU seconds of the import and the objects the
garbage collector tracks afterwards (every full collection walks them all). The
median over ``--rounds``.

    python benchmarks/import_time.py                      # this checkout
    python benchmarks/import_time.py --tree /tmp/old .    # another commit's worktree, and this one
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = """
import gc, json, sys, time
sys.path.insert(0, sys.argv[1])
wall, cpu = time.perf_counter(), time.process_time()
import langchain_moa
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
gc.collect()
print(json.dumps({"wall": wall, "cpu": cpu, "objects": len(gc.get_objects()),
                  "openai": "openai" in sys.modules}))
"""


def measure(tree: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, tree], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--tree", action="append", default=None, help="a checkout to import from (repeatable)"
    )
    parser.add_argument("trees", nargs="*", help="more checkouts")
    args = parser.parse_args()
    trees = [*(args.tree or []), *args.trees] or [str(Path(__file__).resolve().parents[1])]
    samples: dict[str, list[dict]] = {t: [] for t in trees}
    measure(trees[0])  # warm the file cache
    for _ in range(args.rounds):
        for tree in trees:
            samples[tree].append(measure(tree))
    print(f"import langchain_moa, median of {args.rounds} interleaved rounds")
    print(f"  {'tree':<40}{'wall s':>8}{'CPU s':>8}{'objects':>10}  openai SDK loaded")
    for tree, runs in samples.items():
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        objects = statistics.median(r["objects"] for r in runs)
        print(f"  {tree:<40}{wall:>8.2f}{cpu:>8.2f}{objects:>10.0f}  {runs[0]['openai']}")


if __name__ == "__main__":
    main()
