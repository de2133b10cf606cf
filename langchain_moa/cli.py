"""The ``moa`` command: ask a Mixture-of-Agents pipeline from the shell.

Examples::

    moa "What is 17*23?"                       # greedy call, then samples until they agree
    moa "Explain CRDTs" --stream                # print the aggregator's tokens as they come
    moa "..." -p openai/gpt-4o-mini -p groq/llama-3.1-8b-instant -a openai/gpt-4o
    moa --input questions.jsonl --output answers.jsonl   # batch; rerun to resume
    python -m langchain_moa.cli --help

Defaults: with no ``--proposer``, the model is the bundled
``local/qwen2.5-coder-0.5b`` when no provider key is set, else the cheap default of
the first provider whose key is set (see :data:`langchain_moa._cli_config.HOSTED_DEFAULTS`;
``OPENAI_API_KEY`` -> ``openai/gpt-4o-mini``), run with the measured default
(:data:`langchain_moa._cli_config.DEFAULT_PRESET`: Adaptive-Consistency with the greedy
answer first — one greedy call, then samples at temperature 0.3 one at a time until the
majority of their final numbers is settled, at most ``--samples`` (6) calls, ties to the
greedy answer). ``--preset self-moa`` samples it
``--samples`` times and aggregates with itself (Self-MoA, Li et al. 2025).

Exit codes: 0 success; 1 the run failed (every proposer failed, the aggregator
failed, or some batch questions failed); 2 bad options or files, a missing extra
(the message gives the ``pip install`` command) or a missing API key (the message
names the variable); 130 interrupted (batch output kept; rerun to resume).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand

from langchain_moa._cli_batch import (
    BatchFileError,
    Question,
    completed_ids,
    open_output,
    pending,
    read_questions,
    write_row,
)
from langchain_moa._cli_config import PRESETS, RunSettings, build_pipeline, local_models
from langchain_moa.errors import ConfigurationError, LocalModelError, MoAError

__all__ = ["app", "main"]

app = typer.Typer(
    name="moa",
    help="Ask a Mixture-of-Agents pipeline (runs on a bundled local model when no API key is set).",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=False,
)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    typer.echo(f"moa: error: {message}", err=True)
    raise typer.Exit(code)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


class _Command(TyperCommand):
    """Click/typer usage errors (unknown option, a value of the wrong type) as one line
    on stderr with exit code 2, like our own errors, instead of a usage box."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            sys.exit(EXIT_INTERRUPTED)
        except typer.TyperException as exc:  # typer's click: UsageError, BadParameter, ...
            if not hasattr(exc, "format_message"):
                raise
            message = " ".join(exc.format_message().split())
            typer.echo(f"moa: error: {message} (see moa --help)", err=True)
            sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
        sys.exit(code if isinstance(code, int) else 0)


