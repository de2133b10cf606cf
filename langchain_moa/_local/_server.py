"""``LocalServer``: an OpenAI-compatible llama.cpp server for one GGUF, on loopback.

The server is llama-cpp-python's own (``llama_cpp.server``), run in a subprocess by
:mod:`langchain_moa._local._serve`, which adds token usage to streamed responses.
Requests reach it over real HTTP through langchain-openai, exactly like a hosted
provider: usage, streaming, async and timeouts all take the same code path.

Concurrency: llama-cpp-python serves one request at a time per server (a global
lock; it has no parallel slots), so concurrent requests queue on the server and are
answered in turn. ``interrupt_requests`` is turned off, otherwise a queued request
would cut a running stream short.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from langchain_moa.errors import ConfigurationError, LocalModelError

__all__ = ["LocalServer", "require_llama_cpp", "LOCAL_API_KEY"]

LOCAL_API_KEY = "not-needed"
"""The API key sent to local servers (they ignore it; the OpenAI client requires one)."""

_INSTALL_HINT = 'pip install "langchain-moa[local]"'
_LIVE: set[LocalServer] = set()  # strong refs: each is a process to stop at exit


def require_llama_cpp() -> None:
    """Raise :class:`LocalModelError` unless ``llama_cpp.server`` can be imported.

    Checks with :func:`importlib.util.find_spec`, without importing llama.cpp.
    """
    missing = [
        name
        for name in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise LocalModelError(
            "the local model runtime (llama-cpp-python with its server extra) is not "
            f"installed: run {_INSTALL_HINT} (missing modules: {', '.join(missing)})"
        )


@atexit.register
def _stop_all_at_exit() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(timeout=3.0)


def _check_positive_int(name: str, value: int | None, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")


class LocalServer:
    """One ``llama_cpp.server`` subprocess serving ``model_path`` on 127.0.0.1.

    Usage::

        with LocalServer(ensure_model()) as server:
            llm = server.chat_model(temperature=0, max_tokens=64)
            llm.invoke("Say hi")

    Args:
        model_path: a GGUF file.
        n_ctx: context window in tokens (prompt + completion); default 4096, enough
            for an MoA aggregator prompt holding several candidate answers. A longer
            request gets HTTP 400 from the server.
        n_threads: CPU threads for generation; default all CPUs, at most 8. Measured
            with the 0.5B model on 2 cores: 25 tokens/s with 2 threads vs 14 with 1
            on an idle machine, and 11.5 vs 8.4 (medians of 4) while two other
            servers were busy, thanks to passive OpenMP waiting (see :meth:`start`);
            with llama.cpp's default busy waiting, 2 contended threads fell to 1 token/s.
        n_threads_batch: CPU threads for prompt processing; default: as ``n_threads``.
        chat_format: llama-cpp-python chat format name; default ``None`` uses the chat
            template stored in the GGUF (right for the bundled Qwen models).
        model_alias: the model id the server reports and accepts; default the
            file's stem.
        startup_timeout: seconds to wait for ``GET /v1/models`` to answer.
        extra_args: further ``python -m llama_cpp.server`` flags, e.g.
            ``["--n_batch", "256"]``.
        verbose: let llama.cpp print its loading and timing logs (to the log file).
        use_extra_bufts: llama.cpp's extra weight buffer types (AMX, repacked
            weights). Default ``None``: off when the llama.cpp build includes AMX
            kernels, which crash on some VMs (see :mod:`langchain_moa._local._serve`),
            else llama.cpp's default (on).

    Attributes:
        base_url: ``http://127.0.0.1:<port>/v1`` once started.
        port: the TCP port.
        log_path: file receiving the server's stdout and stderr.

    Raises:
        LocalModelError: from :meth:`start`: the runtime is not installed, the file
            does not exist, or the server died / did not answer in time (the message
            holds the tail of the server's log).
        ConfigurationError: a parameter is out of range.
    """

    def __init__(
        self,
        model_path: Path | str,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        chat_format: str | None = None,
        model_alias: str | None = None,
        startup_timeout: float = 120.0,
        extra_args: Sequence[str] = (),
        verbose: bool = False,
        use_extra_bufts: bool | None = None,
    ) -> None:
        _check_positive_int("n_ctx", n_ctx, allow_none=False)
        _check_positive_int("n_threads", n_threads)
        _check_positive_int("n_threads_batch", n_threads_batch)
        if not isinstance(startup_timeout, int | float) or startup_timeout <= 0:
            raise ConfigurationError(
                f"startup_timeout must be a positive number of seconds, got {startup_timeout!r}"
            )
        self.model_path = Path(model_path).expanduser()
        self.n_ctx = n_ctx
        self.n_threads = n_threads or min(8, os.cpu_count() or 1)
        self.n_threads_batch = n_threads_batch or self.n_threads
        self.chat_format = chat_format
        self.model_alias = model_alias or self.model_path.stem
        self.startup_timeout = float(startup_timeout)
        self.extra_args = [str(a) for a in extra_args]
        self.verbose = verbose
        self.use_extra_bufts = use_extra_bufts
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
    def _command(self, fd: int) -> list[str]:
        cmd = [
            sys.executable,
            # by path: the child needs llama_cpp only, not langchain_moa's imports
            str(Path(__file__).with_name("_serve.py")),
            "--listen-fd",
            str(fd),
            "--parent-pid",
            str(os.getpid()),
            "--model",
            str(self.model_path),
            "--model_alias",
            self.model_alias,
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
            "--n_threads_batch",
            str(self.n_threads_batch),
            "--interrupt_requests",
            "False",
            "--verbose",
            str(self.verbose),
            "--moa-extra-bufts",
            {None: "auto", True: "true", False: "false"}[self.use_extra_bufts],
        ]
        if self.chat_format:
            cmd += ["--chat_format", self.chat_format]
        return cmd + self.extra_args

    def start(self) -> LocalServer:
        """Start the server and wait until ``GET /v1/models`` answers 200.

        The subprocess gets ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is set:
        llama.cpp's OpenMP threads otherwise spin while waiting, which on shared
        cores made generation about 10 times slower. Idempotent while running.
        Returns ``self``.
        """
        with self._lock:
            if self.is_running():
                return self
            require_llama_cpp()
            if not self.model_path.is_file():
                raise LocalModelError(f"model file {self.model_path} does not exist")
            started = time.monotonic()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", 0))
                sock.listen(64)
                self.port = sock.getsockname()[1]
                log_fd, log_name = tempfile.mkstemp(prefix="langchain-moa-llama-", suffix=".log")
                self.log_path = Path(log_name)
                # llama.cpp's OpenMP threads spin while waiting by default; on shared
                # cores that made 2-thread generation ~10x slower (1.1 vs 9-12 tokens/s)
                env = {**os.environ}
                env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
                try:
                    self._proc = subprocess.Popen(
                        self._command(sock.fileno()),
                        stdin=subprocess.DEVNULL,
                        stdout=log_fd,
                        stderr=subprocess.STDOUT,
                        pass_fds=(sock.fileno(),),
                        env=env,
                        start_new_session=True,  # Ctrl-C in a terminal goes to us, not it
                    )
                finally:
                    os.close(log_fd)
            finally:
                sock.close()  # the child holds its own copy of the listening socket
            _LIVE.add(self)
            try:
                self._wait_ready(started)
            except BaseException:
                self._terminate(timeout=3.0)
                raise
            self.startup_seconds = time.monotonic() - started
            return self

    def _wait_ready(self, started: float) -> None:
        url = f"http://127.0.0.1:{self.port}/v1/models"
        deadline = started + self.startup_timeout
        with httpx.Client(timeout=httpx.Timeout(2.0, connect=1.0), trust_env=False) as client:
            while True:
                assert self._proc is not None
                code = self._proc.poll()
                if code is not None:
                    raise LocalModelError(
                        f"the local model server for {self.model_path} exited with code "
                        f"{code} while starting; its output ends with:\n{self.log_tail()}"
                    )
                try:
                    if client.get(url).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass  # still loading: the socket queues connections until uvicorn runs
                if time.monotonic() > deadline:
                    raise LocalModelError(
                        f"the local model server for {self.model_path} did not answer "
                        f"{url} within {self.startup_timeout:g} s; its output ends "
                        f"with:\n{self.log_tail()}"
                    )
                time.sleep(0.1)

    def _terminate(self, timeout: float) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        _LIVE.discard(self)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout`` seconds. Idempotent.

        In-flight requests fail with a connection error (the router treats that as a
        transient failure and falls over).
        """
        with self._lock:
            self._terminate(timeout)
            if self.log_path is not None:
                with contextlib.suppress(OSError):
                    self.log_path.unlink()
                self.log_path = None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait(timeout=10)
            _LIVE.discard(self)
            if self.log_path is not None:
                with contextlib.suppress(OSError):
                    self.log_path.unlink()
                self.log_path = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients
    def chat_model(self, **kwargs: Any) -> Any:
        """A chat model on this server (see :func:`chat_model_for_base_url`)."""
        from langchain_moa._local._clients import chat_model_for_base_url

        return chat_model_for_base_url(self.base_url, self.model_alias, **kwargs)
