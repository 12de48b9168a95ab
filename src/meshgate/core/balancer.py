"""Load balancers (sans-IO): pick one host among the candidates.

Every balancer takes the candidate list on each call, so the caller may
filter (healthy, not ejected) without rebuilding the balancer. Randomness is
injected (a ``random()`` function returning floats in [0, 1), e.g.
``random.Random(seed).random``) for reproducible tests. The list must not be
empty.

``pick`` also takes an optional request ``key`` (a header, cookie, client IP,
path or query parameter, chosen by the caller); only `ConsistentHash` uses it.
Balancers that cache something derived from the list (`WeightedRandom`,
`ConsistentHash`) check on each call, in one C-level pass over the hosts,
whether the hosts or their weights changed, so the caller may pass a fresh
list or change a weight in place.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from operator import attrgetter
from typing import Any, Protocol

from meshgate.core.hashring import POINTS_PER_HOST, HashRing, hash_key


class Host(Protocol):
    """What a balancer needs to know about a host."""

    @property
    def key(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def active_requests(self) -> int: ...


class Balancer(Protocol):
    def pick(self, hosts: Sequence[Host], key: str | None = None) -> Host: ...


_key = attrgetter("key")
_weight = attrgetter("weight")


class RoundRobin:
    """Each host in turn."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, hosts: Sequence[Host], key: str | None = None) -> Host:
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

    def pick(self, hosts: Sequence[Host], key: str | None = None) -> Host:
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

    def pick(self, hosts: Sequence[Host], key: str | None = None) -> Host:
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

    def pick(self, hosts: Sequence[Host], key: str | None = None) -> Host:
        n = len(hosts)
        if n == 1:
            return hosts[0]
        a = hosts[int(self._random() * n) % n]
        b = hosts[int(self._random() * n) % n]
        # Compare load relative to weight so a heavier host takes more.
        if b.active_requests * a.weight < a.active_requests * b.weight:
            return b
        return a


class WeightedRandom:
    """Random choice with probability weight / total, in O(log n) (bisect over
    cumulative weights, rebuilt only when the weights change).

    Same draws as `RandomPick`: a draw ``r`` picks the host whose slice of
    ``[0, total)`` holds ``r * total``. Hosts of weight 0 (or less) are never
    picked unless no host has a positive weight; then the choice is uniform.
    """

    __slots__ = ("_cumulative", "_random", "_total", "_weights")

    def __init__(self, random: Callable[[], float]) -> None:
        self._random = random
        self._weights: tuple[Any, ...] = ()
        self._cumulative: list[int] = []
        self._total = 0

    def pick(self, hosts: Sequence[Host], key: str | None = None) -> Host:
        weights = tuple(map(_weight, hosts))
        if weights != self._weights:
            self._weights = weights
            self._cumulative = list(accumulate(max(w, 0) for w in weights))
            self._total = self._cumulative[-1] if self._cumulative else 0
        n = len(hosts)
        if self._total <= 0:
            return hosts[min(int(self._random() * n), n - 1)]
        i = bisect_right(self._cumulative, self._random() * self._total)
        return hosts[min(i, n - 1)]


class LeastConnections:
    """Exact least connections: the host with the fewest active requests,
    relative to its weight (``active / weight``, as nginx's ``least_conn``)
    unless ``weighted=False``. O(n): every host's count is read.

    Ties go round robin: the scan starts one past the previous pick, so equally
    loaded hosts take turns instead of the first one taking everything.
    Hosts of weight 0 (or less) count as weight 1.
    """

    __slots__ = ("_next", "_weighted")

    def __init__(self, *, weighted: bool = True) -> None:
        self._next = 0
        self._weighted = weighted

    def pick(self, hosts: Sequence[Host], key: str | None = None) -> Host:
        n = len(hosts)
        start = self._next % n
        best_i = start
        best = hosts[start]
        if self._weighted:
            best_active, best_weight = best.active_requests, max(best.weight, 1)
            for i in range(start + 1, start + n):
                host = hosts[i - n if i >= n else i]
                active, weight = host.active_requests, max(host.weight, 1)
                if active * best_weight < best_active * weight:
                    best_i, best, best_active, best_weight = i, host, active, weight
        else:
            best_active = best.active_requests
            for i in range(start + 1, start + n):
                host = hosts[i - n if i >= n else i]
                if host.active_requests < best_active:
                    best_i, best, best_active = i, host, host.active_requests
        self._next = best_i + 1
        return best


