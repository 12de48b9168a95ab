"""Tests of the weighted traffic split (meshgate.core.split)."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core.split import SplitError, WeightedSplit, sticky_point

N = 10_000


def keys(n: int) -> list[str]:
    return [f"user-{i}" for i in range(n)]


# --------------------------------------------------------------------------- pick


@pytest.mark.parametrize(
    "weights",
    [
        {"v1": 90, "v2": 10},
        {"v1": 50, "v2": 50},
        {"v1": 0, "v2": 100},
        {"a": 60, "b": 30, "c": 10},
        {"a": 0.5, "b": 0.25, "c": 0.25},
    ],
)
def test_picks_follow_weights(weights: dict[str, float]) -> None:
    split = WeightedSplit(list(weights.items()))
    rnd = random.Random(2024)
    counts = Counter(split.pick(rnd.random()) for _ in range(N))
    total = sum(weights.values())
    for item, weight in weights.items():
        assert counts[item] / N == pytest.approx(weight / total, abs=0.02), item
    assert set(counts) == {item for item, weight in weights.items() if weight > 0}


def test_pick_boundaries_are_exact() -> None:
    split = WeightedSplit([("a", 1), ("b", 3)])
    # [0, 0.25) -> a, [0.25, 1) -> b
    assert [split.pick(r) for r in (0.0, 0.2499, 0.25, 0.9999999)] == ["a", "a", "b", "b"]


def test_zero_weight_items_are_skipped_wherever_they_are() -> None:
    split = WeightedSplit([("z0", 0), ("a", 1), ("z1", 0), ("b", 1), ("z2", 0)])
    assert [split.pick(r) for r in (0.0, 0.49, 0.5, 0.99)] == ["a", "a", "b", "b"]


def test_items_may_repeat_and_be_any_type() -> None:
    split = WeightedSplit([(1, 1), (2, 1), (1, 2)])
    assert [split.pick(r) for r in (0.1, 0.3, 0.6)] == [1, 2, 1]


@pytest.mark.parametrize("r", [-0.1, 1.0, 1.5, math.nan, math.inf])
def test_pick_refuses_numbers_outside_unit_interval(r: float) -> None:
    split = WeightedSplit([("a", 1)])
    with pytest.raises(SplitError, match=r"\[0, 1\)"):
        split.pick(r)


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(
        st.one_of(st.integers(0, 1000), st.floats(0, 1e6, allow_nan=False)),
        min_size=1,
        max_size=8,
    ).filter(lambda ws: sum(ws) > 0),
    r=st.floats(0, 1, exclude_max=True),
)
def test_pick_never_returns_a_zero_weight_item(weights: list[float], r: float) -> None:
    split = WeightedSplit(list(enumerate(weights)))
    assert weights[split.pick(r)] > 0


@settings(max_examples=100, deadline=None)
@given(weights=st.lists(st.integers(0, 100), min_size=1, max_size=6).filter(any))
def test_shares_are_fractions_of_the_total(weights: list[int]) -> None:
    shares = WeightedSplit([(f"i{i}", w) for i, w in enumerate(weights)]).shares()
    assert [item for item, _ in shares] == [f"i{i}" for i in range(len(weights))]
    assert math.fsum(share for _, share in shares) == pytest.approx(1.0)
    for (_, share), weight in zip(shares, weights, strict=True):
        assert share == pytest.approx(weight / sum(weights))


def test_shares_example() -> None:
    assert WeightedSplit([("v1", 90), ("v2", 10), ("v3", 0)]).shares() == [
        ("v1", 0.9),
        ("v2", 0.1),
        ("v3", 0.0),
    ]


# --------------------------------------------------------------------------- sticky


def test_sticky_point_is_the_blake2b_fraction() -> None:
    for key in ["", "user-42", "ü/ß", *keys(100)]:
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
        assert sticky_point(key) == pytest.approx(int.from_bytes(digest, "big") / 2**64, abs=1e-15)


def test_sticky_point_is_pinned_and_in_unit_interval() -> None:
    # the hash must not change between processes or releases (PYTHONHASHSEED, versions)
    assert sticky_point("") == 0.8931675160897388
    assert all(0.0 <= sticky_point(k) < 1.0 for k in keys(1000))


def test_sticky_point_accepts_lone_surrogates() -> None:
    # e.g. a header value decoded with surrogateescape
    assert 0.0 <= sticky_point("caf\udce9") < 1.0
    assert sticky_point("caf\udce9") != sticky_point("café")


def test_pick_sticky_same_key_same_item() -> None:
    split = WeightedSplit([("v1", 50), ("v2", 50)])
    rebuilt = WeightedSplit([("v1", 50), ("v2", 50)])
    for key in keys(500):
        first = split.pick_sticky(key)
        assert all(split.pick_sticky(key) == first for _ in range(3))
        assert rebuilt.pick_sticky(key) == first


def test_pick_sticky_follows_weights() -> None:
    split = WeightedSplit([("v1", 90), ("v2", 10)])
    counts = Counter(split.pick_sticky(key) for key in keys(N))
    assert counts["v2"] / N == pytest.approx(0.10, abs=0.02)


def test_sticky_minimal_movement_when_weights_shift() -> None:
    before = WeightedSplit([("v1", 90), ("v2", 10)])
    after = WeightedSplit([("v1", 50), ("v2", 50)])
    moved = 0
    for key in keys(N):
        old, new = before.pick_sticky(key), after.pick_sticky(key)
        if old == "v2":
            assert new == "v2", key  # the canary's users stay on the canary
        elif new != old:
            moved += 1
    # only the keys in [0.5, 0.9) move: 40% of them, nobody else
    assert moved / N == pytest.approx(0.40, abs=0.02)


def test_sticky_movement_back_is_the_mirror_image() -> None:
    wide = WeightedSplit([("v1", 50), ("v2", 50)])
    narrow = WeightedSplit([("v1", 90), ("v2", 10)])
    for key in keys(2000):
        if wide.pick_sticky(key) == "v1":
            assert narrow.pick_sticky(key) == "v1", key


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("items", [[], [("a", 0)], [("a", 0), ("b", 0.0)]])
def test_weights_summing_to_zero(items: list[tuple[str, float]]) -> None:
    with pytest.raises(SplitError, match="weights sum to 0"):
        WeightedSplit(items)


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, math.inf])
def test_bad_weight_names_the_item(bad: float) -> None:
    with pytest.raises(SplitError, match=r"item 1 \('v2'\)") as info:
        WeightedSplit([("v1", 1), ("v2", bad)])
    assert repr(bad) in str(info.value)


def test_weights_too_large_to_sum() -> None:
    with pytest.raises(SplitError, match="scale them down"):
        WeightedSplit([("a", 1e308), ("b", 1e308)])


def test_split_error_is_a_value_error() -> None:
    assert issubclass(SplitError, ValueError)
