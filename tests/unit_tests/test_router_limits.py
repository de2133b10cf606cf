"""RPM / TPM / concurrency limiting: window arithmetic on a fake clock, then queueing
through a real router (requests wait, none fail)."""

from __future__ import annotations

import asyncio
import time

import pytest

from langchain_moa.errors import ConfigurationError
from langchain_moa.router import Deployment, InMemoryStore, Limits, ProviderRouter
from langchain_moa.router._limits import try_acquire
from langchain_moa.router._store import window_decision
from tests.unit_tests import router_fakes as _rf
from tests.unit_tests.moa_fakes import Gauge, ScriptedChat
from tests.unit_tests.router_fakes import (
    TimedChat,
)

redis_client = _rf.redis_client  # the fixture


class TestWindow:
    def test_pacing_spreads_requests_evenly(self) -> None:
        store = InMemoryStore()
        t = 0.0
        admitted = []
        # 60 per 60 s: one per second
        while len(admitted) < 5:
            rid, wait = store.window_acquire("rpm:x", 1, 60, 60.0, t)
            if rid:
                admitted.append(t)
            else:
                t += wait
        assert admitted == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])

    def test_window_is_a_hard_cap_without_pacing(self) -> None:
        store = InMemoryStore()
        for _ in range(3):
            assert store.window_acquire("rpm:x", 1, 3, 60.0, 0.0, pace=False)[0]
        rid, wait = store.window_acquire("rpm:x", 1, 3, 60.0, 10.0, pace=False)
        assert rid is None and wait == pytest.approx(50.0)
        assert store.window_acquire("rpm:x", 1, 3, 60.0, 60.0, pace=False)[0]

    def test_tokens_wait_for_enough_to_expire(self) -> None:
        # 100 tokens/60 s; 60 at t=0, 30 at t=10 -> a 50-token request needs the first to expire
        entries = [(0.0, 60.0), (10.0, 30.0)]
        assert window_decision(entries, 50, 100, 60.0, 20.0, pace=False) == pytest.approx(40.0)
        assert window_decision(entries, 10, 100, 60.0, 20.0, pace=False) == 0.0

    def test_oversized_request_admitted_only_alone(self) -> None:
        assert window_decision([], 500, 100, 60.0, 0.0, pace=False) == 0.0
        assert window_decision([(0.0, 1.0)], 500, 100, 60.0, 1.0, pace=False) == pytest.approx(59.0)

    def test_reconcile_lowers_the_reservation(self) -> None:
        store = InMemoryStore()
        rid, _ = store.window_acquire("tpm:x", 90, 100, 60.0, 0.0, pace=False)
        assert store.window_acquire("tpm:x", 50, 100, 60.0, 1.0, pace=False)[0] is None
        store.window_adjust("tpm:x", rid, 20)  # real usage was 20 tokens
        assert store.window_acquire("tpm:x", 50, 100, 60.0, 1.0, pace=False)[0] is not None

    def test_tpm_pacing_is_proportional_to_tokens(self) -> None:
        store = InMemoryStore()
        assert store.window_acquire("tpm:x", 500, 6000, 60.0, 0.0)[0]
        rid, wait = store.window_acquire("tpm:x", 10, 6000, 60.0, 0.0)
        assert rid is None and wait == pytest.approx(5.0)  # 500 tokens at 100 tokens/s


class TestAcquire:
    def test_all_or_nothing_across_scopes(self) -> None:
        store = InMemoryStore()
        scopes = [("router", Limits(rpm=100)), ("a", Limits(max_concurrency=1))]
        lease, wait, _ = try_acquire(store, scopes, 10, 0.0)
        assert lease is not None
        lease2, wait2, why = try_acquire(store, scopes, 10, 1.0)
        assert lease2 is None and "max_concurrency" in why and wait2 > 0
        # the router-scope RPM reservation of the refused request was refunded
        assert len(store._windows["rpm:router"]) == 1
        lease.release()
        assert try_acquire(store, scopes, 10, 2.0)[0] is not None

    def test_in_flight_is_counted_without_limit(self) -> None:
        store = InMemoryStore()
        lease, _, _ = try_acquire(store, [("a", Limits())], 1, 0.0)
        assert store.slot_count("inflight:a") == 1
        lease.release()
        assert store.slot_count("inflight:a") == 0

    @pytest.mark.parametrize("kw", [{"rpm": 0}, {"tpm": -1}, {"max_concurrency": 0}, {"window": 0}])
    def test_bad_limits_name_the_parameter(self, kw: dict) -> None:
        with pytest.raises(ConfigurationError, match=next(iter(kw))):
            Limits(**kw)


