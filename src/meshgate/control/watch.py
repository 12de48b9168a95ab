"""Watch revisions (sans-IO): the recent changes of the store, by global revision.

Every change to the store gets the next revision (one etcd transaction may make
several changes of one revision). `WatchLog` keeps the last
``capacity`` changes; a watcher that last saw revision ``r`` gets every change after
``r`` while they are all still kept, and is told to start over from a full snapshot
when some were compacted away (``r`` older than the oldest kept change allows).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """One change: ``value`` is the new JSON text, or None when ``key`` was deleted."""

    revision: int
    key: str
    value: str | None


class WatchLog:
    """The last ``capacity`` events after ``start_revision`` (the store's revision when
    the log started: nothing before it is known here)."""

    def __init__(self, start_revision: int, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.revision = start_revision
        self._floor = start_revision  # every event after this revision is kept
        self._events: deque[Event] = deque()
        self.capacity = capacity

    def append(self, event: Event) -> None:
        if event.revision < self.revision or (event.revision == self.revision and not self._events):
            raise ValueError(f"event revision {event.revision} is before the log's {self.revision}")
        self._events.append(event)
        self.revision = event.revision
        while len(self._events) > self.capacity:
            # Events of one revision (one etcd transaction) go together.
            self._floor = self._events.popleft().revision
            while self._events and self._events[0].revision == self._floor:
                self._events.popleft()

    def advance(self, revision: int) -> None:
        """The store moved to ``revision`` with no event this log shows (a change to
        a key watchers do not see)."""
        self.revision = max(self.revision, revision)

    def since(self, revision: int) -> list[Event] | None:
        """Events after ``revision``; None when some of them are no longer kept (the
        watcher needs a snapshot). A revision ahead of the log gets []."""
        if revision < self._floor:
            return None
        if revision >= self.revision:
            return []
        return [e for e in self._events if e.revision > revision]