@app.command(cls=_Command, context_settings={"help_option_names": ["-h", "--help"]})
def main(
    question: Annotated[
        str | None,
        typer.Argument(help="The question. Omit it with --input, or give '-' to read stdin."),
    ] = None,
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            help=f"Pipeline: {', '.join(PRESETS)}. auto = adaptive with no --proposer, "
            "self-moa for one model, moa-lite for several.",
        ),
    ] = "auto",
    proposer: Annotated[
        list[str] | None,
        typer.Option("--proposer", "-p", help="A proposer model, 'provider/model' (repeatable)."),
    ] = None,
    aggregator: Annotated[
        str | None,
        typer.Option("--aggregator", "-a", help="The aggregator model (default: first proposer)."),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            "--samples",
            "-k",
            help="Samples of the one model (adaptive: at most this many calls); default 6 "
            "for adaptive, 5 for self-consistency, 3 for the other presets.",
            show_default=False,
        ),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            "--temperature",
            "-t",
            help="Sampling temperature, 0..2 (default 0.3 for adaptive and "
            "self-consistency, 0.7 for the MoA presets).",
        ),
    ] = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Output budget (tokens) of each reference.")
    ] = 512,
    aggregator_max_tokens: Annotated[
        int | None,
        typer.Option(
            "--aggregator-max-tokens",
            help="Output budget of the aggregator (default: --max-tokens).",
        ),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url",
            help="An OpenAI-compatible server (vLLM, Ollama, llama.cpp, ...); model names "
            "are then that server's ids.",
        ),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option("--api-key-env", help="Environment variable holding --base-url's key."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="robust preset: seed of Shuffle/Dropout.")
    ] = None,
    greedy_first: Annotated[
        bool | None,
        typer.Option(
            "--greedy-first/--no-greedy-first",
            help="Vote presets: make the first call greedy (temperature 0); its answer is "
            "one vote and wins ties (adaptive: it counts toward --samples; "
            "self-consistency: --samples more).",
            show_default=False,
        ),
    ] = None,
    stream: Annotated[
        bool, typer.Option("--stream", help="Print the aggregator's tokens as they come.")
    ] = False,
    history: Annotated[
        Path | None,
        typer.Option(
            "--history",
            help="Write the run's history as JSON (batch: JSON Lines, one line per question).",
            dir_okay=False,
        ),
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input", "-i", help="Batch: JSONL questions ({'id','question'} or strings)."
        ),
    ] = None,
    output_file: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Batch: JSONL answers; an existing file is resumed."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="Batch: questions asked at once.")
    ] = 1,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the answer as a JSON object with usage.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No summary line / progress bar on stderr.")
    ] = False,
) -> None:
    """Ask QUESTION to a Mixture-of-Agents pipeline, or answer a JSONL file in batch."""
    api_key = None
    if api_key_env is not None:
        import os

        api_key = os.environ.get(api_key_env)
        if not api_key:
            _fail(f"--api-key-env names {api_key_env}, which is not set")
    settings = RunSettings(
        preset=preset.strip().lower(),
        proposers=list(proposer or []),
        aggregator=aggregator,
        samples=samples,
        temperature=temperature,
        max_tokens=max_tokens,
        aggregator_max_tokens=aggregator_max_tokens,
        base_url=base_url,
        api_key=api_key,
        seed=seed,
        greedy_first=greedy_first,
    )
    batch = input_file is not None or output_file is not None
    if batch:
        if input_file is None or output_file is None:
            _fail("batch mode needs both --input and --output")
        if question is not None:
            _fail("give either a QUESTION or --input/--output, not both")
        if stream:
            _fail("--stream works with a single QUESTION, not with --input")
        if concurrency < 1:
            _fail(f"--concurrency must be >= 1, got {concurrency}")
        if input_file.resolve() == output_file.resolve():
            _fail("--input and --output must be different files")
    else:
        if question == "-":
            question = sys.stdin.read()
        if question is None or not question.strip():
            _fail("give a QUESTION (or --input questions.jsonl --output answers.jsonl); see --help")

    try:
        runnable, proposers, agg = build_pipeline(settings)
        questions = read_questions(input_file) if batch else []
        done = completed_ids(output_file) if batch else set()
        _start_local_models(local_models(settings, [*proposers, agg]), quiet)
    except (MoAError, BatchFileError) as exc:
        _fail(_one_line(exc))

    try:
        if batch:
            code = _run_batch(runnable, questions, done, output_file, history, concurrency, quiet)
        else:
            code = _run_one(runnable, question, stream, history, json_output, quiet, settings)
    except KeyboardInterrupt:
        if batch:
            typer.echo(
                f"moa: interrupted; answers so far are in {output_file}: "
                "run the same command again to resume",
                err=True,
            )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    raise typer.Exit(code)


def _start_local_models(names: list[str], quiet: bool) -> None:
    """Assemble and start the bundled models now, so a missing extra is a clear error
    (not a failed call inside the pipeline) and the first answer's latency is honest."""
    import os

    from langchain_moa._local._server import require_engine
    from langchain_moa.local import LOCAL_BASE_URL_ENV, get_local_chat_model

    if names and not os.environ.get(LOCAL_BASE_URL_ENV):
        require_engine()  # the install hint before any "starting" line
    for name in names:
        if not quiet:
            typer.echo(f"moa: starting local model {name} ...", err=True)
        get_local_chat_model(name)


def _history_handler() -> Any:
    from langchain_moa.history import MoAHistoryHandler

    return MoAHistoryHandler()


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write history file {path}: {exc.strerror}")


