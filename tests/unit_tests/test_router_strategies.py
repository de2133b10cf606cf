"""Strategies' ordering, seeded weighted random, decision metadata, stats and pricing."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from langchain_moa.errors import ConfigurationError
from langchain_moa.pricing import cost_usd, price_of
from langchain_moa.router import Deployment, ProviderRouter
from langchain_moa.router._stats import percentile
from tests.unit_tests.moa_fakes import ScriptedChat
from tests.unit_tests.router_fakes import http_error, rate_limited


def named(*names: str, **kw: dict) -> list[Deployment]:
    return [
        Deployment(llm=ScriptedChat(replies=[n], model_name=n), name=n, **kw.get(n, {}))
        for n in names
    ]


def order(msg) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        c["deployment"]
        for c in msg.response_metadata["router"]["candidates"]
        if c["skipped"] is None
    ]


class TestStrategies:
    def test_priority_then_list_order(self) -> None:
        r = ProviderRouter(deployments=named("a", "b", "c", b={"priority": -1}))
        msg = r.invoke("q")
        assert msg.content == "b" and order(msg) == ["b", "a", "c"]

    def test_cost_uses_prompt_and_max_tokens(self) -> None:
        deps = named(
            "pricey",
            "cheap_in",
            "cheap_out",
            pricey={"price_in": 5.0, "price_out": 15.0},
            cheap_in={"price_in": 0.01, "price_out": 10.0},
            cheap_out={"price_in": 1.0, "price_out": 0.5},
        )
        r = ProviderRouter(deployments=deps, strategy="cost")
        # long answer expected: output price dominates
        assert order(r.invoke("q", max_tokens=2000)) == ["cheap_out", "cheap_in", "pricey"]
        # huge prompt, 1-token answer: input price dominates
        assert order(r.invoke("word " * 4000, max_tokens=1)) == ["cheap_in", "cheap_out", "pricey"]

    def test_cost_scores_are_explained_and_unknown_price_is_last(self) -> None:
        deps = named("unknown", "known", known={"price_in": 1.0, "price_out": 2.0})
        msg = ProviderRouter(deployments=deps, strategy="cost").invoke("q", max_tokens=100)
        cands = msg.response_metadata["router"]["candidates"]
        assert [c["deployment"] for c in cands] == ["known", "unknown"]
        assert cands[0]["score"] == pytest.approx(cands[0]["score"])
        assert "expected $" in cands[0]["note"] and cands[1]["note"] == "price unknown"
        assert cands[1]["score"] is None  # inf is reported as None (JSON-safe)

    def test_cost_from_price_table_for_model_strings(self) -> None:
        d = Deployment(model="openai/gpt-4o-mini")
        assert d.prices() == (0.15, 0.60)
        assert Deployment(model="llamacpp/qwen").prices() == (0.0, 0.0)
        assert Deployment(model="openai/gpt-4o-mini", price_in=1.0).prices() == (1.0, 0.60)

    def test_latency_explores_untried_then_prefers_fastest(self) -> None:
        slow = ScriptedChat(replies=["slow"], delay=0.3)
        fast = ScriptedChat(replies=["fast"], delay=0.0)
        r = ProviderRouter(
            deployments=[Deployment(llm=slow, name="slow"), Deployment(llm=fast, name="fast")],
            strategy="latency",
        )
        assert r.invoke("q").content == "slow"  # untried, list order
        assert r.invoke("q").content == "fast"  # fast untried -> explored
        for _ in range(3):
            msg = r.invoke("q")
            assert msg.content == "fast"
        notes = [c["note"] for c in msg.response_metadata["router"]["candidates"]]
        assert all(n.startswith("EWMA latency") for n in notes)

    def test_latency_uses_ttft_when_streaming(self) -> None:
        r = ProviderRouter(deployments=named("a", "b"), strategy="latency")
        list(r.stream("q"))
        st = r.stats()["a"]
        assert st["ewma_ttft_s"] is not None

    def test_weighted_is_seedable(self) -> None:
        def picks(seed: int) -> list[str]:
            r = ProviderRouter(deployments=named("a", "b", "c"), strategy="weighted", seed=seed)
            return [r.invoke("q").content for _ in range(20)]

        assert picks(7) == picks(7)
        assert picks(7) != picks(8)

    def test_weighted_follows_weights(self) -> None:
        r = ProviderRouter(
            deployments=named("a", "b", a={"weight": 3.0}, b={"weight": 1.0}),
            strategy="weighted",
            seed=1,
        )
        counts = Counter(r.invoke("q").content for _ in range(400))
        assert 0.68 < counts["a"] / 400 < 0.82  # expected 0.75

    async def test_least_busy_spreads_concurrent_requests(self) -> None:
        a = ScriptedChat(replies=["a"], delay=0.1)
        b = ScriptedChat(replies=["b"], delay=0.1)
        r = ProviderRouter(
            deployments=[Deployment(llm=a, name="a"), Deployment(llm=b, name="b")],
            strategy="least-busy",
        )
        out = await asyncio.gather(*[r.ainvoke("q") for _ in range(6)])
        assert Counter(m.content for m in out) == {"a": 3, "b": 3}

    def test_strategy_per_call(self) -> None:
        deps = named(
            "a", "b", a={"price_in": 9.0, "price_out": 9.0}, b={"price_in": 0.1, "price_out": 0.1}
        )
        r = ProviderRouter(deployments=deps)
        assert r.invoke("q").content == "a"
        assert r.invoke("q", strategy="cost").content == "b"
        with pytest.raises(ConfigurationError, match="strategy"):
            r.invoke("q", strategy="vibes")


class TestDecisionAndStats:
    def test_decision_metadata_explains_skips_and_attempts(self) -> None:
        a = ScriptedChat(replies=[rate_limited(retry_after="30")])
        r = ProviderRouter(deployments=[Deployment(llm=a, name="a"), *named("b")])
        r.invoke("q")
        msg = r.invoke("q")
        info = msg.response_metadata["router"]
        assert info["deployment"] == "b" and info["strategy"] == "priority"
        skipped = {c["deployment"]: c["skipped"] for c in info["candidates"]}
        assert skipped["a"].startswith("cooling down") and "Retry-After 30" in skipped["a"]
        assert skipped["b"] is None
        json.dumps(info)  # JSON-serialisable for history / traces

    def test_stats(self) -> None:
        a = ScriptedChat(replies=[http_error(500), "ok"], input_tokens=1000, output_tokens=500)
        r = ProviderRouter(deployments=[Deployment(llm=a, name="a", price_in=2.0, price_out=4.0)])
        for _ in range(3):
            r.invoke("q")
        st = r.stats()["a"]
        assert (st["successes"], st["failures"]) == (3, 1)
        assert st["failures_by_kind"] == {"server": 1}
        assert st["spend_usd"] == pytest.approx(3 * (1000 * 2.0 + 500 * 4.0) / 1e6)
        assert st["tokens"] == 4500 and st["state"] == "healthy" and st["in_flight"] == 0
        assert st["latency_p50_s"] is not None and st["latency_p95_s"] >= st["latency_p50_s"]
        assert r.invoke("q").response_metadata["router"]["cost_usd"] == pytest.approx(0.004)

    def test_percentile_nearest_rank(self) -> None:
        xs = [float(i) for i in range(1, 101)]
        assert percentile(xs, 50) == 50.0 and percentile(xs, 95) == 95.0
        assert percentile([3.0], 95) == 3.0 and percentile([], 50) is None

    def test_enable_puts_a_disabled_deployment_back(self) -> None:
        a = ScriptedChat(replies=[http_error(401), "a"])
        r = ProviderRouter(deployments=[Deployment(llm=a, name="a"), *named("b")])
        r.invoke("q")
        assert r.stats()["a"]["state"] == "disabled"
        r.enable("a")
        assert r.invoke("q").content == "a"


class TestPricing:
    def test_known_and_unknown(self) -> None:
        assert cost_usd("openai/gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
        assert cost_usd("openai:gpt-4o-mini", 1000, 0) == pytest.approx(0.00015)
        assert cost_usd("gpt-4o-mini", 0, 1000) == pytest.approx(0.0006)
        assert cost_usd("ollama/llama3.2", 10**6, 10**6) == 0.0
        assert cost_usd("acme/mystery", 1, 1) is None

    def test_custom_table_wins(self) -> None:
        assert price_of("openai/gpt-4o-mini", {"openai/gpt-4o-mini": (1.0, 2.0)}) == (1.0, 2.0)

    def test_negative_tokens_rejected(self) -> None:
        with pytest.raises(ConfigurationError, match="input_tokens"):
            cost_usd("openai/gpt-4o", -1, 0)


class TestLogicalModels:
    def test_router_from_logical_model(self) -> None:
        r = ProviderRouter.from_logical_model(
            "llama-3.1-8b",
            ["groq", "together"],
            deployment_kwargs={"groq": {"rpm": 30}},
            strategy="cost",
        )
        assert [d.model for d in r.deployments] == [
            "groq/llama-3.1-8b-instant",
            "together/meta-llama/Llama-3.1-8B-Instruct-Turbo",
        ]
        assert r.deployments[0].rpm == 30
        # cost ranking reads the price table: groq is cheaper for this model
        assert r.deployments[0].prices() == (0.05, 0.08)

    def test_unknown_logical_model_or_provider(self) -> None:
        with pytest.raises(ConfigurationError, match="unknown logical model"):
            ProviderRouter.from_logical_model("gpt-17")
        with pytest.raises(ConfigurationError, match="no id on providers"):
            ProviderRouter.from_logical_model("gpt-4o-mini", ["groq"])

    def test_register_logical_model(self) -> None:
        from langchain_moa.providers import (
            LOGICAL_MODELS,
            register_logical_model,
            resolve_logical_model,
        )

        register_logical_model("tiny-test", {"ollama": "qwen2.5:0.5b", "vllm": "Qwen/Qwen2.5-0.5B"})
        try:
            assert resolve_logical_model("tiny-test") == [
                "ollama/qwen2.5:0.5b",
                "vllm/Qwen/Qwen2.5-0.5B",
            ]
            with pytest.raises(ConfigurationError, match="unknown providers"):
                register_logical_model("bad", {"nope": "x"})
        finally:
            LOGICAL_MODELS.pop("tiny-test", None)


def test_dated_snapshot_ids_cost_like_their_alias() -> None:
    assert price_of("gpt-4o-mini-2024-07-18") == (0.15, 0.60)
    assert price_of("openai/gpt-4o-2024-08-06") == (2.50, 10.00)
    assert price_of("mystery-20240101") is None
