"""Tests of the concurrency thresholds per upstream (meshgate.core.resources)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgate.core.resources import KINDS, ResourceError, ResourceKind, ResourceLimits

# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_connections": -1}, r"max_connections must be an integer >= 0, got -1"),
        ({"max_pending_requests": 1.5}, r"max_pending_requests must be .* got 1\.5"),
        ({"max_requests": True}, r"max_requests must be an integer >= 0, got True"),
        ({"max_retries": "3"}, r"max_retries must be an integer >= 0, got '3'"),
    ],
)
def test_bad_limits_are_refused_with_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ResourceError, match=message):
        ResourceLimits.build(**kwargs)  # type: ignore[arg-type]
    assert issubclass(ResourceError, ValueError)


def test_defaults_are_envoys() -> None:
    assert KINDS == ("connections", "pending", "requests", "retries")
    assert ResourceLimits.build().snapshot() == {
        "connections": {"active": 0, "max": 1024, "overflow": 0},
        "pending": {"active": 0, "max": 1024, "overflow": 0},
        "requests": {"active": 0, "max": 1024, "overflow": 0},
        "retries": {"active": 0, "max": 3, "overflow": 0},
    }


def test_unknown_kinds_are_refused() -> None:
    limits = ResourceLimits.build()
    message = r"resource kind must be one of connections, pending, requests, retries, got 'x'"
    with pytest.raises(ResourceError, match=message):
        limits.try_acquire("x")  # type: ignore[arg-type]
    with pytest.raises(ResourceError, match=message):
        limits.release("x")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- acquire / release


@pytest.mark.parametrize(
    ("kind", "limit"),
    [("connections", 2), ("pending", 1), ("requests", 5), ("retries", 3)],
)
def test_each_kind_is_bounded_and_counts_overflow(kind: ResourceKind, limit: int) -> None:
    limits = ResourceLimits.build(
        max_connections=2, max_pending_requests=1, max_requests=5, max_retries=3
    )
    assert [limits.try_acquire(kind) for _ in range(limit + 2)] == [True] * limit + [False] * 2
    assert limits.overflow[kind] == 2
    limits.release(kind)
    assert limits.try_acquire(kind)
    assert not limits.try_acquire(kind)
    assert limits.overflow[kind] == 3
    snapshot = limits.snapshot()
    assert snapshot[kind] == {"active": limit, "max": limit, "overflow": 3}
    # the other kinds are untouched
    for other in KINDS:
        if other != kind:
            assert snapshot[other]["active"] == 0
            assert snapshot[other]["overflow"] == 0


def test_a_limit_of_zero_refuses_every_acquire() -> None:
    limits = ResourceLimits.build(max_pending_requests=0, max_retries=0)
    assert not limits.try_acquire("pending")
    assert not limits.try_acquire("retries")
    assert limits.try_acquire("requests")
    assert limits.overflow == {"connections": 0, "pending": 1, "requests": 0, "retries": 1}


def test_counts_never_go_negative() -> None:
    limits = ResourceLimits.build(max_retries=1)
    limits.release("retries")
    limits.release("retries")
    assert limits.snapshot()["retries"]["active"] == 0
    assert limits.try_acquire("retries")
    assert not limits.try_acquire("retries")


@given(
    st.lists(st.tuples(st.sampled_from(KINDS), st.booleans()), max_size=300),
    st.integers(0, 4),
)
def test_in_use_matches_a_model(ops: list[tuple[ResourceKind, bool]], limit: int) -> None:
    limits = ResourceLimits.build(
        max_connections=limit, max_pending_requests=limit, max_requests=limit, max_retries=limit
    )
    active = dict.fromkeys(KINDS, 0)
    overflow = dict.fromkeys(KINDS, 0)
    for kind, acquire in ops:
        if not acquire:
            limits.release(kind)
            active[kind] = max(0, active[kind] - 1)
        elif active[kind] < limit:
            assert limits.try_acquire(kind)
            active[kind] += 1
        else:
            assert not limits.try_acquire(kind)
            overflow[kind] += 1
        snapshot = limits.snapshot()
        assert all(0 <= snapshot[k]["active"] <= limit for k in KINDS)
    assert limits.snapshot() == {
        k: {"active": active[k], "max": limit, "overflow": overflow[k]} for k in KINDS
    }
