"""Failover policy of ProviderRouter, driven by real openai SDK exceptions (no sockets)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import openai
import pytest
from langchain_core.callbacks import BaseCallbackHandler, UsageMetadataCallbackHandler
from langchain_core.messages import AIMessage
from pydantic import BaseModel

from langchain_moa.errors import (
    ConfigurationError,
    DeploymentDisabledError,
    NoDeploymentAvailableError,
    StreamInterruptedError,
)
from langchain_moa.router import Deployment, InMemoryStore, ProviderRouter, RetryPolicy
from tests.unit_tests.moa_fakes import Gauge, ScriptedChat, ToolJudge
from tests.unit_tests.router_fakes import (
    TimedChat,
    connection_error,
    context_error,
    http_error,
    rate_limited,
    timeout_error,
)


def router_of(*llms: ScriptedChat, **kw: Any) -> ProviderRouter:
    deployments = kw.pop("deployments", None) or [
        Deployment(llm=m, name=n) for n, m in zip("abcdef", llms, strict=False)
    ]
    kw.setdefault("deadline", 10.0)
    return ProviderRouter(deployments=deployments, **kw)


def attempts(msg: AIMessage) -> list[tuple[str, str]]:
    return [
        (a["deployment"], a.get("error_kind") or a["outcome"])
        for a in msg.response_metadata["router"]["attempts"]
    ]


class TestConstruction:
    def test_unknown_keyword_is_named(self) -> None:
        """Issue 7 defect 10: ProviderRouter(temprature=0.2) was accepted silently."""
        with pytest.raises(ConfigurationError, match="'temprature'.*did you mean 'temperature'"):
            ProviderRouter(deployments=[Deployment(llm=ScriptedChat())], temprature=0.2)

    @pytest.mark.parametrize("t", [-1, 5, 2.01])
    def test_temperature_out_of_range_names_the_range(self, t: float) -> None:
        """Issue 7 defect 10: temperature=-1 or 5 was accepted."""
        with pytest.raises(ConfigurationError, match=r"temperature must be a number in \[0, 2\]"):
            ProviderRouter(deployments=[Deployment(llm=ScriptedChat())], temperature=t)

    def test_other_invalid_values_are_configuration_errors(self) -> None:
        with pytest.raises(ConfigurationError, match="timeout"):
            ProviderRouter(deployments=[Deployment(llm=ScriptedChat())], timeout=-1)

    def test_duplicate_names_are_named(self) -> None:
        with pytest.raises(ConfigurationError, match="'x' appears twice"):
            ProviderRouter(
                deployments=[
                    Deployment(llm=ScriptedChat(), name="x"),
                    Deployment(llm=ScriptedChat(), name="x"),
                ]
            )

    def test_model_string_is_the_default_name(self) -> None:
        r = ProviderRouter(
            deployments=["openai/gpt-4o-mini", Deployment(model="groq:llama-3.1-8b-instant")]
        )
        assert [d.name for d in r.deployments] == [
            "openai/gpt-4o-mini",
            "groq:llama-3.1-8b-instant",
        ]

    def test_bad_strategy_and_policy(self) -> None:
        with pytest.raises(ValueError, match="strategy"):
            router_of(ScriptedChat(), strategy="fastest")
        with pytest.raises(ConfigurationError, match="unknown error kinds"):
            router_of(ScriptedChat(), retry_policy={"teapot": RetryPolicy()})

    def test_deployment_needs_model_or_llm(self) -> None:
        with pytest.raises(ValueError, match="exactly one"):
            Deployment()
        with pytest.raises(ValueError, match="unknown provider"):
            Deployment(model="nowhere/x")


class TestRateLimits:
    def test_429_falls_over_and_respects_retry_after_window(self) -> None:
        a = TimedChat(replies=[rate_limited(retry_after_ms="400"), "from a"])
        b = TimedChat(replies=["from b"])
        router = router_of(a, b)
        first = router.invoke("q")
        assert first.content == "from b"
        assert attempts(first) == [("a", "rate_limit"), ("b", "ok")]
        assert router.stats()["a"]["state"] == "cooling"
        # inside the window every request goes to b without touching a
        for _ in range(3):
            assert router.invoke("q").content == "from b"
        assert len(a.times) == 1
        time.sleep(0.45)
        assert router.invoke("q").content == "from a"
        assert a.times[1] - a.times[0] >= 0.4

    def test_integer_retry_after(self) -> None:
        a = TimedChat(replies=[rate_limited(retry_after="1"), "a"])
        router = router_of(a, ScriptedChat(replies=["b"]))
        router.invoke("q")
        st = router.stats()["a"]
        assert st["state"] == "cooling" and 0.8 < st["cooldown_remaining_s"] <= 1.0

    def test_all_cooling_waits_for_earliest_recovery(self) -> None:
        a = TimedChat(replies=[rate_limited(retry_after_ms="600"), "a"])
        b = TimedChat(replies=[rate_limited(retry_after_ms="300"), "b"])
        router = router_of(a, b)
        t0 = time.time()
        msg = router.invoke("q")
        assert msg.content == "b"
        assert b.times[1] - b.times[0] >= 0.3
        assert time.time() - t0 >= 0.3
        # b (0.3 s) was the earliest: a (0.6 s) was never asked again
        assert len(a.times) == 1
        assert msg.response_metadata["router"]["waited_s"] >= 0.25

    async def test_all_cooling_waits_async(self) -> None:
        a = TimedChat(replies=[rate_limited(retry_after_ms="300"), "a"])
        router = router_of(a)
        t0 = time.time()
        assert (await router.ainvoke("q")).content == "a"
        assert time.time() - t0 >= 0.3

    def test_deadline_shorter_than_cooldown_raises_listing_each_error(self) -> None:
        a = ScriptedChat(replies=[rate_limited(retry_after="30")])
        b = ScriptedChat(replies=[rate_limited(retry_after="20")])
        router = router_of(a, b, deadline=1.0)
        t0 = time.time()
        with pytest.raises(NoDeploymentAvailableError) as ei:
            router.invoke("q")
        # no point sleeping past the deadline: refused at once (b's 20 s barely started),
        # not after sleeping the deadline out
        earliest = re.search(r"earliest: b in ([\d.]+) s", str(ei.value))
        assert earliest and float(earliest.group(1)) > 19.0
        assert time.time() - t0 < 1.0
        assert set(ei.value.errors) == {"a", "b"}
        assert isinstance(ei.value.errors["a"], openai.RateLimitError)
        assert "deadline" in str(ei.value)


class TestTransient:
    @pytest.mark.parametrize(
        "error",
        [
            http_error(500),
            http_error(503),
            timeout_error(),
            connection_error(),
            ValueError("garbage"),
        ],
    )
    def test_transient_errors_fall_over(self, error: Exception) -> None:
        router = router_of(ScriptedChat(replies=[error]), ScriptedChat(replies=["b"]))
        msg = router.invoke("q")
        assert msg.content == "b"
        assert router.stats()["a"]["failures"] == 1

    def test_breaker_opens_then_one_probe_closes_it(self) -> None:
        a = TimedChat(replies=[http_error(500)] * 3 + ["a ok"])
        b = ScriptedChat(replies=["b"])
        router = router_of(a, b, failure_threshold=3, circuit_cooldown=0.3)
        for _ in range(3):
            assert router.invoke("q").content == "b"
        assert router.stats()["a"]["state"] == "open"
        assert router.invoke("q").content == "b" and len(a.times) == 3  # open: a not called
        time.sleep(0.35)
        assert router.stats()["a"]["state"] == "half-open"
        assert router.invoke("q").content == "a ok"
        assert router.stats()["a"]["state"] == "healthy"

    async def test_half_open_admits_exactly_one_probe(self) -> None:
        gauge = Gauge()
        a = ScriptedChat(replies=[http_error(500), "probe ok"], delay=0.0)
        b = ScriptedChat(replies=["b"], delay=0.05)
        router = router_of(a, b, failure_threshold=1, circuit_cooldown=0.2)
        await router.ainvoke("q")
        await asyncio.sleep(0.25)
        a.delay, a.gauge = 0.2, gauge
        out = await asyncio.gather(*[router.ainvoke("q") for _ in range(6)])
        assert gauge.total == 1  # exactly one request reached the half-open deployment
        assert sorted(m.content for m in out) == ["b"] * 5 + ["probe ok"]

    @pytest.mark.parametrize(
        ("own_timeout", "probe_age", "probe_lost"),
        [(120.0, 90.0, False), (120.0, 250.0, True), (None, 90.0, True)],
    )
    def test_probe_counts_as_lost_after_twice_the_deployments_own_timeout(
        self, own_timeout: float | None, probe_age: float, probe_lost: bool
    ) -> None:
        # a probe on a deployment with timeout=120 s may run for 120 s: still in
        # flight at 90 s; without its own timeout the router's 30 s gives 60 s
        store = InMemoryStore()
        a = ScriptedChat(replies=["a"])
        router = router_of(
            deployments=[
                Deployment(llm=a, name="a", timeout=own_timeout),
                Deployment(llm=ScriptedChat(replies=["b"]), name="b"),
            ],
            store=store,
            timeout=30.0,
        )
        probe_at = time.time() - probe_age
        store.health_update("a", lambda r: ({"state": "half-open", "probe_at": probe_at}, None))
        msg = router.invoke("q")
        assert msg.content == ("a" if probe_lost else "b")
        assert len(a.calls) == (1 if probe_lost else 0)

    def test_probe_failure_reopens(self) -> None:
        a = TimedChat(replies=[http_error(503), http_error(503), "a"])
        router = router_of(
            a, ScriptedChat(replies=["b"]), failure_threshold=1, circuit_cooldown=0.2
        )
        router.invoke("q")
        time.sleep(0.25)
        assert router.invoke("q").content == "b"  # the probe failed
        st = router.stats()["a"]  # open again (half-open once its 0.2 s have passed)
        assert st["state"] in ("open", "half-open") and len(a.times) == 2
        assert st["state_reason"].startswith("half-open probe failed")

    def test_timeout_per_attempt(self) -> None:
        slow = ScriptedChat(replies=["slow"], delay=3.0)
        router = router_of(slow, ScriptedChat(replies=["fast"]), timeout=0.2)
        t0 = time.time()
        msg = router.invoke("q")
        assert msg.content == "fast" and time.time() - t0 < 2.0  # a's 3 s reply not awaited
        assert attempts(msg)[0] == ("a", "timeout")

    async def test_timeout_per_attempt_async(self) -> None:
        slow = ScriptedChat(replies=["slow"], delay=3.0)
        router = router_of(slow, ScriptedChat(replies=["fast"]), deployments=None, timeout=0.2)
        t0 = time.time()
        assert (await router.ainvoke("q")).content == "fast"
        assert time.time() - t0 < 2.0

    def test_single_deployment_recovers_after_backoff(self) -> None:
        a = TimedChat(replies=[http_error(502), "ok"])
        msg = router_of(a).invoke("q")
        assert msg.content == "ok" and msg.response_metadata["router"]["passes"] == 2

    def test_same_deployment_retries_before_failover(self) -> None:
        a = TimedChat(replies=[http_error(500), http_error(500), "a third time"])
        b = ScriptedChat(replies=["b"])
        router = router_of(
            a, b, retry_policy={"server": RetryPolicy(retries=2)}, failure_threshold=5
        )
        msg = router.invoke("q")
        assert msg.content == "a third time" and len(b.calls) == 0
        assert len(a.times) == 3 and a.times[1] - a.times[0] >= 0.25  # jittered backoff

    def test_retry_backoff_past_the_deadline_falls_over_at_once(self) -> None:
        # retry 1 backs off 0.25-0.5 s, longer than the whole 0.2 s deadline
        a = TimedChat(replies=[http_error(500), "a after backoff"])
        b = ScriptedChat(replies=["b"])
        router = router_of(
            a, b, deadline=0.2, retry_policy={"server": RetryPolicy(retries=1)}, failure_threshold=5
        )
        msg = router.invoke("q")
        # the router's own account: it waited nowhere (the backoff was not slept)
        assert msg.response_metadata["router"]["waited_s"] == 0.0
        assert msg.content == "b" and len(a.times) == 1
        assert ("a", "skipped") in attempts(msg)

    def test_retry_backoff_past_the_deadline_raises_when_nothing_is_left(self) -> None:
        a = TimedChat(replies=[http_error(500), "a after backoff"])
        router = router_of(
            a, deadline=0.2, retry_policy={"server": RetryPolicy(retries=1)}, failure_threshold=5
        )
        with pytest.raises(NoDeploymentAvailableError, match="deadline") as info:
            router.invoke("q")
        # the router's own account: it refused a wait that would end past the deadline
        # (it raised instead of sleeping the backoff, and never retried a)
        wait = re.search(r"earliest: a in ([\d.]+) s", str(info.value))
        assert wait and float(wait.group(1)) > 0 and len(a.times) == 1

    async def test_retry_backoff_past_the_deadline_async_and_stream(self) -> None:
        a = TimedChat(replies=[http_error(500), http_error(500), "a after backoff"])
        b = ScriptedChat(replies=["b"] * 2)
        router = router_of(
            a, b, deadline=0.2, retry_policy={"server": RetryPolicy(retries=1)}, failure_threshold=5
        )
        msg = await router.ainvoke("q")
        assert msg.content == "b" and msg.response_metadata["router"]["waited_s"] == 0.0
        chunks = [c async for c in router.astream("q")]
        assert "".join(str(c.content) for c in chunks) == "b" and len(a.times) == 2
        [decision] = [
            c.response_metadata["router"] for c in chunks if "router" in c.response_metadata
        ]
        assert decision["waited_s"] == 0.0


class TestClientSide:
    @pytest.mark.parametrize(
        "error",
        [UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")],
        ids=["unicode"],
    )
    def test_client_side_error_in_the_call_raises_and_charges_nobody(
        self, error: Exception
    ) -> None:
        """Issue 7 defect 5, raised inside the client (not caught up front)."""
        from langchain_moa.errors import InvalidRequestError

        a, b = ScriptedChat(replies=[error]), ScriptedChat(replies=["b"])
        router = router_of(a, b, failure_threshold=1)
        with pytest.raises(InvalidRequestError) as info:
            router.invoke("q")
        assert info.value.__cause__ is error and b.calls == []
        st = router.stats()["a"]
        assert st["failures"] == 0 and st["state"] == "healthy"


class TestPermanent:
    def test_401_disables_and_names_env_var(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("GROQ_API_KEY", "bad")
        groq = Deployment(model="groq/llama-3.1-8b-instant")
        groq._built = ScriptedChat(replies=[http_error(401)])  # what ChatOpenAI would raise
        router = ProviderRouter(
            deployments=[groq, Deployment(llm=ScriptedChat(replies=["b"]), name="b")]
        )
        assert router.invoke("q").content == "b"
        st = router.stats()["groq/llama-3.1-8b-instant"]
        assert st["state"] == "disabled" and "GROQ_API_KEY" in st["state_reason"]
        router.invoke("q")
        assert len(groq._built.calls) == 1

    def test_missing_key_disables_and_fails_fast_naming_it(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
        router = ProviderRouter(deployments=["mistral/mistral-small-latest"], deadline=30)
        t0 = time.time()
        with pytest.raises(NoDeploymentAvailableError, match="MISTRAL_API_KEY") as ei:
            router.invoke("q")
        assert time.time() - t0 < 10.0  # fails fast, not after the 30 s deadline
        assert isinstance(ei.value.errors["mistral/mistral-small-latest"], DeploymentDisabledError)

    def test_404_disables_the_model(self) -> None:
        a = ScriptedChat(replies=[http_error(404, message="The model `gpt-9` does not exist")])
        router = router_of(a, ScriptedChat(replies=["b"]))
        router.invoke("q")
        assert router.stats()["a"]["state"] == "disabled"
        assert "not found" in router.stats()["a"]["state_reason"]

    def test_other_400_raises_at_once(self) -> None:
        b = ScriptedChat(replies=["b"])
        router = router_of(ScriptedChat(replies=[http_error(400, message="bad temperature")]), b)
        with pytest.raises(openai.BadRequestError):
            router.invoke("q")
        assert b.calls == []

    def test_context_length_falls_over_to_larger_window(self) -> None:
        small = ScriptedChat(replies=[context_error()])
        mid = ScriptedChat(replies=["mid"])
        big = ScriptedChat(replies=["big"])
        router = ProviderRouter(
            deployments=[
                Deployment(llm=small, name="small", context_window=4096),
                Deployment(llm=mid, name="mid", context_window=4096),
                Deployment(llm=big, name="big", context_window=128_000),
            ]
        )
        msg = router.invoke("q")
        assert msg.content == "big" and mid.calls == []
        skipped = {
            c["deployment"]: c["skipped"] for c in msg.response_metadata["router"]["candidates"]
        }
        assert skipped["small"] is None

    def test_context_length_without_larger_window_raises(self) -> None:
        router = ProviderRouter(
            deployments=[
                Deployment(
                    llm=ScriptedChat(replies=[context_error()]), name="a", context_window=4096
                ),
                Deployment(llm=ScriptedChat(replies=["b"]), name="b", context_window=2048),
            ]
        )
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            router.invoke("q")

    def test_prompt_larger_than_window_is_skipped_up_front(self) -> None:
        tiny = ScriptedChat(replies=["tiny"])
        router = ProviderRouter(
            deployments=[
                Deployment(llm=tiny, name="tiny", context_window=10),
                Deployment(llm=ScriptedChat(replies=["big"]), name="big"),
            ]
        )
        msg = router.invoke("word " * 200)
        assert msg.content == "big" and tiny.calls == []
        reasons = [
            c["skipped"] for c in msg.response_metadata["router"]["candidates"] if c["skipped"]
        ]
        assert "context_window 10" in reasons[0]


class TestStreaming:
    def test_stream_failure_before_first_token_falls_over(self) -> None:
        router = router_of(
            ScriptedChat(replies=[http_error(503)]), ScriptedChat(replies=["hello world"])
        )
        chunks = list(router.stream("q"))
        text = "".join(c.content for c in chunks)
        assert text == "hello world"
        full = chunks[0]
        for c in chunks[1:]:
            full = full + c
        assert full.response_metadata["router"]["deployment"] == "b"
        assert full.usage_metadata["output_tokens"] == 2

    def test_stream_failure_after_first_token_raises(self) -> None:
        b = ScriptedChat(replies=["never"])
        router = router_of(ScriptedChat(replies=["one two three"], fail_mid_stream=True), b)
        got = []
        with pytest.raises(StreamInterruptedError, match="after its first token") as err:
            for c in router.stream("q"):
                got.append(c.content)
        assert got == ["one"] and b.calls == []
        assert isinstance(err.value.__cause__, RuntimeError) and err.value.deployment == "a"

    async def test_astream_falls_over_and_records_ttft(self) -> None:
        router = router_of(ScriptedChat(replies=[rate_limited()]), ScriptedChat(replies=["a b c"]))
        text = "".join([c.content async for c in router.astream("q")])
        assert text == "a b c"
        assert router.stats()["b"]["ttft_p50_s"] is not None

    async def test_astream_after_first_token_raises(self) -> None:
        router = router_of(ScriptedChat(replies=["x y z"], fail_mid_stream=True), ScriptedChat())
        with pytest.raises(StreamInterruptedError) as err:
            async for _ in router.astream("q"):
                pass
        assert "mid-stream" in str(err.value.__cause__)


class _Runs(BaseCallbackHandler):
    def __init__(self) -> None:
        self.runs: dict[Any, tuple[str, Any]] = {}

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kw):  # type: ignore[no-untyped-def]
        self.runs[run_id] = (kw.get("name") or "", parent_run_id)

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kw):  # type: ignore[no-untyped-def]
        self.runs[run_id] = ("<router>", parent_run_id)


class TestLangChainIntegration:
    def test_usage_counted_once_and_model_name_is_real(self) -> None:
        router = router_of(
            ScriptedChat(replies=[http_error(500)]),
            ScriptedChat(replies=["two words"], model_name="qwen-real", input_tokens=5),
        )
        cb = UsageMetadataCallbackHandler()
        msg = router.invoke("q", config={"callbacks": [cb]})
        assert msg.response_metadata["model_name"] == "qwen-real"
        assert cb.usage_metadata == {
            "qwen-real": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}
        }

    def test_each_attempt_is_a_child_run_named_after_the_deployment(self) -> None:
        runs = _Runs()
        router = router_of(ScriptedChat(replies=[http_error(500)]), ScriptedChat(replies=["ok"]))
        router.invoke("q", config={"callbacks": [runs]})
        by_name = {name: (rid, parent) for rid, (name, parent) in runs.runs.items()}
        router_run = by_name["<router>"][0]
        failover_run, failover_parent = by_name["router-failover"]
        assert failover_parent == router_run
        assert by_name["a"][1] == failover_run and by_name["b"][1] == failover_run

    def test_structured_output_with_a_pydantic_v1_model_returns_the_model(self) -> None:
        """Issue 7 defect 10: a pydantic v1 model gave a dict."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pydantic import v1

            class AnswerV1(v1.BaseModel):
                value: int

        router = router_of(ToolJudge(tool_args={"value": 42}))
        result = router.with_structured_output(AnswerV1).invoke("q")
        assert isinstance(result, AnswerV1) and result.value == 42  # v1 models equal dicts

    def test_bind_tools_and_structured_output_pass_through(self) -> None:
        class Answer(BaseModel):
            value: int

        judge = ToolJudge(tool_args={"value": 42})
        router = router_of(ScriptedChat(replies=[http_error(503)]), judge)
        result = router.with_structured_output(Answer).invoke("q")
        assert result == Answer(value=42)
        tools = judge.kwargs()["tools"]
        assert tools[0]["function"]["name"] == "Answer"

    @pytest.mark.parametrize("strict", [True, False])
    def test_function_calling_passes_strict_through(self, strict: bool) -> None:
        class Answer(BaseModel):
            value: int

        judge = ToolJudge(tool_args={"value": 42})
        router = router_of(ScriptedChat(replies=[http_error(503)]), judge)
        out = router.with_structured_output(
            Answer, method="function_calling", strict=strict, include_raw=True
        ).invoke("q")
        assert out["parsed"] == Answer(value=42) and out["parsing_error"] is None
        kwargs = judge.kwargs()
        assert kwargs["tools"][0]["function"]["strict"] is strict
        assert "strict" not in kwargs  # ToolJudge.bind_tools takes no strict argument

    def test_function_calling_without_strict_sends_none(self) -> None:
        judge = ToolJudge(tool_args={"value": 1})
        router_of(judge).with_structured_output({"title": "A", "type": "object"}).invoke("q")
        assert "strict" not in judge.kwargs()["tools"][0]["function"]

    def test_model_kwarg_pins_a_deployment(self) -> None:
        router = router_of(ScriptedChat(replies=["a"]), ScriptedChat(replies=["b"]))
        assert router.invoke("q", model="b").content == "b"
        with pytest.raises(ConfigurationError, match="matches no deployment"):
            router.invoke("q", model="zzz")

    def test_defaults_are_sent_to_the_deployment(self) -> None:
        a = ScriptedChat(replies=["a"])
        router = router_of(a, temperature=0.2, max_tokens=33)
        router.invoke("q", stop=["\n"])
        assert a.kwargs()["temperature"] == 0.2 and a.kwargs()["max_tokens"] == 33

    def test_batch_loses_nothing_under_faults(self) -> None:
        a = ScriptedChat(replies=[rate_limited(retry_after_ms="100"), http_error(500), "a"])
        b = ScriptedChat(replies=[http_error(502), "b"])
        router = router_of(a, b)
        out = router.batch([f"q{i}" for i in range(8)], config={"max_concurrency": 4})
        assert len(out) == 8 and all(m.content in ("a", "b") for m in out)


