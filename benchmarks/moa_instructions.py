"""CPU instructions per model call of the MoA orchestration, counted by valgrind.

Wall and CPU time on a shared VM vary 2x over a day; the number of instructions a run
executes does not (within about 1 %), so this compares commits where
``moa_overhead.py`` cannot. Every call returns at once (no sleep): what is counted
is the orchestration, plus the garbage collections it triggers.

    python benchmarks/moa_instructions.py                 # the package on sys.path
    python benchmarks/moa_instructions.py --tree /tmp/old # a worktree of another commit

Needs ``valgrind`` (``apt-get install valgrind``). The workload runs under callgrind with
instrumentation off through imports and two warm-up runs, then on for ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.05)


def workload(tree: str, name: str, case: str, agents: str, runs: int, signals: Path) -> None:
    """Runs inside valgrind: warm up, wait while instrumentation goes on, run, wait
    while it goes off (the interpreter's teardown is not counted), exit."""
    sys.path[:0] = [tree, os.path.join(tree, "benchmarks")]
    import moa_overhead as mo

    mo.DELAY = 0.0
    mo.AGENTS = agents
    [fn] = [f for label, f in mo.cases(mo.workloads()[name]).items() if label.startswith(case)]

    async def repeat(n: int) -> None:
        for _ in range(n):
            await fn()

    asyncio.run(repeat(2))
    (signals / "ready").touch()
    _wait_for(signals / "go")
    asyncio.run(repeat(runs))
    (signals / "done").touch()
    _wait_for(signals / "stop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--workload", default="50 queries x 3 layers")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--agents", choices=["client", "chat-model"], default="client")
    parser.add_argument(
        "--case", default="moa ainvoke", help="moa_overhead's case: floor, moa ainvoke, mixture-llm"
    )
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        workload(args.tree, args.workload, args.case, args.agents, args.runs, Path(args.inside))
        return
    with tempfile.TemporaryDirectory() as tmp:
        signals, out = Path(tmp), Path(tmp, "callgrind.out")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        cmd += [sys.executable, __file__, "--tree", args.tree, "--workload", args.workload]
        cmd += ["--case", args.case, "--agents", args.agents, "--runs", str(args.runs)]
        cmd += ["--inside", tmp]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)

        def switch(state: str, after: str) -> None:
            while not (signals / after).exists():
                if proc.poll() is not None:
                    sys.exit(f"the workload exited early ({proc.returncode})")
                time.sleep(0.2)
            control = ["callgrind_control", "-i", state, str(proc.pid)]
            subprocess.run(control, capture_output=True, check=True)

        switch("on", after="ready")
        (signals / "go").touch()
        switch("off", after="done")
        (signals / "stop").touch()
        proc.wait()
        totals = re.search(r"^totals: (\d+)", out.read_text(), re.M)
    sys.path[:0] = [args.tree, os.path.join(args.tree, "benchmarks")]
    import moa_overhead as mo

    spec = mo.workloads()[args.workload]
    calls = spec["queries"] * sum(spec["layers"]) * args.runs
    print(
        f"{args.workload}, {args.case}, {args.agents} agents: "
        f"{int(totals.group(1)) / calls / 1000:.1f} k "
        f"instructions per call ({args.runs} runs, {args.tree})"
    )


if __name__ == "__main__":
    main()
