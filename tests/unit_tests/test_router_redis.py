"""RedisStore against a real ``redis-server`` on 127.0.0.1 (started and stopped here).

Skipped only when the ``redis-server`` binary or the ``redis`` client is absent.
Two routers sharing one store stand for two worker processes sharing a quota.
"""

from __future__ import annotations

import shutil
import time

import pytest

from langchain_moa.router import Deployment, InMemoryStore, ProviderRouter, RedisStore
from langchain_moa.router._health import HealthConfig, claim
from tests.unit_tests import router_fakes as _rf
from tests.unit_tests.moa_fakes import ScriptedChat
from tests.unit_tests.router_fakes import (
    TimedChat,
    rate_limited,
)

redis = pytest.importorskip("redis")
pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server binary not installed"
)

redis_client = _rf.redis_client  # the fixture


@pytest.fixture
def store(redis_client: object, request: pytest.FixtureRequest) -> RedisStore:
    s = RedisStore(redis_client, prefix=f"test-{request.node.name}:")
    s.reset()
    return s


@pytest.mark.parametrize("make", ["memory", "redis"])
def test_gcra_semantics_match_in_memory(make: str, redis_client: object) -> None:
    s = InMemoryStore() if make == "memory" else RedisStore(redis_client, prefix="cmp:")
    s.reset()
    assert s.limits_admit([("rpm:x", 1.0)], [], 0.0) == (0.0, -1)
    wait, i = s.limits_admit([("rpm:x", 1.0)], [], 0.5)
    assert i == 0 and wait == pytest.approx(0.498, abs=1e-5)  # 2 ms before the slot
    assert s.limits_admit([("rpm:x", 1.0)], [], 1.0) == (0.0, -1)
    # all or nothing: the full slot refuses, the schedule does not move
    assert s.limits_admit([("tpm:x", 0.9)], [("inflight:x", 1)], 2.0) == (0.0, -1)
    wait, i = s.limits_admit([("tpm:y", 0.1)], [("inflight:x", 1)], 2.0)
    assert (wait, i) == (-1.0, 1)
    assert s.limits_admit([("tpm:y", 0.1)], [], 2.0) == (0.0, -1)
    s.limits_adjust("tpm:x", -0.7)  # reconciled: 0.2 s of the schedule, not 0.9
    assert s.limits_admit([("tpm:x", 0.1)], [], 2.2) == (0.0, -1)


def test_redis_admission_is_one_round_trip_and_o1(redis_client: object) -> None:
    # issue 7: the old script read every entry of the 60 s log on each admission
    s = RedisStore(redis_client, prefix="o1:")
    s.reset()
    for i in range(3_000):
        assert s.limits_admit([("rpm:x", 1e-6)], [("inflight:x", None)], 100.0 + i * 1e-3)[1] == -1
    keys = sorted(k.decode() for k in redis_client.keys("o1:*"))  # type: ignore[attr-defined]
    assert keys == ["o1:gcra:rpm:x", "o1:slot:inflight:x"]  # one value per limit, no log


def test_slots_and_health(store: RedisStore) -> None:
    assert store.slot_acquire("inflight:a", 2) and store.slot_acquire("inflight:a", 2)
    assert not store.slot_acquire("inflight:a", 2)
    assert store.slot_count("inflight:a") == 2
    store.slot_release("inflight:a")
    assert store.slot_acquire("inflight:a", 2)
    cfg = HealthConfig()
    store.health_update("a", lambda r: ({"state": "open", "until": 0.0}, None))
    first = store.health_update("a", lambda r: claim(r, 1.0, cfg))
    second = store.health_update("a", lambda r: claim(r, 1.0, cfg))
    assert first[0] and first[3]  # the probe
    assert not second[0] and "probe in flight" in second[1]
    assert store.health_get("a")["state"] == "half-open"


def test_two_routers_share_a_retry_after_window(store: RedisStore) -> None:
    a1 = TimedChat(replies=[rate_limited(retry_after_ms="500")])
    a2 = TimedChat(replies=["a2"])
    r1 = ProviderRouter(
        deployments=[
            Deployment(llm=a1, name="a"),
            Deployment(llm=ScriptedChat(replies=["b1"]), name="b"),
        ],
        store=store,
    )
    r2 = ProviderRouter(
        deployments=[
            Deployment(llm=a2, name="a"),
            Deployment(llm=ScriptedChat(replies=["b2"]), name="b"),
        ],
        store=store,
    )
    assert r1.invoke("q").content == "b1"
    assert r2.invoke("q").content == "b2"  # r2 never saw the 429, the store did
    assert a2.times == [] and r2.stats()["a"]["state"] == "cooling"
    time.sleep(0.55)
    assert r2.invoke("q").content == "a2"


def test_two_routers_share_one_rpm_quota(store: RedisStore) -> None:
    a1, a2 = TimedChat(replies=["1"]), TimedChat(replies=["2"])
    kw = {"limit_window": 1.0, "store": store}
    r1 = ProviderRouter(deployments=[Deployment(llm=a1, name="a", rpm=10)], **kw)
    r2 = ProviderRouter(deployments=[Deployment(llm=a2, name="a", rpm=10)], **kw)
    for _ in range(3):
        r1.invoke("q")
        r2.invoke("q")
    ts = sorted(a1.times + a2.times)
    gaps = [y - x for x, y in zip(ts, ts[1:], strict=False)]
    # one shared pace of 10/s (two separate routers would each allow 10/s: gaps ~0);
    # admissions are >= 0.1 s apart, measured at the models (15 ms of call jitter)
    assert min(gaps) >= 0.085, gaps