class TestMore:
    def test_many_concurrent_sync_calls_never_time_out_waiting_for_a_thread(self) -> None:
        llm = ScriptedChat(replies=["ok"], delay=0.6)
        router = router_of(llm, timeout=1.5)
        out = router.batch(["q"] * 80, config={"max_concurrency": 80})
        assert len(out) == 80 and router.stats()["a"]["failures"] == 0

    async def test_decision_is_a_custom_event(self) -> None:
        from langchain_core.callbacks import AsyncCallbackHandler

        seen: list[tuple[str, Any, Any]] = []

        class Events(AsyncCallbackHandler):
            async def on_custom_event(self, name, data, *, run_id, **kw):  # type: ignore[no-untyped-def]
                seen.append((name, data, run_id))

            async def on_chat_model_start(self, *a, run_id, **kw):  # type: ignore[no-untyped-def]
                seen.append(("start", None, run_id))

        router = router_of(ScriptedChat(replies=[http_error(500)]), ScriptedChat(replies=["ok"]))
        await router.ainvoke("q", config={"callbacks": [Events()]})
        (_, _, router_run), (name, data, run_id) = seen
        assert name == "moa_router_decision" and run_id == router_run
        assert data["deployment"] == "b" and [a["outcome"] for a in data["attempts"]] == [
            "error",
            "ok",
        ]

    def test_router_is_usable_in_a_chain(self) -> None:
        from langchain_core.output_parsers import StrOutputParser
        from langchain_core.prompts import ChatPromptTemplate

        chain = (
            ChatPromptTemplate.from_messages([("system", "be brief"), ("human", "{q}")])
            | router_of(ScriptedChat(replies=["fine"]))
            | StrOutputParser()
        )
        assert chain.invoke({"q": "how are you?"}) == "fine"

    def test_local_model_without_base_url_is_a_configuration_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("LANGCHAIN_MOA_LOCAL_BASE_URL", raising=False)
        router = ProviderRouter(deployments=["local/qwen"])
        with pytest.raises(ConfigurationError, match="LANGCHAIN_MOA_LOCAL_BASE_URL"):
            router.invoke("q")


