"""Tests of the consistent-hash ring (meshgate.core.hashring).

The distribution tests hash 100k keys once per module (fixed seed) and look
them up on rings built from fixed host names.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meshgate
from meshgate.core.hashring import POINTS_PER_HOST, STEP_POINTS, HashRing, RingBuild, hash_key

N_KEYS = 100_000
CHI2_DF9_999 = 27.877  # 99.9 % quantile of chi-square with 9 degrees of freedom
HOSTS = [f"10.0.0.{i}:8080" for i in range(1, 12)]  # 10 hosts, and an 11th to add


@pytest.fixture(scope="module")
def points() -> list[int]:
    rng = random.Random(20240607)
    return [hash_key(f"user-{rng.getrandbits(64):016x}") for _ in range(N_KEYS)]


@pytest.fixture(scope="module")
def ring10() -> HashRing:
    return HashRing(HOSTS[:10])


def owners(
    ring: HashRing, points: Sequence[int], weights: Sequence[int] | None = None
) -> list[str]:
    keys = ring.keys
    if weights is None:
        return [keys[ring.owner(p)] for p in points]
    max_weight = max(weights)
    return [keys[ring.owner(p, weights, max_weight)] for p in points]


# --------------------------------------------------------------------------- distribution


def test_uniform_chi_square_below_999_percent_bound(ring10: HashRing, points: list[int]) -> None:
    counts = Counter(owners(ring10, points))
    expected = N_KEYS / 10
    chi2 = sum((counts[h] - expected) ** 2 / expected for h in HOSTS[:10])
    assert chi2 < CHI2_DF9_999, (chi2, counts)
    # and no host is off by more than 3 %
    assert all(abs(counts[h] / expected - 1) < 0.03 for h in HOSTS[:10]), counts


@pytest.mark.parametrize(
    "weights",
    [pytest.param([1, 2, 3, 4], id="1-2-3-4"), pytest.param([1, 10, 10], id="1-10-10")],
)
def test_weighted_shares_proportional(weights: list[int], points: list[int]) -> None:
    ring = HashRing(HOSTS[: len(weights)])
    counts = Counter(owners(ring, points, weights))
    total = sum(weights)
    for key, weight in zip(ring.keys, weights, strict=True):
        share = counts[key] / N_KEYS
        assert share == pytest.approx(weight / total, rel=0.05), (key, share, weight / total)


def test_weights_none_means_all_present_and_equal(ring10: HashRing, points: list[int]) -> None:
    sample = points[:2000]
    assert owners(ring10, sample) == owners(ring10, sample, [1] * 10)
    # equal weights of any size behave the same (the general walk agrees with the fast path)
    assert owners(ring10, sample) == owners(ring10, sample, [7] * 10)


# --------------------------------------------------------------------------- movement


def test_adding_one_host_to_ten_moves_at_most_1_11_plus_2_percent(
    ring10: HashRing, points: list[int]
) -> None:
    before = owners(ring10, points)
    after = owners(HashRing(HOSTS), points)
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(moved) / N_KEYS <= 1 / 11 + 0.02
    # keys only move to the new host
    assert {b for _, b in moved} == {HOSTS[10]}
    # and the new host takes about its share
    assert len(moved) / N_KEYS == pytest.approx(1 / 11, rel=0.05)


@pytest.mark.parametrize("removed", [HOSTS[0], HOSTS[6]])
def test_removing_one_host_moves_only_its_keys(
    ring10: HashRing, points: list[int], removed: str
) -> None:
    before = owners(ring10, points)
    after = owners(HashRing(h for h in HOSTS[:10] if h != removed), points)
    for a, b in zip(before, after, strict=True):
        if a != removed:
            assert a == b
    # the removed host's keys spread over every remaining host
    orphans = Counter(b for a, b in zip(before, after, strict=True) if a == removed)
    assert set(orphans) == set(HOSTS[:10]) - {removed}


def test_absent_hosts_on_a_bigger_ring_equal_the_smaller_ring(
    ring10: HashRing, points: list[int]
) -> None:
    sample = points[:5000]
    present = HOSTS[:10:2]
    weights = [1 if k in present else 0 for k in ring10.keys]
    assert owners(ring10, sample, weights) == owners(HashRing(present), sample)
    weighted = [3, 0, 1, 0, 2, 0, 5, 0, 1, 0]
    small = HashRing(k for k, w in zip(ring10.keys, weighted, strict=True) if w)
    small_weights = [w for w in weighted if w]
    assert owners(ring10, sample, weighted) == owners(small, sample, small_weights)


def test_changing_one_weight_moves_keys_only_to_or_from_that_host(
    ring10: HashRing, points: list[int]
) -> None:
    sample = points[:20_000]
    weights = [2, 1, 1, 3, 1, 1, 1, 2, 1, 1]
    before = owners(ring10, sample, weights)
    heavier = list(weights)
    heavier[4] = 3
    changed = ring10.keys[4]
    after = owners(ring10, sample, heavier)
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert moved
    assert all(b == changed for _, b in moved)


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(0, 6), min_size=2, max_size=8).filter(lambda w: any(w)),
    removed=st.integers(0, 7),
    keys=st.lists(st.text(max_size=12), min_size=1, max_size=30),
)
def test_removal_never_moves_other_hosts_keys(
    weights: list[int], removed: int, keys: list[str]
) -> None:
    ring = HashRing([f"h{i}" for i in range(len(weights))], points_per_host=32)
    removed %= len(weights)
    fewer = list(weights)
    fewer[removed] = 0
    for key in keys:
        point = hash_key(key)
        owner = ring.owner(point, weights)
        assert weights[owner] > 0
        if any(fewer):
            after = ring.owner(point, fewer)
            assert fewer[after] > 0
            if owner != removed:
                assert after == owner


# --------------------------------------------------------------------------- stability


def test_same_hosts_in_any_order_give_the_same_ring(points: list[int]) -> None:
    sample = points[:3000]
    shuffled = list(HOSTS[:10])
    random.Random(3).shuffle(shuffled)
    a, b = HashRing(HOSTS[:10]), HashRing(shuffled + HOSTS[:3])
    assert a.keys == b.keys
    assert owners(a, sample) == owners(b, sample)


def test_hashes_are_pinned() -> None:
    # Changing these remaps every key in a fleet of gateways mid-upgrade.
    assert hash_key("user-42") == 12029086546990375023
    assert hash_key("") == 13020603013274838756
    assert hash_key("café") == 16417751708935026519
    ring = HashRing(HOSTS[:10])
    assert [ring.keys[ring.owner(hash_key(f"session-{j}"))] for j in range(8)] == [
        "10.0.0.5:8080",
        "10.0.0.9:8080",
        "10.0.0.1:8080",
        "10.0.0.5:8080",
        "10.0.0.10:8080",
        "10.0.0.1:8080",
        "10.0.0.10:8080",
        "10.0.0.3:8080",
    ]


def test_same_key_same_host_in_another_process() -> None:
    code = (
        "from meshgate.core.hashring import HashRing, hash_key\n"
        f"ring = HashRing({HOSTS[:10]!r})\n"
        "print(' '.join(ring.keys[ring.owner(hash_key(f'k{j}'))] for j in range(200)))\n"
    )
    src = str(Path(meshgate.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": src}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    ring = HashRing(HOSTS[:10])
    assert out == [ring.keys[ring.owner(hash_key(f"k{j}"))] for j in range(200)]


def test_surrogates_in_keys_are_hashed_not_rejected() -> None:
    assert hash_key("\udcff") != hash_key("\udcfe")


# --------------------------------------------------------------------------- shape and errors


def test_ring_size_and_default() -> None:
    assert POINTS_PER_HOST >= 1024
    assert len(HashRing(["a", "b", "a"], points_per_host=100)) == 200
    assert HashRing(["b", "a"], points_per_host=1).keys == ("a", "b")


def test_single_point_ring_wraps_around() -> None:
    ring = HashRing(["only"], points_per_host=1)
    assert {ring.owner(hash_key(str(i))) for i in range(100)} == {0}
    assert {ring.owner(hash_key(str(i)), [5]) for i in range(100)} == {0}


@pytest.mark.parametrize(
    ("keys", "points_per_host", "message"),
    [
        ([], 16, "at least one host"),
        (["a"], 0, "points_per_host"),
    ],
)
def test_bad_rings(keys: list[str], points_per_host: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HashRing(keys, points_per_host)


@pytest.mark.parametrize("weights", [[0, 0], [-1, 0]])
def test_no_positive_weight_is_a_lookup_error(weights: list[int]) -> None:
    ring = HashRing(["a", "b"], points_per_host=8)
    with pytest.raises(LookupError, match="positive weight"):
        ring.owner(hash_key("x"), weights)
    with pytest.raises(LookupError, match="positive weight"):
        ring.owner(hash_key("x"), [0, 0], max_weight=1)
    with pytest.raises(LookupError, match="positive weight"):
        ring.owner(hash_key("x"), [0, 0], max_weight=3)


@pytest.mark.parametrize(("hosts", "points_per_host"), [(1, 5), (3, 4096), (10, 16384)])
def test_a_ring_built_in_steps_is_the_ring_built_at_once(hosts: int, points_per_host: int) -> None:
    keys = HOSTS[:hosts]
    build = RingBuild(reversed(keys), points_per_host)
    steps = 1
    ring = build.step()
    while ring is None:
        steps += 1
        ring = build.step()
    whole = HashRing(keys, points_per_host)
    assert ring.keys == whole.keys and ring.index == whole.index
    assert list(ring._ring) == list(whole._ring)
    # about STEP_POINTS points per step: many small steps for big rings
    assert steps >= hosts * points_per_host // STEP_POINTS
