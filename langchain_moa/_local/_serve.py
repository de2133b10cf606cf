"""Subprocess entry point: llama-cpp-python's OpenAI-compatible server, four fixes added.

Run as ``python langchain_moa/_local/_serve.py --listen-fd FD --parent-pid PID
--model PATH [any flag of python -m llama_cpp.server]``. It builds the very app of
``llama_cpp.server`` (``create_app``) and serves it with uvicorn, and adds:

1. **No AMX crash.** llama.cpp's AMX matrix kernels (used through its "extra buffer
   types" for weights) crash with a general-protection fault in ``libggml-cpu`` on
   some virtual machines whose CPUs report AMX (seen on a Firecracker VM with a Xeon
   that advertises amx_int8). ``--moa-extra-bufts auto`` (the default) turns extra
   buffer types off when the llama.cpp build includes AMX, which also turns off the
   weight repacking; ``true``/``false`` force it.
2. **Usage in streams.** llama-cpp-python 0.3.36 never sends ``usage`` when
   ``stream=True`` and ignores ``stream_options``. We count the prompt tokens and the
   generated (non end-of-generation) tokens exactly as its non-streaming path does
   and send one final chunk with ``choices: []`` and ``usage``, which is the shape of
   OpenAI's ``stream_options={"include_usage": true}`` (OpenAI API reference, chat
   streaming). The chunk is sent on every stream; OpenAI clients accept it.
3. **No port race.** The parent binds and listens on a loopback socket and passes it
   in (``--listen-fd``), so the port is known before the server starts and no other
   process can take it in between.
4. **No orphans.** The server exits when its parent process is gone, even if the
   parent was killed without running its cleanup.

Environment variables that pydantic-settings or uvicorn would read as server settings
(``MODEL``, ``PORT``, ``HOST``, ``N_CTX``, ``CONFIG_FILE``...) are dropped, so only the
flags given here configure the server.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any


def _install_stream_usage() -> bool:
    """Patch ``llama_cpp.Llama`` so chat streams end with a usage chunk.

    Returns False (and leaves the class alone) if this llama-cpp-python lacks the
    methods patched, so a different version degrades to "no usage in streams".
    """
    import llama_cpp

    llama_cls = llama_cpp.Llama
    orig_generate = getattr(llama_cls, "generate", None)
    orig_chat = getattr(llama_cls, "create_chat_completion", None)
    is_eog = getattr(llama_cpp, "llama_vocab_is_eog", None)
    if orig_generate is None or orig_chat is None or is_eog is None:
        return False

    def generate(self: Any, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
        # _create_completion counts len(prompt_tokens) and every generated token but
        # the end-of-generation one; count the same here.
        counts = self._moa_usage = [len(tokens), 0]
        for token in orig_generate(self, tokens, *args, **kwargs):
            if not is_eog(self._model.vocab, token):
                counts[1] += 1
            yield token

    def _with_usage(llama: Any, chunks: Iterator[dict]) -> Iterator[dict]:
        llama._moa_usage = None
        last = None
        for chunk in chunks:
            last = chunk
            yield chunk
        usage = llama._moa_usage
        if last is None or usage is None:
            return
        prompt, completion = usage
        yield {
            "id": last.get("id"),
            "object": "chat.completion.chunk",
            "created": last.get("created"),
            "model": last.get("model"),
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    def create_chat_completion(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = orig_chat(self, *args, **kwargs)
        if kwargs.get("stream"):
            return _with_usage(self, result)
        return result

    llama_cls.generate = generate
    llama_cls.create_chat_completion = create_chat_completion
    return True


def _configure_extra_bufts(mode: str) -> bool:
    """Apply ``--moa-extra-bufts``; returns whether extra buffer types stay enabled."""
    import llama_cpp
    import llama_cpp.llama_cpp as low_level

    if mode == "auto":
        enabled = b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info()
    else:
        enabled = mode == "true"
    if not enabled:
        orig_default_params = low_level.llama_model_default_params

        def default_params() -> Any:
            params = orig_default_params()
            params.use_extra_bufts = False
            return params

        low_level.llama_model_default_params = default_params
    return enabled


def _exit_when_orphaned(parent_pid: int) -> None:
    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    for key in list(os.environ):
        if key.lower() in Settings.model_fields or key.upper() in {"HOST", "PORT", "CONFIG_FILE"}:
            del os.environ[key]

    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args

    parser = argparse.ArgumentParser(prog="langchain_moa/_local/_serve.py")
    add_args_from_model(parser, Settings)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--moa-extra-bufts", choices=["auto", "true", "false"], default="auto")
    args = parser.parse_args(argv)
    if args.parent_pid:
        _exit_when_orphaned(args.parent_pid)
    sock = socket.socket(fileno=args.listen_fd)

    server_settings = parse_model_from_args(ServerSettings, args)
    model_settings = [parse_model_from_args(ModelSettings, args)]
    _configure_extra_bufts(args.moa_extra_bufts)
    if not _install_stream_usage():
        print("langchain-moa: could not add usage to streamed responses", file=sys.stderr)
    app = create_app(server_settings=server_settings, model_settings=model_settings)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    # run as a script: keep this package directory off the import path
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    main()
