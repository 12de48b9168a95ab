"""Tests of fault injection decisions (meshgate.core.fault)."""

from __future__ import annotations

import math
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core.fault import (
    FAULT_HEADER,
    NO_FAULT,
    FaultDecision,
    FaultError,
    FaultPolicy,
    parse_fault_header,
)

N = 10_000


def rates(policy: FaultPolicy, header: str | None = None, seed: int = 7) -> tuple[float, float]:
    """Fraction of N decisions that delay and that abort."""
    rnd = random.Random(seed)
    delays = aborts = 0
    for _ in range(N):
        decision = policy.decide(rnd.random(), rnd.random(), header)
        delays += decision.delay_s is not None
        aborts += decision.abort_status is not None
    return delays / N, aborts / N


# --------------------------------------------------------------------------- percentages


@pytest.mark.parametrize(
    ("delay_percent", "abort_percent"),
    [(10, 25), (50, 0), (0, 5), (100, 100), (33.3, 66.6), (1, 99)],
)
def test_rates_follow_percentages(delay_percent: float, abort_percent: float) -> None:
    policy = FaultPolicy.build(
        delay_s=0.5, delay_percent=delay_percent, abort_status=503, abort_percent=abort_percent
    )
    delay_rate, abort_rate = rates(policy)
    assert delay_rate == pytest.approx(delay_percent / 100, abs=0.02)
    assert abort_rate == pytest.approx(abort_percent / 100, abs=0.02)


def test_delay_and_abort_are_independent() -> None:
    policy = FaultPolicy.build(delay_s=0.5, delay_percent=10, abort_status=503, abort_percent=25)
    rnd = random.Random(99)
    both = 0
    for _ in range(N):
        decision = policy.decide(rnd.random(), rnd.random(), None)
        both += decision.delay_s is not None and decision.abort_status is not None
    assert both / N == pytest.approx(0.10 * 0.25, abs=0.01)


def test_decision_values_and_thresholds() -> None:
    policy = FaultPolicy.build(delay_s=0.25, delay_percent=10, abort_status=429, abort_percent=25)
    assert policy.decide(0.0999, 0.2499, None) == FaultDecision(0.25, 429)
    assert policy.decide(0.1, 0.2499, None) == FaultDecision(None, 429)
    assert policy.decide(0.0999, 0.25, None) == FaultDecision(0.25, None)
    assert policy.decide(0.1, 0.25, None) == NO_FAULT
    assert policy.decide(0.0, 0.0, None) == FaultDecision(0.25, 429)
    assert policy.decide(0.9999999, 0.9999999, None) == NO_FAULT


def test_without_header_trigger_the_header_is_ignored() -> None:
    policy = FaultPolicy.build(delay_s=1, delay_percent=100)
    assert policy.decide(0.5, 0.5, "abort=500") == FaultDecision(1, None)
    assert policy.decide(0.5, 0.5, "garbage") == FaultDecision(1, None)
    assert policy.decide(0.5, 0.5, None) == FaultDecision(1, None)


def test_zero_and_hundred_percent_are_exact() -> None:
    never = FaultPolicy.build(delay_s=1, delay_percent=0, abort_status=500, abort_percent=100)
    for r in (0.0, 0.5, 0.9999999):
        assert never.decide(r, r, None) == FaultDecision(None, 500)


# --------------------------------------------------------------------------- header trigger


def test_header_trigger_needs_the_header() -> None:
    policy = FaultPolicy.build(abort_status=503, abort_percent=100, header_trigger=True)
    assert policy.decide(0.0, 0.0, None) == NO_FAULT
    assert policy.decide(0.0, 0.0, "") == FaultDecision(None, 503)


@pytest.mark.parametrize("header", ["", " ", "\t", ",", " , "])
def test_header_without_directives_applies_configured_percentages(header: str) -> None:
    policy = FaultPolicy.build(
        delay_s=0.1, delay_percent=10, abort_status=503, abort_percent=25, header_trigger=True
    )
    delay_rate, abort_rate = rates(policy, header)
    assert delay_rate == pytest.approx(0.10, abs=0.02)
    assert abort_rate == pytest.approx(0.25, abs=0.02)
    assert rates(policy, None) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("abort=503", FaultDecision(None, 503)),
        ("delay=0.25", FaultDecision(0.25, None)),
        ("abort=503,delay=0.25", FaultDecision(0.25, 503)),
        ("delay=0.25, abort=418", FaultDecision(0.25, 418)),
        ("  abort = 500 ,  delay = 2  ", FaultDecision(2.0, 500)),
        ("ABORT=599", FaultDecision(None, 599)),
        ("abort=400", FaultDecision(None, 400)),
        ("delay=.5", FaultDecision(0.5, None)),
        ("delay=3.", FaultDecision(3.0, None)),
        ("delay=60", FaultDecision(5.0, None)),  # clamped to max_delay_s
        ("delay=" + "9" * 400, FaultDecision(5.0, None)),  # float overflow -> inf -> clamped
        ("delay=0", NO_FAULT),
        ("abort=503,", FaultDecision(None, 503)),  # empty list element skipped
    ],
)
def test_header_directives_apply_exactly_and_always(header: str, expected: FaultDecision) -> None:
    # configured percentages are 0: directives alone decide, at 100%
    policy = FaultPolicy.build(delay_s=1, abort_status=502, header_trigger=True, max_delay_s=5.0)
    for r in (0.0, 0.5, 0.9999999):
        assert policy.decide(r, r, header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "abort",
        "abort=",
        "abort=5o3",
        "abort=399",
        "abort=600",
        "abort=200",
        "abort=0503",
        "abort=+503",
        "abort=503.0",
        "abort=\uff15\uff10\uff13",  # fullwidth digits
        "delay=1_0",  # float() would take it
        "delay=-1",
        "delay=nan",
        "delay=inf",
        "delay=1e3",
        "delay=1,5",
        "delay=0x10",
        "delay=",
        "delay=.",
        "abort=503,abort=500",
        "delay=1,delay=2",
        "abort=503;delay=1",
        "latency=1",
        "abort=503,bogus",
        "yes please",
        "abort:503",
    ],
)
def test_unreadable_header_means_no_fault(header: str) -> None:
    policy = FaultPolicy.build(
        delay_s=1, delay_percent=100, abort_status=503, abort_percent=100, header_trigger=True
    )
    assert parse_fault_header(header) is None
    assert policy.decide(0.0, 0.0, header) == NO_FAULT


