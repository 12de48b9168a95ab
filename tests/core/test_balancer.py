"""Tests of the sans-IO load balancers (meshgate.core.balancer)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core.balancer import (
    BALANCERS,
    Balancer,
    ConsistentHash,
    Host,
    LeastConnections,
    LeastRequest,
    RandomPick,
    RoundRobin,
    WeightedRandom,
    WeightedRoundRobin,
    make_balancer,
)


@dataclass
class FakeHost:
    key: str
    weight: int = 1
    active_requests: int = 0


def hosts(*spec: tuple[str, int]) -> list[FakeHost]:
    return [FakeHost(key, weight) for key, weight in spec]


def keys(picked: Sequence[Host]) -> str:
    return "".join(h.key for h in picked)


def scripted(values: Sequence[float]) -> Iterator[float]:
    return iter(values)


# --------------------------------------------------------------------------- round robin


def test_round_robin_order() -> None:
    hs = hosts(("a", 1), ("b", 1), ("c", 1))
    rr = RoundRobin()
    assert keys([rr.pick(hs) for _ in range(7)]) == "abcabca"


def test_round_robin_ignores_weights() -> None:
    hs = hosts(("a", 10), ("b", 1))
    rr = RoundRobin()
    assert keys([rr.pick(hs) for _ in range(4)]) == "abab"


def test_round_robin_survives_shrinking_list() -> None:
    rr = RoundRobin()
    big = hosts(("a", 1), ("b", 1), ("c", 1))
    assert keys([rr.pick(big) for _ in range(3)]) == "abc"
    small = big[:2]
    picked = [rr.pick(small) for _ in range(4)]
    assert Counter(keys(picked)) == {"a": 2, "b": 2}


def test_round_robin_single_host() -> None:
    hs = hosts(("only", 1))
    rr = RoundRobin()
    assert all(rr.pick(hs) is hs[0] for _ in range(5))


# --------------------------------------------------------------------------- smooth WRR


def test_smooth_wrr_nginx_sequence() -> None:
    hs = hosts(("a", 5), ("b", 1), ("c", 1))
    wrr = WeightedRoundRobin()
    # the sequence from nginx's ngx_http_upstream_round_robin.c commit message
    assert keys([wrr.pick(hs) for _ in range(7)]) == "aabacaa"
    # and it repeats
    assert keys([wrr.pick(hs) for _ in range(7)]) == "aabacaa"


def test_smooth_wrr_spreads_heavy_host_within_each_cycle() -> None:
    hs = hosts(("a", 5), ("b", 1), ("c", 1))
    wrr = WeightedRoundRobin()
    seq = keys([wrr.pick(hs) for _ in range(70)])
    cycles = [seq[i : i + 7] for i in range(0, 70, 7)]
    # within a cycle the heavy host never runs three times in a row (plain WRR
    # would give "aaaaabc"); across a cycle boundary "aa" + "aa" is expected
    assert all(cycle == "aabacaa" for cycle in cycles)
    assert all("aaa" not in cycle for cycle in cycles)
    assert Counter(seq) == {"a": 50, "b": 10, "c": 10}


@settings(max_examples=100, deadline=None)
@given(weights=st.lists(st.integers(1, 10), min_size=1, max_size=6), cycles=st.integers(1, 3))
def test_smooth_wrr_exact_proportions_per_cycle(weights: list[int], cycles: int) -> None:
    hs = [FakeHost(f"h{i}", w) for i, w in enumerate(weights)]
    wrr = WeightedRoundRobin()
    total = sum(weights)
    for _ in range(cycles):
        counts = Counter(wrr.pick(hs).key for _ in range(total))
        assert counts == {h.key: h.weight for h in hs}


def test_smooth_wrr_equal_weights_is_round_robin() -> None:
    hs = hosts(("a", 2), ("b", 2), ("c", 2))
    wrr = WeightedRoundRobin()
    assert keys([wrr.pick(hs) for _ in range(6)]) == "abcabc"


def test_smooth_wrr_keeps_state_per_key_when_list_changes() -> None:
    wrr = WeightedRoundRobin()
    full = hosts(("a", 1), ("b", 1), ("c", 1))
    wrr.pick(full)
    # 'c' is dropped (e.g. unhealthy); the remaining hosts share fairly
    partial = full[:2]
    seq = keys([wrr.pick(partial) for _ in range(100)])
    counts = Counter(seq)
    assert set(counts) == {"a", "b"}
    assert abs(counts["a"] - counts["b"]) <= 2


def test_smooth_wrr_forgets_many_departed_hosts() -> None:
    wrr = WeightedRoundRobin()
    for i in range(20):
        wrr.pick(hosts((f"gone{i}", 1), (f"gone{i}b", 1)))
    wrr.pick(hosts(("a", 1), ("b", 1)))
    # state is bounded: never much more than twice the current candidate count
    assert len(wrr._current) <= 4


# --------------------------------------------------------------------------- random


def test_random_respects_weights_statistically() -> None:
    hs = hosts(("a", 6), ("b", 3), ("c", 1))
    rnd = RandomPick(random.Random(1234).random)
    n = 5000
    counts = Counter(rnd.pick(hs).key for _ in range(n))
    assert counts["a"] / n == pytest.approx(0.6, abs=0.04)
    assert counts["b"] / n == pytest.approx(0.3, abs=0.04)
    assert counts["c"] / n == pytest.approx(0.1, abs=0.03)


def test_random_boundaries_are_exact() -> None:
    hs = hosts(("a", 1), ("b", 3))
    # [0, 0.25) -> a, [0.25, 1) -> b
    values = scripted([0.0, 0.2499, 0.25, 0.9999999])
    rnd = RandomPick(lambda: next(values))
    assert keys([rnd.pick(hs) for _ in range(4)]) == "aabb"


def test_random_out_of_range_value_falls_back_to_last() -> None:
    hs = hosts(("a", 1), ("b", 1))
    assert RandomPick(lambda: 1.0).pick(hs).key == "b"


def test_random_is_reproducible_with_seed() -> None:
    hs = hosts(("a", 1), ("b", 2), ("c", 3))
    r1 = RandomPick(random.Random(7).random)
    r2 = RandomPick(random.Random(7).random)
    assert [r1.pick(hs).key for _ in range(50)] == [r2.pick(hs).key for _ in range(50)]


# --------------------------------------------------------------------------- least request


def test_least_request_prefers_fewer_active_requests() -> None:
    idle, busy = FakeHost("idle", 1, 0), FakeHost("busy", 1, 10)
    # first draw -> index 1 (busy), second draw -> index 0 (idle)
    values = scripted([0.9, 0.1])
    lr = LeastRequest(lambda: next(values))
    assert lr.pick([idle, busy]) is idle
    values2 = scripted([0.1, 0.9])
    lr2 = LeastRequest(lambda: next(values2))
    assert lr2.pick([idle, busy]) is idle


def test_least_request_tie_keeps_first_choice() -> None:
    a, b = FakeHost("a", 1, 3), FakeHost("b", 1, 3)
    values = scripted([0.9, 0.1])
    assert LeastRequest(lambda: next(values)).pick([a, b]) is b


def test_least_request_relative_to_weight() -> None:
    heavy, light = FakeHost("heavy", 4, 6), FakeHost("light", 1, 2)
    # 6/4 = 1.5 < 2/1 = 2 -> the heavy host takes it despite more active requests
    values = scripted([0.9, 0.1])
    assert LeastRequest(lambda: next(values)).pick([heavy, light]) is heavy


def test_least_request_statistically_avoids_busy_host() -> None:
    hs = [FakeHost("idle", 1, 0), FakeHost("busy1", 1, 50), FakeHost("busy2", 1, 50)]
    lr = LeastRequest(random.Random(42).random)
    n = 3000
    counts = Counter(lr.pick(hs).key for _ in range(n))
    # P2C: the idle host wins unless both draws miss it: 1 - (2/3)^2 = 5/9
    assert counts["idle"] / n == pytest.approx(5 / 9, abs=0.05)


def test_least_request_single_host_consumes_no_randomness() -> None:
    def boom() -> float:
        raise AssertionError("random drawn for a single host")

    only = FakeHost("only")
    assert LeastRequest(boom).pick([only]) is only


# --------------------------------------------------------------------------- weighted random


def test_weighted_random_distribution_over_100k_picks() -> None:
    hs = hosts(("a", 6), ("b", 3), ("c", 1))
    wr = WeightedRandom(random.Random(99).random)
    n = 100_000
    counts = Counter(wr.pick(hs).key for _ in range(n))
    assert counts["a"] / n == pytest.approx(0.6, abs=0.006)
    assert counts["b"] / n == pytest.approx(0.3, abs=0.006)
    assert counts["c"] / n == pytest.approx(0.1, abs=0.004)


def test_weighted_random_draws_like_random_pick() -> None:
    hs = hosts(("a", 1), ("b", 3), ("c", 2))
    draws = [i / 64 for i in range(64)] + [0.9999999, 1.0]
    v1, v2 = iter(draws), iter(draws)
    wr, rp = WeightedRandom(lambda: next(v1)), RandomPick(lambda: next(v2))
    assert keys([wr.pick(hs) for _ in draws]) == keys([rp.pick(hs) for _ in draws])


def test_weighted_random_boundaries_are_exact() -> None:
    hs = hosts(("a", 1), ("b", 3))
    values = scripted([0.0, 0.2499, 0.25, 0.9999999, 1.0])
    wr = WeightedRandom(lambda: next(values))
    assert keys([wr.pick(hs) for _ in range(5)]) == "aabbb"


def test_weighted_random_zero_weight_never_picked() -> None:
    hs = hosts(("a", 0), ("b", 2), ("c", 0), ("d", 1))
    wr = WeightedRandom(random.Random(5).random)
    assert set(keys([wr.pick(hs) for _ in range(2000)])) == {"b", "d"}


def test_weighted_random_all_zero_weights_is_uniform() -> None:
    hs = hosts(("a", 0), ("b", 0))
    values = scripted([0.0, 0.49, 0.5, 1.0])
    wr = WeightedRandom(lambda: next(values))
    assert keys([wr.pick(hs) for _ in range(4)]) == "aabb"


def test_weighted_random_rebuilds_only_when_weights_change() -> None:
    hs = hosts(("a", 1), ("b", 1))
    wr = WeightedRandom(lambda: 0.4)
    assert wr.pick(hs).key == "a"
    table = wr._cumulative
    assert wr.pick(list(hs)).key == "a"  # a fresh list of the same weights: no rebuild
    assert wr._cumulative is table
    hs[0].weight = 0  # changed in place: noticed
    assert wr.pick(hs).key == "b"
    assert wr._cumulative is not table
    hs[0].weight = 3  # [0, 3) is a now
    assert wr.pick(hs).key == "a"


# --------------------------------------------------------------------------- least connections


def test_least_connections_picks_the_minimum() -> None:
    hs = [FakeHost("a", 1, 4), FakeHost("b", 1, 2), FakeHost("c", 1, 7), FakeHost("d", 1, 3)]
    lc = LeastConnections()
    assert lc.pick(hs).key == "b"
    hs[1].active_requests = 9
    assert lc.pick(hs).key == "d"


def test_least_connections_rotates_ties() -> None:
    hs = hosts(("a", 1), ("b", 1), ("c", 1))
    lc = LeastConnections()
    assert keys([lc.pick(hs) for _ in range(7)]) == "abcabca"


def test_least_connections_rotates_among_the_tied_only() -> None:
    hs = [FakeHost("a", 1, 0), FakeHost("b", 1, 5), FakeHost("c", 1, 0), FakeHost("d", 1, 1)]
    lc = LeastConnections()
    assert keys([lc.pick(hs) for _ in range(6)]) == "acacac"


def start_request(balancer: Balancer, hs: list[FakeHost]) -> None:
    picked = balancer.pick(hs)
    assert isinstance(picked, FakeHost)
    picked.active_requests += 1


def test_least_connections_follows_active_requests() -> None:
    # each pick starts a request that never ends: counts stay level
    hs = hosts(("a", 1), ("b", 1), ("c", 1))
    hs[0].active_requests = 2
    lc = LeastConnections()
    for _ in range(10):
        start_request(lc, hs)
    assert [h.active_requests for h in hs] == [4, 4, 4]


def test_least_connections_weighted_by_default() -> None:
    heavy, light = FakeHost("heavy", 4, 6), FakeHost("light", 1, 2)
    # 6/4 = 1.5 < 2/1 = 2
    assert LeastConnections().pick([light, heavy]) is heavy
    assert LeastConnections(weighted=False).pick([light, heavy]) is light


def test_least_connections_weighted_fills_in_proportion() -> None:
    hs = hosts(("a", 3), ("b", 1))
    lc = LeastConnections()
    for _ in range(40):
        start_request(lc, hs)
    assert [h.active_requests for h in hs] == [30, 10]


def test_least_connections_zero_weight_counts_as_one() -> None:
    a, b = FakeHost("a", 0, 1), FakeHost("b", 1, 2)
    assert LeastConnections().pick([b, a]) is a


def test_least_connections_shrinking_list() -> None:
    lc = LeastConnections()
    big = hosts(("a", 1), ("b", 1), ("c", 1))
    assert keys([lc.pick(big) for _ in range(3)]) == "abc"
    assert Counter(keys([lc.pick(big[:2]) for _ in range(4)])) == {"a": 2, "b": 2}
    assert lc.pick(big[:1]) is big[0]


# --------------------------------------------------------------------------- consistent hash

SMALL_RING = 256  # points per host where the distribution does not matter


def test_consistent_hash_same_key_same_host() -> None:
    hs = [FakeHost(f"10.0.0.{i}:80") for i in range(5)]
    ch = ConsistentHash(random.Random(0).random)
    first = {k: ch.pick(hs, k).key for k in map(str, range(300))}
    assert {k: ch.pick(hs, k).key for k in first} == first
    # a new balancer (rebuilt ring), new host objects, another order: same answers
    again = [FakeHost(h.key) for h in reversed(hs)]
    other = ConsistentHash(random.Random(1).random)
    assert {k: other.pick(again, k).key for k in first} == first
    # and the keys are spread over every host
    assert set(first.values()) == {h.key for h in hs}


def test_consistent_hash_returns_the_given_objects() -> None:
    ch = ConsistentHash(random.random, points_per_host=SMALL_RING)
    old = hosts(("a", 1), ("b", 1))
    ch.pick(old, "k")
    new = hosts(("a", 1), ("b", 1))
    assert any(ch.pick(new, "k") is h for h in new)


def test_consistent_hash_without_key_is_weighted_random() -> None:
    hs = hosts(("a", 1), ("b", 3))
    values = scripted([0.0, 0.2499, 0.25, 0.99])
    ch = ConsistentHash(lambda: next(values), points_per_host=SMALL_RING)
    assert keys([ch.pick(hs) for _ in range(4)]) == "aabb"
    # keyed picks draw nothing
    assert ch.pick(hs, "user") in hs


def test_consistent_hash_excluding_a_host_moves_only_its_keys() -> None:
    hs = [FakeHost(f"h{i}") for i in range(6)]
    ch = ConsistentHash(random.random, points_per_host=SMALL_RING)
    ks = [f"user-{i}" for i in range(600)]
    before = {k: ch.pick(hs, k).key for k in ks}
    ring = ch.ring
    live = [h for h in hs if h.key != "h2"]
    after = {k: ch.pick(live, k).key for k in ks}
    assert ch.ring is ring  # a subset is served by the same ring
    assert all(after[k] == before[k] for k in ks if before[k] != "h2")
    assert "h2" not in after.values()
    # the same answers as a balancer that never saw h2
    fresh = ConsistentHash(random.random, points_per_host=SMALL_RING)
    assert {k: fresh.pick(live, k).key for k in ks} == after
    # back to all hosts: the first answers again
    assert {k: ch.pick(hs, k).key for k in ks} == before


def test_consistent_hash_rebuilds_only_for_new_hosts_or_a_much_smaller_set() -> None:
    hs = [FakeHost(f"h{i}") for i in range(8)]
    ch = ConsistentHash(random.random, points_per_host=SMALL_RING)
    ch.pick(hs, "k")
    ring = ch.ring
    hs[3].weight = 5  # weights change scoring, not the ring
    ch.pick(hs, "k")
    assert ch.ring is ring
    ch.pick(hs[:4], "k")  # half remains: kept
    assert ch.ring is ring
    ch.pick(hs[:3], "k")  # fewer than half: rebuilt smaller
    assert ch.ring is not ring
    assert ch.ring is not None and len(ch.ring.keys) == 3
    ring = ch.ring
    ch.pick([*hs[:3], FakeHost("new")], "k")  # an unknown host: rebuilt
    assert ch.ring is not ring


def test_consistent_hash_weights() -> None:
    hs = hosts(("a", 1), ("b", 3))
    ch = ConsistentHash(random.random)
    n = 20_000
    counts = Counter(ch.pick(hs, f"k{i}").key for i in range(n))
    assert counts["b"] / n == pytest.approx(0.75, abs=0.02)


def test_consistent_hash_zero_weights() -> None:
    ch = ConsistentHash(random.random, points_per_host=SMALL_RING)
    hs = hosts(("a", 0), ("b", 1))
    assert {ch.pick(hs, str(i)).key for i in range(200)} == {"b"}
    hs = hosts(("a", 0), ("b", 0))  # nobody weighs anything: shared equally
    assert {ch.pick(hs, str(i)).key for i in range(200)} == {"a", "b"}


def test_consistent_hash_duplicate_keys_use_the_first_host() -> None:
    a1, a2, b = FakeHost("a"), FakeHost("a"), FakeHost("b")
    ch = ConsistentHash(random.random, points_per_host=SMALL_RING)
    picked = {id(ch.pick([a1, b, a2], str(i))) for i in range(200)}
    assert picked == {id(a1), id(b)}


def test_consistent_hash_bad_points_per_host() -> None:
    with pytest.raises(ValueError, match="points_per_host"):
        ConsistentHash(random.random, points_per_host=0)


# --------------------------------------------------------------------------- every balancer


def all_balancers(rng: random.Random) -> list[Balancer]:
    return [
        RoundRobin(),
        WeightedRoundRobin(),
        RandomPick(rng.random),
        LeastRequest(rng.random),
        WeightedRandom(rng.random),
        LeastConnections(),
        LeastConnections(weighted=False),
        ConsistentHash(rng.random, points_per_host=16),
    ]


host_lists = st.lists(
    st.builds(
        FakeHost,
        key=st.sampled_from(["a", "b", "c", "d", "e", "f", "10.0.0.1:80", "ü"]),
        weight=st.integers(0, 5),
        active_requests=st.integers(0, 3),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    calls=st.lists(st.tuples(host_lists, st.none() | st.text(max_size=20)), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_pick_always_returns_a_given_host(
    calls: list[tuple[list[FakeHost], str | None]], seed: int
) -> None:
    balancers = all_balancers(random.Random(seed))
    for hs, key in calls:
        for balancer in balancers:
            picked = balancer.pick(hs, key)
            assert any(picked is h for h in hs), (balancer, hs, key)


def test_every_balancer_accepts_a_key() -> None:
    hs = hosts(("a", 1), ("b", 1))
    for balancer in all_balancers(random.Random(0)):
        assert balancer.pick(hs, key="user-1") in hs
        assert balancer.pick(hs, None) in hs
        assert balancer.pick(hs) in hs


# --------------------------------------------------------------------------- factory


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("round_robin", RoundRobin),
        ("weighted_round_robin", WeightedRoundRobin),
        ("random", RandomPick),
        ("least_request", LeastRequest),
        ("weighted_random", WeightedRandom),
        ("least_connections", LeastConnections),
        ("consistent_hash", ConsistentHash),
    ],
)
def test_make_balancer(name: str, cls: type) -> None:
    assert isinstance(make_balancer(name, random.Random(0).random), cls)


def test_balancers_constant_lists_every_name() -> None:
    for name in BALANCERS:
        make_balancer(name, random.random)


@pytest.mark.parametrize("name", ["", "fastest", "Round_Robin", "round-robin", "ring_hash"])
def test_make_balancer_unknown_name(name: str) -> None:
    with pytest.raises(ValueError, match="unknown load balancer") as info:
        make_balancer(name, random.random)
    for known in BALANCERS:
        assert known in str(info.value)
