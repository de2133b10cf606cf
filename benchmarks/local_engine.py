"""The local engine (llama.cpp's ``llama-server``) on the bundled 0.5B model.

Measures, on this machine, with the same prompts and ``max_tokens`` as the recorded
baseline run of the issue (llama-cpp-python 0.3.36's server, ``n_threads=2``):

* ``one stream``  — tokens/s of one streamed request (``max_tokens`` tokens; wall from
  request to last token, and llama.cpp's own decode rate from the stream's ``timings``);
* ``layer k=3`` / ``layer k=6`` — wall of one Self-MoA proposal layer
  (``Propose([model] * k)``, temperature 0.7, ``max_tokens`` each);
* ``moa e2e``     — wall of ``moa "What is 17*23?"`` in a fresh process, server start
  and model load included (the engine already built);

each over ``--rounds`` interleaved rounds, with the server's CPU seconds per case.

``--contention`` instead measures one stream with each thread/poll setting, on a quiet
machine and with ``--hogs`` pure-Python busy loops beside it (the situation of a
shared machine), interleaved over ``--rounds`` rounds.

    python benchmarks/local_engine.py --rounds 3
    python benchmarks/local_engine.py --contention --rounds 3

``--batch-scan`` instead measures the total tokens/s of k concurrent requests
(k = 1..8, ``max_tokens`` each, temperature 0.7), interleaved over ``--rounds`` rounds:
how much a proposal layer of k samples gains from the server's batching on this CPU.

    python benchmarks/local_engine.py --batch-scan --rounds 3 --threads 2

``--compare-binary PATH`` instead runs the package's ``llama-server`` and the one at PATH
(e.g. a build with other compiler flags) side by side, interleaved over ``--rounds``
rounds: decode tokens/s of one stream, prompt tokens/s of a ~1,500-token prompt, and the
total tokens/s of 3 concurrent requests.

    python benchmarks/local_engine.py --compare-binary /path/to/llama-server --threads 2

``--baseline-url URL`` adds the same one-stream and layer cases against another
OpenAI-compatible server already running at URL (e.g. llama-cpp-python's
``python -m llama_cpp.server`` on the same GGUF), side by side. ``--threads N`` runs
llama-server with N threads (the baseline's ``n_threads=2`` for a like-for-like
comparison on 2 cores; the default is the package's shared-cores default).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain_moa import Propose  # noqa: E402
from langchain_moa.local import (  # noqa: E402
    DEFAULT_LOCAL_MODEL,
    LocalServer,
    chat_model_for_base_url,
    ensure_llama_server,
    ensure_model,
)

# Long-form prompts, so a server that ignores ``ignore_eos`` (llama-cpp-python's) still
# writes about ``max_tokens`` tokens and the rates compare like for like.
PROMPT = "Write a long, detailed story about a cat who learns to sail."
LAYER_PROMPT = "Write a long, detailed essay about why the sky is blue."


def _cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process and its reaped children, from /proc (Linux)."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _body(model: str, prompt: str, max_tokens: int, temperature: float) -> dict[str, Any]:
    """A chat completion request of ``max_tokens`` tokens."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "ignore_eos": True,  # llama.cpp: always max_tokens tokens (ignored elsewhere)
    }


def one_stream(base_url: str, model: str, max_tokens: int) -> dict[str, float]:
    """Stream one completion; tokens/s from the request to the last token."""
    body = {
        **_body(model, PROMPT, max_tokens, 0.0),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    content_chunks = 0  # the token count of a server that sends no usage in streams
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=600) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            choices = event.get("choices") or [{}]
            content_chunks += bool((choices[0].get("delta") or {}).get("content"))
            usage = event.get("usage") or usage
            timings = event.get("timings") or timings
    wall = time.perf_counter() - started
    tokens = usage.get("completion_tokens") or content_chunks
    return {
        "wall_s": wall,
        "tokens": tokens,
        "tok_per_s": tokens / wall if wall else 0.0,
        "decode_tok_per_s": float(timings.get("predicted_per_second", float("nan"))),
    }


def layer(base_url: str, model: str, k: int, max_tokens: int) -> dict[str, float]:
    # ignore_eos: every sample is max_tokens long, as in the recorded baseline
    llm = chat_model_for_base_url(base_url, model, timeout=600, extra_body={"ignore_eos": True})
    step = Propose([llm] * k, temperature=0.7, max_tokens=max_tokens, max_concurrency=k)
    started = time.perf_counter()
    state = step.invoke(LAYER_PROMPT)
    wall = time.perf_counter() - started
    tokens = sum(c.output_tokens for c in state.candidates)
    return {"wall_s": wall, "tokens": tokens, "tok_per_s": tokens / wall if wall else 0.0}


