"""Outlier detection (sans-IO), as Envoy does it: eject hosts that keep failing.

The caller reports each try's outcome per host (`record`) and filters the
balancer's candidates through `available`. Ejection is passive (it reacts to
real traffic), separate from active health checks. Clock readings come in as
`now`, in seconds, from a clock that does not go backwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from math import floor
from typing import get_args

from meshgate.core.retry import Failure

_FAILURES = frozenset(get_args(Failure))
_GATEWAY_ERRORS = frozenset({502, 503, 504})


class OutlierError(ValueError):
    """Outlier detection is badly configured, or a record says nothing happened."""


class _Host:
    """One host's counters. `ejected_until` is None when the host is not ejected;
    `decay_from` is when its ejection count last stopped decaying."""

    __slots__ = ("consecutive_5xx", "consecutive_gateway", "decay_from", "ejected_until", "times")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.times = 0
        self.ejected_until: float | None = None
        self.decay_from = 0.0


def _check_count(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OutlierError(f"outlier detection {what} must be an integer >= 1, got {value!r}")


def _check_seconds(what: str, value: float) -> None:
    if not 0.0 < value < math.inf:
        raise OutlierError(f"outlier detection {what} must be a finite number > 0, got {value!r}")


class OutlierDetector:
    """Ejects hosts after consecutive errors, for longer each time, never too many.

    Counting: a failure without a response (connect failure, reset, timeout;
    the gateway answers it with a 502 or 504) counts as a 5xx and as a gateway
    error, as in Envoy when local and upstream errors are not split; a 502, 503
    or 504 counts as both; another 5xx counts as a 5xx and resets the gateway
    error count; any other status (a success, a 4xx) resets both counts.

    Ejection: when a count reaches its threshold, the host is ejected for
    min(max_ejection_s, base_ejection_s * times ejected), the ejection count
    included, and its counts reset. The ejection count grows by one per ejection
    until that product reaches max_ejection_s, and decays by one per interval_s
    the host spends not ejected (lazily computed, like Envoy's periodic sweep).
    Hosts return by themselves when their time is up. Outcomes recorded for an
    ejected or unknown host are dropped (requests still in flight).

    Cap: at most max(1, floor(max_ejection_percent% of hosts)) hosts are ejected
    at once, and never all of them: with one host, none; with two, one;
    `max_ejection_percent` 0 disables ejection. A host that reaches a threshold
    while the cap is full stays in with its counts kept (each further error
    counts in `overflow`) and is ejected on its next error once there is room.
    """

    __slots__ = (
        "_hosts",
        "base_ejection_s",
        "consecutive_5xx",
        "consecutive_gateway_errors",
        "ejections",
        "interval_s",
        "max_ejection_percent",
        "max_ejection_s",
        "overflow",
    )

    def __init__(
        self,
        consecutive_5xx: int,
        consecutive_gateway_errors: int,
        base_ejection_s: float,
        max_ejection_s: float,
        max_ejection_percent: float,
        interval_s: float,
    ) -> None:
        """Use `build`, which validates; this only stores."""
        self.consecutive_5xx = consecutive_5xx
        self.consecutive_gateway_errors = consecutive_gateway_errors
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s
        self.max_ejection_percent = max_ejection_percent
        self.interval_s = interval_s
        self.ejections = 0
        self.overflow = 0
        self._hosts: dict[str, _Host] = {}

    @classmethod
    def build(
        cls,
        *,
        consecutive_5xx: int = 5,
        consecutive_gateway_errors: int = 5,
        base_ejection_s: float = 30.0,
        max_ejection_s: float = 300.0,
        max_ejection_percent: float = 10.0,
        interval_s: float = 10.0,
    ) -> OutlierDetector:
        """A validated detector with no hosts. The defaults are Envoy's."""
        _check_count("consecutive_5xx", consecutive_5xx)
        _check_count("consecutive_gateway_errors", consecutive_gateway_errors)
        _check_seconds("base_ejection_s", base_ejection_s)
        _check_seconds("max_ejection_s", max_ejection_s)
        if max_ejection_s < base_ejection_s:
            raise OutlierError(
                f"outlier detection max_ejection_s must be >= base_ejection_s "
                f"({base_ejection_s!r}), got {max_ejection_s!r}"
            )
        if not 0.0 <= max_ejection_percent <= 100.0:
            raise OutlierError(
                f"outlier detection max_ejection_percent must be in 0..100, "
                f"got {max_ejection_percent!r}"
            )
        _check_seconds("interval_s", interval_s)
        return cls(
            consecutive_5xx,
            consecutive_gateway_errors,
            base_ejection_s,
            max_ejection_s,
            max_ejection_percent,
            interval_s,
        )

    def __len__(self) -> int:
        """The number of hosts watched."""
        return len(self._hosts)

    def add_host(self, key: str) -> None:
        """Watch `key`; a host already watched keeps its counts."""
        if key not in self._hosts:
            self._hosts[key] = _Host()

    def remove_host(self, key: str) -> None:
        """Stop watching `key` (and forget it: added again, it starts afresh)."""
        self._hosts.pop(key, None)

    def max_ejected(self) -> int:
        """How many hosts may be ejected at once (see the class)."""
        n = len(self._hosts)
        if self.max_ejection_percent == 0.0 or n < 2:
            return 0
        return min(n - 1, max(1, floor(self.max_ejection_percent * n / 100)))

    def record(self, key: str, now: float, *, status: int | None, failure: Failure | None) -> None:
        """Count one try's outcome at host `key`: its `failure` when no response head
        came, else its `status` (a failure takes precedence)."""
        if failure is not None:
            if failure not in _FAILURES:
                raise OutlierError(
                    f"failure must be one of {', '.join(sorted(_FAILURES))}, got {failure!r}"
                )
            error = gateway_error = True
        elif status is None:
            raise OutlierError("record needs a status or a failure, got neither")
        else:
            error = 500 <= status <= 599
            gateway_error = status in _GATEWAY_ERRORS
        host = self._hosts.get(key)
        if host is None or self._is_ejected(host, now):
            return
        if not error:
            host.consecutive_5xx = host.consecutive_gateway = 0
            return
        host.consecutive_5xx += 1
        host.consecutive_gateway = host.consecutive_gateway + 1 if gateway_error else 0
        if (
            host.consecutive_5xx >= self.consecutive_5xx
            or host.consecutive_gateway >= self.consecutive_gateway_errors
        ):
            self._eject(host, now)

    def ejected(self, key: str, now: float) -> bool:
        """Whether host `key` is ejected at `now` (an unknown host is not)."""
        host = self._hosts.get(key)
        return host is not None and self._is_ejected(host, now)

    def next_return(self, now: float) -> float | None:
        """When the first host ejected at `now` comes back (None: none is ejected)."""
        ends = [h.ejected_until for h in self._hosts.values() if h.ejected_until is not None]
        future = [end for end in ends if end > now]
        return min(future) if future else None

    def available(self, keys: Iterable[str], now: float) -> list[str]:
        """The `keys` not ejected at `now`, in their order."""
        return [key for key in keys if not self.ejected(key, now)]

    def snapshot(self, now: float) -> dict[str, object]:
        """Hosts and counters at `now`, for the admin API."""
        hosts: dict[str, dict[str, object]] = {}
        for key, host in self._hosts.items():
            self._is_ejected(host, now)
            hosts[key] = {
                "ejected_until": host.ejected_until,
                "times_ejected": host.times,
                "consecutive_5xx": host.consecutive_5xx,
                "consecutive_gateway_errors": host.consecutive_gateway,
            }
        return {
            "hosts": hosts,
            "ejected": sum(1 for host in hosts.values() if host["ejected_until"] is not None),
            "max_ejected": self.max_ejected(),
            "ejections": self.ejections,
            "overflow": self.overflow,
        }

    def _is_ejected(self, host: _Host, now: float) -> bool:
        """Whether `host` is ejected at `now`, bringing it back and decaying its
        ejection count as time has passed."""
        until = host.ejected_until
        if until is not None:
            if now < until:
                return True
            host.ejected_until = None
            host.decay_from = until
        if host.times:
            intervals = floor((now - host.decay_from) / self.interval_s)
            if intervals > 0:
                host.times = max(0, host.times - intervals)
                host.decay_from += intervals * self.interval_s
        return False

    def _eject(self, host: _Host, now: float) -> None:
        ejected = sum(
            1
            for other in self._hosts.values()
            if other.ejected_until is not None and now < other.ejected_until
        )
        if ejected >= self.max_ejected():
            self.overflow += 1
            return
        if self.base_ejection_s * host.times < self.max_ejection_s:
            host.times += 1
        host.ejected_until = now + min(self.max_ejection_s, self.base_ejection_s * host.times)
        host.consecutive_5xx = host.consecutive_gateway = 0
        self.ejections += 1
