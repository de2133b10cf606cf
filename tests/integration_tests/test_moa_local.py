"""MoA pipelines on the real bundled model (Qwen2.5-Coder-0.5B-Instruct, llama.cpp server).

Agents are the model *strings* users write (``"local/qwen2.5-coder-0.5b"``), resolved
through :func:`langchain_moa.local.get_local_chat_model`; ``LANGCHAIN_MOA_LOCAL_BASE_URL``
points them at the session's one server (tests/integration_tests/conftest.py), so the
model is loaded once. Budgets are tiny (k=2, 16-32 tokens) to keep this file quick.
"""

from __future__ import annotations

import httpx
import pytest
from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk

from langchain_moa import Aggregate, MoAHistoryHandler, Propose
from langchain_moa.local import LOCAL_BASE_URL_ENV, LocalServer

pytestmark = pytest.mark.local_model

AGENT = "local/qwen2.5-coder-0.5b"
QUESTION = "Name one primary color. Answer in one short sentence."
REF_TOKENS = 16
AGG_TOKENS = 32


@pytest.fixture
def agents_on_server(local_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> LocalServer:
    monkeypatch.setenv(LOCAL_BASE_URL_ENV, local_server.base_url)
    return local_server


def moa(k: int = 2, temperature: float = 0.7):
    return Propose([AGENT] * k, temperature=temperature, max_tokens=REF_TOKENS) | Aggregate(
        AGENT, temperature=0.0, max_tokens=AGG_TOKENS
    )


def check_run(answer: AIMessage, history: MoAHistoryHandler, k: int = 2) -> None:
    """The answer is the aggregator's; usage sums every call; budgets were honoured."""
    assert isinstance(answer, AIMessage) and answer.text.strip()
    assert [s.step for s in history.steps] == ["Propose", "Aggregate"]
    calls = history.calls
    assert len(calls) == k + 1 and all(c.ok for c in calls)
    assert history.steps[1].outputs == [answer.text]
    for call in calls:
        assert call.input_tokens > 0 and call.output_tokens > 0 and call.latency_s > 0
        budget = AGG_TOKENS if call.step == "Aggregate" else REF_TOKENS
        assert call.output_tokens <= budget, (call.step, call.output_tokens)
    # the aggregator's prompt holds every reference
    system = calls[-1].messages[0]
    assert system["role"] == "system"
    for ref in calls[:-1]:
        assert ref.output.strip() in system["content"]
    usage = answer.usage_metadata
    assert usage["input_tokens"] == sum(c.input_tokens for c in calls)
    assert usage["output_tokens"] == sum(c.output_tokens for c in calls)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_propose_aggregate_invoke(agents_on_server: LocalServer):
    history = MoAHistoryHandler()
    answer = moa().invoke(QUESTION, config={"callbacks": [history]})
    check_run(answer, history)


def test_stream_yields_aggregator_chunks_that_add_up_to_the_answer(agents_on_server: LocalServer):
    history = MoAHistoryHandler()
    chunks = list(moa().stream(QUESTION, config={"callbacks": [history]}))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    text = "".join(c.text for c in chunks)
    # token by token, not one block: an answer of several words comes in several
    # content chunks (the answer may be one token, e.g. "Red"), then one closing chunk
    assert len([c for c in chunks if c.text]) >= min(len(text.split()), 2)
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert text.strip() and total.text == text
    # the concatenated stream is the recorded final answer, and carries the run's usage
    check_run(AIMessage(content=text, usage_metadata=total.usage_metadata), history)


async def test_ainvoke(agents_on_server: LocalServer):
    history = MoAHistoryHandler()
    answer = await moa().ainvoke(QUESTION, config={"callbacks": [history]})
    check_run(answer, history)


def test_batch_keeps_inputs_and_outputs_lined_up(agents_on_server: LocalServer):
    questions = ["What is 2+3? Reply with the number only.", "Spell the word 'cat' backwards."]
    history = MoAHistoryHandler()
    answers = moa().batch(questions, config={"callbacks": [history], "max_concurrency": 2})
    assert len(answers) == 2 and all(a.text.strip() for a in answers)
    runs: dict[str, list] = {}
    for step in history.steps:
        runs.setdefault(step.calls[0].messages[-1]["content"], []).append(step)
    assert set(runs) == set(questions)
    for question, answer in zip(questions, answers, strict=True):
        final = [s for s in runs[question] if s.step == "Aggregate"]
        assert final[0].outputs == [answer.text]
        assert answer.usage_metadata["total_tokens"] == sum(
            c.input_tokens + c.output_tokens for s in runs[question] for c in s.calls
        )


def test_history_tokens_match_the_models_own_usage(agents_on_server: LocalServer):
    """Two independent witnesses of the model's token counts:

    1. LangChain's ``UsageMetadataCallbackHandler`` sums the ``usage_metadata`` of every
       chat-model run it sees (on_llm_end), per model — it must equal our history.
    2. The server itself: each recorded call's messages are sent again, raw, to
       ``/v1/chat/completions`` (temperature 0, same budget): the server's
       ``usage.prompt_tokens`` must equal the recorded input tokens (proving the
       recorded messages are exactly what was sent), and for the greedy calls the
       completion (text and ``completion_tokens``) must be reproduced.
    """
    history = MoAHistoryHandler()
    usage_cb = UsageMetadataCallbackHandler()
    answer = moa(temperature=0.0).invoke(QUESTION, config={"callbacks": [history, usage_cb]})
    check_run(answer, history)
    calls = history.calls
    per_model = usage_cb.usage_metadata
    assert len(per_model) == 1, per_model  # one model served every call
    (seen,) = per_model.values()
    assert seen["input_tokens"] == sum(c.input_tokens for c in calls)
    assert seen["output_tokens"] == sum(c.output_tokens for c in calls)

    with httpx.Client(base_url=agents_on_server.base_url, timeout=120) as client:
        for call in calls:
            budget = AGG_TOKENS if call.step == "Aggregate" else REF_TOKENS
            reply = client.post(
                "/chat/completions",
                json={
                    "model": agents_on_server.model_alias,
                    "messages": call.messages,
                    "temperature": 0.0,
                    "max_tokens": budget,
                },
            )
            reply.raise_for_status()
            data = reply.json()
            assert data["usage"]["prompt_tokens"] == call.input_tokens, call.step
            assert data["usage"]["completion_tokens"] == call.output_tokens, call.step
            assert data["choices"][0]["message"]["content"] == call.output, call.step
