"""Batch files of the ``moa`` command: reading questions, resuming, appending answers.

Input (``--input``), JSON Lines, one question per line; blank lines are skipped:

* an object ``{"id": <str|int>, "question": "<text>"}`` (``id`` optional; other keys
  are ignored), or
* a JSON string ``"<text>"``.

A question without an ``id`` gets its 1-based line number as id, so keep the input
file unchanged between a run and its resumption (or give ids). Ids must be unique.

Output (``--output``), JSON Lines, one object per answered question, appended and
flushed as soon as the answer is known::

    {"id": 1, "question": "...", "answer": "...", "input_tokens": 812,
     "output_tokens": 230, "total_tokens": 1042, "calls": 4, "failed_calls": 0,
     "latency_s": 12.3, "error": null}

``answer`` is ``null`` and ``error`` is ``"ExceptionType: message"`` when the question
failed. Resuming: ids that already have a row with ``error: null`` are skipped; failed
ones are asked again (the later row for an id supersedes the earlier). A last line cut
short by a kill is ignored and cut off before appending.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

__all__ = ["BatchFileError", "Question", "read_questions", "completed_ids", "open_output", "id_key"]


class BatchFileError(ValueError):
    """A batch file cannot be read or has the wrong shape (the message names file and line)."""


@dataclass(frozen=True)
class Question:
    """One input question: its id (from the file or the line number) and text."""

    id: Any
    question: str
    line: int


def id_key(value: Any) -> str:
    """Canonical key of an id: ``1`` and ``"1"`` stay different."""
    return json.dumps(value, sort_keys=True)


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BatchFileError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise BatchFileError(f"{what} file {path} is a directory") from None
    except UnicodeDecodeError as exc:
        raise BatchFileError(f"{what} file {path} is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise BatchFileError(f"cannot read {what} file {path}: {exc.strerror}") from None


def read_questions(path: Path) -> list[Question]:
    """Parse an input file (schema in the module docstring).

    Raises:
        BatchFileError: unreadable file, a line that is not JSON, an object without a
            non-empty string ``question``, an id that is not a string or integer, a
            duplicate id, or no questions at all.
    """
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(_read_lines(path, "input"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise BatchFileError(
                f"{path}:{n}: not valid JSON; each line must be "
                '{"id": ..., "question": "..."} or a JSON string'
            ) from None
        if isinstance(row, str):
            qid, text = n, row
        elif isinstance(row, dict):
            text = row.get("question")
            qid = row.get("id", n)
        else:
            raise BatchFileError(
                f'{path}:{n}: expected an object with a "question" or a JSON string, '
                f"got {type(row).__name__}"
            )
        if not isinstance(text, str) or not text.strip():
            raise BatchFileError(f'{path}:{n}: "question" must be a non-empty string')
        if isinstance(qid, bool) or not isinstance(qid, (str, int)):
            raise BatchFileError(f'{path}:{n}: "id" must be a string or an integer, got {qid!r}')
        key = id_key(qid)
        if key in seen:
            raise BatchFileError(f"{path}:{n}: duplicate id {qid!r} (first on line {seen[key]})")
        seen[key] = n
        questions.append(Question(qid, text, n))
    if not questions:
        raise BatchFileError(f"input file {path} holds no questions")
    return questions


def completed_ids(path: Path) -> set[str]:
    """Keys (:func:`id_key`) of the ids answered without error in an output file.

    A missing file means nothing is done. Only the last line may be malformed (cut
    short by a kill); it is ignored.

    Raises:
        BatchFileError: unreadable file, or a malformed line that is not the last.
    """
    if not path.exists():
        return set()
    lines = _read_lines(path, "output")
    status: dict[str, bool] = {}
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "id" not in row:
                raise ValueError
        except ValueError:
            if i == last:
                continue  # a write interrupted by a kill
            raise BatchFileError(
                f'{path}:{i + 1}: not an answer row (a JSON object with an "id"); '
                "is --output the right file?"
            ) from None
        status[id_key(row["id"])] = row.get("error") is None and row.get("answer") is not None
    return {key for key, ok in status.items() if ok}


def open_output(path: Path) -> TextIO:
    """Open ``path`` for appending, first cutting off a last line left unfinished by a
    kill (it holds no complete answer; its question is asked again).

    Raises:
        BatchFileError: the file or its directory cannot be written.
    """
    try:
        if path.exists() and path.stat().st_size > 0:
            data = path.read_bytes()
            if not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                if _is_row(data[cut:]):  # complete, only the newline is missing
                    with open(path, "ab") as fh:
                        fh.write(b"\n")
                else:
                    with open(path, "r+b") as fh:
                        fh.truncate(cut)
        return open(path, "a", encoding="utf-8")  # noqa: SIM115 - returned to the caller
    except OSError as exc:
        raise BatchFileError(f"cannot write output file {path}: {exc.strerror}") from None


def _is_row(data: bytes) -> bool:
    try:
        row = json.loads(data)
    except ValueError:
        return False
    return isinstance(row, dict) and "id" in row


def write_row(fh: TextIO, row: dict[str, Any]) -> None:
    """Append one JSON line and flush it to the OS (a kill loses nothing written)."""
    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    fh.flush()


def pending(questions: Iterable[Question], done: set[str]) -> list[Question]:
    """The questions whose id is not in ``done``, in input order."""
    return [q for q in questions if id_key(q.id) not in done]
