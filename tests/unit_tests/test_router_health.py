"""Error classification, Retry-After parsing and circuit-breaker transitions (pure functions)."""

from __future__ import annotations

import email.utils

import openai
import pytest
from langchain_core import exceptions as lc_exc

from langchain_moa.errors import MissingAPIKeyError
from langchain_moa.router import classify_error, parse_retry_after
from langchain_moa.router._health import (
    ErrorInfo,
    HealthConfig,
    claim,
    record_failure,
    record_success,
    state_of,
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


CFG = HealthConfig(
    failure_threshold=3,
    circuit_cooldown=10.0,
    rate_limit_initial=1.0,
    rate_limit_max=8.0,
    probe_timeout=60.0,
)


def fail(rec, kind="server", now=NOW, retry_after=None):  # type: ignore[no-untyped-def]
    rec, state = record_failure(rec, ErrorInfo(kind, 500, retry_after, kind), now, CFG)
    return rec, state


class TestBreaker:
    def test_opens_after_threshold_consecutive_failures(self) -> None:
        rec: dict = {}
        rec, s1 = fail(rec)
        rec, s2 = fail(rec)
        assert (s1, s2) == ("healthy", "healthy")
        rec, s3 = fail(rec)
        assert s3 == "open"
        assert state_of(rec, NOW + 1) == ("open", NOW + 10)

    def test_success_resets_the_count(self) -> None:
        rec: dict = {}
        rec, _ = fail(rec)
        rec, _ = fail(rec)
        rec, _ = record_success(rec)
        rec, s = fail(rec)
        assert s == "healthy"

    def test_open_refuses_then_half_open_lets_exactly_one_probe(self) -> None:
        rec: dict = {}
        for _ in range(3):
            rec, _ = fail(rec)
        rec, (ok, reason, ready_at, probe) = claim(rec, NOW + 5, CFG)
        assert not ok and "circuit open" in reason and ready_at == NOW + 10
        rec, (ok, _, _, probe) = claim(rec, NOW + 10.5, CFG)
        assert ok and probe
        rec, (ok2, reason2, _, _) = claim(rec, NOW + 10.6, CFG)
        assert not ok2 and "probe in flight" in reason2

    def test_probe_success_closes(self) -> None:
        rec: dict = {}
        for _ in range(3):
            rec, _ = fail(rec)
        rec, _ = claim(rec, NOW + 11, CFG)
        rec, _ = record_success(rec)
        assert state_of(rec, NOW + 11) == ("healthy", None)
        rec, (ok, *_rest) = claim(rec, NOW + 11, CFG)
        assert ok

    def test_probe_failure_reopens(self) -> None:
        rec: dict = {}
        for _ in range(3):
            rec, _ = fail(rec)
        rec, _ = claim(rec, NOW + 11, CFG)
        rec, s = fail(rec, now=NOW + 11)
        assert s == "open" and state_of(rec, NOW + 12) == ("open", NOW + 21)

    def test_unclaimed_probe_can_be_claimed_again(self) -> None:
        rec: dict = {}
        for _ in range(3):
            rec, _ = fail(rec)
        rec, (ok, *_r) = claim(rec, NOW + 11, CFG)
        rec, _ = unclaim(rec)
        rec, (ok2, *_r2) = claim(rec, NOW + 11, CFG)
        assert ok and ok2

    def test_rate_limit_cooldown_uses_retry_after(self) -> None:
        rec, s = fail({}, kind="rate_limit", retry_after=4.0)
        assert s == "cooling" and state_of(rec, NOW + 3.9) == ("cooling", NOW + 4)
        assert state_of(rec, NOW + 4.0) == ("healthy", None)
        _, (ok, reason, ready_at, _) = claim(rec, NOW + 1, CFG)
        assert not ok and "Retry-After 4" in reason and ready_at == NOW + 4

    def test_rate_limit_without_header_backs_off_exponentially_with_jitter(self) -> None:
        rec: dict = {}
        delays = []
        for _ in range(5):
            rec, _ = fail(rec, kind="rate_limit", now=NOW)
            delays.append(rec["until"] - NOW)
            rec["until"] = NOW  # let the next one start fresh
        # initial=1, jitter up to 1 s, doubling, capped at 8
        assert 1.0 <= delays[0] <= 2.0
        assert 2.0 <= delays[1] <= 3.0
        assert 4.0 <= delays[2] <= 5.0
        assert delays[3] == pytest.approx(8.0) and delays[4] == pytest.approx(8.0)

    def test_shorter_retry_after_never_shortens_window(self) -> None:
        rec, _ = fail({}, kind="rate_limit", retry_after=10.0)
        rec, _ = fail(rec, kind="rate_limit", retry_after=1.0)
        assert rec["until"] == NOW + 10

    def test_rate_limits_do_not_count_toward_breaker(self) -> None:
        rec: dict = {}
        for _ in range(5):
            rec, s = fail(rec, kind="rate_limit", retry_after=0.0)
        assert rec.get("failures", 0) == 0

    @pytest.mark.parametrize("kind", ["auth", "not_found"])
    def test_permanent_errors_disable(self, kind: str) -> None:
        rec, s = fail({}, kind=kind)
        assert s == "disabled"
        _, (ok, reason, ready_at, _) = claim(rec, NOW + 10_000, CFG)
        assert not ok and ready_at is None and reason.startswith("disabled")