class ConsistentHash:
    """Consistent hashing on the request key over a `HashRing` (see
    `meshgate.core.hashring` for why a ring with virtual nodes, and how weights
    work). A pick without a key is a `WeightedRandom` one.

    The ring covers every host key seen since the last rebuild; a candidate
    list that is a subset of it (unhealthy, ejected or retried hosts left out)
    is served by skipping the missing hosts' points, which gives exactly the
    ring of the subset. The ring is rebuilt only when a new host key shows up or
    fewer than half of its hosts remain; changed weights need no rebuild.
    A pick costs a C-level pass over the hosts (the change check), one BLAKE2b
    of the key and a bisect over the ring, O(log(n * points_per_host)), plus a
    short walk when hosts are absent or weights differ. Building the ring runs
    inside the first keyed pick after a change (about 40 ms for 10 hosts at
    the default 16384 points per host).

    Hosts with the same key count once (the first one). Hosts of weight 0 (or
    less) take no keys unless no host has a positive weight.
    """

    __slots__ = (
        "_fallback",
        "_host_weights",
        "_keys",
        "_max_weight",
        "_points_per_host",
        "_positions",
        "_ring",
        "_weights",
    )

    def __init__(self, random: Callable[[], float], points_per_host: int = POINTS_PER_HOST) -> None:
        if points_per_host < 1:
            raise ValueError(f"points_per_host must be at least 1, not {points_per_host}")
        self._fallback = WeightedRandom(random)
        self._points_per_host = points_per_host
        self._ring: HashRing | None = None
        self._keys: tuple[Any, ...] = ()  # the hosts' keys and weights at the last update
        self._host_weights: tuple[Any, ...] = ()
        self._positions: list[int] = []  # ring owner index -> position in the list
        self._weights: list[int] = []  # ring owner index -> weight, 0 if absent
        self._max_weight = 0

    @property
    def ring(self) -> HashRing | None:
        """The current ring (None before the first keyed pick)."""
        return self._ring

    def pick(self, hosts: Sequence[Host], key: str | None = None) -> Host:
        if key is None:
            return self._fallback.pick(hosts)
        keys = tuple(map(_key, hosts))
        weights = tuple(map(_weight, hosts))
        if keys != self._keys or weights != self._host_weights:
            self._update(keys, weights)
        assert self._ring is not None
        owner = self._ring.owner(hash_key(key), self._weights, self._max_weight)
        return hosts[self._positions[owner]]

    def _update(self, keys: tuple[Any, ...], host_weights: tuple[Any, ...]) -> None:
        first: dict[str, int] = {}
        for position, host_key in enumerate(keys):
            first.setdefault(host_key, position)
        ring = self._ring
        if ring is None or 2 * len(first) < len(ring.keys) or not first.keys() <= ring.index.keys():
            ring = self._ring = HashRing(first, self._points_per_host)
        positions = [-1] * len(ring.keys)
        weights = [0] * len(ring.keys)
        for host_key, position in first.items():
            owner = ring.index[host_key]
            positions[owner] = position
            weights[owner] = max(host_weights[position], 0)
        present = [w for w in weights if w > 0]
        if not present:
            # No host takes traffic by weight: share the keys equally.
            weights = [1 if p >= 0 else 0 for p in positions]
        elif min(present) == max(present):
            weights = [1 if w > 0 else 0 for w in weights]
        self._keys = keys
        self._host_weights = host_weights
        self._positions = positions
        self._weights = weights
        self._max_weight = max(weights)


BALANCERS = (
    "round_robin",
    "weighted_round_robin",
    "random",
    "least_request",
    "weighted_random",
    "least_connections",
    "consistent_hash",
)


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
    if name == "weighted_random":
        return WeightedRandom(random)
    if name == "least_connections":
        return LeastConnections()
    if name == "consistent_hash":
        return ConsistentHash(random)
    raise ValueError(f"unknown load balancer {name!r}; expected one of {', '.join(BALANCERS)}")
