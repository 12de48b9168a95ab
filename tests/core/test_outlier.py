"""Tests of outlier detection (meshgate.core.outlier)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core.outlier import OutlierDetector, OutlierError
from meshgate.core.retry import Failure


def detector(hosts: int = 10, **kwargs: object) -> OutlierDetector:
    """A detector watching hosts h0, h1, ..."""
    made = OutlierDetector.build(**kwargs)  # type: ignore[arg-type]
    for i in range(hosts):
        made.add_host(f"h{i}")
    return made


def fail(d: OutlierDetector, key: str, now: float, times: int, status: int = 500) -> None:
    for _ in range(times):
        d.record(key, now, status=status, failure=None)


def times_ejected(d: OutlierDetector, key: str, now: float) -> int:
    hosts = d.snapshot(now)["hosts"]
    assert isinstance(hosts, dict)
    value = hosts[key]["times_ejected"]
    assert isinstance(value, int)
    return value


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"consecutive_5xx": 0}, r"outlier detection consecutive_5xx must be an integer >= 1"),
        ({"consecutive_gateway_errors": -1}, r"consecutive_gateway_errors .* got -1"),
        ({"base_ejection_s": 0}, r"base_ejection_s must be a finite number > 0, got 0"),
        ({"max_ejection_s": float("nan")}, r"max_ejection_s .* got nan"),
        (
            {"base_ejection_s": 60.0, "max_ejection_s": 30.0},
            r"max_ejection_s must be >= base_ejection_s \(60\.0\), got 30\.0",
        ),
        ({"max_ejection_percent": -1}, r"max_ejection_percent must be in 0\.\.100, got -1"),
        ({"max_ejection_percent": 100.1}, r"max_ejection_percent .* got 100\.1"),
        ({"interval_s": float("inf")}, r"interval_s must be a finite number > 0, got inf"),
    ],
)
def test_bad_parameters_are_refused_with_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(OutlierError, match=message):
        OutlierDetector.build(**kwargs)  # type: ignore[arg-type]
    assert issubclass(OutlierError, ValueError)


def test_defaults_are_envoys() -> None:
    d = OutlierDetector.build()
    assert (d.consecutive_5xx, d.consecutive_gateway_errors) == (5, 5)
    assert (d.base_ejection_s, d.max_ejection_s) == (30.0, 300.0)
    assert (d.max_ejection_percent, d.interval_s) == (10.0, 10.0)
    assert len(d) == 0


def test_records_that_say_nothing_are_refused() -> None:
    d = detector()
    with pytest.raises(OutlierError, match="record needs a status or a failure, got neither"):
        d.record("h0", 0.0, status=None, failure=None)
    with pytest.raises(OutlierError, match=r"failure must be one of .* got 'oops'"):
        d.record("h0", 0.0, status=None, failure="oops")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- counting


@pytest.mark.parametrize("status", [500, 501, 502, 503, 504, 599])
def test_ejection_after_consecutive_5xx(status: int) -> None:
    d = detector()
    fail(d, "h0", 0.0, 4, status)
    assert not d.ejected("h0", 0.0)
    fail(d, "h0", 0.0, 1, status)
    assert d.ejected("h0", 0.0)
    assert d.ejections == 1


@pytest.mark.parametrize(
    ("outcomes", "ejected"),
    [
        ([503, 503, 503], True),
        ([502, 504, 503], True),
        (["reset", "timeout", "connect-failure"], True),
        ([502, 500, 502, 502], False),  # a 500 ends a run of gateway errors
        ([502, 200, 502, 502], False),
        ([502, 404, 502, 502], False),  # so does a 4xx
        ([502, 500, 502, 502, 502], True),
        ([500, 500, 500, 500], False),  # 4 of the 5 5xx needed
        ([500, 500, 500, 500, 503], True),  # the 5th 5xx
    ],
)
def test_gateway_errors_have_their_own_threshold(outcomes: list[int | str], ejected: bool) -> None:
    d = detector(consecutive_5xx=5, consecutive_gateway_errors=3)
    for outcome in outcomes:
        if isinstance(outcome, int):
            d.record("h0", 0.0, status=outcome, failure=None)
        else:
            d.record("h0", 0.0, status=None, failure=outcome)  # type: ignore[arg-type]
    assert d.ejected("h0", 0.0) is ejected


@pytest.mark.parametrize("failure", ["connect-failure", "reset", "timeout"])
def test_failures_count_as_5xx_too(failure: Failure) -> None:
    d = detector(consecutive_5xx=3, consecutive_gateway_errors=100)
    fail(d, "h0", 0.0, 2, 500)
    d.record("h0", 0.0, status=None, failure=failure)
    assert d.ejected("h0", 0.0)


@pytest.mark.parametrize("status", [200, 204, 301, 404, 409, 429, 499])
def test_any_non_5xx_resets_the_counts(status: int) -> None:
    d = detector()
    fail(d, "h0", 0.0, 4, 503)
    d.record("h0", 0.0, status=status, failure=None)
    fail(d, "h0", 0.0, 4, 503)
    assert not d.ejected("h0", 0.0)
    fail(d, "h0", 0.0, 1, 503)
    assert d.ejected("h0", 0.0)


def test_hosts_count_separately() -> None:
    d = detector(max_ejection_percent=50)
    for _ in range(4):
        fail(d, "h0", 0.0, 1)
        fail(d, "h1", 0.0, 1)
    assert not d.ejected("h0", 0.0) and not d.ejected("h1", 0.0)
    fail(d, "h1", 0.0, 1)
    assert d.available(["h0", "h1", "h2"], 0.0) == ["h0", "h2"]


# --------------------------------------------------------------------------- durations


def test_ejection_durations_grow_with_times_ejected_up_to_the_max() -> None:
    d = detector(base_ejection_s=30.0, max_ejection_s=100.0, interval_s=1000.0)
    now = 0.0
    durations = []
    for _ in range(6):
        fail(d, "h0", now, 5)
        assert d.ejected("h0", now)
        start = now
        while d.ejected("h0", now):
            now += 1.0
        durations.append(now - start)
    assert durations == [30.0, 60.0, 90.0, 100.0, 100.0, 100.0]
    # the count stops growing once the product reaches the max
    assert times_ejected(d, "h0", now) == 4


def test_hosts_return_by_themselves() -> None:
    d = detector()
    fail(d, "h3", 100.0, 5)
    assert d.ejected("h3", 100.0)
    assert d.ejected("h3", 129.999)
    assert not d.ejected("h3", 130.0)
    assert d.available([f"h{i}" for i in range(5)], 130.0) == ["h0", "h1", "h2", "h3", "h4"]


def test_times_ejected_decays_by_one_per_interval_not_ejected() -> None:
    d = detector(base_ejection_s=30.0, interval_s=10.0)
    fail(d, "h0", 0.0, 5)  # ejected until 30
    fail(d, "h0", 30.0, 5)  # times 2: until 90
    assert d.ejected("h0", 89.0)
    assert times_ejected(d, "h0", 89.0) == 2  # no decay while ejected
    assert times_ejected(d, "h0", 99.9) == 2
    assert times_ejected(d, "h0", 100.0) == 1
    assert times_ejected(d, "h0", 109.9) == 1
    fail(d, "h0", 109.9, 5)  # times 2 again: 60 s
    assert d.ejected("h0", 169.8)
    assert not d.ejected("h0", 169.9)
    assert times_ejected(d, "h0", 189.9) == 0  # two intervals later
    assert times_ejected(d, "h0", 1000.0) == 0
    fail(d, "h0", 1000.0, 5)
    assert not d.ejected("h0", 1030.0)  # base again


def test_outcomes_of_ejected_hosts_are_dropped() -> None:
    d = detector()
    fail(d, "h0", 0.0, 5)
    fail(d, "h0", 10.0, 20)  # requests still in flight when it was ejected
    assert not d.ejected("h0", 30.0)
    hosts = d.snapshot(30.0)["hosts"]
    assert isinstance(hosts, dict)
    assert hosts["h0"]["consecutive_5xx"] == 0
    assert d.ejections == 1


# --------------------------------------------------------------------------- cap


@pytest.mark.parametrize(
    ("hosts", "percent", "cap"),
    [
        (0, 10, 0),
        (1, 10, 0),
        (1, 100, 0),
        (2, 10, 1),
        (2, 100, 1),
        (3, 100, 2),
        (9, 10, 1),
        (10, 10, 1),
        (19, 10, 1),
        (20, 10, 2),
        (30, 10, 3),
        (100, 50, 50),
        (10, 0, 0),
        (2, 0, 0),
    ],
)
def test_max_ejected(hosts: int, percent: float, cap: int) -> None:
    assert detector(hosts, max_ejection_percent=percent).max_ejected() == cap


def test_cap_on_the_ejected_share() -> None:
    d = detector(10)  # 10 %: one host at a time
    fail(d, "h0", 0.0, 5)
    fail(d, "h1", 1.0, 5)
    assert d.ejected("h0", 1.0)
    assert not d.ejected("h1", 1.0)
    assert d.overflow == 1
    fail(d, "h1", 2.0, 1)  # counts kept: each further error retries the ejection
    assert d.overflow == 2
    assert not d.ejected("h1", 2.0)
    fail(d, "h1", 30.0, 1)  # h0 is back at 30: room for h1
    assert d.ejected("h1", 30.0)
    assert not d.ejected("h0", 30.0)
    assert d.ejections == 2


def test_never_all_hosts() -> None:
    single = detector(1, max_ejection_percent=100)
    fail(single, "h0", 0.0, 50)
    assert not single.ejected("h0", 0.0)
    assert single.available(["h0"], 0.0) == ["h0"]
    pair = detector(2, max_ejection_percent=100)
    fail(pair, "h0", 0.0, 5)
    fail(pair, "h1", 0.0, 5)
    assert pair.available(["h0", "h1"], 0.0) == ["h1"]


def test_removing_a_host_frees_its_place_and_forgets_it() -> None:
    d = detector(10)
    fail(d, "h0", 0.0, 5)
    d.remove_host("h0")
    d.remove_host("h0")
    d.remove_host("nobody")
    assert len(d) == 9
    assert not d.ejected("h0", 0.0)  # unknown hosts are never ejected
    fail(d, "h0", 0.0, 5)  # and their outcomes are dropped
    fail(d, "h1", 0.0, 5)
    assert d.ejected("h1", 0.0)
    d.add_host("h0")
    fail(d, "h0", 0.0, 4)
    d.add_host("h0")  # already watched: keeps its counts
    hosts = d.snapshot(0.0)["hosts"]
    assert isinstance(hosts, dict)
    assert hosts["h0"]["consecutive_5xx"] == 4


def test_snapshot() -> None:
    d = detector(3, max_ejection_percent=50)
    fail(d, "h1", 5.0, 5, 502)
    fail(d, "h2", 5.0, 2, 500)
    assert d.snapshot(6.0) == {
        "hosts": {
            "h0": {
                "ejected_until": None,
                "times_ejected": 0,
                "consecutive_5xx": 0,
                "consecutive_gateway_errors": 0,
            },
            "h1": {
                "ejected_until": 35.0,
                "times_ejected": 1,
                "consecutive_5xx": 0,
                "consecutive_gateway_errors": 0,
            },
            "h2": {
                "ejected_until": None,
                "times_ejected": 0,
                "consecutive_5xx": 2,
                "consecutive_gateway_errors": 0,
            },
        },
        "ejected": 1,
        "max_ejected": 1,
        "ejections": 1,
        "overflow": 0,
    }
    snapshot = d.snapshot(35.0)
    assert snapshot["ejected"] == 0
    hosts = snapshot["hosts"]
    assert isinstance(hosts, dict)
    assert hosts["h1"]["ejected_until"] is None


# --------------------------------------------------------------------------- properties

outcome = st.one_of(
    st.sampled_from([200, 404, 500, 502, 503, 504]),
    st.sampled_from(["connect-failure", "reset", "timeout"]),
)


@settings(max_examples=300)
@given(
    hosts=st.one_of(st.integers(1, 3), st.integers(1, 12)),
    percent=st.sampled_from([0.0, 10.0, 34.0, 50.0, 100.0, 100.0]),
    threshold=st.integers(1, 3),
    steps=st.lists(
        st.tuples(st.integers(0, 11), outcome, st.sampled_from([0.0, 0.0, 1.0, 10.0, 20.0])),
        max_size=200,
    ),
)
def test_ejected_hosts_stay_within_the_cap(
    hosts: int,
    percent: float,
    threshold: int,
    steps: list[tuple[int, int | str, float]],
) -> None:
    d = detector(
        hosts,
        consecutive_5xx=threshold,
        consecutive_gateway_errors=threshold,
        max_ejection_percent=percent,
        base_ejection_s=15.0,
    )
    keys = [f"h{i}" for i in range(hosts)]
    now = 0.0
    for index, result, dt in steps:
        now += dt
        key = f"h{index % hosts}"
        if isinstance(result, int):
            d.record(key, now, status=result, failure=None)
        else:
            d.record(key, now, status=None, failure=result)  # type: ignore[arg-type]
        available = d.available(keys, now)
        assert len(available) >= 1
        assert hosts - len(available) <= d.max_ejected()
        assert d.snapshot(now)["ejected"] == hosts - len(available)


def test_next_return_is_the_earliest_ejection_end() -> None:
    d = detector(hosts=10, consecutive_5xx=1, base_ejection_s=10.0, max_ejection_percent=50)
    assert d.next_return(0.0) is None
    fail(d, "h1", 5.0, 1)  # out until 15
    fail(d, "h2", 1.0, 1)  # out until 11
    assert d.next_return(2.0) == 11.0
    assert d.next_return(12.0) == 15.0
    assert d.next_return(15.0) is None