class TestCallbacks:
    async def test_get_usage_metadata_callback_counts_once_async_and_streaming(self) -> None:
        from langchain_core.callbacks import get_usage_metadata_callback

        def make() -> ProviderRouter:
            return router_of(
                ScriptedChat(replies=[http_error(502)]),
                ScriptedChat(replies=["a b"], model_name="m", input_tokens=3),
            )

        with get_usage_metadata_callback() as cb:
            await make().ainvoke("q")
            make().invoke("q")
            async for _ in make().astream("q"):
                pass
        assert cb.usage_metadata == {
            "m": {"input_tokens": 9, "output_tokens": 6, "total_tokens": 15}
        }

    @pytest.mark.parametrize("mode", ["stream", "astream"])
    async def test_stream_attempts_nest_under_the_router_run(self, mode: str) -> None:
        """Issue 7 defect 9: router.stream posted router-failover as a separate root."""
        from langchain_core.runnables import RunnableLambda

        runs = _Runs()
        router = router_of(ScriptedChat(replies=[http_error(500)]), ScriptedChat(replies=["ok"]))
        chain = RunnableLambda(lambda x: x, name="outer") | router
        cfg = {"callbacks": [runs]}
        if mode == "stream":
            text = "".join(str(c.content) for c in chain.stream("q", config=cfg))
        else:
            text = "".join([str(c.content) async for c in chain.astream("q", config=cfg)])
        assert text == "ok"
        by_name = {name: (rid, parent) for rid, (name, parent) in runs.runs.items()}
        router_run, router_parent = by_name["<router>"]
        assert router_parent is not None  # under the chain
        failover_run, failover_parent = by_name["router-failover"]
        assert failover_parent == router_run
        assert by_name["a"][1] == failover_run and by_name["b"][1] == failover_run

    async def test_async_attempts_nest_under_the_failover_run(self) -> None:
        runs = _Runs()
        router = router_of(ScriptedChat(replies=[timeout_error()]), ScriptedChat(replies=["ok"]))
        await router.ainvoke("q", config={"callbacks": [runs]})
        by_name = {name: (rid, parent) for rid, (name, parent) in runs.runs.items()}
        assert by_name["router-failover"][1] == by_name["<router>"][0]
        assert by_name["a"][1] == by_name["b"][1] == by_name["router-failover"][0]


