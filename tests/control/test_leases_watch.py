"""Lease expiry with a fake clock; watch revisions (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgate.control.leases import LeaseError, LeaseTable
from meshgate.control.watch import Event, WatchLog
from meshgate.testing import FakeClock


def test_lease_expires_without_heartbeats() -> None:
    clock = FakeClock()
    table = LeaseTable()
    table.grant(1, 10, clock())
    table.grant(2, 30, clock())
    clock.advance(9.9)
    assert table.expired(clock()) == []
    clock.advance(0.1)
    assert table.expired(clock()) == [1]
    assert 1 not in table and 2 in table
    assert table.keepalive(1, clock()) is None  # gone: register again
    assert table.next_deadline() == 1030.0


def test_heartbeats_keep_a_lease_alive() -> None:
    clock = FakeClock()
    table = LeaseTable()
    table.grant(7, 10, clock())
    for _ in range(10):
        clock.advance(8)
        lease = table.keepalive(7, clock())
        assert lease is not None and lease.expires_at == clock() + 10
        assert table.expired(clock()) == []
    clock.advance(10)
    assert table.expired(clock()) == [7]
    assert table.next_deadline() is None


def test_revoked_lease_never_expires_and_bad_ttl() -> None:
    table = LeaseTable()
    table.grant(1, 5, 0)
    assert table.revoke(1)
    assert table.expired(100) == []
    with pytest.raises(LeaseError, match="ttl_s must be"):
        table.grant(2, 0.5, 0)
    table.grant(3, 5, 0)
    with pytest.raises(LeaseError, match="already exists"):
        table.grant(3, 5, 0)


def test_keepalive_at_the_deadline_is_too_late() -> None:
    table = LeaseTable()
    table.grant(1, 5, 0)
    assert table.keepalive(1, 5) is None


@given(
    start=st.integers(0, 50),
    steps=st.lists(
        st.tuples(st.integers(1, 3), st.sampled_from("abcde"), st.booleans()), max_size=60
    ),
    capacity=st.integers(1, 20),
    since_offset=st.integers(-5, 70),
)
def test_watch_since_gives_exactly_the_missed_changes_or_a_snapshot(
    start: int,
    steps: list[tuple[int, str, bool]],
    capacity: int,
    since_offset: int,
) -> None:
    """Replaying since(r) over the state at r gives the current state; None only when
    a change after r is no longer kept."""
    log = WatchLog(start, capacity)
    states: dict[int, dict[str, str]] = {start: {}}
    state: dict[str, str] = {}
    rev = start
    all_events: list[Event] = []
    for gap, key, delete in steps:
        rev += gap
        event = Event(rev, key, None if delete else f"v{rev}")
        log.append(event)
        all_events.append(event)
        if delete:
            state.pop(key, None)
        else:
            state[key] = f"v{rev}"
        states[rev] = dict(state)
    since = start + since_offset
    got = log.since(since)
    known = [r for r in states if r <= since]
    if got is None:
        dropped = all_events[: max(0, len(all_events) - capacity)]
        assert since < start or any(e.revision > since for e in dropped)
        return
    assert all(e.revision > since for e in got)
    assert [e for e in all_events if e.revision > since] == got
    if known:
        replay = dict(states[max(known)])
        for e in got:
            if e.value is None:
                replay.pop(e.key, None)
            else:
                replay[e.key] = e.value
        assert replay == state


def test_watch_log_snapshot_needed_after_compaction() -> None:
    log = WatchLog(10, capacity=2)
    for rev in (11, 12, 13):
        log.append(Event(rev, "k", str(rev)))
    assert log.since(10) is None  # event 11 was dropped
    assert log.since(11) == [Event(12, "k", "12"), Event(13, "k", "13")]
    assert log.since(13) == []
    assert log.since(99) == []
    with pytest.raises(ValueError, match="before the log's"):
        log.append(Event(12, "k", "x"))
    log.append(Event(13, "j", "same revision"))  # one transaction, two keys
    assert log.since(12) == [Event(13, "k", "13"), Event(13, "j", "same revision")]
    log.advance(20)
    assert log.revision == 20 and log.since(13) == []
