"""The fault server does exactly what its script says (checked with plain httpx).

These tests pin the test double itself, so a router test that passes against it
means what it claims: a 429 really carries its Retry-After, a dropped connection
really has no response, a cut stream really ends mid-body, the limits really 429.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time

import httpx
import pytest

from tests import fault_server as _fs
from tests.fault_server import Fault, FaultServer, estimate_prompt_tokens

# the pytest fixtures (module attributes, so pytest finds them here)
fault_server = _fs.fault_server
fault_server_factory = _fs.fault_server_factory


def _chat(prompt: str = "hi", **extra: object) -> dict:
    return {"model": "fake", "messages": [{"role": "user", "content": prompt}], **extra}


def _post(server: FaultServer, body: dict, timeout: float = 5.0) -> httpx.Response:
    return httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=timeout)


def _sse_events(text: str) -> list[dict | str]:
    events: list[dict | str] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_default_ok_echoes_the_request(fault_server: FaultServer) -> None:
    r1 = _post(fault_server, _chat("first question"))
    r2 = _post(fault_server, _chat("second question"))
    assert r1.status_code == 200 and r2.status_code == 200
    body = r1.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "[fault#1] first question"
    assert r2.json()["choices"][0]["message"]["content"] == "[fault#2] second question"
    usage = body["usage"]
    assert usage["prompt_tokens"] == estimate_prompt_tokens(_chat("first question")["messages"])
    assert usage["completion_tokens"] == 3  # one per word
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3
    recs = fault_server.chat_requests
    assert [r.status for r in recs] == [200, 200]
    assert [r.last_user_text for r in recs] == ["first question", "second question"]
    assert recs[0].seq < recs[1].seq and recs[0].t_start <= recs[1].t_start
    assert recs[0].model == "fake" and recs[0].outcome == "ok"


def test_ok_truncates_to_max_tokens(fault_server: FaultServer) -> None:
    fault_server.script(Fault.ok("one two three four five", prompt_tokens=7))
    body = _post(fault_server, _chat(max_tokens=2)).json()
    assert body["choices"][0]["message"]["content"] == "one two"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def test_models_endpoint(fault_server: FaultServer) -> None:
    r = httpx.get(f"{fault_server.base_url}/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["fake"]
    assert fault_server.chat_requests == []  # not counted as chat


def test_script_is_consumed_in_order_then_default(fault_server: FaultServer) -> None:
    fault_server.script(Fault.status(500), Fault.unavailable(), Fault.ok("scripted"))
    fault_server.set_default(Fault.status(502))
    codes = [_post(fault_server, _chat()).status_code for _ in range(5)]
    assert codes == [500, 503, 200, 502, 502]
    assert fault_server.statuses() == codes
    assert fault_server.pending == 0


@pytest.mark.parametrize(
    ("fault", "status", "code", "type_"),
    [
        (Fault.server_error(), 500, None, "server_error"),
        (Fault.unavailable(), 503, None, "server_error"),
        (Fault.unauthorized(), 401, "invalid_api_key", "invalid_request_error"),
        (Fault.forbidden(), 403, None, "permission_error"),
        (Fault.model_not_found("gpt-x"), 404, "model_not_found", "invalid_request_error"),
        (Fault.context_length_exceeded(), 400, "context_length_exceeded", "invalid_request_error"),
        (Fault.bad_request(), 400, "invalid_value", "invalid_request_error"),
        (Fault.rate_limited(), 429, "rate_limit_exceeded", "requests"),
    ],
)
def test_error_statuses_have_openai_bodies(
    fault_server: FaultServer, fault: Fault, status: int, code: str | None, type_: str
) -> None:
    fault_server.script(fault)
    r = _post(fault_server, _chat())
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and err["type"] == type_ and err["message"]


def test_model_not_found_and_context_messages(fault_server: FaultServer) -> None:
    fault_server.script(Fault.model_not_found("gpt-x"), Fault.context_length_exceeded(4096, 5000))
    assert "`gpt-x` does not exist" in _post(fault_server, _chat()).json()["error"]["message"]
    err = _post(fault_server, _chat()).json()["error"]
    assert "maximum context length is 4096 tokens" in err["message"]
    assert err["param"] == "messages"


def test_rate_limited_headers(fault_server: FaultServer) -> None:
    fault_server.script(
        Fault.rate_limited(retry_after=2),
        Fault.rate_limited(),
        Fault.rate_limited(retry_after_ms=1500),
        Fault.rate_limited(retry_after_date_s=3),
    )
    r1, r2, r3 = (_post(fault_server, _chat()) for _ in range(3))
    assert r1.status_code == 429 and r1.headers["retry-after"] == "2"
    assert r2.status_code == 429 and "retry-after" not in r2.headers
    assert "retry-after-ms" not in r2.headers
    assert r3.headers["retry-after-ms"] == "1500" and "retry-after" not in r3.headers
    before = time.time()
    r4 = _post(fault_server, _chat())
    when = email.utils.parsedate_to_datetime(r4.headers["retry-after"]).timestamp()
    assert before + 3 <= when <= time.time() + 4  # an HTTP date ~3 s ahead, rounded up
    assert fault_server.chat_requests[0].response_headers["Retry-After"] == "2"


def test_custom_status_body_and_headers(fault_server: FaultServer) -> None:
    fault_server.script(Fault.status(418, body={"teapot": True}, headers={"X-Fault": "yes"}))
    r = _post(fault_server, _chat())
    assert r.status_code == 418 and r.json() == {"teapot": True}
    assert r.headers["x-fault"] == "yes"


def test_slow_answers_after_the_client_timeout(fault_server: FaultServer) -> None:
    fault_server.script(Fault.slow(1.0), Fault.slow(0.3, then=Fault.ok("late")))
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        _post(fault_server, _chat(), timeout=0.3)
    assert time.monotonic() - t0 > 0.25  # the client gave up at its 0.3 s timeout
    r = _post(fault_server, _chat(), timeout=5)
    assert r.json()["choices"][0]["message"]["content"] == "late"
    # the first request finishes (with client_gone or a write into a dead socket) later
    first = fault_server.wait_for_requests(2, timeout=5)[0]
    assert first.outcome == "slow" and first.t_end - first.t_start >= 1.0


def test_drop_closes_without_a_response(fault_server: FaultServer) -> None:
    fault_server.script(Fault.drop())
    with pytest.raises(httpx.RemoteProtocolError, match="without sending"):
        _post(fault_server, _chat())
    assert fault_server.statuses() == [None]
    assert _post(fault_server, _chat()).status_code == 200  # the server itself lives on


def test_malformed_json(fault_server: FaultServer) -> None:
    fault_server.script(Fault.malformed())
    r = _post(fault_server, _chat())
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        r.json()


def test_stream_ok_with_usage(fault_server: FaultServer) -> None:
    fault_server.script(Fault.ok("a b c", prompt_tokens=5))
    body = _chat(stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", f"{fault_server.base_url}/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["transfer-encoding"] == "chunked"
        events = _sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-2])
    assert text == "a b c"
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["choices"] == []
    assert events[-2]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_stream_without_include_usage_has_no_usage_chunk(fault_server: FaultServer) -> None:
    r = _post(fault_server, _chat(stream=True))
    events = _sse_events(r.text)
    assert all("usage" not in e for e in events if isinstance(e, dict))


@pytest.mark.parametrize("role_chunk", [True, False])
def test_stream_cut_before_first_token(fault_server: FaultServer, role_chunk: bool) -> None:
    fault_server.script(Fault.stream_cut_before_first_token(role_chunk=role_chunk))
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):  # incomplete chunked read
        with httpx.stream(
            "POST", f"{fault_server.base_url}/chat/completions", json=_chat(stream=True)
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                received.append(line)
    events = _sse_events("\n".join(received))
    assert len(events) == (1 if role_chunk else 0)
    assert all(e["choices"][0]["delta"].get("content", "") == "" for e in events)


def test_stream_cut_after_first_token(fault_server: FaultServer) -> None:
    fault_server.script(Fault.stream_cut_after_first_token("Partial"))
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream(
            "POST", f"{fault_server.base_url}/chat/completions", json=_chat(stream=True)
        ) as r:
            for line in r.iter_lines():
                received.append(line)
    contents = [e["choices"][0]["delta"].get("content") for e in _sse_events("\n".join(received))]
    assert contents == ["", "Partial"]


def test_stream_cut_on_non_streaming_request_truncates_body(fault_server: FaultServer) -> None:
    fault_server.script(Fault.stream_cut_after_first_token())
    with pytest.raises(httpx.RemoteProtocolError):
        _post(fault_server, _chat())


def test_rpm_limit_answers_429_with_retry_after(fault_server: FaultServer) -> None:
    fault_server.set_limits(rpm=60, window_s=3)  # 3 requests per 3 s
    codes = [_post(fault_server, _chat()).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    limited = fault_server.chat_requests[3]
    assert limited.outcome == "limited"
    retry_ms = int(limited.response_headers["retry-after-ms"])
    assert 2000 < retry_ms <= 3000
    assert limited.response_headers["Retry-After"] == "3"
    # a limited request does not consume the script and is not counted
    fault_server.script(Fault.ok("after the window"))
    time.sleep(retry_ms / 1000 + 0.05)
    r = _post(fault_server, _chat())
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "after the window"


def test_tpm_limit_reserve_counts_max_tokens(fault_server: FaultServer) -> None:
    fault_server.set_limits(tpm=600, window_s=6)  # 60 tokens per 6 s
    fault_server.script(*[Fault.ok("x", prompt_tokens=10)] * 3)
    codes = [_post(fault_server, _chat(max_tokens=15)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]  # 25 + 25 fit in 60, a third 25 does not
    assert [r.tokens_counted for r in fault_server.chat_requests] == [25, 25, 0]
    assert fault_server.pending == 1


def test_tpm_limit_usage_counts_completion(fault_server: FaultServer) -> None:
    fault_server.set_limits(tpm=600, window_s=6, token_count="usage")
    fault_server.set_default(Fault.ok("x", prompt_tokens=10))  # 11 tokens each
    codes = [_post(fault_server, _chat(max_tokens=15)).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]


def test_request_larger_than_budget_gets_429_without_retry_after(
    fault_server: FaultServer,
) -> None:
    fault_server.set_limits(tpm=60, window_s=6)  # 6 tokens per 6 s
    r = _post(fault_server, _chat(max_tokens=100))
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert "Request too large" in r.json()["error"]["message"]


def test_context_window_enforced(fault_server_factory) -> None:
    small = fault_server_factory("small", context_window=50)
    r = _post(small, _chat("word " * 100, max_tokens=8))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert small.chat_requests[0].outcome == "context_window"
    assert _post(small, _chat("short", max_tokens=8)).status_code == 200


def test_stopped_server_refuses_and_unblocks_slow_handlers(fault_server_factory) -> None:
    server = fault_server_factory("s")
    server.set_default(Fault.slow(30))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            _post(server, _chat(), timeout=10)
        except BaseException as exc:  # noqa: BLE001 - we record it
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    server.stop()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - t0 < 3
    assert errors and isinstance(errors[0], httpx.TransportError)
    with pytest.raises(httpx.ConnectError):
        _post(server, _chat(), timeout=2)


def test_servers_share_a_global_sequence(fault_server_factory) -> None:
    a, b = fault_server_factory("a"), fault_server_factory("b")
    _post(a, _chat("1"))
    _post(b, _chat("2"))
    _post(a, _chat("3"))
    seqs = sorted([(r.seq, r.server, r.last_user_text) for r in a.requests + b.requests])
    assert [(s, t) for _, s, t in seqs] == [("a", "1"), ("b", "2"), ("a", "3")]
    assert b.chat_requests[0].index == 1 and a.chat_requests[1].index == 2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="window_s"):
        FaultServer().set_limits(rpm=10, window_s=0)
    with pytest.raises(ValueError, match="token_count"):
        FaultServer().set_limits(tpm=10, token_count="words")
    with pytest.raises(TypeError, match="Fault"):
        FaultServer().script("ok")  # type: ignore[arg-type]
