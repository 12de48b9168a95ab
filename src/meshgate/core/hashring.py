"""Consistent hashing (sans-IO): a ring hash with virtual nodes.

Why a ring and not Maglev
-------------------------
Both are allowed by the design (ring >= 1024 points, or a Maglev table of
65537). Maglev balances almost exactly and looks up in O(1), but its table is
refilled from scratch when the host set changes, so removing one host also
moves keys between hosts that stayed (measured with 10 hosts: 0.2 % of all
keys). On a ring the owner of a key follows a fixed per-key preference over
hosts: removing a host moves exactly its keys, adding one moves only the keys
it now owns, and any subset of hosts is served by the same ring by skipping
absent hosts' points. That is what sticky sessions and caches behind the
gateway need, and it lets a balancer keep one ring while the candidate list
shrinks and grows (health, outlier ejection, retries that exclude a host).

The price of a ring is balance: a host owning ``k`` random points gets a share
off by about ``1/sqrt(k)`` (relative). Hence the default of 16384 points per
host (for 10 hosts 163840 points, 1.3 MB, built in about 30 ms of CPU; 100
hosts about 0.4 s): shares within about 0.8 %, so the chi-square statistic of
100k keys over 10 hosts stays below its 99.9 % bound. Envoy's default ring
(1024 points in all) would be off by about 10 % per host. Fewer points per
host trade balance for memory and build time (``points_per_host``).

Building in steps
-----------------
`RingBuild` makes a ring in bounded steps (one host's sorted points, or one
slice of the merge, about 16384 points each: a few milliseconds), so an event
loop can build a new ring between requests while the old one keeps serving
(see `meshgate.core.balancer.ConsistentHash`). `HashRing(keys)` runs every
step at once. Both give the same ring.

Weights
-------
Every host has the same number of points whatever its weight (weights go up
to 1000 in the config; points proportional to weight would not fit). Weight
scales distance instead: the owner of a key is the present host ``h`` that
minimizes ``distance(key, next point of h) / weight(h)``, ties to the smaller
host key. With many random points per host that distance is close to
exponential, so host ``h`` gets ``weight(h) / total`` of the keys (the argument
behind weighted rendezvous hashing), and the rule is still a fixed per-key
preference: changing one host's weight only moves keys to or from that host.
With equal weights it is the classic "first point clockwise".

Hashes are stable across processes, machines and Python versions (SHAKE-256
for the points, BLAKE2b for keys, never ``hash()``), so every gateway replica
maps a key to the same host.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence

POINTS_PER_HOST = 16384
"""Default number of ring points per host (see the module docstring)."""

MAX_HOSTS = 1 << 16
"""A ring holds at most this many distinct host keys (the owner is 16 bits)."""

# A ring entry is an integer in [2**52, 2**53) stored as a double (exact): 36
# bits of position on the ring, then 16 bits of owner (an index in `keys`).
# Doubles because CPython sorts a list of floats about twice as fast as one of
# 64-bit ints, and the build is dominated by that sort.
_BASE = 1 << 52
_OWNER = 0xFFFF
_POSITION = (_BASE - 1) & ~_OWNER
# The top 12 bits of such a double (sign 0, exponent 1023 + 52 = 0x433), as the
# high nibble of byte 6 and byte 7 of its little-endian encoding.
_EXPONENT_NIBBLE = bytes(0x30 | (b & 0x0F) for b in range(256))
_POINTS_DOMAIN = b"meshgate ring point\x00"


def hash_key(key: str) -> int:
    """The stable 64-bit hash of a request key (header value, client IP, ...)."""
    data = key.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _entries(key: str, count: int, owner: int) -> bytes:
    """``count`` ring entries of one host, as little-endian doubles: 36 bits of
    SHAKE-256 output for the position, the owner index in the low 16 bits."""
    data = _POINTS_DOMAIN + key.encode("utf-8", "surrogatepass")
    buf = bytearray(hashlib.shake_256(data).digest(8 * count))
    buf[0::8] = bytes((owner & 0xFF,)) * count
    buf[1::8] = bytes((owner >> 8,)) * count
    buf[6::8] = bytes(buf[6::8]).translate(_EXPONENT_NIBBLE)
    buf[7::8] = b"\x43" * count
    return bytes(buf)


STEP_POINTS = 1 << 14
"""About how many ring points one `RingBuild.step` handles."""


def _check(keys: tuple[str, ...], points_per_host: int) -> None:
    if points_per_host < 1:
        raise ValueError(f"points_per_host must be at least 1, not {points_per_host}")
    if not keys:
        raise ValueError("a hash ring needs at least one host")
    if len(keys) > MAX_HOSTS:
        raise ValueError(f"a hash ring holds at most {MAX_HOSTS} hosts, not {len(keys)}")


class RingBuild:
    """A `HashRing` under construction, made in bounded steps.

    Phase one turns each host's points into a sorted run (hosts grouped so a
    step makes about `STEP_POINTS` points); phase two merges the runs one slice
    of the ring's position space at a time (each slice about `STEP_POINTS`
    points, sorted on its own). Call `step` until it returns the ring.
    """

    __slots__ = ("_bounds", "_cursors", "_next", "_out", "_runs", "keys", "points_per_host")

    def __init__(self, keys: Iterable[str], points_per_host: int = POINTS_PER_HOST) -> None:
        self.keys: tuple[str, ...] = tuple(sorted(set(keys)))
        _check(self.keys, points_per_host)
        self.points_per_host = points_per_host
        self._runs: list[array[float]] = []
        self._next = 0  # the next host to turn into a run, then the next slice to merge
        total = len(self.keys) * points_per_host
        slices = max(1, -(-total // STEP_POINTS))
        width = _BASE // slices
        self._bounds = [float(_BASE + width * i) for i in range(1, slices)] + [float(2 * _BASE)]
        self._cursors: list[int] = []
        self._out = array("d")

    def step(self) -> HashRing | None:
        """Do one bounded piece of work; the finished ring after the last one."""
        keys = self.keys
        if len(self._runs) < len(keys):
            per_step = max(1, STEP_POINTS // self.points_per_host)
            stop = min(len(keys), self._next + per_step)
            for owner in range(self._next, stop):
                run = array("d")
                run.frombytes(_entries(keys[owner], self.points_per_host, owner))
                if sys.byteorder == "big":
                    run.byteswap()
                ordered = run.tolist()
                ordered.sort()
                self._runs.append(array("d", ordered))
            self._next = 0 if stop == len(keys) else stop
            if stop == len(keys):
                self._cursors = [0] * len(self._runs)
            return None
        bound = self._bounds[self._next]
        merged: list[float] = []
        cursors = self._cursors
        for j, run in enumerate(self._runs):
            end = bisect_left(run, bound, cursors[j])
            merged.extend(run[cursors[j] : end])
            cursors[j] = end
        # Equal positions sort by owner index, i.e. by host key: deterministic.
        merged.sort()
        self._out.extend(merged)
        self._next += 1
        if self._next < len(self._bounds):
            return None
        return HashRing._made(keys, self.points_per_host, self._out)

    def run(self) -> HashRing:
        """Every remaining step at once."""
        while True:
            ring = self.step()
            if ring is not None:
                return ring


class HashRing:
    """An immutable ring over a set of host keys.

    ``keys`` are the distinct host keys, sorted; an owner is an index into it.
    Build cost O(P log P) for P = hosts * points_per_host (see `RingBuild`);
    lookup O(log P) plus a short walk past absent hosts' points.
    """

    __slots__ = ("_ring", "index", "keys", "points_per_host")

    def __init__(self, keys: Iterable[str], points_per_host: int = POINTS_PER_HOST) -> None:
        built = RingBuild(keys, points_per_host).run()
        self.keys: tuple[str, ...] = built.keys
        self.points_per_host = points_per_host
        self.index: dict[str, int] = built.index
        self._ring: array[float] = built._ring

    @classmethod
    def _made(cls, keys: tuple[str, ...], points_per_host: int, ring: array[float]) -> HashRing:
        made = cls.__new__(cls)
        made.keys = keys
        made.points_per_host = points_per_host
        made.index = {key: i for i, key in enumerate(keys)}
        made._ring = ring
        return made

    def __len__(self) -> int:
        return len(self._ring)

    def owner(
        self, point: int, weights: Sequence[int] | None = None, max_weight: int | None = None
    ) -> int:
        """The index in ``keys`` of the host that owns ``point`` (a `hash_key`).

        ``weights[i]`` is host i's weight, 0 when it is absent (or takes no
        traffic). ``None`` means every host, all equal. ``max_weight`` is
        ``max(weights)``, given by callers that keep it; a ``max_weight`` of 1
        means all present hosts weigh the same (the fast path).
        """
        ring = self._ring
        n = len(ring)
        start = _BASE | (((point >> 28) << 16) & _POSITION)
        i = bisect_left(ring, start)
        if weights is None:
            return int(ring[i if i < n else 0]) & _OWNER
        if max_weight is None:
            max_weight = max(weights)
        if max_weight <= 0:
            raise LookupError("no host on the ring has a positive weight")
        if max_weight == 1:
            # Equal weights: the first present host clockwise.
            for _ in range(n):
                if i == n:
                    i = 0
                owner = int(ring[i]) & _OWNER
                if weights[owner]:
                    return owner
                i += 1
            raise LookupError("no host on the ring has a positive weight")
        # Weighted: minimize distance / weight. Distances only grow along the
        # walk, so stop once distance / max_weight exceeds the best score.
        best = -1
        best_distance = 0
        best_weight = 1
        for _ in range(n):
            if i == n:
                i = 0
            entry = int(ring[i])
            i += 1
            distance = (entry - start) & _POSITION
            if best >= 0 and distance * best_weight > best_distance * max_weight:
                break
            owner = entry & _OWNER
            weight = weights[owner]
            if weight <= 0:
                continue
            lhs = distance * best_weight
            rhs = best_distance * weight
            if best < 0 or lhs < rhs or (lhs == rhs and owner < best):
                best, best_distance, best_weight = owner, distance, weight
        if best < 0:
            raise LookupError("no host on the ring has a positive weight")
        return best
