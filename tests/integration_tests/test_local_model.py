"""The bundled Qwen2.5-Coder-0.5B-Instruct served by llama.cpp's llama-server on
127.0.0.1, end to end.

Real model, real HTTP: the assembled file's hash, server start/stop/failure, parallel
slots (read from the server's own log), JSON-schema output and tool calls, and the
chat model's invoke / ainvoke / stream / astream / batch with ``usage_metadata``
checked against the server's own ``usage`` JSON. Generations are kept to a few tokens
(~40 tokens/s on 2 shared cores).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from langchain_moa.errors import LocalModelError
from langchain_moa.local import (
    BUNDLED_MODELS,
    LOCAL_BASE_URL_ENV,
    LocalServer,
    aget_local_chat_model,
    ensure_model,
    get_local_chat_model,
    get_local_server,
    shutdown_local_servers,
)

pytestmark = pytest.mark.local_model

PROMPT = "What is the capital of France? Answer with one word."
REPO_ROOT = Path(__file__).resolve().parents[2]


def _raw_chat(server: LocalServer, **body) -> dict:
    body = {"model": server.model_alias, "temperature": 0.0, **body}
    response = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    return response.json()


def _raw_stream(server: LocalServer, **body) -> list[dict]:
    body = {"model": server.model_alias, "temperature": 0.0, "stream": True, **body}
    events = []
    with httpx.stream(
        "POST", f"{server.base_url}/chat/completions", json=body, timeout=120
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: ") :]))
    return events


# --------------------------------------------------------------------------- the file
def test_assembled_file_has_the_pinned_size_and_sha256(local_model_path: Path) -> None:
    model = BUNDLED_MODELS["qwen2.5-coder-0.5b"]
    assert local_model_path.stat().st_size == model.size == 491_400_064
    digest = hashlib.sha256()
    with open(local_model_path, "rb") as fh:
        while block := fh.read(8 << 20):
            digest.update(block)
    assert digest.hexdigest() == model.sha256
    with open(local_model_path, "rb") as fh:
        assert fh.read(4) == b"GGUF"


def test_second_ensure_model_only_checks_the_sidecar(
    local_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[int] = []  # a full re-hash of the 491 MB file takes ~0.4-2 s

    def counting_sha256(*args: Any) -> Any:
        hashed.append(1)
        return real_sha256(*args)

    real_sha256 = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", counting_sha256)
    assert ensure_model(progress=False) == local_model_path
    assert hashed == []


# --------------------------------------------------------------------------- the server
def test_server_lists_its_model(local_server: LocalServer) -> None:
    response = httpx.get(f"{local_server.base_url}/models", timeout=30)
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == [local_server.model_alias]
    assert local_server.base_url.startswith("http://127.0.0.1:")


def test_invoke_usage_equals_the_servers_usage(local_server, local_chat_model) -> None:
    raw = _raw_chat(local_server, messages=[{"role": "user", "content": PROMPT}], max_tokens=32)
    message = local_chat_model.invoke(PROMPT)

    assert message.content == raw["choices"][0]["message"]["content"]
    assert "paris" in message.content.lower()
    usage = raw["usage"]
    assert message.usage_metadata["input_tokens"] == usage["prompt_tokens"] > 10
    assert message.usage_metadata["output_tokens"] == usage["completion_tokens"] > 0
    assert message.usage_metadata["total_tokens"] == usage["total_tokens"]
    assert message.response_metadata["model_name"] == local_server.model_alias


def test_stream_ends_with_a_usage_chunk_matching_the_non_streamed_usage(local_server) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 5, separated by commas."}]
    plain = _raw_chat(local_server, messages=messages, max_tokens=24)
    events = _raw_stream(
        local_server, messages=messages, max_tokens=24, stream_options={"include_usage": True}
    )
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert events[-1]["choices"] == []
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")  # cached_tokens may differ
    assert {k: events[-1]["usage"][k] for k in counts} == {k: plain["usage"][k] for k in counts}


def test_stream_yields_chunks_and_usage_metadata(local_chat_model) -> None:
    chunks = list(local_chat_model.stream("Count from 1 to 5, separated by commas."))
    assert len(chunks) > 3
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert "1" in total.content and "5" in total.content
    invoked = local_chat_model.invoke("Count from 1 to 5, separated by commas.")
    assert total.content == invoked.content
    assert total.usage_metadata["input_tokens"] == invoked.usage_metadata["input_tokens"]
    assert total.usage_metadata["output_tokens"] == invoked.usage_metadata["output_tokens"]


async def test_ainvoke_and_astream(local_chat_model) -> None:
    message = await local_chat_model.ainvoke(PROMPT)
    assert "paris" in message.content.lower()
    assert message.usage_metadata["output_tokens"] > 0
    total = None
    async for chunk in local_chat_model.astream(PROMPT):
        total = chunk if total is None else total + chunk
    assert total is not None and total.content == message.content
    counts = ("input_tokens", "output_tokens", "total_tokens")  # the cache_read may differ
    assert {k: total.usage_metadata[k] for k in counts} == {
        k: message.usage_metadata[k] for k in counts
    }


async def test_model_is_usable_from_a_second_event_loop(local_chat_model) -> None:
    """A new loop per test (pytest-asyncio) must not break the shared async client."""
    first = await local_chat_model.ainvoke("Say OK.")

    def in_another_loop() -> str:
        return asyncio.run(local_chat_model.ainvoke("Say OK.")).content

    assert await asyncio.to_thread(in_another_loop) == first.content


async def test_concurrent_requests_are_decoded_together_in_parallel_slots(
    local_server_factory,
) -> None:
    """Three concurrent requests run in three slots at once (continuous batching), as
    the server's log shows: each slot started its task before any slot finished."""
    server = local_server_factory(slots=3)
    llm = server.chat_model(temperature=0.0, max_tokens=24, timeout=120.0)
    prompts = [f"Count from {i} to {i + 20}, separated by commas." for i in range(3)]
    results = await asyncio.gather(*(llm.ainvoke(p) for p in prompts))
    for i, message in enumerate(results):
        assert str(i) in message.content
        assert message.usage_metadata["output_tokens"] == 24  # max_tokens honoured
    events = re.findall(
        r"slot\s+(launch_slot_|release): id\s+(\d+) \| task (\d+)", server.log_tail(200_000)
    )
    launches = [(slot, task) for kind, slot, task in events if kind == "launch_slot_"]
    first_release = next(i for i, e in enumerate(events) if e[0] == "release")
    assert len({slot for slot, _ in launches}) == 3, events
    assert sum(1 for e in events[:first_release] if e[0] == "launch_slot_") == 3, events
    server.stop()


