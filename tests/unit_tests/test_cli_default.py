"""``moa "question"`` with no ``--proposer`` runs the measured default
(``_cli_config.DEFAULT_PRESET``: Adaptive-Consistency over the default model), over
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
    assert RunSettings(proposers=["openai/gpt-4o-mini"]).resolved_preset() == "self-moa"
    assert RunSettings(proposers=["a/x", "a/y"]).resolved_preset() == "moa-lite"


def test_agreeing_samples_stop_after_two_calls(hosted: FaultServer):
    hosted.set_default(Fault.ok("17 * 23 = 391. Answer: 391"))
    result = moa("What is 17*23?", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    reqs = hosted.chat_requests
    assert [r.model for r in reqs] == ["gpt-4o-mini"] * 2
    assert {r.body["temperature"] for r in reqs} == {0.3}  # the vote presets default
    assert out["answer"] == "17 * 23 = 391. Answer: 391" and out["calls"] == 2


def test_disagreeing_samples_draw_up_to_samples_and_keep_the_majority(hosted: FaultServer):
    hosted.script(Fault.ok("Answer: 409"), Fault.ok("Answer: 391"), Fault.ok("So 391."))
    result = moa("What is 17*23?", "-k", "3")
    assert result.exit_code == 0, result.output
    assert len(hosted.chat_requests) == 3
    assert result.stdout.strip() == "Answer: 391"
    assert "[adaptive: 3 calls," in result.stderr


def test_free_text_question_costs_two_calls_and_returns_a_sample(hosted: FaultServer):
    # The two samples are sent at once, so which request gets which scripted reply
    # depends on arrival order; that the *first* candidate is returned is tested on
    # fake models in test_consensus.py (no_answer="first").
    replies = ["CRDTs merge concurrent edits.", "They converge."]
    hosted.script(*(Fault.ok(r) for r in replies))
    result = moa("Explain CRDTs in one sentence")
    assert result.exit_code == 0, result.output
    assert len(hosted.chat_requests) == 2
    assert result.stdout.strip() in replies


def test_explicit_presets(hosted: FaultServer):
    hosted.set_default(Fault.ok("Answer: 4"))
    result = moa("2+2?", "--preset", "self-consistency", "-k", "3", "-q")
    assert result.exit_code == 0, result.output
    assert len(hosted.chat_requests) == 3 and result.stdout.strip() == "Answer: 4"
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
    assert {r.body["temperature"] for r in hosted.chat_requests} == {0.7}


def test_greedy_first_sends_one_greedy_call_then_samples(hosted: FaultServer):
    # greedy "409", then the samples "391" and "409": 409 leads (the greedy vote counts)
    hosted.script(Fault.ok("Answer: 409"), Fault.ok("Answer: 391"), Fault.ok("Answer: 409"))
    result = moa("What is 17*23?", "--greedy-first", "-k", "3", "-q")
    assert result.exit_code == 0, result.output
    temperatures = [r.body["temperature"] for r in hosted.chat_requests]
    assert temperatures == [0, 0.3, 0.3] and result.stdout.strip() == "Answer: 409"
    hosted.clear()
    hosted.set_default(Fault.ok("Answer: 4"))
    result = moa("2+2?", "--preset", "self-consistency", "--greedy-first", "-k", "2", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(r.body["temperature"] for r in hosted.chat_requests) == [0, 0.3, 0.3]


def test_greedy_first_is_refused_where_it_does_not_apply():
    result = moa("q", "--preset", "self-moa", "--greedy-first")
    assert result.exit_code == 2 and "vote presets" in result.output
    result = moa("q", "--greedy-first", "-k", "1")
    assert result.exit_code == 2 and "--samples must be at least 2" in result.output
