"""Active health state (sans-IO): which hosts pass their health checks, and when to check next.

The checker (the I/O side) runs one check per host at a time, reports each
result with `HealthTable.record(key, ok, now)` and sleeps until
`next_check_at(key, now)`; when a host is removed from its service the caller
calls `remove(key)`, and the checker stops once `key in table` is false.
Clock readings come in as `now`, in seconds; randomness as a function returning
a float in [0, 1).

Transitions of one host (its consecutive counts: a success resets the failure
count and a failure the success count; neither resets on a transition):

    HEALTHY   -> UNHEALTHY  unhealthy_threshold consecutive failed checks
    UNHEALTHY -> HEALTHY    healthy_threshold consecutive passed checks

The seed marks a host unhealthy after 3 consecutive failures and healthy again
on the first success; here the way back takes healthy_threshold successes
(2 by default, as design.md and APISIX say), so a flapping host stays out.

`routable` chooses the hosts to balance over, with Envoy's panic mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

_Host = TypeVar("_Host")


class HealthError(ValueError):
    """Health checking is badly configured."""


def _check_count(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HealthError(f"health check {what} must be an integer >= 1, got {value!r}")


def _check_seconds(what: str, value: float) -> None:
    if not 0.0 < value < math.inf:
        raise HealthError(f"health check {what} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """How often to check, how long a check may take, and how many results in a
    row change a host's state. Use `build`, which validates."""

    interval_s: float
    timeout_s: float
    unhealthy_threshold: int
    healthy_threshold: int
    jitter_percent: float
    initially_healthy: bool

    @classmethod
    def build(
        cls,
        *,
        interval_s: float = 10.0,
        timeout_s: float = 5.0,
        unhealthy_threshold: int = 3,
        healthy_threshold: int = 2,
        jitter_percent: float = 10.0,
        initially_healthy: bool = True,
    ) -> HealthPolicy:
        """A validated policy; the defaults are the seed's and design.md's.

        `jitter_percent` (0 up to, not including, 100) spreads the checks: each
        wait is interval_s plus or minus up to that share of it.
        """
        _check_seconds("interval_s", interval_s)
        _check_seconds("timeout_s", timeout_s)
        _check_count("unhealthy_threshold", unhealthy_threshold)
        _check_count("healthy_threshold", healthy_threshold)
        if not 0.0 <= jitter_percent < 100.0:
            raise HealthError(
                f"health check jitter_percent must be in 0..100 (100 excluded), "
                f"got {jitter_percent!r}"
            )
        if not isinstance(initially_healthy, bool):
            raise HealthError(
                f"health check initially_healthy must be true or false, got {initially_healthy!r}"
            )
        return cls(
            interval_s,
            timeout_s,
            unhealthy_threshold,
            healthy_threshold,
            jitter_percent,
            initially_healthy,
        )


@dataclass(frozen=True, slots=True)
class HealthState:
    """One host's health at a moment: its state, its current runs of failed and
    passed checks (one of them is 0 once a check ran), and when (None: never) it
    was last checked, last changed state and is due for its next check."""

    healthy: bool
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_check: float | None = None
    last_transition: float | None = None
    next_check: float | None = None


@dataclass(frozen=True, slots=True)
class HealthTransition:
    """Host `key` became healthy (or unhealthy) at `at`, after `consecutive`
    checks in a row that passed (or failed)."""

    key: str
    healthy: bool
    at: float
    consecutive: int