class TestStructuredJson:
    class Answer(BaseModel):
        value: int

    @pytest.mark.parametrize("method", ["json_schema", "json_mode"])
    def test_json_methods_send_response_format_and_parse(self, method: str) -> None:
        b = ScriptedChat(replies=['{"value": 7}'])
        router = router_of(ScriptedChat(replies=[http_error(500)]), b)
        assert router.with_structured_output(self.Answer, method=method).invoke("q") == self.Answer(
            value=7
        )
        fmt = b.kwargs()["response_format"]
        assert fmt["type"] == ("json_schema" if method == "json_schema" else "json_object")
        if method == "json_schema":
            assert fmt["json_schema"]["schema"]["properties"]["value"]["type"] == "integer"

    def test_include_raw_keeps_the_parsing_error(self) -> None:
        router = router_of(ScriptedChat(replies=["not json"]))
        out = router.with_structured_output(
            self.Answer, method="json_mode", include_raw=True
        ).invoke("q")
        assert out["parsed"] is None and out["parsing_error"] is not None
        assert out["raw"].content == "not json"

    def test_unknown_method(self) -> None:
        with pytest.raises(ConfigurationError, match="method"):
            router_of(ScriptedChat()).with_structured_output(self.Answer, method="xml")


class TestUnknownErrors:
    def test_unknown_errors_try_each_deployment_once_then_raise(self) -> None:
        a = ScriptedChat(replies=[KeyError("choices")])
        b = ScriptedChat(replies=[TypeError("NoneType")])
        router = router_of(a, b, deadline=30)
        t0 = time.time()
        with pytest.raises(NoDeploymentAvailableError) as ei:
            router.invoke("q")
        # each tried once, then raised: not retried until the 30 s deadline
        assert time.time() - t0 < 10.0 and len(a.calls) == len(b.calls) == 1
        assert isinstance(ei.value.errors["a"], KeyError)

    def test_length_limit_while_parsing_raises_at_once(self) -> None:
        from openai.types import CompletionUsage

        err = openai.LengthFinishReasonError(
            completion=type(
                "C",
                (),
                {"usage": CompletionUsage(completion_tokens=5, prompt_tokens=5, total_tokens=10)},
            )()
        )
        b = ScriptedChat(replies=["b"])
        router = router_of(ScriptedChat(replies=[err]), b)
        with pytest.raises(openai.LengthFinishReasonError):
            router.invoke("q")
        assert b.calls == []
