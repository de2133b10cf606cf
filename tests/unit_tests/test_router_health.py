"""Error classification, Retry-After parsing and the health transition table (pure functions)."""

from __future__ import annotations

import email.utils

import openai
import pytest
from langchain_core import exceptions as lc_exc

from langchain_moa.errors import MissingAPIKeyError
from langchain_moa.router import classify_error, parse_retry_after
from langchain_moa.router._health import (
    ErrorInfo,
    Event,
    HealthConfig,
    claim,
    record_failure,
    record_success,
    settle,
    state_of,
    transition,
    unclaim,
)
from tests.unit_tests.router_fakes import (
    connection_error,
    context_error,
    http_error,
    rate_limited,
    timeout_error,
)

NOW = 1_700_000_000.0


class TestRetryAfter:
    def test_integer_seconds(self) -> None:
        assert parse_retry_after({"Retry-After": "7"}) == 7.0

    def test_fractional_seconds(self) -> None:
        assert parse_retry_after({"retry-after": "1.5"}) == 1.5

    def test_http_date(self) -> None:
        date = email.utils.formatdate(NOW + 30, usegmt=True)
        assert parse_retry_after({"Retry-After": date}, now=NOW) == pytest.approx(30, abs=1)

    def test_http_date_in_the_past_is_zero(self) -> None:
        date = email.utils.formatdate(NOW - 300, usegmt=True)
        assert parse_retry_after({"Retry-After": date}, now=NOW) == 0.0

    def test_ms_header_wins(self) -> None:
        assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25

    def test_case_insensitive(self) -> None:
        assert parse_retry_after({"RETRY-AFTER-MS": "1500"}) == 1.5

    @pytest.mark.parametrize("value", ["soon", "-3", "", "nan"])
    def test_garbage_is_none(self, value: str) -> None:
        assert parse_retry_after({"Retry-After": value}) is None

    def test_absent_is_none(self) -> None:
        assert parse_retry_after({}) is None
        assert parse_retry_after(None) is None


class TestClassify:
    def test_429_with_retry_after_from_real_sdk_error(self) -> None:
        info = classify_error(rate_limited(retry_after="3"))
        assert (info.kind, info.status, info.retry_after) == ("rate_limit", 429, 3.0)

    def test_429_with_retry_after_ms(self) -> None:
        assert classify_error(rate_limited(retry_after_ms="120")).retry_after == pytest.approx(0.12)

    def test_429_without_header(self) -> None:
        info = classify_error(rate_limited())
        assert info.kind == "rate_limit" and info.retry_after is None

    @pytest.mark.parametrize(
        ("status", "kind"),
        [
            (500, "server"),
            (502, "server"),
            (503, "server"),
            (401, "auth"),
            (403, "auth"),
            (404, "not_found"),
            (400, "bad_request"),
            (422, "bad_request"),
            (408, "timeout"),
        ],
    )
    def test_status_codes(self, status: int, kind: str) -> None:
        assert classify_error(http_error(status)).kind == kind

    def test_context_length(self) -> None:
        assert classify_error(context_error()).kind == "context_length"

    @pytest.mark.parametrize(
        ("error", "kind", "status"),
        [
            (lc_exc.ModelRateLimitError, "rate_limit", 429),
            (lc_exc.ModelAuthenticationError, "auth", 401),
            (lc_exc.ModelPermissionDeniedError, "auth", 403),
            (lc_exc.ModelNotFoundError, "not_found", 404),
            (lc_exc.ModelAPIError, "server", 500),
            (lc_exc.ModelInvalidRequestError, "bad_request", 400),
        ],
    )
    def test_langchain_standard_errors(self, error: type, kind: str, status: int) -> None:
        info = classify_error(error("boom"))
        assert (info.kind, info.status) == (kind, status)

    def test_context_length_from_langchain_standard_error(self) -> None:
        assert classify_error(lc_exc.ContextOverflowError("too long")).kind == "context_length"

    def test_timeout_and_connection(self) -> None:
        assert classify_error(timeout_error()).kind == "timeout"
        assert classify_error(TimeoutError()).kind == "timeout"
        assert classify_error(connection_error()).kind == "connection"
        assert classify_error(ConnectionResetError()).kind == "connection"

    def test_malformed(self) -> None:
        import json

        try:
            json.loads("{not json")
        except json.JSONDecodeError as e:
            assert classify_error(e).kind == "malformed"

    def test_missing_key_is_auth(self) -> None:
        info = classify_error(MissingAPIKeyError("set GROQ_API_KEY", env_var="GROQ_API_KEY"))
        assert info.kind == "auth" and "GROQ_API_KEY" in info.message

    def test_unknown(self) -> None:
        assert classify_error(ValueError("boom")).kind == "unknown"

    def test_sdk_error_is_the_real_type(self) -> None:
        assert isinstance(rate_limited(), openai.RateLimitError)