@settings(max_examples=300, deadline=None)
@given(header=st.text(max_size=40))
def test_any_header_is_decided_without_raising(header: str) -> None:
    policy = FaultPolicy.build(header_trigger=True, max_delay_s=2.0)
    decision = policy.decide(0.5, 0.5, header)
    if decision.delay_s is not None:
        assert 0 < decision.delay_s <= 2.0
    if decision.abort_status is not None:
        assert 400 <= decision.abort_status <= 599


@settings(max_examples=200, deadline=None)
@given(
    status=st.integers(400, 599),
    delay=st.floats(0, 1000, allow_nan=False).map(lambda d: round(d, 3)),
    order=st.booleans(),
)
def test_parse_round_trips_directives(status: int, delay: float, order: bool) -> None:
    items = [f"abort={status}", f"delay={delay}"]
    header = ", ".join(reversed(items) if order else items)
    assert parse_fault_header(header) == (delay, status)


def test_parse_fault_header_examples() -> None:
    assert parse_fault_header("") == (None, None)
    assert parse_fault_header("abort=503") == (None, 503)
    assert parse_fault_header("delay=0.25") == (0.25, None)
    assert parse_fault_header("abort=503, delay=0.25") == (0.25, 503)
    assert parse_fault_header("abort=600") is None


def test_header_trigger_alone_is_a_valid_policy() -> None:
    policy = FaultPolicy.build(header_trigger=True)
    assert policy.decide(0.0, 0.0, "") == NO_FAULT
    assert policy.decide(0.0, 0.0, "abort=503") == FaultDecision(None, 503)
    assert policy.decide(0.0, 0.0, "delay=20") == FaultDecision(10.0, None)  # default max 10 s


def test_header_name() -> None:
    assert FAULT_HEADER == "x-meshgate-fault"


# --------------------------------------------------------------------------- build


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "fault policy does nothing"),
        ({"delay_s": 1}, "fault policy does nothing"),
        ({"abort_status": 503}, "fault policy does nothing"),
        ({"delay_s": 0, "delay_percent": 50}, "fault policy does nothing"),
        ({"delay_s": 1, "abort_status": 503, "max_delay_s": 5}, "does nothing"),
        ({"delay_percent": 10}, "delay_percent is set but delay_s is not"),
        ({"abort_percent": 10}, "abort_percent is set but abort_status is not"),
        ({"delay_s": 1, "delay_percent": -1}, "delay_percent must be in 0..100, got -1"),
        ({"delay_s": 1, "delay_percent": 100.5}, "delay_percent must be in 0..100"),
        ({"delay_s": 1, "delay_percent": math.nan}, "delay_percent must be in 0..100"),
        ({"abort_status": 503, "abort_percent": 101}, "abort_percent must be in 0..100"),
        ({"abort_status": 399, "abort_percent": 1}, "abort_status must be in 400..599, got 399"),
        ({"abort_status": 600, "abort_percent": 1}, "abort_status must be in 400..599"),
        ({"delay_s": -0.1, "delay_percent": 1}, "delay_s must be in 0..10.0"),
        ({"delay_s": 11, "delay_percent": 1}, "delay_s must be in 0..10.0 (max_delay_s), got 11"),
        ({"delay_s": 3, "delay_percent": 1, "max_delay_s": 2}, "delay_s must be in 0..2"),
        ({"delay_s": math.nan, "delay_percent": 1}, "delay_s must be in"),
        ({"header_trigger": True, "max_delay_s": -1}, "max_delay_s must be a finite number"),
        ({"header_trigger": True, "max_delay_s": math.inf}, "max_delay_s must be a finite"),
    ],
)
def test_build_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(FaultError, match=re.escape(message)):
        FaultPolicy.build(**kwargs)  # type: ignore[arg-type]


def test_zero_delay_is_no_delay() -> None:
    policy = FaultPolicy.build(delay_s=0, delay_percent=100, abort_status=500, abort_percent=100)
    assert policy.decide(0.0, 0.0, None) == FaultDecision(None, 500)


def test_fault_decision_is_frozen() -> None:
    with pytest.raises(AttributeError):
        NO_FAULT.delay_s = 1.0  # type: ignore[misc]


def test_describe() -> None:
    both = FaultPolicy.build(delay_s=0.5, delay_percent=10, abort_status=503, abort_percent=25)
    assert both.describe() == "delay 0.5s for 10% of requests; abort 503 for 25% of requests"
    triggered = FaultPolicy.build(abort_status=503, abort_percent=100, header_trigger=True)
    text = triggered.describe()
    assert text.startswith("only requests with x-meshgate-fault: empty -> abort 503 for 100%")
    assert "delay up to 10s" in text
    assert "empty -> nothing" in FaultPolicy.build(header_trigger=True).describe()


def test_fault_error_is_a_value_error() -> None:
    assert issubclass(FaultError, ValueError)
