"""The ``moa`` command's batch mode on the real bundled model, including a real kill
(SIGKILL of a running ``python -m langchain_moa.cli``) and the resumed run.

No ``--proposer``: with no provider key set, Self-MoA (``--preset self-moa``) over
``local/qwen2.5-coder-0.5b`` is what runs; ``LANGCHAIN_MOA_LOCAL_BASE_URL`` points it
at the session's server so the model is loaded once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from langchain_moa.cli import app
from langchain_moa.local import LOCAL_BASE_URL_ENV, LocalServer
from langchain_moa.providers import PROVIDERS

pytestmark = pytest.mark.local_model

QUESTIONS = [
    {"id": "add", "question": "What is 2+2? Reply with the number only."},
    {"id": "color", "question": "Name one color of the rainbow, in one word."},
    {"id": "capital", "question": "What is the capital of France? One word."},
]
TINY = ["--preset", "self-moa", "-k", "2", "--max-tokens", "16", "--aggregator-max-tokens", "24"]
TINY += ["-t", "0.7"]


@pytest.fixture
def cli_env(local_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for var in {p.api_key_env for p in PROVIDERS.values() if p.api_key_env}:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(LOCAL_BASE_URL_ENV, local_server.base_url)
    return dict(os.environ)


def write_questions(path: Path) -> Path:
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_batch_on_the_local_model_then_resume_from_a_partial_file(
    cli_env: dict[str, str], tmp_path: Path
):
    inp = write_questions(tmp_path / "questions.jsonl")
    out = tmp_path / "answers.jsonl"
    hist = tmp_path / "history.jsonl"
    result = CliRunner().invoke(
        app, ["-i", str(inp), "-o", str(out), "--history", str(hist), *TINY]
    )
    assert result.exit_code == 0, result.output
    answers = rows(out)
    assert [r["id"] for r in answers] == ["add", "color", "capital"]
    for row in answers:
        assert row["error"] is None and row["answer"].strip()
        assert row["calls"] == 3 and row["failed_calls"] == 0
        assert row["input_tokens"] > 0 and 0 < row["output_tokens"] <= 2 * 16 + 24
    steps = rows(hist)
    assert [h["id"] for h in steps] == ["add", "color", "capital"]
    assert steps[0]["steps"][0]["params"]["agents"] == ["local/qwen2.5-coder-0.5b"] * 2

    # An output file that already holds one answer: only the two others are computed.
    partial = tmp_path / "partial.jsonl"
    partial.write_text(json.dumps(answers[1]) + "\n")
    hist2 = tmp_path / "history2.jsonl"
    again = CliRunner().invoke(
        app, ["-i", str(inp), "-o", str(partial), "--history", str(hist2), *TINY]
    )
    assert again.exit_code == 0, again.output
    assert "resuming: 1 of 3" in again.stderr
    assert [h["id"] for h in rows(hist2)] == ["add", "capital"]  # two questions asked
    resumed = rows(partial)
    assert [r["id"] for r in resumed] == ["color", "add", "capital"]
    assert resumed[0] == answers[1]  # the earlier answer is kept as it was


def test_killed_batch_resumes_where_it_stopped(cli_env: dict[str, str], tmp_path: Path):
    inp = write_questions(tmp_path / "questions.jsonl")
    out = tmp_path / "answers.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "langchain_moa.cli", "-i", str(inp), "-o", str(out), "-q", *TINY],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    before = rows(out)
    assert 1 <= len(before) < 3
    done_ids = [r["id"] for r in before]

    hist = tmp_path / "history.jsonl"
    result = CliRunner().invoke(
        app, ["-i", str(inp), "-o", str(out), "--history", str(hist), *TINY]
    )
    assert result.exit_code == 0, result.output
    asked = [h["id"] for h in rows(hist)]
    assert sorted(asked + done_ids) == sorted(q["id"] for q in QUESTIONS)
    final = rows(out)
    assert sorted(r["id"] for r in final) == sorted(q["id"] for q in QUESTIONS)
    assert final[: len(before)] == before
