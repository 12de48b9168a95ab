"""Load balancers (sans-IO): pick one host among the candidates.

Every balancer takes the candidate list on each call, so the caller may
filter (healthy, not ejected) without rebuilding the balancer. Randomness is
injected (`random.Random` or anything with ``random()``) for reproducible
tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol


class Host(Protocol):
    """What a balancer needs to know about a host."""

    @property
    def key(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def active_requests(self) -> int: ...


class Balancer(Protocol):
    def pick(self, hosts: Sequence[Host]) -> Host: ...


class RoundRobin:
    """Each host in turn."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, hosts: Sequence[Host]) -> Host:
        i = self._next % len(hosts)
        self._next = i + 1
        return hosts[i]


class WeightedRoundRobin:
    """Smooth weighted round-robin (as in nginx): spreads a host's turns evenly.

    State is keyed by host key, so a changed candidate list keeps the order
    fair for the hosts that remain.
    """

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def pick(self, hosts: Sequence[Host]) -> Host:
        total = 0
        best: Host | None = None
        best_value = 0
        current = self._current
        for host in hosts:
            value = current.get(host.key, 0) + host.weight
            current[host.key] = value
            total += host.weight
            if best is None or value > best_value:
                best, best_value = host, value
        assert best is not None
        current[best.key] = best_value - total
        if len(current) > 2 * len(hosts):
            keep = {h.key for h in hosts}
            for key in [k for k in current if k not in keep]:
                del current[key]
        return best


class RandomPick:
    """Uniform (weights respected) random choice."""

    __slots__ = ("_random",)

    def __init__(self, random: Callable[[], float]) -> None:
        self._random = random

    def pick(self, hosts: Sequence[Host]) -> Host:
        total = sum(h.weight for h in hosts)
        point = self._random() * total
        for host in hosts:
            point -= host.weight
            if point < 0:
                return host
        return hosts[-1]


class LeastRequest:
    """Power of two choices on active requests (Envoy's default for least-request)."""

    __slots__ = ("_random",)

    def __init__(self, random: Callable[[], float]) -> None:
        self._random = random

    def pick(self, hosts: Sequence[Host]) -> Host:
        n = len(hosts)
        if n == 1:
            return hosts[0]
        a = hosts[int(self._random() * n) % n]
        b = hosts[int(self._random() * n) % n]
        # Compare load relative to weight so a heavier host takes more.
        if b.active_requests * a.weight < a.active_requests * b.weight:
            return b
        return a


BALANCERS = ("round_robin", "weighted_round_robin", "random", "least_request")


def make_balancer(name: str, random: Callable[[], float]) -> Balancer:
    """Build a balancer by its config name."""
    if name == "round_robin":
        return RoundRobin()
    if name == "weighted_round_robin":
        return WeightedRoundRobin()
    if name == "random":
        return RandomPick(random)
    if name == "least_request":
        return LeastRequest(random)
    raise ValueError(f"unknown load balancer {name!r}; expected one of {', '.join(BALANCERS)}")
