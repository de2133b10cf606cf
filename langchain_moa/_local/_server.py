"""``LocalServer``: llama.cpp's own ``llama-server`` for one GGUF, on loopback.

The executable is built once from llama.cpp's sources (see
:mod:`langchain_moa._local._build`) and run as a subprocess. Requests reach it over
real HTTP through langchain-openai, exactly like a hosted provider: usage (also in
streams, ``stream_options.include_usage``), streaming, async, timeouts, JSON-schema
``response_format`` (grammar-constrained) and tool calls (the model's own chat
template, ``--jinja``).

Concurrency: ``slots`` parallel sequences with continuous batching, so a Self-MoA
layer's samples are decoded together in one batch instead of queueing; each slot
holds ``n_ctx`` tokens (prompt + completion). Requests beyond ``slots`` wait for a
free slot on the server.

Lifecycle, with no race and no orphan:

* **Port**: the server binds port 0 itself (the kernel picks a free port) and
  prints ``listening on http://127.0.0.1:<port>`` once the model is loaded; the port
  is read from that line, so no other process can take it in between.
* **Stopped with its parent**: the server runs in llama.cpp's child mode
  (``LLAMA_SERVER_ROUTER_PORT`` set), in which it exits when its standard input
  reaches end of file. Its stdin is a pipe whose only writer is this process, so the
  kernel closes it when this process dies, even by ``SIGKILL``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from langchain_moa.errors import ConfigurationError, LocalModelError

__all__ = [
    "LocalServer",
    "require_engine",
    "LOCAL_API_KEY",
    "DEFAULT_SLOTS",
    "DEFAULT_POLL",
    "default_threads",
]

LOCAL_API_KEY = "not-needed"
"""The API key sent to local servers (they ignore it; the OpenAI client requires one)."""

DEFAULT_SLOTS = 6
"""Parallel slots per server: the default sample count of :func:`langchain_moa.presets.self_moa`
(the CLI's ``--samples`` default, 3, fits as well), so one Self-MoA layer is one batch."""

DEFAULT_POLL = 0
"""llama.cpp's ``--poll`` level (0-100): 0 makes idle worker threads sleep instead of
spinning, which keeps a stream fast when other work shares the cores (see README,
"Speed")."""

_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")
_LIVE: set[LocalServer] = set()  # strong refs: each is a process to stop at exit


def default_threads() -> int:
    """Generation threads when none are given: the usable CPUs minus one, at least 1,
    at most 8. ggml's worker threads meet at a barrier after every operation, so one
    thread descheduled by other work stalls them all: on 2 cores with one busy
    process beside the server, 2 threads fell from 23 to 0.5 tokens/s while 1 thread
    kept 13-14 (README, "Shared cores"). Leaving one core free costs speed on an idle
    machine and keeps the server usable on a shared one."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return max(1, min(8, usable - 1))


def require_engine() -> None:
    """Raise :class:`LocalModelError` unless the engine can be had: a ``llama-server``
    is ready (cached build or ``$LANGCHAIN_MOA_LLAMA_SERVER``) or llama.cpp's sources
    are installed to build one. Cheap: builds nothing, imports nothing heavy."""
    from langchain_moa._local._build import find_llama_server, llama_cpp_source_dir

    if find_llama_server() is None:
        llama_cpp_source_dir()


@atexit.register
def _stop_all_at_exit() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(timeout=3.0)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        valid = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        raise ConfigurationError(f"{name} must be {valid}, got {value!r}")


def _cpu_has_amx() -> bool:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return any(line.startswith("flags") and " amx_int8" in line for line in fh)
    return False


def _server_env() -> dict[str, str]:
    # LLAMA_ARG_* would silently override our flags (llama.cpp reads them as
    # defaults); LLAMA_SERVER_ROUTER_PORT turns on child mode (exit on stdin EOF).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_ARG_", "LLAMA_SERVER_"))}
    env["LLAMA_SERVER_ROUTER_PORT"] = "0"
    return env


class LocalServer:
    """One ``llama-server`` subprocess serving ``model_path`` on 127.0.0.1.

    Usage::

        with LocalServer(ensure_model()) as server:
            llm = server.chat_model(temperature=0, max_tokens=64)
            llm.invoke("Say hi")

    Args:
        model_path: a GGUF file.
        n_ctx: context window per slot in tokens (prompt + completion); default 4096,
            enough for an MoA aggregator prompt holding several candidate answers.
            The server holds ``n_ctx * slots`` tokens of KV cache (0.5B model: 12 KiB
            per token, 288 MiB for the defaults); llama.cpp caps a slot at the
            model's training context. A longer request gets HTTP 400.
        slots: parallel sequences (llama.cpp's ``--parallel``), decoded together by
            continuous batching; default :data:`DEFAULT_SLOTS` (6).
        n_threads: CPU threads for generation; default :func:`default_threads`.
        n_threads_batch: CPU threads for prompt processing; default as ``n_threads``.
        poll: llama.cpp's ``--poll`` busy-wait level, 0-100; default
            :data:`DEFAULT_POLL` (0: idle threads sleep).
        chat_template: a llama.cpp built-in template name (``"chatml"``...); default
            ``None`` uses the Jinja chat template stored in the GGUF (right for the
            bundled Qwen models, and needed for tool calls).
        model_alias: the model id the server reports and accepts; default the
            file's stem.
        startup_timeout: seconds to wait for the model to load.
        extra_args: further ``llama-server`` flags, e.g. ``["--cache-type-k", "q8_0"]``.
        verbose: llama.cpp's verbose logging (to the log file).
        use_extra_bufts: llama.cpp's weight repacking into extra buffer types
            (``--repack``). Default ``None``: off on CPUs that report AMX (its kernels
            crashed on such a VM with the previous engine), else on.
        binary: the ``llama-server`` to run; default built/cached by
            :func:`langchain_moa._local._build.ensure_llama_server` on :meth:`start`.

    Attributes:
        base_url: ``http://127.0.0.1:<port>/v1`` once started.
        port: the TCP port.
        log_path: file receiving the server's stdout and stderr.
        startup_seconds: how long :meth:`start` took (model load included).

    Raises:
        LocalModelError: from :meth:`start`: the engine cannot be built, the file
            does not exist, or the server died / did not answer in time (the message
            holds the tail of the server's log).
        ConfigurationError: a parameter is out of range (the message names it).
    """

    def __init__(
        self,
        model_path: Path | str,
        *,
        n_ctx: int = 4096,
        slots: int = DEFAULT_SLOTS,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        poll: int = DEFAULT_POLL,
        chat_template: str | None = None,
        model_alias: str | None = None,
        startup_timeout: float = 120.0,
        extra_args: Sequence[str] = (),
        verbose: bool = False,
        use_extra_bufts: bool | None = None,
        binary: Path | str | None = None,
    ) -> None:
        _check_int("n_ctx", n_ctx, 16)
        _check_int("slots", slots, 1, 256)
        if n_threads is not None:
            _check_int("n_threads", n_threads, 1, 1024)
        if n_threads_batch is not None:
            _check_int("n_threads_batch", n_threads_batch, 1, 1024)
        _check_int("poll", poll, 0, 100)
        if not isinstance(startup_timeout, int | float) or startup_timeout <= 0:
            raise ConfigurationError(
                f"startup_timeout must be a positive number of seconds, got {startup_timeout!r}"
            )
        self.model_path = Path(model_path).expanduser()
        self.n_ctx = n_ctx
        self.slots = slots
        self.n_threads = n_threads or default_threads()
        self.n_threads_batch = n_threads_batch or self.n_threads
        self.poll = poll
        self.chat_template = chat_template
        self.model_alias = model_alias or self.model_path.stem
        self.startup_timeout = float(startup_timeout)
        self.extra_args = [str(a) for a in extra_args]
        self.verbose = verbose
        self.use_extra_bufts = use_extra_bufts
        self.binary = Path(binary) if binary is not None else None
        self.port: int | None = None
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ state
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``; raises :class:`LocalModelError` before start."""
        if self.port is None:
            raise LocalModelError("the local server is not started: call start() first")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        """True while the subprocess is alive (it may still be loading the model)."""
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = f"port={self.port}" if self.is_running() else "stopped"
        return f"LocalServer({str(self.model_path)!r}, {state})"

    def log_tail(self, max_chars: int = 3000) -> str:
        """The last ``max_chars`` characters of the server's output."""
        if self.log_path is None:
            return ""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_chars:].decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ start / stop
    def command(self, binary: Path | str) -> list[str]:
        """The ``llama-server`` command line (flags checked against llama.cpp's
        ``common/arg.cpp`` and ``tools/server/README.md``)."""
        repack = self.use_extra_bufts
        if repack is None:
            repack = not _cpu_has_amx()
        cmd = [
            str(binary),
            "--model", str(self.model_path),
            "--alias", self.model_alias,
            "--host", "127.0.0.1",
            "--port", "0",  # the kernel picks a free port; read back from the log
            "--parallel", str(self.slots),
            "--ctx-size", str(self.n_ctx * self.slots),  # split evenly across slots
            "--no-kv-unified",  # each slot owns exactly n_ctx tokens
            "--cont-batching",
            "--threads", str(self.n_threads),
            "--threads-batch", str(self.n_threads_batch),
            "--poll", str(self.poll),
            "--jinja",  # the GGUF's chat template: tool calls, system prompts
            "--no-webui",
            "--fit", "off",  # keep the context we ask for
            "--cache-ram", "512",  # MiB of prompt cache across requests (default 8192)
            "--repack" if repack else "--no-repack",
        ]  # fmt: skip
        if self.chat_template:
            cmd += ["--chat-template", self.chat_template]
        if self.verbose:
            cmd.append("--verbose")
        return cmd + self.extra_args

    def start(self) -> LocalServer:
        """Start the server (building the engine first if needed) and wait until the
        model is loaded and ``GET /health`` answers 200. Idempotent while running.
        Returns ``self``.
        """
        with self._lock:
            if self.is_running():
                return self
            if not self.model_path.is_file():
                raise LocalModelError(f"model file {self.model_path} does not exist")
            binary = self.binary
            if binary is None:
                from langchain_moa._local._build import ensure_llama_server

                binary = ensure_llama_server()
            started = time.monotonic()
            log_fd, log_name = tempfile.mkstemp(prefix="langchain-moa-llama-", suffix=".log")
            self.log_path = Path(log_name)
            self.port = None
            try:
                self._proc = subprocess.Popen(
                    self.command(binary),
                    stdin=subprocess.PIPE,  # our end closes when we die: the server exits
                    stdout=log_fd,
                    stderr=subprocess.STDOUT,
                    env=_server_env(),
                    start_new_session=True,  # Ctrl-C in a terminal goes to us, not it
                )
            finally:
                os.close(log_fd)
            _LIVE.add(self)
            try:
                self.port = self._wait_ready(started)
            except BaseException:
                self._terminate(timeout=3.0)
                self.port = None
                raise
            self.startup_seconds = time.monotonic() - started
            return self

    def _wait_ready(self, started: float) -> int:
        deadline = started + self.startup_timeout
        assert self._proc is not None and self.log_path is not None
        port: int | None = None
        with httpx.Client(timeout=httpx.Timeout(2.0, connect=1.0), trust_env=False) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise LocalModelError(
                        f"the local model server for {self.model_path} exited with code "
                        f"{code} while starting; its output ends with:\n{self.log_tail()}"
                    )
                if port is None:
                    with contextlib.suppress(OSError):
                        match = _LISTENING.search(self.log_path.read_bytes())
                        if match:
                            port = int(match.group(1))
                if port is not None:
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                            return port
                if time.monotonic() > deadline:
                    raise LocalModelError(
                        f"the local model server for {self.model_path} was not ready within "
                        f"{self.startup_timeout:g} s; its output ends with:\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def _terminate(self, timeout: float) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        _LIVE.discard(self)

    def _forget_log(self) -> None:
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
            self.log_path = None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout`` seconds. Idempotent.

        In-flight requests fail with a connection error (the router treats that as a
        transient failure and falls over).
        """
        with self._lock:
            self._terminate(timeout)
            self._forget_log()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._terminate(timeout=0.1)
            self._forget_log()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients
    def chat_model(self, **kwargs: Any) -> Any:
        """A chat model on this server (see :func:`chat_model_for_base_url`)."""
        from langchain_moa._local._clients import chat_model_for_base_url

        return chat_model_for_base_url(self.base_url, self.model_alias, **kwargs)