def _run_one(
    runnable: Any,
    question: str,
    stream: bool,
    history: Path | None,
    json_output: bool,
    quiet: bool,
    settings: RunSettings,
) -> int:
    handler = _history_handler()
    config = {"callbacks": [handler]}
    started = time.perf_counter()
    error: BaseException | None = None
    message: Any = None
    try:
        if stream:
            for chunk in runnable.stream(question, config=config):
                message = chunk if message is None else message + chunk
                if not json_output and chunk.text:
                    typer.echo(chunk.text, nl=False)
                    sys.stdout.flush()
            if not json_output and message is not None:
                typer.echo("")
        else:
            message = runnable.invoke(question, config=config)
    except Exception as exc:  # reported as one line; the history is still written
        error = exc
    elapsed = time.perf_counter() - started
    if history is not None:
        _write_text(history, handler.to_json())
    if error is not None:
        code = (
            EXIT_USAGE if isinstance(error, (LocalModelError, ConfigurationError)) else EXIT_FAILED
        )
        _fail(_one_line(error), code)
    usage = dict(handler.usage())  # every call of the run, as the message's usage_metadata
    text = message.text if hasattr(message, "text") else str(message)
    calls = handler.calls
    if json_output:
        typer.echo(
            json.dumps(
                {
                    "answer": text,
                    **usage,
                    "calls": len(calls),
                    "failed_calls": sum(1 for c in calls if c.error),
                    "latency_s": round(elapsed, 3),
                },
                ensure_ascii=False,
            )
        )
    elif not stream:
        typer.echo(text)
    if not quiet:
        typer.echo(
            f"[{settings.resolved_preset()}: {len(calls)} calls, {usage['total_tokens']} tokens "
            f"({usage['input_tokens']} in / {usage['output_tokens']} out), {elapsed:.1f} s]",
            err=True,
        )
    return 0


def _answer_row(
    runnable: Any, q: Question, history_lock: threading.Lock, history_fh: Any
) -> dict[str, Any]:
    handler = _history_handler()
    started = time.perf_counter()
    answer, error = None, None
    try:
        message = runnable.invoke(q.question, config={"callbacks": [handler]})
        answer = message.text if hasattr(message, "text") else str(message)
    except Exception as exc:  # recorded in the row; the batch goes on
        error = f"{type(exc).__name__}: {_one_line(exc)}"
    usage = dict(handler.usage())  # also counts the calls of a run that failed
    calls = handler.calls
    if history_fh is not None:
        with history_lock:
            write_row(history_fh, {"id": q.id, "steps": handler.to_list()})
    return {
        "id": q.id,
        "question": q.question,
        "answer": answer,
        **usage,
        "calls": len(calls),
        "failed_calls": sum(1 for c in calls if c.error),
        "latency_s": round(time.perf_counter() - started, 3),
        "error": error,
    }


def _run_batch(
    runnable: Any,
    questions: list[Question],
    done: set[str],
    output_file: Path,
    history: Path | None,
    concurrency: int,
    quiet: bool,
) -> int:
    from tqdm.auto import tqdm

    todo = pending(questions, done)
    skipped = len(questions) - len(todo)
    if not quiet and skipped:
        typer.echo(
            f"moa: resuming: {skipped} of {len(questions)} already answered in {output_file}",
            err=True,
        )
    try:
        out = open_output(output_file)
        history_fh = open_output(history) if history is not None else None
    except BatchFileError as exc:
        _fail(_one_line(exc))
    failed = 0
    lock = threading.Lock()
    bar = tqdm(
        total=len(questions), initial=skipped, unit="q", desc="moa", disable=quiet, file=sys.stderr
    )

    def record(row: dict[str, Any]) -> None:
        nonlocal failed
        with lock:
            write_row(out, row)
        failed += row["error"] is not None
        bar.update(1)
        bar.set_postfix(failed=failed, refresh=False)

    try:
        if concurrency == 1:  # in this thread: Ctrl-C stops the call in flight at once
            for q in todo:
                record(_answer_row(runnable, q, lock, history_fh))
        else:
            pool = ThreadPoolExecutor(max_workers=concurrency)
            try:
                queue = iter(todo)
                # submit lazily, so an interrupt leaves no backlog of started questions
                running = {
                    pool.submit(_answer_row, runnable, q, lock, history_fh)
                    for _, q in zip(range(concurrency), queue, strict=False)
                }
                while running:
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        record(fut.result())
                        nxt = next(queue, None)
                        if nxt is not None:
                            running.add(pool.submit(_answer_row, runnable, nxt, lock, history_fh))
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
    finally:
        bar.close()
        out.close()
        if history_fh is not None:
            history_fh.close()
    if not quiet:
        typer.echo(
            f"moa: {len(todo) - failed} answered, {failed} failed, {skipped} skipped "
            f"-> {output_file}",
            err=True,
        )
    if failed:
        typer.echo(
            f'moa: {failed} question(s) failed (see "error" in {output_file}); '
            "run the same command again to retry them",
            err=True,
        )
        return EXIT_FAILED
    return 0


if __name__ == "__main__":  # python -m langchain_moa.cli
    app()