class HealthTable:
    """The health of every checked host, by key (see the module)."""

    __slots__ = ("_random", "_states", "on_change", "policy")

    def __init__(
        self,
        policy: HealthPolicy,
        random: Callable[[], float],
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.policy = policy
        self._random = random
        self._states: dict[str, HealthState] = {}
        self.on_change = on_change  # called after `record` turned a host (un)healthy

    def __len__(self) -> int:
        """The number of hosts tracked."""
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        """Whether host `key` is tracked (its checks should go on)."""
        return key in self._states

    def add(self, key: str) -> None:
        """Track `key`, healthy or not as the policy's `initially_healthy` says; a
        host already tracked keeps its state."""
        if key not in self._states:
            self._states[key] = HealthState(self.policy.initially_healthy)

    def remove(self, key: str) -> None:
        """Stop tracking `key` and forget it: added again, it starts afresh."""
        self._states.pop(key, None)

    def record(self, key: str, ok: bool, now: float) -> HealthTransition | None:
        """Count one check of `key` that passed (`ok`) or failed at `now`; return
        the transition it caused, if any. Results for a host not tracked (a check
        that ended after its host was removed) are dropped."""
        state = self._states.get(key)
        if state is None:
            return None
        policy = self.policy
        if ok:
            successes = state.consecutive_successes + 1
            failures = 0
            flips = not state.healthy and successes >= policy.healthy_threshold
            run = successes
        else:
            failures = state.consecutive_failures + 1
            successes = 0
            flips = state.healthy and failures >= policy.unhealthy_threshold
            run = failures
        self._states[key] = replace(
            state,
            healthy=state.healthy != flips,
            consecutive_failures=failures,
            consecutive_successes=successes,
            last_check=now,
            last_transition=now if flips else state.last_transition,
        )
        if not flips:
            return None
        if self.on_change is not None:
            self.on_change()
        return HealthTransition(key, ok, now, run)

    def healthy(self, key: str) -> bool:
        """Whether host `key` passes its checks; a host not tracked does not."""
        state = self._states.get(key)
        return state is not None and state.healthy

    def state(self, key: str) -> HealthState | None:
        """Host `key`'s state, or None when it is not tracked."""
        return self._states.get(key)

    def next_check_at(self, key: str, now: float) -> float:
        """When to check host `key` next, for a check that ended at `now`:
        interval_s later, give or take up to jitter_percent of it, drawn from the
        injected randomness. Raises KeyError for a host not tracked."""
        state = self._states[key]
        jitter = self.policy.jitter_percent / 100.0 * (2.0 * self._random() - 1.0)
        at = now + self.policy.interval_s * (1.0 + jitter)
        self._states[key] = replace(state, next_check=at)
        return at

    def snapshot(self) -> dict[str, object]:
        """The policy and every host's state, for the admin API."""
        policy = self.policy
        return {
            "policy": {
                "interval_s": policy.interval_s,
                "timeout_s": policy.timeout_s,
                "unhealthy_threshold": policy.unhealthy_threshold,
                "healthy_threshold": policy.healthy_threshold,
                "jitter_percent": policy.jitter_percent,
                "initially_healthy": policy.initially_healthy,
            },
            "hosts": {
                key: {
                    "healthy": state.healthy,
                    "consecutive_failures": state.consecutive_failures,
                    "consecutive_successes": state.consecutive_successes,
                    "last_check": state.last_check,
                    "last_transition": state.last_transition,
                    "next_check": state.next_check,
                }
                for key, state in self._states.items()
            },
            "healthy": sum(1 for state in self._states.values() if state.healthy),
        }


def routable(
    hosts: Sequence[_Host],
    healthy: Callable[[_Host], bool],
    panic_threshold_percent: float = 50.0,
) -> tuple[list[_Host], bool]:
    """The hosts to balance over, in their order, and whether the cluster is in
    panic (the share of healthy hosts is below `panic_threshold_percent`).

    - Normally, the hosts for which `healthy` is true.
    - In panic (as in Envoy), all the hosts: when too few are healthy, the
      healthy ones would be overloaded, and some of the others may well answer.
    - When none is healthy (also a panic), no host, unlike Envoy: the caller
      answers 503 "No healthy upstream instances", as the seed does.
    - No hosts at all: no host and no panic.

    `healthy` decides alone: pass one that also says no for hosts ejected by
    outlier detection, e.g. ``lambda key: table.healthy(key) and not
    detector.ejected(key, now)``, so that passive and active signals combine
    (ejected hosts count as unhealthy for the panic threshold, as in Envoy).
    A threshold of 0 disables panic mode.
    """
    if not 0.0 <= panic_threshold_percent <= 100.0:
        raise HealthError(
            f"panic_threshold_percent must be in 0..100, got {panic_threshold_percent!r}"
        )
    up = [host for host in hosts if healthy(host)]
    panic = len(up) * 100.0 < panic_threshold_percent * len(hosts)
    if panic and up:
        return list(hosts), True
    return up, panic