@pytest.mark.parametrize(
    "error",
    [
        lc_exc.ModelRateLimitError("x"),
        lc_exc.ModelAPIError("x"),
        lc_exc.ModelTimeoutError("x"),
        lc_exc.ModelConnectionError("x"),
        lc_exc.ModelAuthenticationError("x"),
        lc_exc.ModelPermissionDeniedError("x"),
        lc_exc.ModelNotFoundError("x"),
        lc_exc.ModelInvalidRequestError("x"),
        lc_exc.ContextOverflowError("x"),
        lc_exc.ModelRefusalError("x"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_router_and_model_retry_middleware_agree_on_what_is_retryable(error: Exception) -> None:
    """LangChain v1's ModelRetryMiddleware retries a ModelError when ``is_retryable``;
    the router retries / cools down exactly the kinds that stand for those."""
    middleware = pytest.importorskip("langchain.agents.middleware")
    retry_on = middleware.ModelRetryMiddleware().retry_on
    transient = {"rate_limit", "server", "timeout", "connection", "malformed"}
    assert (classify_error(error).kind in transient) == retry_on(error)


def test_router_errors_are_langchain_standard_types() -> None:
    from langchain_moa.errors import InvalidRequestError, StreamInterruptedError

    middleware = pytest.importorskip("langchain.agents.middleware")
    retry_on = middleware.ModelRetryMiddleware().retry_on
    assert not retry_on(InvalidRequestError("bad prompt"))
    assert retry_on(StreamInterruptedError("cut", deployment="a"))
    assert classify_error(InvalidRequestError("x")).kind == "bad_request"


CFG = HealthConfig(
    failure_threshold=3,
    circuit_cooldown=10.0,
    rate_limit_initial=1.0,
    rate_limit_max=8.0,
    probe_timeout=60.0,
)


def err(kind: str, retry_after: float | None = None) -> ErrorInfo:
    status = {"server": 500, "rate_limit": 429, "auth": 401, "bad_request": 400}.get(kind)
    return ErrorInfo(kind, status, retry_after, f"{kind} error")


# ----------------------------------------------------------------- the transition table
# Records as they stand at NOW (the names say what they are).
RECORDS: dict[str, dict] = {
    "healthy": {},
    "healthy, 2 failures": {"failures": 2},
    "cooling 5 s": {"state": "cooling", "until": NOW + 5, "rate_limits": 1, "reason": "429"},
    "cooling 30 s, 2 failures": {"state": "cooling", "until": NOW + 30, "failures": 2},
    "cooling 5 s, 2 failures": {"state": "cooling", "until": NOW + 5, "failures": 2},
    "open 10 s": {"state": "open", "until": NOW + 10, "failures": 3, "opens": 1},
    "half-open": {"state": "open", "until": NOW - 1, "failures": 3, "opens": 1},
    "half-open, probe out": {"state": "half-open", "probe_at": NOW - 1, "failures": 3},
    "disabled": {"state": "disabled", "reason": "bad key"},
}
EVENTS: dict[str, Event] = {
    "sent": Event.sent(),
    "sent probe": Event.sent(probe=True),
    "succeeded": Event.succeeded(),
    "probe succeeded": Event.succeeded(probe=True),
    "500": Event.failed(err("server")),
    "probe 500": Event.failed(err("server"), probe=True),
    "429 RA 2": Event.failed(err("rate_limit", 2.0)),
    "429 RA 30": Event.failed(err("rate_limit", 30.0)),
    "401": Event.failed(err("auth"), disable_reason="check GROQ_API_KEY"),
    "probe 400": Event.failed(err("bad_request"), probe=True),
    "probe lost": Event.probe_lost(),
    "enabled": Event.enabled(),
}
# (record, event) -> (displayed state, window end as seconds after NOW or None)
TABLE: list[tuple[str, str, str, float | None]] = [
    ("healthy", "sent", "healthy", None),
    ("healthy", "succeeded", "healthy", None),
    ("healthy", "500", "healthy", None),
    ("healthy", "429 RA 2", "cooling", 2),
    ("healthy", "429 RA 30", "cooling", 30),
    ("healthy", "401", "disabled", None),
    ("healthy", "probe 400", "healthy", None),
    ("healthy", "probe lost", "healthy", None),
    ("healthy, 2 failures", "500", "open", 10),
    ("healthy, 2 failures", "succeeded", "healthy", None),
    # defect 1: a success from a request sent before the 429 keeps the window
    ("cooling 5 s", "succeeded", "cooling", 5),
    ("cooling 5 s", "probe succeeded", "cooling", 5),
    ("cooling 5 s", "sent", "cooling", 5),
    ("cooling 5 s", "500", "cooling", 5),
    ("cooling 5 s", "429 RA 2", "cooling", 5),  # never shortened
    ("cooling 5 s", "429 RA 30", "cooling", 30),  # extended
    ("cooling 5 s", "401", "disabled", None),
    ("cooling 5 s", "enabled", "healthy", None),  # the operator's reset
    # defect 2: the circuit opens inside a longer Retry-After window and keeps it
    ("cooling 30 s, 2 failures", "500", "open", 30),
    ("cooling 5 s, 2 failures", "500", "open", 10),
    ("open 10 s", "sent", "open", 10),
    ("open 10 s", "succeeded", "open", 10),
    ("open 10 s", "probe succeeded", "open", 10),
    ("open 10 s", "500", "open", 10),
    ("open 10 s", "429 RA 2", "open", 10),
    ("open 10 s", "429 RA 30", "open", 30),
    ("open 10 s", "401", "disabled", None),
    ("half-open", "sent probe", "half-open", None),
    ("half-open", "succeeded", "half-open", None),  # only the probe's success closes
    ("half-open", "probe succeeded", "healthy", None),
    ("half-open", "500", "half-open", None),  # sent before the circuit opened
    ("half-open", "probe 500", "open", 10),
    ("half-open", "probe 400", "healthy", None),  # the server answered
    ("half-open", "429 RA 2", "cooling", 2),
    ("half-open, probe out", "sent probe", "half-open", None),
    ("half-open, probe out", "probe lost", "half-open", None),
    ("half-open, probe out", "probe succeeded", "healthy", None),
    ("half-open, probe out", "probe 500", "open", 10),
    ("half-open, probe out", "429 RA 30", "cooling", 30),
    ("disabled", "succeeded", "disabled", None),
    ("disabled", "probe succeeded", "disabled", None),
    ("disabled", "429 RA 30", "disabled", None),
    ("disabled", "500", "disabled", None),
    ("disabled", "enabled", "healthy", None),
]


@pytest.mark.parametrize(("record", "event", "state", "until"), TABLE)
def test_transition_table(record: str, event: str, state: str, until: float | None) -> None:
    new = transition(RECORDS[record], EVENTS[event], NOW, CFG)
    expected_until = None if until is None else NOW + until
    assert state_of(new, NOW) == (state, expected_until)


@pytest.mark.parametrize("record", list(RECORDS))
@pytest.mark.parametrize("event", [e for e in EVENTS if e != "enabled"])
def test_a_running_window_only_ever_moves_later(record: str, event: str) -> None:
    """Every (state, event) pair: no event but ``enabled`` shortens a running window."""
    old = settle(RECORDS[record], NOW)
    new = transition(RECORDS[record], EVENTS[event], NOW, CFG)
    if old.get("until") is not None and new.get("state") != "disabled":
        assert new.get("until") is not None and new["until"] >= old["until"]


@pytest.mark.parametrize("record", list(RECORDS))
@pytest.mark.parametrize("event", list(EVENTS))
def test_at_most_one_probe_claim(record: str, event: str) -> None:
    """``probe_at`` is set only by the probe's ``sent`` in half-open without a probe out,
    and an existing claim is never replaced by a transition."""
    old = settle(RECORDS[record], NOW)
    new = transition(RECORDS[record], EVENTS[event], NOW, CFG)
    if new.get("probe_at") is not None:
        assert new["state"] == "half-open"
        if old.get("probe_at") is None:
            assert event == "sent probe" and old.get("state") == "half-open"
        else:
            assert new["probe_at"] == old["probe_at"]


def test_every_table_row_is_a_known_pair() -> None:
    assert all(r in RECORDS and e in EVENTS for r, e, _, _ in TABLE)
    assert len({(r, e) for r, e, _, _ in TABLE}) == len(TABLE)


def test_defect_1_late_success_after_429_keeps_the_window() -> None:
    """a6952f6: 500, then 429 Retry-After 5, then a 200 from a request in flight reset the
    deployment to healthy; the next request went out 0.26 s after the 429."""
    rec, _ = record_failure({}, err("server"), NOW, CFG)
    rec, _ = record_failure(rec, err("rate_limit", 5.0), NOW + 0.1, CFG)
    rec, _ = record_success(rec, now=NOW + 0.2)
    assert state_of(rec, NOW + 0.36) == ("cooling", NOW + 5.1)
    _, c = claim(rec, NOW + 0.36, CFG)
    assert not c.allowed and c.ready_at == NOW + 5.1


def test_defect_2_opening_the_circuit_keeps_a_longer_retry_after() -> None:
    """a6952f6: 429 Retry-After 5, then 500s opened the circuit for 1 s: the probe went
    out 1.5 s after the 429."""
    cfg = HealthConfig(failure_threshold=1, circuit_cooldown=1.0)
    rec, _ = record_failure({}, err("rate_limit", 5.0), NOW, cfg)
    rec, state = record_failure(rec, err("server"), NOW + 0.1, cfg)
    assert state == "open" and state_of(rec, NOW + 1.5) == ("open", NOW + 5)
    assert not claim(rec, NOW + 1.5, cfg)[1].allowed


# ----------------------------------------------------------------- the gate (claim)
class TestClaim:
    def test_open_refuses_then_half_open_lets_exactly_one_probe(self) -> None:
        rec = RECORDS["open 10 s"]
        rec, c = claim(rec, NOW + 5, CFG)
        assert not c.allowed and "circuit open" in c.reason and c.ready_at == NOW + 10
        rec, c = claim(rec, NOW + 10.5, CFG)
        assert c.allowed and c.probe and c.at == NOW + 10.5
        rec, c2 = claim(rec, NOW + 10.6, CFG)
        assert not c2.allowed and "probe in flight" in c2.reason

    def test_probe_success_closes(self) -> None:
        rec, _ = claim(RECORDS["half-open"], NOW, CFG)
        rec, _ = record_success(rec, probe=True, now=NOW + 0.5)
        assert state_of(rec, NOW + 0.5) == ("healthy", None)
        assert claim(rec, NOW + 0.5, CFG)[1].allowed

    def test_unclaimed_probe_can_be_claimed_again(self) -> None:
        rec, c = claim(RECORDS["half-open"], NOW, CFG)
        rec, _ = unclaim(rec)
        rec, c2 = claim(rec, NOW, CFG)
        assert c.probe and c2.probe and c2.allowed

    def test_stale_probe_counts_as_lost(self) -> None:
        rec, c = claim(RECORDS["half-open"], NOW, CFG, stale_after=60)
        _, late = claim(rec, NOW + 59, CFG, stale_after=60)
        rec, taken = claim(rec, NOW + 61, CFG, stale_after=60)
        assert c.probe and not late.allowed and taken.allowed and taken.probe
        assert rec["probe_at"] == NOW + 61

    def test_now_none_reads_the_clock_inside_the_update(self) -> None:
        import time

        t0 = time.time()
        _, c = claim({}, None, CFG)
        assert c.allowed and t0 <= c.at <= time.time()

    def test_rate_limit_cooldown_uses_retry_after(self) -> None:
        rec, s = record_failure({}, err("rate_limit", 4.0), NOW, CFG)
        assert s == "cooling" and state_of(rec, NOW + 3.9) == ("cooling", NOW + 4)
        assert state_of(rec, NOW + 4.0) == ("healthy", None)
        _, c = claim(rec, NOW + 1, CFG)
        assert not c.allowed and "Retry-After 4" in c.reason and c.ready_at == NOW + 4

    def test_rate_limit_without_header_backs_off_exponentially_with_jitter(self) -> None:
        rec: dict = {}
        delays = []
        for i in range(5):
            t = NOW + 100 * i  # each 429 after the previous window ended
            rec, _ = record_failure(rec, err("rate_limit"), t, CFG)
            delays.append(rec["until"] - t)
        # initial=1, jitter up to 1 s, doubling, capped at 8
        assert 1.0 <= delays[0] <= 2.0
        assert 2.0 <= delays[1] <= 3.0
        assert 4.0 <= delays[2] <= 5.0
        assert delays[3] == pytest.approx(8.0) and delays[4] == pytest.approx(8.0)

    def test_rate_limits_do_not_count_toward_breaker(self) -> None:
        rec: dict = {}
        for _ in range(5):
            rec, _ = record_failure(rec, err("rate_limit", 0.0), NOW, CFG)
        assert rec.get("failures", 0) == 0

    @pytest.mark.parametrize("kind", ["auth", "not_found"])
    def test_permanent_errors_disable(self, kind: str) -> None:
        rec, s = record_failure({}, err(kind), NOW, CFG)
        assert s == "disabled"
        _, c = claim(rec, NOW + 10_000, CFG)
        assert not c.allowed and c.ready_at is None and c.reason.startswith("disabled")


# ----------------------------------------------------------------- the same function, atomically
from tests.unit_tests import router_fakes as _rf  # noqa: E402

redis_client = _rf.redis_client  # the fixture (a real redis-server on 127.0.0.1)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_concurrent_claims_on_a_half_open_record_let_exactly_one_probe(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """The store runs the transition atomically (a lock in memory, WATCH/MULTI in Redis):
    16 threads claiming a half-open deployment at once get exactly one probe."""
    import threading

    from langchain_moa.router import InMemoryStore, RedisStore

    if kind == "redis":
        store = RedisStore(request.getfixturevalue("redis_client"), prefix="health-probe:")
        store.reset()
    else:
        store = InMemoryStore()
    store.health_update("a", lambda r: (RECORDS["half-open"], None))
    results: list = []
    barrier = threading.Barrier(16)

    def go() -> None:
        barrier.wait()
        results.append(store.health_update("a", lambda r: claim(r, None, CFG)))

    threads = [threading.Thread(target=go) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(c.allowed for c in results) == 1 and sum(c.probe for c in results) == 1
    assert store.health_get("a")["probe_at"] == next(c.at for c in results if c.allowed)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_concurrent_429s_keep_the_longest_window(kind: str, request: pytest.FixtureRequest) -> None:
    """Concurrent 429s (Retry-After 1..20 s) and successes: the window ends at the
    longest Retry-After, whatever the order the store applied them in."""
    import threading

    from langchain_moa.router import InMemoryStore, RedisStore
    from langchain_moa.router._health import apply

    if kind == "redis":
        store = RedisStore(request.getfixturevalue("redis_client"), prefix="health-429:")
        store.reset()
    else:
        store = InMemoryStore()
    events = [Event.failed(err("rate_limit", float(s))) for s in range(1, 21)]
    events += [Event.succeeded()] * 20
    barrier = threading.Barrier(len(events))

    def go(ev: Event) -> None:
        barrier.wait()
        store.health_update("a", apply(ev, CFG, now=NOW))

    threads = [threading.Thread(target=go, args=(ev,)) for ev in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state_of(store.health_get("a"), NOW) == ("cooling", NOW + 20)
