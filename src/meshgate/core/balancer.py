"""Load balancers (sans-IO): pick one host among the candidates.

A balancer is told the candidates when they change (`update`: hosts joined or
left, a weight changed, health or an ejection moved a host in or out) and then
picks from them per request (`pick`). `update` may cost O(n) (more for the
consistent-hash ring, see `ConsistentHash`); a pick is O(1) or O(log n):

==========================  ==================================================
round_robin                 O(1)
weighted_round_robin        O(1): one period of nginx's smooth sequence is
                            computed by `update`, when (total weight / gcd) x
                            hosts <= `WRR_SCHEDULE_MAX_OPS`; beyond that O(n)
random                      O(1), uniform (weights ignored)
weighted_random             O(log n), bisect over cumulative weights
least_request               O(1), power of two choices
least_connections           O(log n), a heap kept current by `started` and
                            `finished` (amortized: stale entries are skipped)
consistent_hash             O(log P) for P ring points, plus a short walk
==========================  ==================================================

``pick`` takes an optional request ``key`` (a header, cookie, client IP, path
or query parameter, chosen by the caller; only `ConsistentHash` uses it) and
the hosts to avoid (``exclude``: the ones a retry already tried). Avoiding
hosts costs each balancer a few extra draws or steps, and O(n) when those do
not find another host; when every candidate is excluded the pick ignores
``exclude``. Randomness is injected (a ``random()`` function returning floats
in [0, 1), e.g. ``random.Random(seed).random``) for reproducible tests.
Picking before any `update`, or after an update with no hosts, raises
`LookupError`.

Balancers whose picks depend on requests in flight (`LeastConnections`,
``tracks_load``) must hear about every change of a host's
``active_requests`` through `started` and `finished`, called after the
count changed; the others ignore them.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
from itertools import accumulate
from math import gcd
from typing import Protocol

from meshgate.core.hashring import POINTS_PER_HOST, HashRing, RingBuild, hash_key

WRR_SCHEDULE_MAX_OPS = 1 << 18
"""`WeightedRoundRobin` precomputes its period when (total weight / gcd) x
hosts is at most this (about 20 ms of CPU in `update`)."""

_REDRAWS = 4  # random draws a pick makes to avoid excluded hosts before an O(n) pass


class Host(Protocol):
    """What a balancer needs to know about a host."""

    @property
    def key(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def active_requests(self) -> int: ...


class Balancer(Protocol):
    tracks_load: bool

    def update(self, hosts: Sequence[Host]) -> None: ...

    def pick(self, key: str | None = None, exclude: Collection[Host] = ()) -> Host: ...

    def started(self, host: Host) -> None: ...

    def finished(self, host: Host) -> None: ...


def _candidates(hosts: Sequence[Host]) -> tuple[Host, ...]:
    if not hosts:
        raise LookupError("no host to pick from")
    return tuple(hosts)


def _allowed(hosts: Sequence[Host], exclude: Collection[Host]) -> list[Host]:
    """The hosts not in ``exclude``; all of them when none is left."""
    return [h for h in hosts if h not in exclude] or list(hosts)


class _Base:
    """No load tracking, no hosts yet."""

    __slots__ = ("_hosts",)
    tracks_load = False

    def __init__(self) -> None:
        self._hosts: tuple[Host, ...] = ()

    def update(self, hosts: Sequence[Host]) -> None:
        self._hosts = tuple(hosts)

    def started(self, host: Host) -> None:
        return None

    def finished(self, host: Host) -> None:
        return None


class RoundRobin(_Base):
    """Each host in turn (weights ignored)."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        super().__init__()
        self._next = 0

    def pick(self, key: str | None = None, exclude: Collection[Host] = ()) -> Host:
        hosts = self._hosts or _candidates(self._hosts)
        n = len(hosts)
        i = self._next % n
        if exclude:
            for step in range(n):
                j = (i + step) % n
                if hosts[j] not in exclude:
                    i = j
                    break
        self._next = i + 1
        return hosts[i]


def _smooth_step(current: list[int], weights: Sequence[int], total: int) -> int:
    """One step of nginx's smooth weighted round robin: every host gains its
    weight, the highest (first on ties) is picked and loses the total."""
    best = 0
    best_value = None
    for i, weight in enumerate(weights):
        value = current[i] + weight
        current[i] = value
        if best_value is None or value > best_value:
            best, best_value = i, value
    current[best] -= total
    return best