async def test_a_second_request_does_not_cut_a_running_stream(local_chat_model) -> None:
    """A request arriving mid-stream takes another slot; the stream runs to its end."""
    prompt = "Count from 1 to 8, separated by commas."
    expected = (await local_chat_model.ainvoke(prompt)).content

    async def streamed() -> str:
        parts = [chunk.content async for chunk in local_chat_model.astream(prompt)]
        return "".join(parts)

    first = asyncio.create_task(streamed())
    await asyncio.sleep(0.3)  # the first stream is running when the second arrives
    second = asyncio.create_task(local_chat_model.ainvoke(prompt))
    assert await first == expected
    assert (await second).content == expected


def test_batch_keeps_order_and_usage(local_chat_model) -> None:
    results = local_chat_model.batch(
        [
            "Reply with the word red only.",
            [SystemMessage("Answer in one word."), HumanMessage("Colour of the sky?")],
        ]
    )
    assert "red" in results[0].content.lower()
    assert "blue" in results[1].content.lower()
    assert all(r.usage_metadata["input_tokens"] > 0 for r in results)


def test_context_overflow_is_an_openai_400(local_server_factory) -> None:
    small = local_server_factory(n_ctx=256)
    llm = small.chat_model(max_tokens=8)
    with pytest.raises(openai.BadRequestError) as info:
        llm.invoke("hello " * 400)
    assert info.value.status_code == 400
    assert "context" in str(info.value).lower()
    small.stop()
    assert not small.is_running()


def test_start_failure_reports_the_server_output(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 1024)
    server = LocalServer(bogus, startup_timeout=60)
    started = time.monotonic()
    with pytest.raises(LocalModelError) as info:
        server.start()
    assert time.monotonic() - started < 60  # it noticed the exit, not the timeout
    message = str(info.value)
    assert str(bogus) in message and "exited with code" in message
    assert "load" in message.lower()  # llama.cpp's own failure message is included
    assert not server.is_running()


def test_missing_model_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(LocalModelError, match="does not exist"):
        LocalServer(tmp_path / "absent.gguf").start()


