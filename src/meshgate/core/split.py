"""Weighted traffic split (sans-IO): send a share of requests to each item.

Each item owns a range of [0, 1) proportional to its weight, laid out in
declaration order. `WeightedSplit.pick` maps an injected random number onto
those ranges; `WeightedSplit.pick_sticky` maps a stable hash of a key (user id,
session cookie) instead, so a key keeps its item. Because the ranges are
cumulative, changing the weights (90/10 -> 50/50) moves only the keys whose
hash falls in the part of [0, 1) that changed hands.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class SplitError(ValueError):
    """A weighted split is badly configured, or pick() got a number outside [0, 1)."""


def sticky_point(key: str) -> float:
    """The fixed point in [0, 1) of `key`: its 64-bit BLAKE2b hash as a fraction.

    Stable across processes and versions (unlike `hash()`). The hash is cut to
    its top 53 bits, which a float holds exactly, so the point never rounds up
    to 1.0.
    """
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / 2**53


class WeightedSplit(Generic[T]):
    """Items with weights >= 0; an item with weight 0 is never picked."""

    __slots__ = ("_bounds", "_items", "_weights")

    def __init__(self, items: Sequence[tuple[T, int | float]]) -> None:
        weights: list[float] = []
        for i, (item, weight) in enumerate(items):
            if not math.isfinite(weight) or weight < 0:
                raise SplitError(
                    f"weight of item {i} ({item!r}) must be a finite number >= 0, got {weight!r}"
                )
            weights.append(weight)
        cumulative = [0.0] * len(weights)
        running = 0.0
        for i, weight in enumerate(weights):
            running += weight
            cumulative[i] = running
        if running <= 0:
            raise SplitError("weights sum to 0: give at least one item a weight > 0")
        if not math.isfinite(running):
            raise SplitError("weights sum to more than a float can hold; scale them down")
        self._items = tuple(item for item, _ in items)
        self._weights = tuple(w / running for w in weights)
        # upper bound of each item's range; the last one is running / running == 1.0
        self._bounds = tuple(c / running for c in cumulative)

    def pick(self, r: float) -> T:
        """The item whose range [previous bound, bound) contains `r` (in [0, 1))."""
        if not 0.0 <= r < 1.0:
            raise SplitError(f"pick() needs a number in [0, 1), got {r!r}")
        # the first bound above r; a weight-0 item repeats its predecessor's bound
        # (or is 0.0 first in line), so it is never the first one above r
        return self._items[bisect_right(self._bounds, r)]

    def pick_sticky(self, key: str) -> T:
        """The item for `key`: always the same one for the same key and weights."""
        return self.pick(sticky_point(key))

    def shares(self) -> list[tuple[T, float]]:
        """Each item with its fraction of traffic (summing to 1), in declaration order."""
        return list(zip(self._items, self._weights, strict=True))
