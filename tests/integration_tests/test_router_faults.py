"""The router against real HTTP faults (issue 4, "Real HTTP fault tests").

Every deployment is its own :class:`~tests.fault_server.FaultServer` on 127.0.0.1, so
the servers' request logs show exactly which deployment saw which request, when,
and what it answered. The assertions follow the router's behaviour table (README,
"What happens when a provider fails"):

* no request lost: every prompt gets *its own* answer (the server echoes the prompt);
* fallover order: with ``strategy="priority"`` the servers are tried a → b → c
  (checked on the global sequence numbers of the servers' logs);
* no request reaches a deployment inside its Retry-After window (log timestamps);
* an all-cooling router waits for the earliest recovery and then succeeds;
* permanent errors (401/403/404) fail fast with messages naming the env var / model;
* 5xx, timeouts, dropped connections and malformed JSON fall over;
* a stream cut before the first token falls over transparently, after it raises;
* another 400 raises without failover; a context-length 400 falls over to a
  deployment with a larger context window.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from langchain_moa import errors as moa_errors
from langchain_moa.errors import RouterError
from langchain_moa.providers import PROVIDERS, Provider
from langchain_moa.router import Deployment, ProviderRouter
from tests import fault_server as _fs
from tests.fault_server import Fault, FaultServer

# the pytest fixtures (module attributes, so pytest finds them here)
fault_server = _fs.fault_server
fault_server_factory = _fs.fault_server_factory

TIMEOUT = 1.0  # per-attempt timeout (s) of every deployment here


def make_router(
    servers: list[FaultServer],
    *,
    timeout: float = TIMEOUT,
    deployment_kw: dict[str, dict[str, Any]] | None = None,
    **router_kw: Any,
) -> ProviderRouter:
    """A priority router over ``servers`` in the given order (names = server names)."""
    deployment_kw = deployment_kw or {}
    deployments = [
        Deployment(
            model="llamacpp/fake",
            base_url=s.base_url,
            name=s.name,
            timeout=timeout,
            **deployment_kw.get(s.name, {}),
        )
        for s in servers
    ]
    router_kw.setdefault("strategy", "priority")
    router_kw.setdefault("deadline", 20.0)
    return ProviderRouter(deployments=deployments, **router_kw)


def servers(factory, *names: str, **kw: Any) -> list[FaultServer]:
    return [factory(n, **kw) for n in names]


def text_of(message: Any) -> str:
    assert isinstance(message, AIMessage), type(message)
    return message.content if isinstance(message.content, str) else str(message.content)


def seq_order(*srvs: FaultServer) -> list[str]:
    """Server names of all chat requests, in global arrival order."""
    records = sorted((r for s in srvs for r in s.chat_requests), key=lambda r: r.seq)
    return [r.server for r in records]


# --------------------------------------------------------------------------- failover


def test_priority_order_and_answer_from_first_healthy(fault_server_factory) -> None:
    a, b, c = servers(fault_server_factory, "a", "b", "c")
    a.script(Fault.server_error())
    b.script(Fault.unavailable())
    router = make_router([a, b, c])
    reply = router.invoke("question one")
    assert text_of(reply) == "[c#1] question one"
    assert seq_order(a, b, c) == ["a", "b", "c"]
    assert [a.statuses(), b.statuses(), c.statuses()] == [[500], [503], [200]]
    # the failed attempts are recorded in the answer's metadata, in order
    decision = reply.response_metadata["router"]
    assert decision["deployment"] == "c"
    attempts = [(x["deployment"], x["outcome"], x.get("status")) for x in decision["attempts"]]
    assert attempts == [("a", "error", 500), ("b", "error", 503), ("c", "ok", None)]


def test_healthy_first_deployment_takes_everything(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    router = make_router([a, b])
    for i in range(3):
        assert text_of(router.invoke(f"q{i}")) == f"[a#{i + 1}] q{i}"
    assert len(b.chat_requests) == 0


@pytest.mark.parametrize(
    "fault",
    [
        Fault.server_error(),
        Fault.unavailable(),
        Fault.status(502),
        Fault.slow(5.0),  # past the 1 s per-attempt timeout
        Fault.drop(),
        Fault.malformed(),
    ],
    ids=["500", "503", "502", "timeout", "dropped-connection", "malformed-json"],
)
def test_transient_faults_fall_over(fault_server_factory, fault: Fault) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(fault)
    router = make_router([a, b])
    t0 = time.monotonic()
    reply = router.invoke("hello")
    elapsed = time.monotonic() - t0
    assert text_of(reply) == "[b#1] hello"
    assert seq_order(a, b) == ["a", "b"]
    assert len(a.chat_requests) == 1  # no retry on the same deployment first
    # a timeout costs one per-attempt timeout, nothing else waits
    assert elapsed < TIMEOUT + 1.5, elapsed


@pytest.mark.parametrize(
    "fault",
    [Fault.drop(), Fault.slow(5.0), Fault.malformed(), Fault.unavailable()],
    ids=["dropped-connection", "timeout", "malformed-json", "503"],
)
async def test_async_failover(fault_server_factory, fault: Fault) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(fault)
    router = make_router([a, b])
    reply = await router.ainvoke("async hello")
    assert text_of(reply) == "[b#1] async hello"
    assert seq_order(a, b) == ["a", "b"]


def test_failures_are_counted_in_stats(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.server_error())
    router = make_router([a, b])
    router.invoke("x")
    stats = router.stats()
    sa, sb = stats["a"], stats["b"]
    assert sa["failures"] == 1 and sa["successes"] == 0
    assert sa["failures_by_kind"] == {"server": 1} and "500" in sa["last_error"]
    assert sb["successes"] == 1 and sb["failures"] == 0
    assert sb["latency_p50_s"] is not None and sb["tokens"] > 0


# --------------------------------------------------------------------------- no request lost


def test_batch_with_mixed_faults_loses_no_request(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(
        Fault.server_error(),
        Fault.ok(),
        Fault.drop(),
        Fault.malformed(),
        Fault.ok(),
        Fault.unavailable(),
        Fault.slow(5.0),
        Fault.ok(),
    )
    prompts = [f"prompt-{i:02d}" for i in range(12)]
    router = make_router([a, b])
    replies = router.batch(prompts, config={"max_concurrency": 3})
    _assert_each_prompt_answered_once(prompts, replies, [a, b])


async def test_abatch_with_mixed_faults_loses_no_request(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.drop(), Fault.ok(), Fault.server_error(), Fault.malformed(), Fault.ok())
    b.script(Fault.unavailable())  # a request failing on both a and b must go to c
    c = fault_server_factory("c")
    prompts = [f"async-{i:02d}" for i in range(10)]
    router = make_router([a, b, c])
    replies = await router.abatch(prompts, config={"max_concurrency": 4})
    _assert_each_prompt_answered_once(prompts, replies, [a, b, c])


def _assert_each_prompt_answered_once(
    prompts: list[str], replies: list[Any], srvs: list[FaultServer]
) -> None:
    assert len(replies) == len(prompts)
    for prompt, reply in zip(prompts, replies, strict=True):
        assert text_of(reply).endswith("] " + prompt), (prompt, reply)
    # on the servers: each prompt got exactly one 200 answer
    ok = [
        r.last_user_text
        for s in srvs
        for r in s.chat_requests
        if r.status == 200 and r.outcome == "ok"
    ]
    assert sorted(ok) == sorted(prompts)


# --------------------------------------------------------------------------- 429 / Retry-After


@pytest.mark.parametrize(
    ("fault", "window"),
    [
        (Fault.rate_limited(retry_after=2), 2.0),
        (Fault.rate_limited(retry_after_ms=1500), 1.5),
        (Fault.rate_limited(retry_after_date_s=2), None),  # computed from the date header
    ],
    ids=["retry-after-seconds", "retry-after-ms", "retry-after-http-date"],
)
def test_no_request_inside_retry_after_window(
    fault_server_factory, fault: Fault, window: float | None
) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(fault)
    router = make_router([a, b])
    assert text_of(router.invoke("first")) == "[b#1] first"
    limited = a.chat_requests[0]
    assert limited.status == 429
    if window is None:
        not_before_wall = email.utils.parsedate_to_datetime(
            limited.response_headers["Retry-After"]
        ).timestamp()
    else:
        not_before_wall = limited.wall_end + window
    # keep sending for a while: until the window is over, only b may see requests
    sent = 0
    stop_at = time.time() + (not_before_wall - time.time()) + 1.5
    while time.time() < stop_at:
        router.invoke(f"during-{sent}")
        sent += 1
        time.sleep(0.1)
    later = a.chat_requests[1:]
    assert all(r.wall_start >= not_before_wall for r in later), [
        round(r.wall_start - not_before_wall, 3) for r in later
    ]
    # ... and once the window is over, the router comes back to a (priority)
    assert later, "deployment a never got traffic again after its Retry-After window"
    assert all(r.status == 200 for r in later)
    assert len(b.chat_requests) + len(later) == sent + 1


def test_429_without_retry_after_still_cools_down(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.rate_limited())
    router = make_router([a, b])
    router.invoke("one")
    router.invoke("two")  # right after: a is cooling down (backoff), b answers
    assert len(a.chat_requests) == 1
    assert [r.last_user_text for r in b.chat_requests] == ["one", "two"]


def test_all_cooling_router_waits_then_succeeds(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.rate_limited(retry_after=1))
    b.script(Fault.rate_limited(retry_after=3))
    router = make_router([a, b], deadline=10.0)
    t0 = time.monotonic()
    reply = router.invoke("patience")
    waited = time.monotonic() - t0
    assert text_of(reply) == "[a#2] patience"  # a recovers first (1 s)
    first_429_end = a.chat_requests[0].t_end
    assert a.chat_requests[1].t_start >= first_429_end + 1.0
    assert 1.0 <= waited < 3.0, waited  # waited for a, not for b's 3 s
    assert len(b.chat_requests) == 1


def test_all_cooling_past_deadline_raises(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.rate_limited(retry_after=30))
    b.script(Fault.rate_limited(retry_after=30))
    router = make_router([a, b], deadline=1.0)
    t0 = time.monotonic()
    with pytest.raises(RouterError) as info:
        router.invoke("too late")
    assert time.monotonic() - t0 < 2.5
    assert "a" in str(info.value) and "b" in str(info.value)
    assert len(a.chat_requests) == 1 and len(b.chat_requests) == 1


# --------------------------------------------------------------------------- permanent errors


def test_401_disables_and_names_the_env_var(fault_server_factory, monkeypatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk-wrong")
    a, b = servers(fault_server_factory, "a", "b")
    a.set_default(Fault.unauthorized())
    deployments = [
        Deployment(model="groq/fake", base_url=a.base_url, name="a", timeout=TIMEOUT),
        Deployment(model="llamacpp/fake", base_url=b.base_url, name="b", timeout=TIMEOUT),
    ]
    router = ProviderRouter(deployments=deployments, strategy="priority", deadline=10.0)
    for i in range(4):
        assert text_of(router.invoke(f"k{i}")) == f"[b#{i + 1}] k{i}"
    assert len(a.chat_requests) == 1  # disabled after the first 401, never asked again
    stats = router.stats()["a"]
    assert stats["state"] == "disabled"
    assert "GROQ_API_KEY" in stats["state_reason"] and "401" in stats["state_reason"]


@pytest.mark.parametrize(
    ("fault", "needle"),
    [
        (Fault.unauthorized(), "GROQ_API_KEY"),
        (Fault.forbidden(), "GROQ_API_KEY"),
        (Fault.model_not_found("fake"), "'fake' not found"),
    ],
    ids=["401", "403", "404"],
)
def test_permanent_error_alone_fails_fast_with_clear_message(
    fault_server: FaultServer, monkeypatch, fault: Fault, needle: str
) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk-wrong")
    fault_server.set_default(fault)
    router = ProviderRouter(
        deployments=[
            Deployment(
                model="groq/fake", base_url=fault_server.base_url, name="only", timeout=TIMEOUT
            )
        ],
        strategy="priority",
        deadline=10.0,
    )
    t0 = time.monotonic()
    with pytest.raises(RouterError) as info:
        router.invoke("x")
    assert time.monotonic() - t0 < 5.0  # no waiting out the 10 s deadline on a permanent error
    assert needle in str(info.value)
    assert len(fault_server.chat_requests) == 1  # no retries
    with pytest.raises(RouterError):  # still disabled: the server is not asked again
        router.invoke("y")
    assert len(fault_server.chat_requests) == 1


def test_missing_api_key_disables_without_sending(fault_server_factory, monkeypatch) -> None:
    """A keyed provider (registered here, pointing at the fault server, so nothing can
    reach the internet) with its key variable unset: disabled, nothing sent."""
    a, b = servers(fault_server_factory, "a", "b")
    monkeypatch.setitem(
        PROVIDERS, "faultkeyed", Provider("faultkeyed", a.base_url, "FAULTKEYED_API_KEY")
    )
    monkeypatch.delenv("FAULTKEYED_API_KEY", raising=False)
    deployments = [
        Deployment(model="faultkeyed/fake", name="a", timeout=TIMEOUT),
        Deployment(model="llamacpp/fake", base_url=b.base_url, name="b", timeout=TIMEOUT),
    ]
    router = ProviderRouter(deployments=deployments, strategy="priority", deadline=10.0)
    assert text_of(router.invoke("nokey")) == "[b#1] nokey"
    assert text_of(router.invoke("nokey2")) == "[b#2] nokey2"
    assert a.chat_requests == []  # nothing was sent without a key
    stats = router.stats()["a"]
    assert stats["state"] == "disabled" and "FAULTKEYED_API_KEY" in stats["state_reason"]


def test_404_model_not_found_falls_over(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.set_default(Fault.model_not_found("fake"))
    router = make_router([a, b])
    assert text_of(router.invoke("m1")) == "[b#1] m1"
    assert text_of(router.invoke("m2")) == "[b#2] m2"
    assert len(a.chat_requests) == 1


# --------------------------------------------------------------------------- 400s


def test_other_400_raises_without_failover(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.bad_request())
    router = make_router([a, b])
    with pytest.raises(Exception, match="temperature") as info:
        router.invoke("bad")
    assert not isinstance(info.value, AssertionError)
    assert len(b.chat_requests) == 0
    assert len(a.chat_requests) == 1


def test_context_length_400_falls_over_to_larger_context(fault_server_factory) -> None:
    small = fault_server_factory("small")
    big = fault_server_factory("big")
    small.script(Fault.context_length_exceeded(4096, 5000))
    router = make_router(
        [small, big],
        deployment_kw={"small": {"context_window": 4096}, "big": {"context_window": 32768}},
    )
    assert text_of(router.invoke("long")) == "[big#1] long"
    assert seq_order(small, big) == ["small", "big"]


def test_context_length_400_without_larger_deployment_raises(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.context_length_exceeded(4096, 5000))
    router = make_router(
        [a, b], deployment_kw={"a": {"context_window": 4096}, "b": {"context_window": 4096}}
    )
    with pytest.raises(Exception, match="context length") as info:
        router.invoke("long")
    assert not isinstance(info.value, AssertionError)
    assert len(b.chat_requests) == 0  # same window: trying b cannot help


def test_server_enforced_context_window_falls_over(fault_server_factory) -> None:
    """The small server itself rejects the request (a real 400 from its window); the
    router did not know the small window, so it learns it from the error."""
    small = fault_server_factory("small", context_window=64)
    big = fault_server_factory("big", context_window=100_000)
    router = make_router([small, big], deployment_kw={"big": {"context_window": 100_000}})
    prompt = "tell me " + "more " * 100
    reply = router.invoke(prompt, max_tokens=8)
    assert text_of(reply).startswith("[big#1] tell me more")
    assert [(r.status, r.outcome) for r in small.chat_requests] == [(400, "context_window")]
    # a short request still goes to the first deployment
    assert text_of(router.invoke("short", max_tokens=8)) == "[small#2] short"


def test_declared_context_window_skips_small_deployment(fault_server_factory) -> None:
    small = fault_server_factory("small", context_window=64)
    big = fault_server_factory("big", context_window=100_000)
    router = make_router(
        [small, big],
        deployment_kw={"small": {"context_window": 64}, "big": {"context_window": 100_000}},
    )
    reply = router.invoke("tell me " + "more " * 100, max_tokens=8)
    assert text_of(reply).startswith("[big#1]")
    assert small.chat_requests == []  # skipped by its declared window, never sent
    decision = reply.response_metadata["router"]
    skipped = [c for c in decision["candidates"] if c["deployment"] == "small"]
    assert skipped and "context_window 64" in skipped[0]["skipped"], decision["candidates"]


# --------------------------------------------------------------------------- streams


def _collect(chunks) -> str:
    return "".join(c.content for c in chunks)


@pytest.mark.parametrize("role_chunk", [True, False], ids=["after-role-chunk", "no-bytes"])
def test_stream_cut_before_first_token_falls_over(fault_server_factory, role_chunk) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.stream_cut_before_first_token(role_chunk=role_chunk))
    router = make_router([a, b])
    chunks = list(router.stream("stream me"))
    assert _collect(chunks) == "[b#1] stream me"
    assert seq_order(a, b) == ["a", "b"]


@pytest.mark.parametrize(
    "fault",
    [
        Fault.server_error(),
        Fault.rate_limited(retry_after=5),
        Fault.drop(),
        Fault.slow(5.0),
        Fault.ok(chunk_delay_s=3.0),
    ],
    ids=["500", "429", "drop", "timeout-before-headers", "stall-before-first-token"],
)
def test_stream_error_before_start_falls_over(fault_server_factory, fault) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(fault)
    router = make_router([a, b])
    t0 = time.monotonic()
    assert _collect(router.stream("s")) == "[b#1] s"
    assert time.monotonic() - t0 < TIMEOUT + 1.5


def test_stream_cut_after_first_token_raises(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.stream_cut_after_first_token("Partial"))
    router = make_router([a, b])
    got: list[str] = []
    with pytest.raises(Exception) as info:  # noqa: B017 - the class is the router's choice
        for chunk in router.stream("cut"):
            got.append(chunk.content)
    assert not isinstance(info.value, AssertionError)
    assert "".join(got) == "Partial"  # what was streamed stays streamed ...
    assert len(b.chat_requests) == 0  # ... and is not silently restarted elsewhere


async def test_astream_cut_before_first_token_falls_over(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.stream_cut_before_first_token())
    router = make_router([a, b])
    chunks = [c async for c in router.astream("async stream")]
    assert _collect(chunks) == "[b#1] async stream"


async def test_astream_cut_after_first_token_raises(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.stream_cut_after_first_token("Partial"))
    router = make_router([a, b])
    got: list[str] = []
    with pytest.raises(Exception) as info:  # noqa: B017
        async for chunk in router.astream("cut"):
            got.append(chunk.content)
    assert not isinstance(info.value, AssertionError)
    assert "".join(got) == "Partial"
    assert len(b.chat_requests) == 0


def test_stream_usage_counted_once(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.stream_cut_before_first_token())
    b.script(Fault.ok("one two three", prompt_tokens=11))
    router = make_router([a, b])
    chunks = list(router.stream("u"))
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert len(usage) == 1
    assert usage[0]["input_tokens"] == 11 and usage[0]["output_tokens"] == 3


# --------------------------------------------------------------------------- breaker


def test_circuit_breaker_stops_sending_to_a_failing_deployment(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.set_default(Fault.server_error())
    router = make_router([a, b], failure_threshold=3, circuit_cooldown=30.0)
    for i in range(10):
        assert text_of(router.invoke(f"c{i}")) == f"[b#{i + 1}] c{i}"
    # 3 consecutive failures open the circuit: a is not tried again for 30 s
    assert len(a.chat_requests) == 3
    assert router.stats()["a"]["state"] == "open"


async def test_half_open_probe_is_single_and_closes_the_circuit(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.server_error(), Fault.server_error(), Fault.ok(delay_s=0.5))
    router = make_router([a, b], failure_threshold=2, circuit_cooldown=1.0)
    await router.ainvoke("f1")
    await router.ainvoke("f2")  # second consecutive failure: circuit open for 1 s
    opened_at = a.chat_requests[1].t_end
    assert text_of(await router.ainvoke("during")) == "[b#3] during"
    await asyncio.sleep(max(0.0, opened_at + 1.05 - time.monotonic()))
    # half-open: of 4 concurrent requests exactly one (the probe) goes to a
    replies = await asyncio.gather(*(router.ainvoke(f"p{i}") for i in range(4)))
    on_a = [r for r in replies if text_of(r).startswith("[a#")]
    assert len(on_a) == 1, [text_of(r) for r in replies]
    assert a.chat_requests[2].t_start >= opened_at + 1.0
    # the probe succeeded: the circuit is closed and a (priority) takes traffic again
    assert router.stats()["a"]["state"] == "healthy"
    assert text_of(await router.ainvoke("after")).startswith("[a#")


async def test_concurrent_requests_during_cooldown_all_succeed(fault_server_factory) -> None:
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.rate_limited(retry_after=2))
    router = make_router([a, b])
    first = await router.ainvoke("g-first")  # a answers 429: the router now knows
    assert text_of(first) == "[b#1] g-first"
    limited = a.chat_requests[0]
    assert limited.status == 429
    replies = await asyncio.gather(*(router.ainvoke(f"g{i}") for i in range(8)))
    assert sorted(text_of(r).split("] ")[1] for r in replies) == sorted(f"g{i}" for i in range(8))
    assert len(a.chat_requests) == 1  # all 8 concurrent requests went to b
    await asyncio.sleep(max(0.0, limited.t_end + 2.05 - time.monotonic()))
    again = await asyncio.gather(*(router.ainvoke(f"h{i}") for i in range(3)))
    assert all(text_of(r).startswith("[a#") for r in again)  # a is back after 2 s
    assert all(r.t_start >= limited.t_end + 2.0 for r in a.chat_requests[1:])


# --------------------------------------------------------------------------- structured output


def test_function_calling_strict_reaches_the_wire(fault_server_factory) -> None:
    """``with_structured_output(method="function_calling", strict=True)`` sends the
    schema as a strict tool (``tools[0].function.strict``), as ``ChatOpenAI`` does,
    and no unknown top-level ``strict`` parameter; the fallback deployment gets it too."""
    from pydantic import BaseModel

    class Answer(BaseModel):
        value: int

    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.server_error())
    router = make_router([a, b])
    out = router.with_structured_output(
        Answer, method="function_calling", strict=True, include_raw=True
    ).invoke("hello")
    assert text_of(out["raw"]) == "[b#1] hello"  # the fake server answers in text
    for srv in (a, b):
        body = srv.chat_requests[0].body
        assert body["tools"][0]["function"]["name"] == "Answer"
        assert body["tools"][0]["function"]["strict"] is True
        assert "strict" not in body


# --------------------------------------------------------------------------- issue 7 regressions
# Each test below fails on a6952f6 (the defect's number in issue 7 is in its docstring).


async def test_late_success_does_not_end_a_retry_after_window(fault_server_factory) -> None:
    """Defect 1: a 500, then a 429 Retry-After 5, then a 200 from a request already in
    flight reset the deployment; the next request reached it 0.26 s after the 429."""
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.server_error(), Fault.ok(delay_s=0.8), Fault.rate_limited(retry_after=5))
    router = make_router([a, b], timeout=3.0)
    assert text_of(await router.ainvoke("r0")).startswith("[b#")  # the 500 falls over
    slow = asyncio.create_task(router.ainvoke("slow"))
    await asyncio.sleep(0.3)  # "slow" is in flight at a
    assert text_of(await router.ainvoke("limited")).startswith("[b#")  # the 429
    assert text_of(await slow).startswith("[a#2] slow")  # the late success
    limited = a.chat_requests[2]
    assert limited.status == 429
    for i in range(5):
        await router.ainvoke(f"after-{i}")
    later = a.chat_requests[3:]
    assert later == [] or all(r.wall_start >= limited.wall_end + 5 for r in later), [
        round(r.wall_start - limited.wall_end, 3) for r in later
    ]
    assert router.stats()["a"]["state"] == "cooling"


async def test_circuit_opening_keeps_a_longer_retry_after(fault_server_factory) -> None:
    """Defect 2: a 429 Retry-After 5, then a 500 from a request in flight opened the
    circuit for circuit_cooldown (1 s): the probe reached the deployment 1.5 s after the 429."""
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.slow(0.8, then=Fault.server_error()), Fault.rate_limited(retry_after=5))
    router = make_router([a, b], timeout=3.0, failure_threshold=1, circuit_cooldown=1.0)
    slow = asyncio.create_task(router.ainvoke("slow"))
    await asyncio.sleep(0.3)
    assert text_of(await router.ainvoke("limited")).startswith("[b#")  # the 429
    assert text_of(await slow).startswith("[b#")  # its 500 opens the circuit
    limited = a.chat_requests[1]
    assert limited.status == 429
    assert router.stats()["a"]["state"] == "open"
    stop = limited.wall_end + 3.0  # well past the 1 s circuit_cooldown, inside the 5 s window
    while time.time() < stop:
        await router.ainvoke("probe?")
        await asyncio.sleep(0.1)
    assert len(a.chat_requests) == 2, [
        round(r.wall_start - limited.wall_end, 3) for r in a.chat_requests[2:]
    ]


@pytest.mark.parametrize(
    "fault", [Fault.not_sse(), Fault.stream_empty()], ids=["json-body-not-sse", "no-chunk"]
)
def test_stream_with_no_chunk_falls_over(fault_server_factory, fault: Fault) -> None:
    """Defect 4: a 200 JSON body to a stream request, or a stream with no chunk, was
    returned as '' and never fell over."""
    a, b = servers(fault_server_factory, "a", "b")
    a.script(fault)
    router = make_router([a, b])
    assert _collect(router.stream("s")) == "[b#1] s"
    assert router.stats()["a"]["failures_by_kind"] == {"malformed": 1}


@pytest.mark.parametrize(
    "fault", [Fault.not_sse(), Fault.stream_empty()], ids=["json-body-not-sse", "no-chunk"]
)
async def test_astream_with_no_chunk_falls_over(fault_server_factory, fault: Fault) -> None:
    """Defect 4, async."""
    a, b = servers(fault_server_factory, "a", "b")
    a.script(fault)
    router = make_router([a, b])
    assert _collect([c async for c in router.astream("s")]) == "[b#1] s"


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_stream_closed_without_finish_reason_raises(fault_server_factory, mode: str) -> None:
    """Defect 4: a stream closed cleanly after its first token with no finish_reason was
    returned as complete."""
    a, b = servers(fault_server_factory, "a", "b")
    a.script(Fault.stream_without_finish("Partial answer"))
    router = make_router([a, b])
    got: list[str] = []
    with pytest.raises(moa_errors.StreamInterruptedError) as info:
        if mode == "sync":
            for chunk in router.stream("cut"):
                got.append(chunk.content)
        else:
            async for chunk in router.astream("cut"):
                got.append(chunk.content)
    assert "".join(got) == "Partial answer" and info.value.deployment == "a"
    assert "finish_reason" in str(info.value)
    assert len(b.chat_requests) == 0


def test_unencodable_prompt_raises_at_once_and_charges_no_deployment(
    fault_server_factory,
) -> None:
    """Defect 5: a lone surrogate raised UnicodeEncodeError before anything was sent, was
    counted by every circuit breaker, and three such prompts opened every circuit."""
    from langchain_core.exceptions import ModelInvalidRequestError

    a, b = servers(fault_server_factory, "a", "b")
    router = make_router([a, b], deadline=5.0)
    for _ in range(4):
        with pytest.raises(moa_errors.InvalidRequestError) as info:
            router.invoke("bad \ud800 prompt")
    assert isinstance(info.value, ModelInvalidRequestError) and not info.value.is_retryable
    assert a.chat_requests == [] and b.chat_requests == []
    assert text_of(router.invoke("fine")) == "[a#1] fine"
    for name in ("a", "b"):
        st = router.stats()[name]
        assert st["state"] == "healthy" and st["failures"] == 0, st


def test_keys_are_redacted_from_everything_the_router_stores_or_raises(
    fault_server_factory,
) -> None:
    """Defect 7: an upstream echoing the Authorization header put the key into stats(),
    exceptions, the attempt log, traces and health records."""
    import openai
    from langchain_core.callbacks import BaseCallbackHandler

    key = "sk-test-" + "9f3a" * 8

    class Errors(BaseCallbackHandler):
        def __init__(self) -> None:
            self.texts: list[str] = []

        def on_chain_error(self, error: BaseException, **kw: Any) -> None:
            self.texts.append(repr(error) + str(error))

        def on_llm_error(self, error: BaseException, **kw: Any) -> None:
            self.texts.append(repr(error) + str(error))

    a, b, c = servers(fault_server_factory, "a", "b", "c")
    a.script(Fault.echo_auth(500))  # counted: stats last_error, attempt log, health
    b.script(Fault.echo_auth(401))  # disables: DeploymentDisabledError, health reason
    c.script(Fault.echo_auth(400))  # raised to the caller
    router = make_router([a, b, c], deployment_kw={n: {"api_key": key} for n in "abc"})
    handler = Errors()
    with pytest.raises(openai.BadRequestError) as info:
        router.invoke("q", config={"callbacks": [handler]})
    assert a.chat_requests[0].headers["authorization"] == f"Bearer {key}"  # it was sent
    texts = [str(info.value), repr(info.value.body), repr(router.stats()), *handler.texts]
    texts += [repr(router._store.health_get(n)) for n in "abc"]
    assert handler.texts and "Invalid credentials" in texts[0]
    for t in texts:
        assert key not in t, t
    assert "***" in str(info.value) and "***" in router.stats()["a"]["last_error"]
