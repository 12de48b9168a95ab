"""Tests of active health state and panic mode (meshgate.core.health)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core.health import (
    HealthError,
    HealthPolicy,
    HealthState,
    HealthTable,
    HealthTransition,
    routable,
)


def table(random_: Callable[[], float] = lambda: 0.5, **kwargs: object) -> HealthTable:
    """A table tracking host h0 under a policy built from `kwargs`."""
    made = HealthTable(HealthPolicy.build(**kwargs), random_)  # type: ignore[arg-type]
    made.add("h0")
    return made


# --------------------------------------------------------------------------- policy


def test_defaults_are_the_seeds_and_design_mds() -> None:
    policy = HealthPolicy.build()
    assert (policy.interval_s, policy.timeout_s) == (10.0, 5.0)
    assert (policy.unhealthy_threshold, policy.healthy_threshold) == (3, 2)
    assert (policy.jitter_percent, policy.initially_healthy) == (10.0, True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval_s": 0}, r"health check interval_s must be a finite number > 0, got 0"),
        ({"interval_s": float("inf")}, r"interval_s must be a finite number > 0, got inf"),
        ({"timeout_s": -1.0}, r"timeout_s must be a finite number > 0, got -1.0"),
        ({"timeout_s": float("nan")}, r"timeout_s .* got nan"),
        ({"unhealthy_threshold": 0}, r"unhealthy_threshold must be an integer >= 1, got 0"),
        ({"healthy_threshold": True}, r"healthy_threshold must be an integer >= 1, got True"),
        ({"healthy_threshold": 2.0}, r"healthy_threshold must be an integer >= 1, got 2.0"),
        ({"jitter_percent": -1}, r"jitter_percent must be in 0..100 \(100 excluded\), got -1"),
        ({"jitter_percent": 100}, r"jitter_percent .* got 100"),
        ({"initially_healthy": 1}, r"initially_healthy must be true or false, got 1"),
    ],
)
def test_bad_policies_are_refused_with_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(HealthError, match=message):
        HealthPolicy.build(**kwargs)  # type: ignore[arg-type]
    assert issubclass(HealthError, ValueError)


# --------------------------------------------------------------------------- transitions

# A step: (clock reading, check passed, transition expected (None, "healthy" or
# "unhealthy"), healthy after, consecutive failures after, consecutive successes after).
Step = tuple[float, bool, str | None, bool, int, int]


def run(t: HealthTable, steps: list[Step]) -> None:
    for i, (now, ok, transition, healthy, failures, successes) in enumerate(steps):
        got = t.record("h0", ok, now)
        if transition is None:
            assert got is None, f"step {i}"
        else:
            assert got is not None, f"step {i}"
            assert (got.key, got.healthy, got.at) == ("h0", transition == "healthy", now)
        assert t.healthy("h0") is healthy, f"step {i}"
        state = t.state("h0")
        assert state is not None
        assert (state.consecutive_failures, state.consecutive_successes) == (
            failures,
            successes,
        ), f"step {i}"
        assert state.last_check == now


@pytest.mark.parametrize(
    ("kwargs", "steps"),
    [
        pytest.param(
            {},
            [
                (10.0, False, None, True, 1, 0),
                (20.0, False, None, True, 2, 0),
                (30.0, False, "unhealthy", False, 3, 0),
                (40.0, False, None, False, 4, 0),  # counts go on, no second transition
                (50.0, True, None, False, 0, 1),
                (60.0, True, "healthy", True, 0, 2),
                (70.0, True, None, True, 0, 3),
            ],
            id="defaults: out after 3 failures, back after 2 successes",
        ),
        pytest.param(
            {},
            [
                (1.0, False, None, True, 1, 0),
                (2.0, False, None, True, 2, 0),
                (3.0, True, None, True, 0, 1),  # a success resets the failures
                (4.0, False, None, True, 1, 0),
                (5.0, False, None, True, 2, 0),
                (6.0, False, "unhealthy", False, 3, 0),
                (7.0, True, None, False, 0, 1),
                (8.0, False, None, False, 1, 0),  # a failure resets the successes
                (9.0, True, None, False, 0, 1),
                (10.0, True, "healthy", True, 0, 2),
            ],
            id="resets",
        ),
        pytest.param(
            {"initially_healthy": False},
            [
                (1.0, True, None, False, 0, 1),
                (2.0, True, "healthy", True, 0, 2),
            ],
            id="initially unhealthy: in after 2 successes",
        ),
        pytest.param(
            {"initially_healthy": False},
            [
                (1.0, False, None, False, 1, 0),
                (2.0, False, None, False, 2, 0),
                (3.0, False, None, False, 3, 0),  # already unhealthy: no transition
                (4.0, True, None, False, 0, 1),
            ],
            id="initially unhealthy: failures change nothing",
        ),
        pytest.param(
            {"unhealthy_threshold": 1, "healthy_threshold": 1},
            [
                (1.0, True, None, True, 0, 1),
                (2.0, False, "unhealthy", False, 1, 0),
                (3.0, True, "healthy", True, 0, 1),
                (4.0, False, "unhealthy", False, 1, 0),
            ],
            id="thresholds of 1 flip on every change",
        ),
        pytest.param(
            {"unhealthy_threshold": 5, "healthy_threshold": 3},
            [(float(i), False, None, True, i, 0) for i in range(1, 5)]
            + [(5.0, False, "unhealthy", False, 5, 0)]
            + [(6.0, True, None, False, 0, 1), (7.0, True, None, False, 0, 2)]
            + [(8.0, True, "healthy", True, 0, 3)],
            id="other thresholds",
        ),
    ],
)
def test_transitions(kwargs: dict[str, object], steps: list[Step]) -> None:
    run(table(**kwargs), steps)  # type: ignore[arg-type]


def test_transitions_say_how_many_checks_in_a_row() -> None:
    t = table()
    for now in (1.0, 2.0):
        assert t.record("h0", False, now) is None
    assert t.record("h0", False, 3.0) == HealthTransition("h0", False, 3.0, 3)
    t.record("h0", True, 4.0)
    assert t.record("h0", True, 5.0) == HealthTransition("h0", True, 5.0, 2)


def test_last_transition_is_kept_until_the_next_one() -> None:
    t = table()
    assert t.state("h0") == HealthState(healthy=True)
    for now in (1.0, 2.0, 3.0, 4.0):
        t.record("h0", False, now)
    state = t.state("h0")
    assert state is not None
    assert (state.last_check, state.last_transition) == (4.0, 3.0)


def test_hosts_are_separate() -> None:
    t = table(unhealthy_threshold=2)
    t.add("h1")
    t.record("h0", False, 1.0)
    t.record("h1", False, 1.0)
    t.record("h1", False, 2.0)
    assert (t.healthy("h0"), t.healthy("h1")) == (True, False)


# --------------------------------------------------------------------------- add, remove


def test_add_keeps_a_tracked_hosts_state() -> None:
    t = table(unhealthy_threshold=1)
    t.record("h0", False, 1.0)
    t.add("h0")
    assert not t.healthy("h0")
    assert len(t) == 1


def test_initially_unhealthy_hosts_wait_for_their_checks() -> None:
    t = table(initially_healthy=False)
    assert "h0" in t and not t.healthy("h0")


def test_remove_stops_tracking_and_forgets() -> None:
    t = table(unhealthy_threshold=1)
    t.record("h0", False, 1.0)
    t.remove("h0")
    assert "h0" not in t and len(t) == 0
    assert not t.healthy("h0")  # a host not tracked is not healthy
    assert t.state("h0") is None
    assert t.record("h0", False, 2.0) is None  # a check that ended after the removal
    assert "h0" not in t
    with pytest.raises(KeyError):
        t.next_check_at("h0", 2.0)
    t.remove("h0")  # again: nothing to do
    t.add("h0")
    assert t.healthy("h0")  # afresh
    assert t.state("h0") == HealthState(healthy=True)


# --------------------------------------------------------------------------- scheduling


@pytest.mark.parametrize(
    ("draw", "expected"),
    [(0.0, 109.0), (0.25, 109.5), (0.5, 110.0), (0.75, 110.5)],
)
def test_next_check_is_the_interval_give_or_take_the_jitter(draw: float, expected: float) -> None:
    t = table(lambda: draw)
    assert t.next_check_at("h0", 100.0) == pytest.approx(expected)
    state = t.state("h0")
    assert state is not None and state.next_check == pytest.approx(expected)


def test_no_jitter_means_exactly_the_interval() -> None:
    t = table(random.Random(1).random, interval_s=3.0, jitter_percent=0.0)
    assert {t.next_check_at("h0", 7.0) for _ in range(100)} == {10.0}


@pytest.mark.parametrize(("interval", "jitter"), [(10.0, 10.0), (2.0, 50.0), (30.0, 99.0)])
def test_jitter_stays_within_bounds_over_many_draws(interval: float, jitter: float) -> None:
    t = table(random.Random(7).random, interval_s=interval, jitter_percent=jitter)
    waits = [t.next_check_at("h0", 1000.0) - 1000.0 for _ in range(20_000)]
    low, high = interval * (1 - jitter / 100), interval * (1 + jitter / 100)
    assert all(low <= wait <= high for wait in waits)
    spread = high - low
    # Both sides are reached and the waits average the interval.
    assert min(waits) < low + spread * 0.01 and max(waits) > high - spread * 0.01
    assert sum(waits) / len(waits) == pytest.approx(interval, rel=0.01)


# --------------------------------------------------------------------------- snapshot


def test_snapshot_for_the_admin_api() -> None:
    t = table()
    t.add("h1")
    for now in (1.0, 2.0, 3.0):
        t.record("h1", False, now)
    t.next_check_at("h1", 3.0)
    t.record("h0", True, 3.0)
    assert t.snapshot() == {
        "policy": {
            "interval_s": 10.0,
            "timeout_s": 5.0,
            "unhealthy_threshold": 3,
            "healthy_threshold": 2,
            "jitter_percent": 10.0,
            "initially_healthy": True,
        },
        "hosts": {
            "h0": {
                "healthy": True,
                "consecutive_failures": 0,
                "consecutive_successes": 1,
                "last_check": 3.0,
                "last_transition": None,
                "next_check": None,
            },
            "h1": {
                "healthy": False,
                "consecutive_failures": 3,
                "consecutive_successes": 0,
                "last_check": 3.0,
                "last_transition": 3.0,
                "next_check": 13.0,
            },
        },
        "healthy": 1,
    }


# --------------------------------------------------------------------------- panic mode

HOSTS = [f"h{i}" for i in range(10)]


@pytest.mark.parametrize(
    ("healthy_count", "threshold", "expected", "panic"),
    [
        (10, 50.0, HOSTS, False),
        (6, 50.0, HOSTS[:6], False),
        (5, 50.0, HOSTS[:5], False),  # exactly the threshold: not below it
        (4, 50.0, HOSTS, True),  # panic: all ten
        (1, 50.0, HOSTS, True),
        (0, 50.0, [], True),  # none healthy: nobody (503), as the seed
        (4, 30.0, HOSTS[:4], False),
        (2, 30.0, HOSTS, True),
        (9, 100.0, HOSTS, True),
        (10, 100.0, HOSTS, False),
        (1, 0.0, HOSTS[:1], False),  # 0 disables panic mode
        (0, 0.0, [], False),
    ],
)
def test_panic_mode(healthy_count: int, threshold: float, expected: list[str], panic: bool) -> None:
    up = set(HOSTS[:healthy_count])
    assert routable(HOSTS, up.__contains__, threshold) == (expected, panic)


def test_panic_threshold_defaults_to_envoys_50_percent() -> None:
    assert routable(HOSTS, set(HOSTS[:4]).__contains__) == (HOSTS, True)
    assert routable(HOSTS, set(HOSTS[:5]).__contains__) == (HOSTS[:5], False)


def test_no_hosts_is_no_panic() -> None:
    assert routable([], lambda key: True) == ([], False)


def test_routable_keeps_the_order_and_returns_a_new_list() -> None:
    hosts = ["c", "a", "b", "d"]
    picked, _ = routable(hosts, lambda key: key != "a")
    assert picked == ["c", "b", "d"]
    everyone, panic = routable(hosts, lambda key: key == "a")
    assert (everyone, panic) == (hosts, True) and everyone is not hosts


@pytest.mark.parametrize("threshold", [-1.0, 100.5, float("nan")])
def test_bad_panic_thresholds_are_refused(threshold: float) -> None:
    with pytest.raises(HealthError, match=r"panic_threshold_percent must be in 0..100, got"):
        routable(HOSTS, lambda key: True, threshold)


def test_active_and_passive_signals_combine() -> None:
    """Ejected hosts (outlier detection) count as unhealthy, health checks or not."""
    t = HealthTable(HealthPolicy.build(unhealthy_threshold=1), lambda: 0.5)
    for key in HOSTS:
        t.add(key)
    for key in HOSTS[:3]:
        t.record(key, False, 1.0)
    ejected = {"h3", "h4"}

    def usable(key: str) -> bool:
        return t.healthy(key) and key not in ejected

    assert routable(HOSTS, usable) == (HOSTS[5:], False)
    ejected.add("h5")
    assert routable(HOSTS, usable) == (HOSTS, True)


def test_routable_takes_any_host_objects() -> None:
    hosts = [("h0", True), ("h1", False), ("h2", True)]
    assert routable(hosts, lambda host: host[1]) == ([("h0", True), ("h2", True)], False)


# --------------------------------------------------------------------------- model


def reference_healthy(results: list[bool], initially: bool, unhealthy: int, healthy: int) -> bool:
    """The state after `results`, from the runs alone: the latest run of failures
    at least `unhealthy` long or of successes at least `healthy` long decides."""
    runs: list[tuple[bool, int]] = []
    for ok in results:
        if runs and runs[-1][0] == ok:
            runs[-1] = (ok, runs[-1][1] + 1)
        else:
            runs.append((ok, 1))
    for ok, length in reversed(runs):
        if length >= (healthy if ok else unhealthy):
            return ok
    return initially


def trailing(results: list[bool], ok: bool) -> int:
    count = 0
    for result in reversed(results):
        if result != ok:
            break
        count += 1
    return count


operations = st.lists(
    st.one_of(
        st.tuples(st.just("record"), st.sampled_from(["a", "b"]), st.booleans()),
        st.tuples(st.sampled_from(["add", "remove"]), st.sampled_from(["a", "b"]), st.just(True)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    operations,
    st.integers(1, 4),
    st.integers(1, 4),
    st.booleans(),
)
def test_state_matches_a_reference_model_of_consecutive_counts(
    ops: list[tuple[str, str, bool]], unhealthy: int, healthy: int, initially: bool
) -> None:
    t = HealthTable(
        HealthPolicy.build(
            unhealthy_threshold=unhealthy, healthy_threshold=healthy, initially_healthy=initially
        ),
        lambda: 0.5,
    )
    # Per tracked key: every result recorded since it was added, with its time.
    history: dict[str, list[tuple[bool, float]]] = {}
    transitions: dict[str, float] = {}
    for step, (op, key, ok) in enumerate(ops):
        now = float(step)
        if op == "add":
            t.add(key)
            history.setdefault(key, [])
        elif op == "remove":
            t.remove(key)
            history.pop(key, None)
            transitions.pop(key, None)
        else:
            results = [r for r, _ in history.get(key, [])]
            before = reference_healthy(results, initially, unhealthy, healthy)
            got = t.record(key, ok, now)
            if key not in history:
                assert got is None
                continue
            history[key].append((ok, now))
            after = reference_healthy([*results, ok], initially, unhealthy, healthy)
            if after != before:
                transitions[key] = now
                assert got == HealthTransition(key, after, now, trailing([*results, ok], ok))
            else:
                assert got is None
        for tracked in ("a", "b"):
            if tracked not in history:
                assert tracked not in t and t.state(tracked) is None
                continue
            results = [r for r, _ in history[tracked]]
            assert t.state(tracked) == HealthState(
                healthy=reference_healthy(results, initially, unhealthy, healthy),
                consecutive_failures=trailing(results, False),
                consecutive_successes=trailing(results, True),
                last_check=history[tracked][-1][1] if results else None,
                last_transition=transitions.get(tracked),
            )


def test_on_change_hears_every_transition_and_nothing_else() -> None:
    heard: list[bool] = []
    t = HealthTable(
        HealthPolicy.build(unhealthy_threshold=2, healthy_threshold=1),
        lambda: 0.5,
        on_change=lambda: heard.append(t.healthy("h0")),
    )
    t.add("h0")
    for ok in (False, True, False, False, False, True, True):
        t.record("h0", ok, 0.0)
    assert heard == [False, True]
    t.record("gone", False, 0.0)  # not tracked: no transition
    assert heard == [False, True]
