"""Tests of the retry decisions and budgets (meshgate.core.retry)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime
from fractions import Fraction
from math import floor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core.retry import (
    GRPC_CONDITIONS,
    IDEMPOTENT,
    RETRY_ON,
    Failure,
    RetryBudget,
    RetryError,
    RetryPolicy,
    WindowCounts,
    WindowedRetryBudget,
    parse_retry_after,
)

ALL_CONDITIONS = tuple(c for c in RETRY_ON if c != "retriable-status-codes")


def no_random() -> float:
    raise AssertionError("the policy drew a random number it did not need")


def policy(**kwargs: object) -> RetryPolicy:
    kwargs.setdefault("random", no_random)
    return RetryPolicy.build(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retry_on": ["5xx", "bogus"]}, r"retry_on must be among connect-failure, .*got 'bogus'"),
        ({"retry_on": "5xx"}, r"retry_on must be a list of conditions, got '5xx'"),
        (
            {"retry_on": ["retriable-status-codes"], "retriable_status_codes": [429, 200]},
            r"retriable_status_codes must be in 400\.\.599, got 200",
        ),
        (
            {"retry_on": ["retriable-status-codes"], "retriable_status_codes": [True]},
            r"retriable_status_codes must be in 400\.\.599, got True",
        ),
        (
            {"retriable_status_codes": [429]},
            r"retriable_status_codes are set but retry_on lacks 'retriable-status-codes'",
        ),
        (
            {"retry_on": ["retriable-status-codes"]},
            r"retry_on has 'retriable-status-codes' but retriable_status_codes is empty",
        ),
        ({"max_retries": -1}, r"max_retries must be an integer >= 0, got -1"),
        ({"max_retries": 1.5}, r"max_retries must be an integer >= 0, got 1\.5"),
        ({"backoff_base_s": 0}, r"backoff_base_s must be a finite number > 0, got 0"),
        ({"backoff_base_s": float("nan")}, r"backoff_base_s .* got nan"),
        ({"backoff_max_s": float("inf")}, r"backoff_max_s .* got inf"),
        (
            {"backoff_base_s": 0.5, "backoff_max_s": 0.25},
            r"backoff_max_s must be >= backoff_base_s \(0\.5\), got 0\.25",
        ),
        ({"retry_after_max_s": -1.0}, r"retry_after_max_s must be a finite number >= 0, got -1"),
    ],
)
def test_bad_policies_are_refused_with_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RetryError, match=message):
        policy(**kwargs)
    assert issubclass(RetryError, ValueError)


def test_defaults() -> None:
    p = policy()
    assert p.retry_on == {"connect-failure", "reset", "gateway-error"}
    assert p.retriable_status_codes == frozenset()
    assert (p.max_retries, p.backoff_base_s, p.backoff_max_s) == (1, 0.025, 0.25)
    assert (p.retry_after_max_s, p.retry_non_idempotent) == (1.0, False)
    assert {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"} == IDEMPOTENT


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget_percent": -1}, r"budget_percent must be in 0\.\.100, got -1"),
        ({"budget_percent": 100.5}, r"budget_percent .* got 100\.5"),
        ({"min_retry_concurrency": -1}, r"min_retry_concurrency must be an integer >= 0, got -1"),
    ],
)
def test_bad_budgets_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(RetryError, match=message):
        RetryBudget(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": -0.1}, r"ratio must be a finite number >= 0, got -0\.1"),
        ({"ratio": float("nan")}, r"ratio .* got nan"),
        ({"min_per_s": -1}, r"min_per_s must be a finite number >= 0, got -1"),
        ({"ttl_s": 0}, r"ttl_s must be a finite number > 0, got 0"),
    ],
)
def test_bad_windowed_budgets_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(RetryError, match=message):
        WindowedRetryBudget(**kwargs)


# --------------------------------------------------------------------------- retriable

DEFAULT = ("connect-failure", "reset", "gateway-error")


@pytest.mark.parametrize(
    ("retry_on", "method", "failure", "status", "expected"),
    [
        # the defaults: connect failures, resets, 502/503/504
        (DEFAULT, "GET", "connect-failure", None, True),
        (DEFAULT, "GET", "reset", None, True),
        (DEFAULT, "GET", "timeout", None, True),
        (DEFAULT, "GET", None, 502, True),
        (DEFAULT, "GET", None, 503, True),
        (DEFAULT, "GET", None, 504, True),
        (DEFAULT, "GET", None, 500, False),
        (DEFAULT, "GET", None, 501, False),
        (DEFAULT, "GET", None, 409, False),
        (DEFAULT, "GET", None, 404, False),
        (DEFAULT, "GET", None, 200, False),
        # methods: idempotent ones only, except for connect failures
        (DEFAULT, "HEAD", None, 503, True),
        (DEFAULT, "OPTIONS", "reset", None, True),
        (DEFAULT, "PUT", "timeout", None, True),
        (DEFAULT, "DELETE", None, 502, True),
        (DEFAULT, "TRACE", None, 504, True),
        (DEFAULT, "POST", None, 503, False),
        (DEFAULT, "POST", "reset", None, False),
        (DEFAULT, "POST", "timeout", None, False),
        (DEFAULT, "PATCH", None, 502, False),
        (DEFAULT, "get", None, 503, False),  # methods are case sensitive
        (DEFAULT, "POST", "connect-failure", None, True),
        (DEFAULT, "PATCH", "connect-failure", None, True),
        # each condition covers only what it names
        (("connect-failure",), "GET", "reset", None, False),
        (("connect-failure",), "GET", None, 503, False),
        (("reset",), "GET", "connect-failure", None, False),
        (("reset",), "GET", "timeout", None, False),
        (("5xx",), "GET", "connect-failure", None, False),
        (("5xx",), "GET", "reset", None, False),
        (("5xx",), "GET", "timeout", None, True),
        (("5xx",), "GET", None, 500, True),
        (("5xx",), "GET", None, 599, True),
        (("5xx",), "GET", None, 503, True),
        (("5xx",), "GET", None, 499, False),
        (("gateway-error",), "GET", "timeout", None, True),
        (("gateway-error",), "GET", None, 500, False),
        (("gateway-error",), "GET", None, 505, False),
        (("retriable-4xx",), "GET", None, 409, True),
        (("retriable-4xx",), "PUT", None, 409, True),
        (("retriable-4xx",), "POST", None, 409, False),
        (("retriable-4xx",), "GET", None, 429, False),
        (("retriable-4xx",), "GET", None, 503, False),
        ((), "GET", "connect-failure", None, False),
        ((), "GET", None, 503, False),
    ],
)
def test_retriable_table(
    retry_on: tuple[str, ...],
    method: str,
    failure: Failure | None,
    status: int | None,
    expected: bool,
) -> None:
    p = policy(retry_on=retry_on)
    assert p.retriable(method=method, failure=failure, status=status) is expected


@pytest.mark.parametrize(
    ("method", "status", "expected"),
    [
        ("GET", 429, True),
        ("GET", 503, True),
        ("GET", 502, False),  # not listed, and gateway-error is not in retry_on
        ("GET", 409, False),
        ("POST", 429, False),
    ],
)
def test_retriable_status_codes(method: str, status: int, expected: bool) -> None:
    p = policy(retry_on=["retriable-status-codes"], retriable_status_codes=[429, 503])
    assert p.retriable(method=method, failure=None, status=status) is expected


def test_non_idempotent_methods_when_the_route_opts_in() -> None:
    p = policy(retry_on=[*DEFAULT, "retriable-4xx"], retry_non_idempotent=True)
    for method in ("POST", "PATCH", "CONNECT"):
        assert p.retriable(method=method, failure="reset", status=None)
        assert p.retriable(method=method, failure=None, status=503)
        assert p.retriable(method=method, failure=None, status=409)
        assert not p.retriable(method=method, failure=None, status=500)


def test_a_failure_takes_precedence_over_a_status() -> None:
    p = policy(retry_on=["reset"])
    assert p.retriable(method="GET", failure="reset", status=200)
    assert not p.retriable(method="GET", failure="timeout", status=503)


def test_retriable_refuses_what_is_not_an_outcome() -> None:
    p = policy()
    with pytest.raises(
        RetryError,
        match=r"failure must be one of connect-failure, reset, "
        r"timeout, got 'refused'",
    ):
        p.retriable(method="GET", failure="refused", status=None)  # type: ignore[arg-type]
    with pytest.raises(RetryError, match="needs a failure or a status, got neither"):
        p.retriable(method="GET", failure=None, status=None)


@given(
    retry_on=st.sets(st.sampled_from(ALL_CONDITIONS)),
    method=st.sampled_from(["POST", "PATCH", "CONNECT", "LOCK", "post"]),
    failure=st.sampled_from([None, "reset", "timeout"]),
    status=st.integers(100, 599),
)
def test_non_idempotent_methods_are_only_retried_after_connect_failures(
    retry_on: set[str], method: str, failure: Failure | None, status: int
) -> None:
    p = policy(retry_on=retry_on)
    assert not p.retriable(method=method, failure=failure, status=status)
    assert p.retriable(method=method, failure="connect-failure", status=None) is (
        "connect-failure" in retry_on
    )


# --------------------------------------------------------------------------- backoff


@settings(max_examples=500)
@given(
    base=st.floats(1e-6, 10.0),
    factor=st.floats(1.0, 1e4),
    retry_number=st.integers(1, 5000),
    draw=st.floats(0.0, 1.0, exclude_max=True),
)
def test_backoff_is_a_full_jitter_draw_below_the_ceiling(
    base: float, factor: float, retry_number: int, draw: float
) -> None:
    maximum = base * factor
    p = policy(backoff_base_s=base, backoff_max_s=maximum, random=lambda: draw)
    backoff = p.backoff_s(retry_number)
    assert backoff is not None
    ceiling = min(Fraction(maximum), Fraction(base) * 2 ** (retry_number - 1))
    assert backoff == draw * float(ceiling)
    assert 0.0 <= backoff <= float(ceiling) <= maximum


def test_backoff_defaults_double_up_to_the_cap() -> None:
    p = policy(random=lambda: 0.5)
    assert [p.backoff_s(n) for n in range(1, 7)] == [0.0125, 0.025, 0.05, 0.1, 0.125, 0.125]
    assert p.backoff_s(10**9) == 0.125


@pytest.mark.parametrize(("retry_number", "ceiling"), [(1, 0.025), (2, 0.05), (4, 0.2), (9, 0.25)])
def test_backoff_mean_is_half_the_ceiling(retry_number: int, ceiling: float) -> None:
    p = policy(random=random.Random(42).random)
    draws = [p.backoff_s(retry_number) for _ in range(20_000)]
    assert all(d is not None and 0.0 <= d < ceiling for d in draws)
    mean = sum(d for d in draws if d is not None) / len(draws)
    assert mean == pytest.approx(ceiling / 2, rel=0.02)


@pytest.mark.parametrize("retry_number", [0, -1, 1.0, True])
def test_backoff_refuses_bad_retry_numbers(retry_number: int) -> None:
    with pytest.raises(
        RetryError, match=f"retry_number must be an integer >= 1, got {retry_number}"
    ):
        policy(random=lambda: 0.5).backoff_s(retry_number)


@pytest.mark.parametrize(
    ("cap", "retry_after_s", "expected"),
    [
        (1.0, 0.0, 0.0),
        (1.0, 0.5, 0.5),
        (1.0, 1.0, 1.0),
        (1.0, 1.5, None),  # the upstream asks for a longer pause: do not retry
        (1.0, 2147483648.0, None),
        (0.0, 0.0, 0.0),
        (0.0, 1.0, None),
        (30.0, 5.0, 5.0),
    ],
)
def test_retry_after_replaces_backoff_up_to_the_cap(
    cap: float, retry_after_s: float, expected: float | None
) -> None:
    p = policy(retry_after_max_s=cap)  # no random draw when Retry-After decides
    assert p.backoff_s(1, retry_after_s) == expected
    assert p.backoff_s(3, retry_after_s) == expected


# --------------------------------------------------------------------------- Retry-After

NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 5 ", 5.0),
        ("007", 7.0),
        ("0000000000000000000000001", 1.0),
        ("2147483647", 2147483647.0),
        ("9999999999", 2147483648.0),
        ("99999999999", 2147483648.0),
        ("9" * 5000, 2147483648.0),
        # HTTP-dates, in the three forms RFC 9110 has recipients accept
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),
        ("Wed Oct 21 07:28:02 2015", 2.0),
        ("Wed, 21 Oct 2015 07:28:30 +0000", 30.0),
        ("Wed, 21 Oct 2015 09:28:30 +0200", 30.0),
        # dates in the past: no wait
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Tue, 20 Oct 2015 07:28:00 GMT", 0.0),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        # unreadable
        ("", None),
        ("  ", None),
        ("soon", None),
        ("1.5", None),
        ("-5", None),
        ("+5", None),
        ("5s", None),
        ("1e3", None),
        ("٣", None),  # a non-ASCII digit
        ("Wed, 32 Oct 2015 07:28:00 GMT", None),
        ("Wed, 21 Foo 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1)))
def test_parse_retry_after_reads_back_formatted_dates(when: datetime) -> None:
    when = when.replace(microsecond=0, tzinfo=UTC)
    delay = parse_retry_after(format_datetime(when, usegmt=True), NOW)
    assert delay == max(0.0, when.timestamp() - NOW)


@settings(max_examples=500)
@given(st.text())
def test_parse_retry_after_never_raises(value: str) -> None:
    delay = parse_retry_after(value, NOW)
    assert delay is None or delay >= 0.0


# --------------------------------------------------------------------------- Envoy budget


def fill(budget: RetryBudget, active: int) -> None:
    for _ in range(active):
        budget.request_started()


@pytest.mark.parametrize(
    ("active", "allowed"),
    [(0, 3), (1, 3), (10, 3), (15, 3), (19, 3), (20, 4), (24, 4), (25, 5), (100, 20), (1000, 200)],
)
def test_envoy_budget_allows_a_share_of_active_requests_or_the_minimum(
    active: int, allowed: int
) -> None:
    budget = RetryBudget()
    fill(budget, active)
    assert budget.allowed_retries() == allowed
    assert [budget.try_start_retry() for _ in range(allowed + 2)] == [True] * allowed + [False] * 2
    assert (budget.retries_active, budget.exhausted, budget.active) == (allowed, 2, active)
    budget.retry_finished()
    assert budget.try_start_retry()
    assert not budget.try_start_retry()
    assert budget.snapshot() == {
        "active": active,
        "retries_active": allowed,
        "allowed_retries": allowed,
        "exhausted": 3,
    }


def test_envoy_budget_follows_active_requests() -> None:
    budget = RetryBudget(budget_percent=50.0, min_retry_concurrency=0)
    assert not budget.try_start_retry()  # no active requests, no minimum: nothing
    fill(budget, 4)
    assert budget.try_start_retry() and budget.try_start_retry()
    assert not budget.try_start_retry()
    budget.request_finished()
    budget.request_finished()  # 2 active: 1 retry allowed, 2 in flight
    assert not budget.try_start_retry()
    budget.retry_finished()
    assert not budget.try_start_retry()
    budget.retry_finished()
    assert budget.try_start_retry()
    assert budget.exhausted == 4


def test_envoy_budget_counts_never_go_negative() -> None:
    budget = RetryBudget()
    budget.request_finished()
    budget.retry_finished()
    assert (budget.active, budget.retries_active) == (0, 0)


@given(
    percent=st.floats(0.0, 100.0),
    minimum=st.integers(0, 5),
    ops=st.lists(st.sampled_from(["start", "finish", "retry", "retry_done"]), max_size=200),
)
def test_envoy_budget_never_exceeds_its_limit(percent: float, minimum: int, ops: list[str]) -> None:
    budget = RetryBudget(percent, minimum)
    admitted = denied = 0
    for op in ops:
        if op == "start":
            budget.request_started()
        elif op == "finish":
            budget.request_finished()
        elif op == "retry_done":
            budget.retry_finished()
        elif budget.try_start_retry():
            admitted += 1
            assert budget.retries_active <= max(minimum, budget.active * percent / 100)
        else:
            denied += 1
        assert budget.active >= 0 and budget.retries_active >= 0
    assert budget.exhausted == denied


# --------------------------------------------------------------------------- windowed budget


def test_window_counts_keep_ten_buckets() -> None:
    counts = WindowCounts(10.0)
    assert counts.bucket_s == 1.0
    counts.add(0.0, 1, 0)
    counts.add(0.99, 1, 1)
    counts.add(5.0, 1, 0)
    assert counts.totals(9.99) == (3, 1)
    assert counts.totals(10.0) == (1, 0)  # bucket 0 left: 0.99 was forgotten 9.01 s later
    counts.add(9.0, 0, 1)  # a reading older than the newest bucket counts into it
    assert counts.totals(10.5) == (1, 1)
    assert counts.totals(15.0) == (0, 1)  # bucket 5 left
    assert counts.totals(19.99) == (0, 1)
    assert counts.totals(20.0) == (0, 0)  # bucket 10 left
    counts.add(1000.0, 2, 2)
    assert counts.totals(1000.0) == (2, 2)
    counts.clear()
    assert counts.totals(1000.0) == (0, 0)


def test_windowed_budget_reserve_then_ratio() -> None:
    budget = WindowedRetryBudget(ratio=0.2, min_per_s=1, ttl_s=10)
    assert budget.reserve == 10.0
    assert [budget.try_retry(100.0) for _ in range(11)] == [True] * 10 + [False]
    for _ in range(10):
        budget.record_request(100.5)
    assert [budget.try_retry(101.0) for _ in range(3)] == [True, True, False]
    assert budget.exhausted == 2
    assert budget.snapshot(101.0) == {
        "requests": 10,
        "retries": 12,
        "allowed": 12.0,
        "exhausted": 2,
    }


def test_windowed_budget_defaults_and_window() -> None:
    budget = WindowedRetryBudget()
    assert (budget.ratio, budget.min_per_s, budget.ttl_s, budget.reserve) == (0.2, 10, 10, 100)
    assert budget.bucket_s == 1.0
    for _ in range(1000):
        budget.record_request(0.5)
    assert sum(budget.try_retry(1.0) for _ in range(400)) == 300
    assert not budget.try_retry(9.99)
    # at 10.0 the bucket of the requests (0..1) left, the retries' (1..2) not yet
    assert not budget.try_retry(10.0)
    assert budget.try_retry(11.0)
    assert sum(budget.try_retry(11.0) for _ in range(200)) == 99


def test_windowed_budget_without_reserve_needs_requests() -> None:
    budget = WindowedRetryBudget(ratio=0.5, min_per_s=0, ttl_s=1)
    assert not budget.try_retry(0.0)
    budget.record_request(0.0)
    assert not budget.try_retry(0.0)
    budget.record_request(0.0)
    assert budget.try_retry(0.0)
    assert not budget.try_retry(0.0)


Op = tuple[float, bool]  # (seconds since the previous op, True for a retry attempt)


@settings(max_examples=300)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
    min_per_s=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    ttl_s=st.sampled_from([1.0, 2.0, 10.0]),
    ops=st.lists(st.tuples(st.floats(0.0, 3.0), st.booleans()), max_size=150),
)
def test_windowed_budget_caps_amplification(
    ratio: float, min_per_s: float, ttl_s: float, ops: list[Op]
) -> None:
    """Retries admitted in buckets b0..b1 <= ratio * requests in buckets b0 - 9..b1 +
    min_per_s * ttl_s * (floor((b1 - b0) / 10) + 1).

    Proof: let c1 be the bucket of the last retry admitted in b0..b1. When it
    was admitted, the budget's window (buckets c1 - 9..c1) held every retry
    admitted in max(b0, c1 - 9)..c1, so those are at most reserve + ratio *
    requests in c1 - 9..c1. Repeat with c2, the last retry's bucket in
    b0..c1 - 10, and so on: the windows are disjoint, lie inside b0 - 9..b1 and
    their ends are 10 buckets apart, so there are at most floor((b1 - b0) / 10)
    + 1 of them. Over a whole run: retries <= ratio * requests + min_per_s *
    (duration + ttl_s) roughly.
    """
    budget = WindowedRetryBudget(ratio=ratio, min_per_s=min_per_s, ttl_s=ttl_s)
    now = 1000.0
    requests: list[int] = []
    retries: list[int] = []
    for dt, retry in ops:
        now += dt
        bucket = floor(now / budget.bucket_s)
        if not retry:
            budget.record_request(now)
            requests.append(bucket)
        elif budget.try_retry(now):
            retries.append(bucket)
            # the admission rule itself, over the ten buckets ending with this one
            in_window = sum(1 for b in retries if b > bucket - 10)
            requested = sum(1 for b in requests if b > bucket - 10)
            assert in_window <= budget.reserve + ratio * requested + 1e-9
    for b0 in set(retries):
        for b1 in set(retries):
            if b1 < b0:
                continue
            admitted = sum(1 for b in retries if b0 <= b <= b1)
            requested = sum(1 for b in requests if b0 - 9 <= b <= b1)
            windows = (b1 - b0) // 10 + 1
            assert admitted <= ratio * requested + budget.reserve * windows + 1e-6


def test_windowed_budget_amplification_under_steady_failure() -> None:
    # 100 requests/s, each failing and asking for one retry, for 60 s: about 20 %
    # of the requests plus 10 per second get retried
    budget = WindowedRetryBudget()
    admitted = 0
    for tick in range(6000):
        now = tick / 100
        budget.record_request(now)
        admitted += budget.try_retry(now)
    assert admitted <= 0.2 * 6000 + 10 * (60 + 10)
    assert admitted >= 0.2 * 6000 + 10 * 60 - 100


def test_randomness_is_injected() -> None:
    draws: list[float] = []

    def rng() -> float:
        draws.append(0.25)
        return 0.25

    p = policy(random=rng)
    assert p.backoff_s(2) == 0.0125
    assert p.backoff_s(1, retry_after_s=0.5) == 0.5
    assert draws == [0.25]


@pytest.mark.parametrize(
    ("retry_on", "grpc_status", "expected"),
    [
        (("unavailable",), 14, True),
        (("unavailable",), 8, False),
        (("resource-exhausted", "cancelled"), 8, True),
        (("cancelled",), 1, True),
        (("deadline-exceeded",), 4, True),
        (("internal",), 13, True),
        (("unavailable", "internal"), 0, False),  # OK is never retried
        (("unavailable",), 5, False),  # NOT_FOUND: no condition names it
        (("connect-failure", "reset", "gateway-error"), 14, False),  # HTTP conditions only
    ],
)
def test_grpc_statuses(retry_on: tuple[str, ...], grpc_status: int, expected: bool) -> None:
    p = policy(retry_on=retry_on)
    # gRPC calls are POSTs: naming a gRPC condition is the opt-in
    assert p.retriable(method="POST", failure=None, status=200, grpc_status=grpc_status) is expected
    assert p.retries_grpc is any(c in retry_on for c in GRPC_CONDITIONS.values())


def test_a_failure_beats_a_grpc_status() -> None:
    p = policy(retry_on=("unavailable",))
    assert not p.retriable(method="POST", failure="reset", status=None, grpc_status=14)
