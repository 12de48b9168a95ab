"""Leases (sans-IO): a TTL per lease, renewed by heartbeats, expired by the clock.

The SQLite store keeps its leases here (etcd has its own); the caller deletes the
keys attached to each lease `expired()` returns. Time is injected (`now` arguments),
so tests drive expiry with a FakeClock.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

MIN_TTL_S = 1.0
MAX_TTL_S = 3600.0


class LeaseError(ValueError):
    """A lease is unknown, or a TTL is out of range."""


@dataclass(slots=True)
class Lease:
    id: int
    ttl_s: float
    expires_at: float


class LeaseTable:
    """Live leases and their deadlines; a heap finds the next expiry fast."""

    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}
        self._heap: list[tuple[float, int]] = []  # (deadline, id); stale entries skipped

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def grant(self, lease_id: int, ttl_s: float, now: float) -> Lease:
        """A new lease expiring ``ttl_s`` after ``now``."""
        if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
            raise LeaseError(f"lease ttl_s must be {MIN_TTL_S:g}..{MAX_TTL_S:g}, got {ttl_s:g}")
        if lease_id in self._leases:
            raise LeaseError(f"lease {lease_id} already exists")
        lease = Lease(lease_id, ttl_s, now + ttl_s)
        self._leases[lease_id] = lease
        heapq.heappush(self._heap, (lease.expires_at, lease_id))
        return lease

    def restore(self, lease_id: int, ttl_s: float, expires_at: float) -> Lease:
        """A lease read back from storage, with its stored deadline."""
        lease = Lease(lease_id, ttl_s, expires_at)
        self._leases[lease_id] = lease
        heapq.heappush(self._heap, (expires_at, lease_id))
        return lease

    def keepalive(self, lease_id: int, now: float) -> Lease | None:
        """Push the deadline to ``now + ttl``; None when the lease is gone or expired."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.expires_at <= now:
            return None
        lease.expires_at = now + lease.ttl_s
        heapq.heappush(self._heap, (lease.expires_at, lease_id))
        return lease

    def revoke(self, lease_id: int) -> bool:
        return self._leases.pop(lease_id, None) is not None

    def expired(self, now: float) -> list[int]:
        """Remove and return the leases whose deadline is at or before ``now``."""
        out: list[int] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, lease_id = heapq.heappop(self._heap)
            lease = self._leases.get(lease_id)
            if lease is not None and lease.expires_at == deadline:
                del self._leases[lease_id]
                out.append(lease_id)
        return out

    def next_deadline(self) -> float | None:
        """When the next lease may expire (None: no leases)."""
        while self._heap:
            deadline, lease_id = self._heap[0]
            lease = self._leases.get(lease_id)
            if lease is not None and lease.expires_at == deadline:
                return deadline
            heapq.heappop(self._heap)
        return None