def moa_end_to_end() -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.pop("LANGCHAIN_MOA_LOCAL_BASE_URL", None)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "langchain_moa.cli", "What is 17*23?"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"moa failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"wall_s": wall, "answer": proc.stdout.strip()[:80]}  # type: ignore[dict-item]


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def run_main(args: argparse.Namespace) -> None:
    model_path = ensure_model(DEFAULT_LOCAL_MODEL, progress=False)
    binary = ensure_llama_server()
    print(f"engine: {binary}\nmodel: {model_path}\ncpus: {os.cpu_count()}", flush=True)
    results: dict[str, dict[str, list[float]]] = {}

    def record(case: str, data: dict[str, float], cpu: float) -> None:
        entry = results.setdefault(case, {})
        for key, value in data.items():
            if isinstance(value, int | float):
                entry.setdefault(key, []).append(float(value))
        entry.setdefault("server_cpu_s", []).append(cpu)
        shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in data.items()}
        print(f"  {case:28s} {shown} server cpu {cpu:.1f} s", flush=True)

    with LocalServer(model_path, model_alias=DEFAULT_LOCAL_MODEL, n_threads=args.threads) as server:
        print(f"llama-server started in {server.startup_seconds:.1f} s: {server.command(binary)}")
        urls = {"llama-server": server.base_url}
        if args.baseline_url:
            urls["baseline"] = args.baseline_url
        one_stream(server.base_url, DEFAULT_LOCAL_MODEL, 8)  # warm-up
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}/{args.rounds}", flush=True)
            for name, url in urls.items():
                pid = server.pid if name == "llama-server" else None
                n = args.max_tokens
                for case, fn in [
                    ("one stream", lambda u=url, n=n: one_stream(u, DEFAULT_LOCAL_MODEL, n)),
                    ("layer k=3", lambda u=url, n=n: layer(u, DEFAULT_LOCAL_MODEL, 3, n)),
                    ("layer k=6", lambda u=url, n=n: layer(u, DEFAULT_LOCAL_MODEL, 6, n)),
                ]:
                    cpu0 = _cpu_seconds(pid)
                    data = fn()
                    record(f"{name} {case}", data, _cpu_seconds(pid) - cpu0)
    if not args.no_e2e:
        for _ in range(args.rounds):
            record("moa e2e (fresh process)", moa_end_to_end(), float("nan"))
    print("\nsummary (median of rounds)")
    for case, entry in results.items():
        parts = [f"{k} {_summary(v)}" for k, v in entry.items() if k != "tokens"]
        print(f"  {case:34s} " + "; ".join(parts))


def _hog() -> None:
    while True:
        pass


def run_contention(args: argparse.Namespace) -> None:
    model_path = ensure_model(DEFAULT_LOCAL_MODEL, progress=False)
    ensure_llama_server()
    settings = [(2, 50), (2, 0), (1, 50), (1, 0)]
    results: dict[tuple, list[float]] = {}
    servers = {
        (t, p): LocalServer(model_path, n_threads=t, poll=p, slots=1).start() for t, p in settings
    }
    try:
        for server in servers.values():
            one_stream(server.base_url, server.model_alias, 8)  # warm-up
        for rnd in range(args.rounds):
            for hogs in (0, args.hogs):
                procs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(hogs)]
                for proc in procs:
                    proc.start()
                try:
                    time.sleep(0.5 if hogs else 0)
                    for (t, p), server in servers.items():
                        cpu0 = _cpu_seconds(server.pid)
                        data = one_stream(server.base_url, server.model_alias, args.max_tokens)
                        cpu = _cpu_seconds(server.pid) - cpu0
                        results.setdefault((t, p, hogs), []).append(data["tok_per_s"])
                        results.setdefault((t, p, hogs, "cpu"), []).append(cpu)
                        print(
                            f"round {rnd + 1} hogs={hogs} threads={t} poll={p}: "
                            f"{data['tok_per_s']:.1f} tokens/s, decode "
                            f"{data['decode_tok_per_s']:.1f}, server cpu {cpu:.1f} s "
                            f"for {data['wall_s']:.1f} s wall",
                            flush=True,
                        )
                finally:
                    for proc in procs:
                        proc.terminate()
                        proc.join()
    finally:
        for server in servers.values():
            server.stop()
    print(f"\nsummary: one stream, tokens/s (median of {args.rounds}), {args.max_tokens} tokens")
    print(f"threads poll | quiet            | with {args.hogs} busy loops")
    for t, p in settings:
        print(
            f"{t:7d} {p:4d} | {_summary(results[(t, p, 0)]):16s} | "
            f"{_summary(results[(t, p, args.hogs)])}"
        )