class TestRouterQueues:
    def test_rpm_requests_queue_and_are_paced(self) -> None:
        llm = TimedChat(replies=["ok"])
        # 10 requests per 1-second window -> one every 0.1 s
        router = ProviderRouter(
            deployments=[Deployment(llm=llm, name="a", rpm=10)], limit_window=1.0, deadline=5.0
        )
        t0 = time.time()
        out = router.batch(["q"] * 12, config={"max_concurrency": 12})
        assert all(m.content == "ok" for m in out)
        gaps = [b - a for a, b in zip(sorted(llm.times), sorted(llm.times)[1:], strict=False)]
        # paced at 0.1 s (measured at the model, so allow scheduling jitter)
        assert min(gaps) >= 0.05 and sum(gaps) / len(gaps) >= 0.095
        assert time.time() - t0 >= 1.0
        # never more than 10 in any 1-second window (0.9 s: jitter margin)
        ts = sorted(llm.times)
        assert all(sum(1 for u in ts if t <= u < t + 0.9) <= 10 for t in ts)

    async def test_router_wide_rpm_spans_deployments(self) -> None:
        a, b = TimedChat(replies=["a"]), TimedChat(replies=["b"])
        router = ProviderRouter(
            deployments=[Deployment(llm=a, name="a"), Deployment(llm=b, name="b")],
            rpm=20,
            limit_window=1.0,
            strategy="least-busy",
        )
        await asyncio.gather(*[router.ainvoke("q") for _ in range(10)])
        ts = sorted(a.times + b.times)
        assert len(ts) == 10
        gaps = [y - x for x, y in zip(ts, ts[1:], strict=False)]
        # 20 per s -> 0.05 s apart (measured at the models: allow scheduling jitter)
        assert min(gaps) >= 0.02 and sum(gaps) / len(gaps) >= 0.045

    async def test_concurrency_limit_queues(self) -> None:
        gauge = Gauge()
        llm = ScriptedChat(replies=["ok"], delay=0.1, gauge=gauge)
        router = ProviderRouter(deployments=[Deployment(llm=llm, name="a", max_concurrency=2)])
        out = await asyncio.gather(*[router.ainvoke("q") for _ in range(6)])
        assert len(out) == 6 and gauge.peak == 2 and gauge.total == 6

    def test_limited_deployment_is_passed_over_for_one_with_capacity(self) -> None:
        a, b = TimedChat(replies=["a"]), TimedChat(replies=["b"])
        router = ProviderRouter(
            deployments=[Deployment(llm=a, name="a", rpm=1), Deployment(llm=b, name="b")],
            limit_window=60.0,
        )
        first, second = router.invoke("q"), router.invoke("q")
        assert (first.content, second.content) == ("a", "b")
        skips = [
            x for x in second.response_metadata["router"]["attempts"] if x["outcome"] == "skipped"
        ]
        assert skips and "rpm limit" in skips[0]["reason"]

    def test_tpm_reserves_estimate_then_reconciles_with_usage(self) -> None:
        llm = ScriptedChat(replies=["ok"], input_tokens=7, output_tokens=3)
        store = InMemoryStore()
        router = ProviderRouter(
            deployments=[Deployment(llm=llm, name="a", tpm=100_000)], store=store, max_tokens=500
        )
        router.invoke("hello there")
        ((t, amount),) = store._windows["tpm:a"].values()
        assert amount == 10  # 7 + 3 real tokens, not the 500+ estimate

    def test_queue_time_does_not_count_against_deadline(self) -> None:
        llm = TimedChat(replies=["ok"])
        router = ProviderRouter(
            deployments=[Deployment(llm=llm, name="a", rpm=2)], limit_window=1.0, deadline=0.3
        )
        out = router.batch(["q"] * 4, config={"max_concurrency": 4})  # needs ~1.5 s of queueing
        assert [m.content for m in out] == ["ok"] * 4
        assert max(m.response_metadata["router"]["queued_s"] for m in out) > 0.3


