"""Circuit breaker (sans-IO): the seed's closed / open / half-open state machine, per upstream.

The caller asks `allow(now)` before sending a request to the upstream and, for
every admitted request, reports exactly one outcome: `record_success`,
`record_failure`, or `record_ignored` for an outcome that says nothing about the
upstream (a local overflow, the client going away, a client error). While the
breaker rejects, the caller answers 503 with a Retry-After of
`retry_after_s(now)` (rounded up).

Transitions, each reported to `on_transition(old, new, reason)`:

    CLOSED    -> OPEN       failure_threshold consecutive failures, or a failure
                            rate >= failure_rate_percent over >= min_requests
                            requests in the sliding window
    OPEN      -> HALF_OPEN  the first allow() once reset_timeout_s has passed
                            since opening
    HALF_OPEN -> CLOSED     success_threshold probe successes (all counts reset)
    HALF_OPEN -> OPEN       any failure (the reset timer restarts)
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

from meshgate.core.retry import WindowCounts


class BreakerError(ValueError):
    """A circuit breaker is badly configured."""


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


Transition = Callable[[BreakerState, BreakerState, str], None]
"""Called after each transition with the old state, the new state and a short reason."""


def _check_count(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BreakerError(f"circuit breaker {what} must be an integer >= 1, got {value!r}")


def _check_seconds(what: str, value: float) -> None:
    if not 0.0 < value < math.inf:
        raise BreakerError(f"circuit breaker {what} must be a finite number > 0, got {value!r}")


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


class CircuitBreaker:
    """One upstream's breaker (see the module for the transitions).

    CLOSED admits every request and counts outcomes: consecutive failures, and
    requests and failures in a sliding window of `window_s` kept in 10 buckets
    (counts leave it up to window_s / 10 early). OPEN rejects until
    reset_timeout_s after opening; the state changes to HALF_OPEN lazily, on the
    first allow() after that (`state` still says OPEN before it, while
    `retry_after_s` already says 0). HALF_OPEN admits a request only while fewer
    than `half_open_max_probes` probes are in flight, so a recovering upstream
    gets a bounded trickle, never a flood; each probe's outcome frees its slot.

    Outcomes of requests admitted in an earlier state are handled so that counts
    stay sound: in OPEN every outcome is dropped; in HALF_OPEN a success or an
    ignored outcome with no probe in flight is dropped, while any failure
    re-opens (the upstream failed, whoever saw it). A request admitted while
    CLOSED that ends during HALF_OPEN with probes in flight cannot be told from
    a probe and is taken for one; with a route timeout below reset_timeout_s
    (15 s against 30 s by default) no request lives that long.
    """

    __slots__ = (
        "_consecutive",
        "_half_open_at",
        "_half_open_successes",
        "_on_transition",
        "_opened_at",
        "_probes",
        "_state",
        "_window",
        "failure_rate_percent",
        "failure_threshold",
        "half_open_max_probes",
        "min_requests",
        "reset_timeout_s",
        "success_threshold",
        "window_s",
    )

    def __init__(
        self,
        failure_threshold: int,
        success_threshold: int,
        reset_timeout_s: float,
        window_s: float,
        failure_rate_percent: float,
        min_requests: int,
        half_open_max_probes: int,
        on_transition: Transition | None,
    ) -> None:
        """Use `build`, which validates; this only stores."""
        self.failure_threshold = failure_threshold
        self.success_threshold = success_threshold
        self.reset_timeout_s = reset_timeout_s
        self.window_s = window_s
        self.failure_rate_percent = failure_rate_percent
        self.min_requests = min_requests
        self.half_open_max_probes = half_open_max_probes
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._window = WindowCounts(window_s)
        self._opened_at: float | None = None
        self._half_open_at = 0.0
        self._probes = 0
        self._half_open_successes = 0

    @classmethod
    def build(
        cls,
        *,
        failure_threshold: int = 5,
        success_threshold: int = 3,
        reset_timeout_s: float = 30.0,
        window_s: float = 60.0,
        failure_rate_percent: float = 50.0,
        min_requests: int = 10,
        half_open_max_probes: int = 1,
        on_transition: Transition | None = None,
    ) -> CircuitBreaker:
        """A validated breaker, CLOSED. The defaults are the seed's."""
        _check_count("failure_threshold", failure_threshold)
        _check_count("success_threshold", success_threshold)
        _check_seconds("reset_timeout_s", reset_timeout_s)
        _check_seconds("window_s", window_s)
        if not 0.0 < failure_rate_percent <= 100.0:
            raise BreakerError(
                f"circuit breaker failure_rate_percent must be in (0, 100], "
                f"got {failure_rate_percent!r}"
            )
        _check_count("min_requests", min_requests)
        _check_count("half_open_max_probes", half_open_max_probes)
        return cls(
            failure_threshold,
            success_threshold,
            reset_timeout_s,
            window_s,
            failure_rate_percent,
            min_requests,
            half_open_max_probes,
            on_transition,
        )

    @property
    def state(self) -> BreakerState:
        """The current state (OPEN until an allow() after the reset timeout)."""
        return self._state

    def allow(self, now: float) -> bool:
        """Whether a request may go to the upstream at `now`; an admitted request must
        be followed by exactly one record_success / record_failure / record_ignored."""
        state = self._state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            if now < self._half_open_at:
                return False
            self._transition(BreakerState.HALF_OPEN, "reset timeout elapsed")
        if self._probes >= self.half_open_max_probes:
            return False
        self._probes += 1
        return True

    def record_success(self, now: float) -> None:
        """An admitted request succeeded at `now`."""
        state = self._state
        if state is BreakerState.CLOSED:
            self._consecutive = 0
            self._window.add(now, 1, 0)
        elif state is BreakerState.HALF_OPEN and self._probes:
            self._probes -= 1
            self._half_open_successes += 1
            if self._half_open_successes >= self.success_threshold:
                self._close(_plural(self._half_open_successes, "success", "successes"))

    def record_failure(self, now: float) -> None:
        """An admitted request failed at `now` (an upstream error, reset or timeout)."""
        state = self._state
        if state is BreakerState.HALF_OPEN:
            self._open(now, "probe failed")
        elif state is BreakerState.CLOSED:
            self._consecutive += 1
            self._window.add(now, 1, 1)
            if self._consecutive >= self.failure_threshold:
                self._open(
                    now, _plural(self._consecutive, "consecutive failure", "consecutive failures")
                )
                return
            requests, failures = self._window.totals(now)
            if requests >= self.min_requests and (
                failures * 100 >= self.failure_rate_percent * requests
            ):
                rate = 100 * failures / requests
                self._open(
                    now, f"failure rate {rate:.0f}% over {_plural(requests, 'request', 'requests')}"
                )

    def record_ignored(self, now: float) -> None:
        """An admitted request ended without saying anything about the upstream: it
        frees its probe slot in HALF_OPEN and counts nowhere."""
        if self._state is BreakerState.HALF_OPEN and self._probes:
            self._probes -= 1

    def retry_after_s(self, now: float) -> float:
        """Seconds until the breaker half-opens: > 0 only while OPEN. A request
        rejected in HALF_OPEN may come back as soon as a probe ends (0.0)."""
        if self._state is BreakerState.OPEN:
            return max(0.0, self._half_open_at - now)
        return 0.0

    def snapshot(self, now: float) -> dict[str, object]:
        """The breaker's state and counts at `now`, for the admin API."""
        requests, failures = self._window.totals(now)
        return {
            "state": self._state.value,
            "consecutive_failures": self._consecutive,
            "window_requests": requests,
            "window_failures": failures,
            "opened_at": self._opened_at,
            "retry_after_s": self.retry_after_s(now),
            "probes_in_flight": self._probes,
            "half_open_successes": self._half_open_successes,
        }

    def _open(self, now: float, reason: str) -> None:
        self._opened_at = now
        self._half_open_at = now + self.reset_timeout_s
        self._probes = 0
        self._half_open_successes = 0
        self._transition(BreakerState.OPEN, reason)

    def _close(self, reason: str) -> None:
        self._opened_at = None
        self._probes = 0
        self._half_open_successes = 0
        self._consecutive = 0
        self._window.clear()
        self._transition(BreakerState.CLOSED, reason)

    def _transition(self, new: BreakerState, reason: str) -> None:
        old = self._state
        self._state = new
        if self._on_transition is not None:
            self._on_transition(old, new, reason)