def test_server_exits_when_its_parent_is_killed(local_model_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys, time
        from langchain_moa.local import LocalServer
        server = LocalServer({str(local_model_path)!r}).start()
        print(server.pid, server.port, flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        line = parent.stdout.readline()
        server_pid, port = (int(x) for x in line.split())
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).status_code == 200
        parent.send_signal(signal.SIGKILL)  # no atexit, no cleanup
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(server_pid, signal.SIGKILL)
            pytest.fail("the server outlived its parent by 10 s")
    finally:
        if parent.poll() is None:
            parent.kill()


# --------------------------------------------------------------------------- registry
def test_get_local_chat_model_starts_one_server_and_reuses_it(local_model_path) -> None:
    try:
        with ThreadPoolExecutor(4) as pool:  # concurrent first calls: one start
            servers = list(pool.map(lambda _: get_local_server("qwen2.5-coder-0.5b"), range(4)))
        assert len({id(s) for s in servers}) == 1
        first = get_local_chat_model("qwen2.5-coder-0.5b", temperature=0, max_tokens=8)
        second = get_local_chat_model("qwen2.5-coder-0.5b", temperature=0.7, max_tokens=16)
        assert first.openai_api_base == second.openai_api_base == servers[0].base_url
        assert (first.max_retries, first.stream_usage, first.model_name) == (
            0,
            True,
            "qwen2.5-coder-0.5b",
        )
        server = get_local_server("qwen2.5-coder-0.5b")
        assert server.base_url == first.openai_api_base
        assert "paris" in first.invoke(PROMPT).content.lower()
        # the same file named by its path reuses the same server
        by_path = get_local_chat_model(str(local_model_path), max_tokens=8)
        assert by_path.openai_api_base == first.openai_api_base
    finally:
        shutdown_local_servers()
    assert not server.is_running()


async def test_aget_local_chat_model_keeps_the_event_loop_running(local_model_path) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0.02)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        llm = await aget_local_chat_model("qwen2.5-coder-0.5b", max_tokens=8, temperature=0)
        elapsed = time.monotonic() - started
        stop.set()
        await task
        assert ticks >= int(elapsed / 0.02 * 0.5)  # the loop ran during the server start
        assert "paris" in (await llm.ainvoke(PROMPT)).content.lower()
    finally:
        stop.set()
        shutdown_local_servers()


def test_a_dead_shared_server_is_restarted(local_model_path) -> None:
    try:
        server = get_local_server("qwen2.5-coder-0.5b")
        server.kill()
        again = get_local_server("qwen2.5-coder-0.5b")
        assert again is not server and again.is_running()
    finally:
        shutdown_local_servers()


def test_base_url_env_points_at_an_existing_server(
    local_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOCAL_BASE_URL_ENV, local_server.base_url)
    llm = get_local_chat_model("qwen2.5-coder-0.5b", temperature=0, max_tokens=8)
    assert llm.openai_api_base == local_server.base_url
    assert "paris" in llm.invoke(PROMPT).content.lower()


# --------------------------------------------------------------------------- native features
class Answer(BaseModel):
    """An answer with the model's confidence."""

    city: str
    confidence: int = Field(ge=0, le=10)


def test_json_schema_structured_output_is_enforced_by_the_server(local_server) -> None:
    """``response_format`` json_schema: the reply is grammar-constrained JSON."""
    llm = local_server.chat_model(temperature=0.0, max_tokens=64, timeout=120.0)
    structured = llm.with_structured_output(Answer, include_raw=True)
    result = structured.invoke("Which city is the capital of France? Rate your confidence 0-10.")
    assert result["parsing_error"] is None
    assert isinstance(result["parsed"], Answer)
    assert "paris" in result["parsed"].city.lower()
    assert result["raw"].response_metadata["finish_reason"] == "stop"
    raw = _raw_chat(
        local_server,
        messages=[{"role": "user", "content": "Give a city and a confidence."}],
        max_tokens=64,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "Answer", "schema": Answer.model_json_schema()},
        },
    )
    Answer.model_validate_json(raw["choices"][0]["message"]["content"])


@pytest.mark.parametrize("tool_choice", ["required", "auto", "get_weather"])
def test_tool_calls_through_bind_tools(local_server, tool_choice) -> None:
    """``--jinja`` renders the tools with the GGUF's chat template. The 0.5B model writes
    its call as a fenced JSON object rather than the template's ``<tool_call>`` tags,
    which llama.cpp's parser then leaves as text; the client recovers it
    (``langchain_moa._llamacpp``), so ``bind_tools`` gives ``tool_calls``."""

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        return f"sunny in {city}"

    llm = local_server.chat_model(temperature=0.0, max_tokens=96, timeout=120.0)
    message = llm.bind_tools([get_weather], tool_choice=tool_choice).invoke(
        "What is the weather in Paris right now?"
    )
    assert message.tool_calls, message
    call = message.tool_calls[0]
    assert call["name"] == "get_weather"
    assert "paris" in call["args"]["city"].lower()
    assert message.usage_metadata["output_tokens"] > 0


def test_max_tokens_is_honoured(local_server) -> None:
    raw = _raw_chat(
        local_server,
        messages=[{"role": "user", "content": "Write a long story about a cat."}],
        max_tokens=7,
    )
    assert raw["usage"]["completion_tokens"] == 7
    assert raw["choices"][0]["finish_reason"] == "length"
