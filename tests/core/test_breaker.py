"""Tests of the circuit breaker state machine (meshgate.core.breaker)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core.breaker import BreakerError, BreakerState, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

Transition = tuple[BreakerState, BreakerState, str]


def breaker(**kwargs: object) -> tuple[CircuitBreaker, list[Transition]]:
    """A breaker that logs its transitions into the returned list."""
    log: list[Transition] = []
    made = CircuitBreaker.build(
        on_transition=lambda old, new, reason: log.append((old, new, reason)),
        **kwargs,  # type: ignore[arg-type]
    )
    return made, log


# A step: (operation, clock reading, what allow() returns or None, state after).
Step = tuple[str, float, bool | None, BreakerState]


def run(cb: CircuitBreaker, steps: list[Step]) -> None:
    for i, (op, now, returns, state) in enumerate(steps):
        if op == "allow":
            assert cb.allow(now) is returns, f"step {i}: allow at {now}"
        else:
            getattr(cb, f"record_{op}")(now)
        assert cb.state is state, f"step {i}: {op} at {now}"


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_threshold": 0}, r"circuit breaker failure_threshold must be an integer >= 1"),
        ({"success_threshold": 0}, r"success_threshold must be an integer >= 1, got 0"),
        ({"success_threshold": 2.0}, r"success_threshold .* got 2\.0"),
        ({"reset_timeout_s": 0}, r"reset_timeout_s must be a finite number > 0, got 0"),
        ({"reset_timeout_s": float("inf")}, r"reset_timeout_s .* got inf"),
        ({"window_s": -1.0}, r"window_s must be a finite number > 0, got -1\.0"),
        ({"failure_rate_percent": 0}, r"failure_rate_percent must be in \(0, 100\], got 0"),
        ({"failure_rate_percent": 101}, r"failure_rate_percent .* got 101"),
        ({"min_requests": 0}, r"min_requests must be an integer >= 1, got 0"),
        ({"half_open_max_probes": 0}, r"half_open_max_probes must be an integer >= 1, got 0"),
        ({"half_open_max_probes": True}, r"half_open_max_probes .* got True"),
    ],
)
def test_bad_parameters_are_refused_with_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(BreakerError, match=message):
        CircuitBreaker.build(**kwargs)  # type: ignore[arg-type]
    assert issubclass(BreakerError, ValueError)


def test_defaults_are_the_seeds() -> None:
    cb = CircuitBreaker.build()
    assert (cb.failure_threshold, cb.success_threshold, cb.reset_timeout_s) == (5, 3, 30.0)
    assert (cb.window_s, cb.failure_rate_percent, cb.min_requests) == (60.0, 50.0, 10)
    assert cb.half_open_max_probes == 1
    assert cb.state is CLOSED
    assert [s.value for s in BreakerState] == ["closed", "open", "half-open"]


# --------------------------------------------------------------------------- transitions


def test_full_cycle_with_defaults() -> None:
    cb, log = breaker()
    run(
        cb,
        [
            *[("allow", 0.0, True, CLOSED), ("failure", 1.0, None, CLOSED)] * 4,
            ("allow", 1.0, True, CLOSED),
            ("failure", 2.0, None, OPEN),  # 5 consecutive failures
            ("allow", 2.0, False, OPEN),
            ("allow", 31.9, False, OPEN),
            ("allow", 32.0, True, HALF_OPEN),  # reset timeout elapsed: the first probe
            ("allow", 32.0, False, HALF_OPEN),  # one probe at a time
            ("success", 32.5, None, HALF_OPEN),
            ("allow", 33.0, True, HALF_OPEN),
            ("success", 33.5, None, HALF_OPEN),
            ("allow", 34.0, True, HALF_OPEN),
            ("success", 34.5, None, CLOSED),  # 3 successes
            ("allow", 35.0, True, CLOSED),
            ("failure", 35.5, None, CLOSED),  # counts were reset on closing
        ],
    )
    assert log == [
        (CLOSED, OPEN, "5 consecutive failures"),
        (OPEN, HALF_OPEN, "reset timeout elapsed"),
        (HALF_OPEN, CLOSED, "3 successes"),
    ]


def test_probe_failure_reopens_and_restarts_the_timer() -> None:
    cb, log = breaker(failure_threshold=1, reset_timeout_s=10.0)
    run(
        cb,
        [
            ("allow", 0.0, True, CLOSED),
            ("failure", 0.0, None, OPEN),
            ("allow", 10.0, True, HALF_OPEN),
            ("failure", 11.0, None, OPEN),
            ("allow", 20.0, False, OPEN),  # 10 s from the first opening: still open
            ("allow", 20.99, False, OPEN),
            ("allow", 21.0, True, HALF_OPEN),
            ("success", 21.5, None, HALF_OPEN),
        ],
    )
    assert log == [
        (CLOSED, OPEN, "1 consecutive failure"),
        (OPEN, HALF_OPEN, "reset timeout elapsed"),
        (HALF_OPEN, OPEN, "probe failed"),
        (OPEN, HALF_OPEN, "reset timeout elapsed"),
    ]


def test_a_success_resets_consecutive_failures() -> None:
    cb, log = breaker(min_requests=1000)
    for t in range(4):
        cb.record_failure(float(t))
    cb.record_success(4.0)
    for t in range(5, 9):
        cb.record_failure(float(t))
    assert cb.state is CLOSED
    cb.record_failure(9.0)
    assert cb.state is OPEN
    assert log == [(CLOSED, OPEN, "5 consecutive failures")]


def test_failure_rate_opens_only_from_min_requests_on() -> None:
    cb, log = breaker()  # 50 % over >= 10 requests in 60 s
    for i in range(8):
        (cb.record_success if i % 2 == 0 else cb.record_failure)(float(i))
    assert cb.state is CLOSED  # 4 of 8 failed, but fewer than 10 requests
    cb.record_success(8.0)
    assert cb.state is CLOSED  # 4 of 9
    cb.record_failure(9.0)
    assert cb.state is OPEN  # 5 of 10
    assert log == [(CLOSED, OPEN, "failure rate 50% over 10 requests")]


@pytest.mark.parametrize(
    ("min_requests", "successes", "failures", "opens", "reason"),
    [
        (10, 6, 4, False, None),  # 40 %
        (10, 5, 5, True, "failure rate 50% over 10 requests"),
        (10, 4, 8, True, "failure rate 60% over 10 requests"),  # 4 of 8, 5 of 9: too few
        (10, 3, 7, True, "failure rate 70% over 10 requests"),
        (10, 20, 19, False, None),
        (10, 19, 19, True, "failure rate 50% over 38 requests"),
        (3, 1, 2, True, "failure rate 67% over 3 requests"),
        (1, 0, 1, True, "failure rate 100% over 1 request"),
    ],
)
def test_failure_rate_table(
    min_requests: int, successes: int, failures: int, opens: bool, reason: str | None
) -> None:
    cb, log = breaker(failure_threshold=1000, min_requests=min_requests)
    for _ in range(successes):
        cb.record_success(1.0)
    for _ in range(failures):
        cb.record_failure(2.0)
    assert (cb.state is OPEN) is opens
    assert log == ([(CLOSED, OPEN, reason)] if opens else [])


def test_failure_rate_threshold_is_inclusive_and_configurable() -> None:
    cb, _ = breaker(failure_rate_percent=25.0, min_requests=4, failure_threshold=100)
    for _ in range(3):
        cb.record_success(0.0)
    cb.record_failure(0.0)
    assert cb.state is OPEN


def test_window_expiry_forgets_old_failures() -> None:
    # window 60 s in buckets of 6 s; 9 failures at t=0 (bucket 0)
    for now, opens in [(59.9, True), (60.0, False)]:
        cb, _ = breaker(failure_threshold=1000)
        for _ in range(9):
            cb.record_failure(0.0)
        assert cb.state is CLOSED  # 9 requests: below min_requests
        cb.record_failure(now)
        assert (cb.state is OPEN) is opens
        assert cb.snapshot(now)["window_requests"] == (10 if opens else 1)


def test_closing_clears_the_window() -> None:
    cb, log = breaker(failure_threshold=1000, reset_timeout_s=1.0, success_threshold=1)
    for _ in range(5):
        cb.record_success(0.0)
    for _ in range(5):
        cb.record_failure(0.0)
    assert cb.state is OPEN
    assert cb.allow(1.0)
    cb.record_success(1.0)
    assert cb.state is CLOSED
    assert cb.snapshot(1.0)["window_requests"] == 0
    for _ in range(9):
        cb.record_failure(2.0)
    assert cb.state is CLOSED  # the failures before opening no longer count
    cb.record_failure(2.0)
    assert cb.state is OPEN
    assert log[-1] == (CLOSED, OPEN, "failure rate 100% over 10 requests")


# --------------------------------------------------------------------------- half-open probes


def open_breaker(**kwargs: object) -> tuple[CircuitBreaker, list[Transition]]:
    """A breaker opened at t=0 with a 10 s reset timeout."""
    cb, log = breaker(failure_threshold=1, reset_timeout_s=10.0, **kwargs)
    cb.record_failure(0.0)
    assert cb.state is OPEN
    return cb, log


def test_half_open_admits_at_most_n_concurrent_probes() -> None:
    cb, _ = open_breaker(half_open_max_probes=3, success_threshold=5)
    assert [cb.allow(10.0) for _ in range(5)] == [True, True, True, False, False]
    assert cb.snapshot(10.0)["probes_in_flight"] == 3
    cb.record_success(10.5)
    assert [cb.allow(11.0) for _ in range(2)] == [True, False]
    cb.record_success(11.5)
    cb.record_success(11.5)
    assert [cb.allow(12.0) for _ in range(3)] == [True, True, False]
    assert cb.snapshot(12.0)["half_open_successes"] == 3


def test_record_ignored_frees_a_probe_without_counting() -> None:
    cb, log = open_breaker(success_threshold=1)
    assert cb.allow(10.0)
    assert not cb.allow(10.0)
    cb.record_ignored(10.1)  # e.g. the probe overflowed locally
    assert cb.state is HALF_OPEN
    assert cb.snapshot(10.1)["half_open_successes"] == 0
    assert cb.allow(10.2)
    cb.record_success(10.3)
    assert cb.state is CLOSED
    assert log[-1] == (HALF_OPEN, CLOSED, "1 success")


def test_record_ignored_counts_nowhere_when_closed() -> None:
    cb, _ = breaker(failure_threshold=2)
    cb.record_failure(0.0)
    cb.record_ignored(0.0)
    assert cb.snapshot(0.0)["consecutive_failures"] == 1
    assert cb.snapshot(0.0)["window_requests"] == 1
    cb.record_failure(0.0)
    assert cb.state is OPEN


def test_outcomes_of_earlier_requests_are_handled_soundly() -> None:
    cb, log = open_breaker()
    # requests admitted before opening end while OPEN: dropped, the timer stands
    cb.record_failure(5.0)
    cb.record_success(5.0)
    cb.record_ignored(5.0)
    assert cb.retry_after_s(5.0) == 5.0
    assert cb.allow(10.0)
    # no probe would be in flight: a success is dropped, an ignored outcome too
    cb.record_success(10.1)
    assert cb.snapshot(10.1)["half_open_successes"] == 1
    cb.record_success(10.2)
    cb.record_ignored(10.2)
    assert cb.snapshot(10.2)["half_open_successes"] == 1
    assert cb.snapshot(10.2)["probes_in_flight"] == 0
    # but any failure re-opens
    cb.record_failure(10.3)
    assert cb.state is OPEN
    assert log[-1] == (HALF_OPEN, OPEN, "probe failed")


def test_probes_still_in_flight_when_reopened_are_dropped() -> None:
    cb, _ = open_breaker(half_open_max_probes=2)
    assert cb.allow(10.0) and cb.allow(10.0)
    cb.record_failure(10.5)
    assert cb.snapshot(10.5)["probes_in_flight"] == 0
    cb.record_success(10.6)  # the other probe
    assert cb.state is OPEN
    assert cb.retry_after_s(10.6) == pytest.approx(9.9)


# --------------------------------------------------------------------------- reading


def test_retry_after_and_snapshot() -> None:
    cb, _ = breaker(failure_threshold=2, reset_timeout_s=30.0)
    assert cb.retry_after_s(0.0) == 0.0
    cb.record_failure(100.0)
    assert cb.snapshot(100.0) == {
        "state": "closed",
        "consecutive_failures": 1,
        "window_requests": 1,
        "window_failures": 1,
        "opened_at": None,
        "retry_after_s": 0.0,
        "probes_in_flight": 0,
        "half_open_successes": 0,
    }
    cb.record_failure(101.0)
    assert cb.retry_after_s(101.0) == 30.0
    assert cb.retry_after_s(121.0) == 10.0
    assert cb.retry_after_s(131.0) == 0.0
    assert cb.retry_after_s(500.0) == 0.0
    assert cb.snapshot(121.0) == {
        "state": "open",
        "consecutive_failures": 2,
        "window_requests": 2,
        "window_failures": 2,
        "opened_at": 101.0,
        "retry_after_s": 10.0,
        "probes_in_flight": 0,
        "half_open_successes": 0,
    }
    # OPEN until a request comes, then HALF_OPEN
    assert cb.state is OPEN
    assert cb.allow(131.0)
    assert cb.snapshot(131.0)["state"] == "half-open"
    assert cb.snapshot(131.0)["probes_in_flight"] == 1
    assert cb.retry_after_s(131.0) == 0.0


def test_without_a_callback() -> None:
    cb = CircuitBreaker.build(failure_threshold=1, reset_timeout_s=1.0, success_threshold=1)
    cb.record_failure(0.0)
    assert cb.allow(1.0)
    cb.record_success(1.0)
    assert cb.state is CLOSED


# --------------------------------------------------------------------------- properties

# allows weigh double and steps span the 5 s reset timeout, so that runs reach
# HALF_OPEN and try several probes in a row
ops = st.lists(
    st.tuples(
        st.sampled_from(["allow", "allow", "success", "failure", "ignored"]),
        st.one_of(st.sampled_from([0.0, 1.0, 5.0]), st.floats(0.0, 6.0)),
    ),
    max_size=200,
)


@settings(max_examples=300)
@given(
    probes=st.integers(1, 4),
    failure_threshold=st.integers(1, 4),
    success_threshold=st.integers(1, 4),
    steps=ops,
)
def test_half_open_never_admits_more_than_the_probe_limit(
    probes: int, failure_threshold: int, success_threshold: int, steps: list[tuple[str, float]]
) -> None:
    cb, log = breaker(
        half_open_max_probes=probes,
        failure_threshold=failure_threshold,
        success_threshold=success_threshold,
        reset_timeout_s=5.0,
        window_s=20.0,
        min_requests=3,
    )
    now = 0.0
    admitted_since_record = 0
    for op, dt in steps:
        now += dt
        before = cb.state
        wait = cb.retry_after_s(now)
        if op == "allow":
            allowed = cb.allow(now)
            if before is CLOSED:
                assert allowed
            if before is OPEN and wait > 0:
                assert not allowed and cb.state is OPEN
            if allowed and cb.state is HALF_OPEN:
                admitted_since_record += 1
                assert admitted_since_record <= probes
        else:
            getattr(cb, f"record_{op}")(now)
            admitted_since_record = 0
        in_flight = cb.snapshot(now)["probes_in_flight"]
        assert isinstance(in_flight, int) and 0 <= in_flight <= probes
    # every transition is logged and the log is a valid walk of the state machine
    allowed_moves = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED), (HALF_OPEN, OPEN)}
    assert all((old, new) in allowed_moves for old, new, _ in log)
    assert all(a[1] is b[0] for a, b in pairwise(log))
    assert (log[-1][1] if log else CLOSED) is cb.state