def concurrent(base_url: str, model: str, k: int, max_tokens: int) -> dict[str, float]:
    """``k`` requests at once (raw HTTP, one thread each); total tokens/s."""
    body = _body(model, LAYER_PROMPT, max_tokens, 0.7)
    with ThreadPoolExecutor(k) as pool:
        started = time.perf_counter()
        replies = list(
            pool.map(
                lambda _: httpx.post(f"{base_url}/chat/completions", json=body, timeout=600),
                range(k),
            )
        )
        wall = time.perf_counter() - started
    tokens = sum(r.raise_for_status().json()["usage"]["completion_tokens"] for r in replies)
    return {"wall_s": wall, "tokens": tokens, "tok_per_s": tokens / wall}


def run_batch_scan(args: argparse.Namespace) -> None:
    model_path = ensure_model(DEFAULT_LOCAL_MODEL, progress=False)
    binary = ensure_llama_server()
    sizes = range(1, 9)
    rates: dict[int, list[float]] = {k: [] for k in sizes}
    with LocalServer(
        model_path, model_alias=DEFAULT_LOCAL_MODEL, n_threads=args.threads, slots=max(sizes)
    ) as server:
        print(f"llama-server: {server.command(binary)}", flush=True)
        one_stream(server.base_url, DEFAULT_LOCAL_MODEL, 8)  # warm-up
        for rnd in range(args.rounds):
            for k in sizes:
                data = concurrent(server.base_url, DEFAULT_LOCAL_MODEL, k, args.max_tokens)
                rates[k].append(data["tok_per_s"])
                print(f"round {rnd + 1} k={k}: {data['tok_per_s']:.1f} tokens/s", flush=True)
    print(f"\nsummary: k concurrent requests, total tokens/s (median of {args.rounds})")
    for k in sizes:
        print(f"  k={k}: {_summary(rates[k])}  ({statistics.median(rates[k]) / k:.1f} per request)")


def prompt_rate(base_url: str, model: str) -> float:
    """Prompt tokens/s (llama.cpp's ``timings``) of a ~1,500-token prompt, 1 token out."""
    prompt = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(120))
    body = {**_body(model, prompt, 1, 0.0), "cache_prompt": False}
    reply = httpx.post(f"{base_url}/chat/completions", json=body, timeout=600)
    return float(reply.raise_for_status().json()["timings"]["prompt_per_second"])


def run_compare_binary(args: argparse.Namespace) -> None:
    model_path = ensure_model(DEFAULT_LOCAL_MODEL, progress=False)
    binaries = {"package": ensure_llama_server(), "other": Path(args.compare_binary)}
    cases = ("decode tok/s", "prompt tok/s", "3 concurrent tok/s")
    results: dict[tuple[str, str], list[float]] = {(b, c): [] for b in binaries for c in cases}
    for rnd in range(args.rounds):
        for name, binary in binaries.items():
            with LocalServer(
                model_path, model_alias=DEFAULT_LOCAL_MODEL, n_threads=args.threads, binary=binary
            ) as server:
                url, model = server.base_url, DEFAULT_LOCAL_MODEL
                one_stream(url, model, 8)  # warm-up
                results[(name, cases[0])].append(
                    one_stream(url, model, args.max_tokens)["decode_tok_per_s"]
                )
                results[(name, cases[1])].append(prompt_rate(url, model))
                results[(name, cases[2])].append(
                    concurrent(url, model, 3, args.max_tokens)["tok_per_s"]
                )
            print(
                f"round {rnd + 1} {name}: "
                + ", ".join(f"{c} {results[(name, c)][-1]:.1f}" for c in cases),
                flush=True,
            )
    print(f"\nsummary (median of {args.rounds}; {binaries['other']} as 'other')")
    for case in cases:
        print(f"  {case}: " + "  |  ".join(f"{b} {_summary(results[(b, case)])}" for b in binaries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--contention", action="store_true")
    parser.add_argument("--batch-scan", action="store_true")
    parser.add_argument("--hogs", type=int, default=2)
    parser.add_argument("--no-e2e", action="store_true", help="skip the moa end-to-end case")
    parser.add_argument("--baseline-url", default=None)
    parser.add_argument("--compare-binary", default=None, help="another llama-server to compare")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="llama-server threads (default: the package's default, usable CPUs - 1)",
    )
    args = parser.parse_args()
    if args.contention:
        run_contention(args)
    elif args.batch_scan:
        run_batch_scan(args)
    elif args.compare_binary:
        run_compare_binary(args)
    else:
        run_main(args)


if __name__ == "__main__":
    main()
