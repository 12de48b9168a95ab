"""Concurrency thresholds per upstream (sans-IO), Envoy's circuit breaking model.

Four resources are counted: open connections, requests waiting for a
connection ("pending"), requests in flight and retries in flight. The caller
takes one unit with `try_acquire` before using a resource and gives it back
with `release` exactly once; a refused acquire is an overflow, answered with 503
and `x-meshgate-overflow: <kind>`. An overflow is local: it must not count as a
failure of the upstream (report it to the circuit breaker as ignored).
"""

from __future__ import annotations

from typing import Literal, get_args

ResourceKind = Literal["connections", "pending", "requests", "retries"]
KINDS: tuple[ResourceKind, ...] = get_args(ResourceKind)


class ResourceError(ValueError):
    """Resource limits are badly configured, or a resource kind is unknown."""


class ResourceLimits:
    """At most `max_*` units of each resource in use at once.

    A limit of 0 refuses every acquire of that kind (e.g. max_pending_requests
    0: never queue for a connection). `overflow[kind]` counts refused acquires.
    A release without a unit held does nothing: counts never go negative.
    """

    __slots__ = ("_active", "_max", "overflow")

    def __init__(self, limits: dict[ResourceKind, int]) -> None:
        """Use `build`, which validates; this only stores."""
        self._max = limits
        self._active: dict[ResourceKind, int] = dict.fromkeys(KINDS, 0)
        self.overflow: dict[ResourceKind, int] = dict.fromkeys(KINDS, 0)

    @classmethod
    def build(
        cls,
        *,
        max_connections: int = 1024,
        max_pending_requests: int = 1024,
        max_requests: int = 1024,
        max_retries: int = 3,
    ) -> ResourceLimits:
        """Validated limits, nothing in use. The defaults are Envoy's."""
        limits: dict[ResourceKind, int] = {
            "connections": max_connections,
            "pending": max_pending_requests,
            "requests": max_requests,
            "retries": max_retries,
        }
        names = ("max_connections", "max_pending_requests", "max_requests", "max_retries")
        for name, value in zip(names, limits.values(), strict=True):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ResourceError(f"{name} must be an integer >= 0, got {value!r}")
        return cls(limits)

    def try_acquire(self, kind: ResourceKind) -> bool:
        """Take one unit of `kind` if one is free; a refused acquire counts as an overflow."""
        active = self._active
        n = active.get(kind)
        if n is None:
            raise _unknown(kind)
        if n >= self._max[kind]:
            self.overflow[kind] += 1
            return False
        active[kind] = n + 1
        return True

    def release(self, kind: ResourceKind) -> None:
        """Give back one unit of `kind`."""
        active = self._active
        n = active.get(kind)
        if n is None:
            raise _unknown(kind)
        if n:
            active[kind] = n - 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Per kind: units in use, the limit and the overflow count, for the admin API."""
        return {
            kind: {
                "active": self._active[kind],
                "max": self._max[kind],
                "overflow": self.overflow[kind],
            }
            for kind in KINDS
        }


def _unknown(kind: object) -> ResourceError:
    return ResourceError(f"resource kind must be one of {', '.join(KINDS)}, got {kind!r}")