class WeightedRoundRobin(_Base):
    """Smooth weighted round-robin (as in nginx): spreads a host's turns evenly
    (weights 5/1/1 give a a b a c a a).

    `update` computes one period of the sequence (weights divided by their gcd)
    when it is small enough (`WRR_SCHEDULE_MAX_OPS`), and each pick then reads
    the next entry; otherwise each pick runs nginx's O(n) step. A new candidate
    list starts a new period. Hosts of weight 0 (or less) are skipped unless no
    host has a positive weight; then all take turns equally.
    """

    __slots__ = ("_current", "_pos", "_schedule", "_total", "_weights")

    def __init__(self) -> None:
        super().__init__()
        self._weights: list[int] = []
        self._total = 0
        self._schedule: tuple[int, ...] = ()
        self._current: list[int] = []
        self._pos = 0

    def update(self, hosts: Sequence[Host]) -> None:
        self._hosts = tuple(hosts)
        weights = [max(h.weight, 0) for h in self._hosts]
        if not any(weights):
            weights = [1] * len(weights)
        divisor = 0
        for w in weights:
            divisor = gcd(divisor, w)
        weights = [w // divisor for w in weights] if divisor else weights
        total = sum(weights)
        self._weights, self._total = weights, total
        self._current = [0] * len(weights)
        self._pos = 0
        if total * len(weights) <= WRR_SCHEDULE_MAX_OPS:
            current = [0] * len(weights)
            self._schedule = tuple(_smooth_step(current, weights, total) for _ in range(total))
        else:
            self._schedule = ()

    def pick(self, key: str | None = None, exclude: Collection[Host] = ()) -> Host:
        hosts = self._hosts or _candidates(self._hosts)
        schedule = self._schedule
        if schedule:
            pos = self._pos
            self._pos = pos + 1 if pos + 1 < len(schedule) else 0
            host = hosts[schedule[pos]]
            if exclude and host in exclude:
                # Look ahead (without taking the turns) for a host not tried yet.
                for step in range(1, min(len(schedule), 2 * len(hosts) + 1)):
                    other = hosts[schedule[(pos + step) % len(schedule)]]
                    if other not in exclude:
                        return other
                return self._heaviest(exclude)
            return host
        host = hosts[_smooth_step(self._current, self._weights, self._total)]
        if exclude and host in exclude:
            return self._heaviest(exclude)
        return host

    def _heaviest(self, exclude: Collection[Host]) -> Host:
        allowed = _allowed(self._hosts, exclude)
        return max(allowed, key=lambda h: h.weight)


class RandomPick(_Base):
    """Uniform random choice (weights ignored)."""

    __slots__ = ("_random",)

    def __init__(self, random: Callable[[], float]) -> None:
        super().__init__()
        self._random = random

    def pick(self, key: str | None = None, exclude: Collection[Host] = ()) -> Host:
        hosts = self._hosts or _candidates(self._hosts)
        n = len(hosts)
        for _ in range(_REDRAWS if exclude else 1):
            host = hosts[min(int(self._random() * n), n - 1)]
            if host not in exclude:
                return host
        allowed = _allowed(hosts, exclude)
        return allowed[min(int(self._random() * len(allowed)), len(allowed) - 1)]


class LeastRequest(_Base):
    """Power of two choices on active requests (Envoy's default for least-request):
    two random hosts, the one with fewer requests in flight relative to its weight."""

    __slots__ = ("_random",)

    def __init__(self, random: Callable[[], float]) -> None:
        super().__init__()
        self._random = random

    def pick(self, key: str | None = None, exclude: Collection[Host] = ()) -> Host:
        hosts = self._hosts or _candidates(self._hosts)
        if exclude:
            for _ in range(_REDRAWS):
                host = self._two_choices(hosts)
                if host not in exclude:
                    return host
            return self._two_choices(_allowed(hosts, exclude))
        return self._two_choices(hosts)

    def _two_choices(self, hosts: Sequence[Host]) -> Host:
        n = len(hosts)
        if n == 1:
            return hosts[0]
        a = hosts[int(self._random() * n) % n]
        b = hosts[int(self._random() * n) % n]
        # Compare load relative to weight so a heavier host takes more.
        if b.active_requests * a.weight < a.active_requests * b.weight:
            return b
        return a


class WeightedRandom(_Base):
    """Random choice with probability weight / total, in O(log n) (bisect over
    cumulative weights, computed by `update`).

    A draw ``r`` picks the host whose slice of ``[0, total)`` holds ``r * total``.
    Hosts of weight 0 (or less) are never picked unless no host has a positive
    weight; then the choice is uniform.
    """

    __slots__ = ("_cumulative", "_random", "_total")

    def __init__(self, random: Callable[[], float]) -> None:
        super().__init__()
        self._random = random
        self._cumulative: list[int] = []
        self._total = 0

    def update(self, hosts: Sequence[Host]) -> None:
        self._hosts = tuple(hosts)
        self._cumulative = list(accumulate(max(h.weight, 0) for h in self._hosts))
        self._total = self._cumulative[-1] if self._cumulative else 0

    def pick(self, key: str | None = None, exclude: Collection[Host] = ()) -> Host:
        hosts = self._hosts or _candidates(self._hosts)
        for _ in range(_REDRAWS if exclude else 1):
            host = self._draw(hosts, self._cumulative, self._total)
            if host not in exclude:
                return host
        allowed = _allowed(hosts, exclude)
        cumulative = list(accumulate(max(h.weight, 0) for h in allowed))
        return self._draw(allowed, cumulative, cumulative[-1])

    def _draw(self, hosts: Sequence[Host], cumulative: list[int], total: int) -> Host:
        n = len(hosts)
        if total <= 0:
            return hosts[min(int(self._random() * n), n - 1)]
        i = bisect_right(cumulative, self._random() * total)
        return hosts[min(i, n - 1)]


class LeastConnections(_Base):
    """Exact least connections: the host with the fewest active requests,
    relative to its weight (``active / weight``, as nginx's ``least_conn``)
    unless ``weighted=False``.

    A heap holds one current entry per host (older entries are skipped when
    they surface, and the heap is rebuilt when they pile up), so a pick, and
    each `started` / `finished` that reports a changed count, is O(log n).
    Ties go to the host picked least recently (first the list order), so
    equally loaded hosts take turns. Hosts of weight 0 (or less) count as
    weight 1.
    """

    __slots__ = ("_heap", "_index", "_turn", "_turns", "_versions", "_weighted")
    tracks_load = True

    def __init__(self, *, weighted: bool = True) -> None:
        super().__init__()
        self._weighted = weighted
        self._index: dict[int, int] = {}  # id(host) -> position
        self._versions: list[int] = []
        self._turns: list[int] = []
        self._turn = 0
        self._heap: list[tuple[float, int, int, int]] = []  # load, turn, position, version

    def update(self, hosts: Sequence[Host]) -> None:
        self._hosts = tuple(hosts)
        n = len(self._hosts)
        self._index = {}
        for i, host in enumerate(self._hosts):
            self._index.setdefault(id(host), i)
        self._versions = [0] * n
        self._turns = list(range(-n, 0))
        self._rebuild()

    def _load(self, host: Host) -> float:
        if self._weighted:
            return host.active_requests / max(host.weight, 1)
        return float(host.active_requests)

    def _rebuild(self) -> None:
        load, turns, versions = self._load, self._turns, self._versions
        self._heap = [(load(h), turns[i], i, versions[i]) for i, h in enumerate(self._hosts)]
        heapq.heapify(self._heap)

    def _changed(self, i: int) -> None:
        self._versions[i] += 1
        host = self._hosts[i]
        heapq.heappush(self._heap, (self._load(host), self._turns[i], i, self._versions[i]))
        if len(self._heap) > 4 * len(self._hosts) + 16:
            self._rebuild()

    def started(self, host: Host) -> None:
        i = self._index.get(id(host))
        if i is not None:
            self._changed(i)

    def finished(self, host: Host) -> None:
        # the same as started, spelled out: mypyc (the compiled build) does not compile
        # a method alias (finished = started)
        i = self._index.get(id(host))
        if i is not None:
            self._changed(i)

    def pick(self, key: str | None = None, exclude: Collection[Host] = ()) -> Host:
        hosts = self._hosts or _candidates(self._hosts)
        heap, versions = self._heap, self._versions
        skipped: list[tuple[float, int, int, int]] = []
        chosen = -1
        while heap:
            entry = heap[0]
            i = entry[2]
            if entry[3] != versions[i]:
                heapq.heappop(heap)
                continue
            if exclude and hosts[i] in exclude and len(skipped) < len(hosts) - 1:
                skipped.append(heapq.heappop(heap))
                continue
            chosen = i
            break
        for entry in skipped:
            heapq.heappush(heap, entry)
        assert chosen >= 0  # the heap holds one current entry per host
        self._turn += 1
        self._turns[chosen] = self._turn
        self._changed(chosen)
        return hosts[chosen]


class ConsistentHash(_Base):
    """Consistent hashing on the request key over a `HashRing` (see
    `meshgate.core.hashring` for why a ring with virtual nodes, and how weights
    work). A pick without a key is a `WeightedRandom` one.

    The ring covers every host key seen since the last rebuild; candidates that
    are a subset of it (unhealthy, ejected or excluded hosts left out) are
    served by skipping the missing hosts' points, which gives exactly the ring
    of the subset. A new ring is needed only when a new host key shows up or
    fewer than half of the ring's hosts remain. With ``deferred=True`` (what a
    cluster on an event loop uses) `update` then only starts a `RingBuild`, and
    the caller runs `build_step` between requests until it returns False;
    meanwhile the old ring keeps serving and hosts not on it take no keyed
    requests. The first ring, and a new one when no candidate is on the old
    ring, are built at once.

    Hosts with the same key count once (the first one). Hosts of weight 0 (or
    less) take no keys unless no host has a positive weight.
    """

    __slots__ = (
        "_build",
        "_deferred",
        "_fallback",
        "_max_weight",
        "_points_per_host",
        "_positions",
        "_ring",
        "_weights",
    )

    def __init__(
        self,
        random: Callable[[], float],
        points_per_host: int = POINTS_PER_HOST,
        *,
        deferred: bool = False,
    ) -> None:
        super().__init__()
        if points_per_host < 1:
            raise ValueError(f"points_per_host must be at least 1, not {points_per_host}")
        self._fallback = WeightedRandom(random)
        self._points_per_host = points_per_host
        self._deferred = deferred
        self._ring: HashRing | None = None
        self._build: RingBuild | None = None
        self._positions: list[int] = []  # ring owner index -> position in the list
        self._weights: list[int] = []  # ring owner index -> weight, 0 if absent
        self._max_weight = 0

    @property
    def ring(self) -> HashRing | None:
        """The ring in use (None before the first `update` with hosts)."""
        return self._ring

    @property
    def building(self) -> bool:
        """Whether a deferred ring build waits for `build_step` calls."""
        return self._build is not None

    def update(self, hosts: Sequence[Host]) -> None:
        self._hosts = tuple(hosts)
        self._fallback.update(hosts)
        if not hosts:
            return
        keys = {h.key for h in self._hosts}
        ring = self._ring
        wanted = ring is None or 2 * len(keys) < len(ring.keys) or not keys <= ring.index.keys()
        if not wanted:
            self._build = None
        elif self._build is None or set(self._build.keys) != keys:
            self._build = RingBuild(keys, self._points_per_host)
            if not self._deferred or ring is None or keys.isdisjoint(ring.index):
                self._ring = self._build.run()
                self._build = None
        self._place()

    def build_step(self) -> bool:
        """One step of the pending ring build; False once there is none left."""
        if self._build is None:
            return False
        ring = self._build.step()
        if ring is None:
            return True
        self._ring, self._build = ring, None
        self._place()
        return False

    def _place(self) -> None:
        """Where each ring owner is in the candidate list, and its weight."""
        ring = self._ring
        assert ring is not None
        positions = [-1] * len(ring.keys)
        weights = [0] * len(ring.keys)
        for position, host in enumerate(self._hosts):
            owner = ring.index.get(host.key)
            if owner is not None and positions[owner] < 0:
                positions[owner] = position
                weights[owner] = max(host.weight, 0)
        present = [w for w in weights if w > 0]
        if not present:
            # No host takes traffic by weight: share the keys equally.
            weights = [1 if p >= 0 else 0 for p in positions]
        elif min(present) == max(present):
            weights = [1 if w > 0 else 0 for w in weights]
        self._positions = positions
        self._weights = weights
        self._max_weight = max(weights)

    def pick(self, key: str | None = None, exclude: Collection[Host] = ()) -> Host:
        hosts = self._hosts or _candidates(self._hosts)
        if key is None:
            return self._fallback.pick(None, exclude)
        ring = self._ring
        assert ring is not None
        weights, max_weight = self._weights, self._max_weight
        if exclude:
            # The hosts not excluded, as if they were the candidates.
            allowed = [p >= 0 and hosts[p] not in exclude for p in self._positions]
            if not any(allowed):  # only hosts not on the ring yet (or none) remain
                return self._fallback.pick(None, exclude)
            weights = [w if ok else 0 for w, ok in zip(weights, allowed, strict=True)]
            max_weight = max(weights)
            if max_weight <= 0:  # none of them weighs anything: equal shares
                weights = [1 if ok else 0 for ok in allowed]
                max_weight = 1
        owner = ring.owner(hash_key(key), weights, max_weight)
        return hosts[self._positions[owner]]


BALANCERS = (
    "round_robin",
    "weighted_round_robin",
    "random",
    "least_request",
    "weighted_random",
    "least_connections",
    "consistent_hash",
)


def make_balancer(name: str, random: Callable[[], float], *, deferred: bool = False) -> Balancer:
    """Build a balancer by its config name; ``deferred`` ring builds for
    consistent_hash (see `ConsistentHash`)."""
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
        return ConsistentHash(random, deferred=deferred)
    raise ValueError(f"unknown load balancer {name!r}; expected one of {', '.join(BALANCERS)}")