class TestSlotWakeups:
    def test_waiters_are_woken_when_a_slot_frees(self) -> None:
        llm = ScriptedChat(replies=["ok"], delay=0.05)
        router = ProviderRouter(deployments=[Deployment(llm=llm, name="a", max_concurrency=1)])
        t0 = time.time()
        out = router.batch(["q"] * 6, config={"max_concurrency": 6})
        elapsed = time.time() - t0
        assert len(out) == 6
        # 6 x 0.05 s back to back; polling alone (0.25 s) would need > 1 s
        assert elapsed < 1.1, elapsed
        # a queued request's decision records the skip once, with a count
        skips = [
            a
            for m in out
            for a in m.response_metadata["router"]["attempts"]
            if a["outcome"] == "skipped"
        ]
        assert all(s["count"] >= 1 for s in skips)
        assert max(len(m.response_metadata["router"]["attempts"]) for m in out) <= 2

    async def test_async_waiters_are_woken(self) -> None:
        llm = ScriptedChat(replies=["ok"], delay=0.05)
        router = ProviderRouter(deployments=[Deployment(llm=llm, name="a", max_concurrency=1)])
        t0 = time.time()
        await asyncio.gather(*[router.ainvoke("q") for _ in range(6)])
        assert time.time() - t0 < 1.1


@pytest.fixture(params=["memory", "redis"])
def any_store(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    if request.param == "memory":
        return InMemoryStore()
    client = request.getfixturevalue("redis_client")
    from langchain_moa.router import RedisStore

    store = RedisStore(client, prefix=f"pace-{request.node.name}:")
    store.reset()
    return store


class TestPaceSchedule:
    def test_late_admission_is_made_up_for(self, any_store) -> None:  # type: ignore[no-untyped-def]
        # one per second; the 2nd is admitted 0.2 s late, the 3rd may come 0.8 s later
        assert any_store.window_acquire("rpm:x", 1, 60, 60.0, 0.0)[0]
        assert any_store.window_acquire("rpm:x", 1, 60, 60.0, 1.2)[0]
        rid, wait = any_store.window_acquire("rpm:x", 1, 60, 60.0, 1.9)
        assert rid is None and wait == pytest.approx(0.1)
        assert any_store.window_acquire("rpm:x", 1, 60, 60.0, 2.0)[0]

    def test_catch_up_is_bounded_by_a_quarter_interval(self, any_store) -> None:  # type: ignore[no-untyped-def]
        assert any_store.window_acquire("rpm:x", 1, 60, 60.0, 0.0)[0]
        assert any_store.window_acquire("rpm:x", 1, 60, 60.0, 5.0)[0]  # idle: no credit
        rid, wait = any_store.window_acquire("rpm:x", 1, 60, 60.0, 5.5)
        assert rid is None and wait == pytest.approx(0.25)

    def test_release_restores_the_schedule(self, any_store) -> None:  # type: ignore[no-untyped-def]
        assert any_store.window_acquire("rpm:x", 1, 60, 60.0, 0.0)[0]
        rid, _ = any_store.window_acquire("rpm:x", 1, 60, 60.0, 1.0)
        any_store.window_release("rpm:x", rid)  # never sent
        assert any_store.window_acquire("rpm:x", 1, 60, 60.0, 1.0)[0]

    def test_reconcile_moves_the_schedule(self, any_store) -> None:  # type: ignore[no-untyped-def]
        rid, _ = any_store.window_acquire("tpm:x", 600, 6000, 60.0, 0.0)  # 6 s of tokens
        any_store.window_adjust("tpm:x", rid, 100)  # really 100 tokens: 1 s
        r2, wait = any_store.window_acquire("tpm:x", 10, 6000, 60.0, 0.5)
        assert r2 is None and wait == pytest.approx(0.5)
        assert any_store.window_acquire("tpm:x", 10, 6000, 60.0, 1.0)[0]
