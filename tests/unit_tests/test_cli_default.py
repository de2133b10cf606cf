"""``moa "question"`` with no ``--proposer`` runs the measured default
(``_cli_config.DEFAULT_PRESET``: Adaptive-Consistency with the greedy answer first, over
the default model), over
real HTTP against the fault-injecting test server standing in for the provider."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from langchain_moa._cli_config import DEFAULT_PRESET, RunSettings
from langchain_moa.cli import app
from langchain_moa.providers import PROVIDERS
from tests import fault_server as _fs
from tests.fault_server import Fault, FaultServer

fault_server = _fs.fault_server
fault_server_factory = _fs.fault_server_factory


@pytest.fixture
def hosted(fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> FaultServer:
    """The OpenAI default model (the first hosted default), served by the test server."""
    for var in {p.api_key_env for p in PROVIDERS.values() if p.api_key_env}:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", fault_server.base_url)
    return fault_server


def moa(*args: str):
    return CliRunner().invoke(app, list(args))


def test_no_proposer_runs_the_default_preset():
    assert DEFAULT_PRESET == "adaptive"
    assert RunSettings().resolved_preset() == "adaptive"
    assert RunSettings().resolved_samples() == 6 and RunSettings().resolved_greedy_first()
    assert RunSettings(preset="self-consistency").resolved_samples() == 5
    assert RunSettings(preset="self-moa").resolved_samples() == 3
    assert RunSettings(proposers=["openai/gpt-4o-mini"]).resolved_preset() == "self-moa"
    assert RunSettings(proposers=["a/x", "a/y"]).resolved_preset() == "moa-lite"


def test_a_greedy_call_then_an_agreeing_sample_stop_after_two_calls(hosted: FaultServer):
    hosted.set_default(Fault.ok("17 * 23 = 391. Answer: 391"))
    result = moa("What is 17*23?", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    reqs = hosted.chat_requests
    assert [r.model for r in reqs] == ["gpt-4o-mini"] * 2
    # the greedy call first, then a sample at the vote presets' temperature
    assert [r.body["temperature"] for r in reqs] == [0, 0.3]
    assert out["answer"] == "17 * 23 = 391. Answer: 391" and out["calls"] == 2


def test_a_split_draws_samples_one_at_a_time_and_keeps_the_majority(hosted: FaultServer):
    # greedy 409, then 391, 401, 391, 391: after 5 calls 391 leads 3-1-1 (share 0.6), and
    # cannot be overtaken with one call left
    replies = ["Answer: 409", "Answer: 391", "Answer: 401", "So 391.", "Answer: 391"]
    hosted.script(*(Fault.ok(r) for r in replies))
    result = moa("What is 17*23?")
    assert result.exit_code == 0, result.output
    assert len(hosted.chat_requests) == 5
    assert result.stdout.strip() == "Answer: 391"
    assert "[adaptive: 5 calls," in result.stderr


def test_a_tie_goes_to_the_greedy_answer(hosted: FaultServer):
    hosted.script(Fault.ok("Answer: 409"), Fault.ok("Answer: 391"), Fault.ok("Answer: 401"))
    result = moa("What is 17*23?", "-k", "3")
    assert result.exit_code == 0, result.output
    assert len(hosted.chat_requests) == 3 and result.stdout.strip() == "Answer: 409"


def test_free_text_question_costs_two_calls_and_returns_the_greedy_reply(hosted: FaultServer):
    hosted.script(Fault.ok("CRDTs merge concurrent edits."), Fault.ok("They converge."))
    result = moa("Explain CRDTs in one sentence")
    assert result.exit_code == 0, result.output
    assert len(hosted.chat_requests) == 2
    assert result.stdout.strip() == "CRDTs merge concurrent edits."


def test_no_greedy_first_gives_the_plain_adaptive_vote(hosted: FaultServer):
    hosted.set_default(Fault.ok("Answer: 391"))
    result = moa("What is 17*23?", "--no-greedy-first", "-q")
    assert result.exit_code == 0, result.output
    assert [r.body["temperature"] for r in hosted.chat_requests] == [0.3, 0.3]


def test_explicit_presets(hosted: FaultServer):
    hosted.set_default(Fault.ok("Answer: 4"))
    result = moa("2+2?", "--preset", "self-consistency", "-k", "3", "-q")
    assert result.exit_code == 0, result.output
    # the greedy call, then 3 samples
    assert len(hosted.chat_requests) == 4 and result.stdout.strip() == "Answer: 4"
    assert sorted(r.body["temperature"] for r in hosted.chat_requests) == [0, 0.3, 0.3, 0.3]
    hosted.clear()
    hosted.set_default(Fault.ok("Answer: 4"))
    result = moa("2+2?", "--preset", "self-moa", "-k", "2", "-q")
    assert result.exit_code == 0 and len(hosted.chat_requests) == 3  # 2 samples + aggregator


def test_temperature_defaults_follow_the_preset_and_yield_to_the_option():
    from langchain_moa._cli_config import MOA_TEMPERATURE, VOTE_TEMPERATURE

    assert RunSettings().resolved_temperature() == VOTE_TEMPERATURE == 0.3
    assert RunSettings(preset="self-consistency").resolved_temperature() == 0.3
    assert RunSettings(preset="self-moa").resolved_temperature() == MOA_TEMPERATURE == 0.7
    assert RunSettings(proposers=["a/x", "a/y"]).resolved_temperature() == 0.7
    assert RunSettings(temperature=0.9).resolved_temperature() == 0.9


def test_an_explicit_temperature_reaches_every_sample(hosted: FaultServer):
    hosted.set_default(Fault.ok("Answer: 391"))
    result = moa("What is 17*23?", "-t", "0.7", "--json")
    assert result.exit_code == 0, result.output
    # the samples take -t; the greedy call stays greedy
    assert [r.body["temperature"] for r in hosted.chat_requests] == [0, 0.7]


def test_greedy_first_is_refused_where_it_does_not_apply():
    result = moa("q", "--preset", "self-moa", "--greedy-first")
    assert result.exit_code == 2 and "vote presets" in result.output
    result = moa("q", "-k", "1")
    assert result.exit_code == 2 and "--samples must be at least 2" in result.output
