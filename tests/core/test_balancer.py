"""Tests of the sans-IO load balancers (meshgate.core.balancer)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core.balancer import (
    BALANCERS,
    WRR_SCHEDULE_MAX_OPS,
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


@dataclass(eq=False)
class FakeHost:
    key: str
    weight: int = 1
    active_requests: int = 0


def hosts(*spec: tuple[str, int]) -> list[FakeHost]:
    return [FakeHost(key, weight) for key, weight in spec]


def keys(picked: Sequence[Host]) -> str:
    return "".join(h.key for h in picked)


B = TypeVar("B", bound=Balancer)


def scripted(values: Sequence[float]) -> Iterator[float]:
    return iter(values)


# --------------------------------------------------------------------------- round robin


def test_round_robin_order() -> None:
    hs = hosts(("a", 1), ("b", 1), ("c", 1))
    rr = RoundRobin()
    rr.update(hs)
    assert keys([rr.pick() for _ in range(7)]) == "abcabca"


def test_round_robin_ignores_weights() -> None:
    hs = hosts(("a", 10), ("b", 1))
    rr = RoundRobin()
    rr.update(hs)
    assert keys([rr.pick() for _ in range(4)]) == "abab"


def test_round_robin_survives_shrinking_list() -> None:
    rr = RoundRobin()
    big = hosts(("a", 1), ("b", 1), ("c", 1))
    rr.update(big)
    assert keys([rr.pick() for _ in range(3)]) == "abc"
    rr.update(big[:2])
    picked = [rr.pick() for _ in range(4)]
    assert Counter(keys(picked)) == {"a": 2, "b": 2}


def test_round_robin_single_host() -> None:
    hs = hosts(("only", 1))
    rr = RoundRobin()
    rr.update(hs)
    assert all(rr.pick() is hs[0] for _ in range(5))


# --------------------------------------------------------------------------- smooth WRR


def test_smooth_wrr_nginx_sequence() -> None:
    hs = hosts(("a", 5), ("b", 1), ("c", 1))
    wrr = WeightedRoundRobin()
    wrr.update(hs)
    # the sequence from nginx's ngx_http_upstream_round_robin.c commit message
    assert keys([wrr.pick() for _ in range(7)]) == "aabacaa"
    # and it repeats
    assert keys([wrr.pick() for _ in range(7)]) == "aabacaa"


def test_smooth_wrr_spreads_heavy_host_within_each_cycle() -> None:
    hs = hosts(("a", 5), ("b", 1), ("c", 1))
    wrr = WeightedRoundRobin()
    wrr.update(hs)
    seq = keys([wrr.pick() for _ in range(70)])
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
    wrr.update(hs)
    total = sum(weights)
    for _ in range(cycles):
        counts = Counter(wrr.pick().key for _ in range(total))
        assert counts == {h.key: h.weight for h in hs}


def test_smooth_wrr_equal_weights_is_round_robin() -> None:
    hs = hosts(("a", 2), ("b", 2), ("c", 2))
    wrr = WeightedRoundRobin()
    wrr.update(hs)
    assert keys([wrr.pick() for _ in range(6)]) == "abcabc"


def test_smooth_wrr_shares_fairly_after_the_list_changes() -> None:
    wrr = WeightedRoundRobin()
    full = hosts(("a", 1), ("b", 1), ("c", 1))
    wrr.update(full)
    wrr.pick()
    # 'c' is dropped (e.g. unhealthy); the remaining hosts share fairly
    wrr.update(full[:2])
    seq = keys([wrr.pick() for _ in range(100)])
    counts = Counter(seq)
    assert set(counts) == {"a", "b"}
    assert abs(counts["a"] - counts["b"]) <= 2


def test_smooth_wrr_gcd_reduces_the_period() -> None:
    hs = hosts(("a", 500), ("b", 100), ("c", 100))
    wrr = WeightedRoundRobin()
    wrr.update(hs)
    assert keys([wrr.pick() for _ in range(14)]) == "aabacaa" * 2


def test_smooth_wrr_large_totals_run_nginx_step_per_pick() -> None:
    # (sum of weights) x hosts beyond the precomputed-period bound: same sequence
    n = 64
    weights = [1000 - 7 * i for i in range(n)]  # gcd 1, total ~ 50k
    assert sum(weights) * n > WRR_SCHEDULE_MAX_OPS
    hs = [FakeHost(f"h{i}", w) for i, w in enumerate(weights)]
    wrr = WeightedRoundRobin()
    wrr.update(hs)
    current = [0] * n
    expected = []
    for _ in range(3000):  # nginx's algorithm, written out
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(n), key=lambda i: (current[i], -i))
        current[best] -= sum(weights)
        expected.append(best)
    assert [int(wrr.pick().key[1:]) for _ in range(3000)] == expected


def test_smooth_wrr_zero_weights_skipped_unless_all_zero() -> None:
    wrr = WeightedRoundRobin()
    wrr.update(hosts(("a", 0), ("b", 2), ("c", 1)))
    assert keys([wrr.pick() for _ in range(6)]) == "bcbbcb"
    wrr.update(hosts(("a", 0), ("b", 0)))
    assert keys([wrr.pick() for _ in range(4)]) == "abab"


# --------------------------------------------------------------------------- random


def test_random_is_uniform_whatever_the_weights() -> None:
    hs = hosts(("a", 6), ("b", 3), ("c", 1))
    rnd = RandomPick(random.Random(1234).random)
    rnd.update(hs)
    n = 6000
    counts = Counter(rnd.pick().key for _ in range(n))
    for key in "abc":
        assert counts[key] / n == pytest.approx(1 / 3, abs=0.03)


def test_random_boundaries_are_exact() -> None:
    hs = hosts(("a", 1), ("b", 3))
    # [0, 0.5) -> a, [0.5, 1) -> b
    values = scripted([0.0, 0.4999, 0.5, 0.9999999])
    rnd = RandomPick(lambda: next(values))
    rnd.update(hs)
    assert keys([rnd.pick() for _ in range(4)]) == "aabb"


def test_random_out_of_range_value_falls_back_to_last() -> None:
    rnd = RandomPick(lambda: 1.0)
    rnd.update(hosts(("a", 1), ("b", 1)))
    assert rnd.pick().key == "b"


def test_random_is_reproducible_with_seed() -> None:
    hs = hosts(("a", 1), ("b", 2), ("c", 3))
    r1 = RandomPick(random.Random(7).random)
    r2 = RandomPick(random.Random(7).random)
    r1.update(hs)
    r2.update(hs)
    assert [r1.pick().key for _ in range(50)] == [r2.pick().key for _ in range(50)]


# --------------------------------------------------------------------------- least request


def ready(balancer: B, hs: Sequence[Host]) -> B:
    balancer.update(hs)
    return balancer


def test_least_request_prefers_fewer_active_requests() -> None:
    idle, busy = FakeHost("idle", 1, 0), FakeHost("busy", 1, 10)
    # first draw -> index 1 (busy), second draw -> index 0 (idle)
    values = scripted([0.9, 0.1])
    assert ready(LeastRequest(lambda: next(values)), [idle, busy]).pick() is idle
    values2 = scripted([0.1, 0.9])
    assert ready(LeastRequest(lambda: next(values2)), [idle, busy]).pick() is idle


def test_least_request_tie_keeps_first_choice() -> None:
    a, b = FakeHost("a", 1, 3), FakeHost("b", 1, 3)
    values = scripted([0.9, 0.1])
    assert ready(LeastRequest(lambda: next(values)), [a, b]).pick() is b


def test_least_request_relative_to_weight() -> None:
    heavy, light = FakeHost("heavy", 4, 6), FakeHost("light", 1, 2)
    # 6/4 = 1.5 < 2/1 = 2 -> the heavy host takes it despite more active requests
    values = scripted([0.9, 0.1])
    assert ready(LeastRequest(lambda: next(values)), [heavy, light]).pick() is heavy


def test_least_request_statistically_avoids_busy_host() -> None:
    hs = [FakeHost("idle", 1, 0), FakeHost("busy1", 1, 50), FakeHost("busy2", 1, 50)]
    lr = ready(LeastRequest(random.Random(42).random), hs)
    n = 3000
    counts = Counter(lr.pick().key for _ in range(n))
    # P2C: the idle host wins unless both draws miss it: 1 - (2/3)^2 = 5/9
    assert counts["idle"] / n == pytest.approx(5 / 9, abs=0.05)


def test_least_request_single_host_consumes_no_randomness() -> None:
    def boom() -> float:
        raise AssertionError("random drawn for a single host")

    only = FakeHost("only")
    assert ready(LeastRequest(boom), [only]).pick() is only


# --------------------------------------------------------------------------- weighted random


def test_weighted_random_distribution_over_100k_picks() -> None:
    hs = hosts(("a", 6), ("b", 3), ("c", 1))
    wr = ready(WeightedRandom(random.Random(99).random), hs)
    n = 100_000
    counts = Counter(wr.pick().key for _ in range(n))
    assert counts["a"] / n == pytest.approx(0.6, abs=0.006)
    assert counts["b"] / n == pytest.approx(0.3, abs=0.006)
    assert counts["c"] / n == pytest.approx(0.1, abs=0.004)


def test_weighted_random_boundaries_are_exact() -> None:
    hs = hosts(("a", 1), ("b", 3))
    values = scripted([0.0, 0.2499, 0.25, 0.9999999, 1.0])
    wr = ready(WeightedRandom(lambda: next(values)), hs)
    assert keys([wr.pick() for _ in range(5)]) == "aabbb"


def test_weighted_random_zero_weight_never_picked() -> None:
    hs = hosts(("a", 0), ("b", 2), ("c", 0), ("d", 1))
    wr = ready(WeightedRandom(random.Random(5).random), hs)
    assert set(keys([wr.pick() for _ in range(2000)])) == {"b", "d"}


def test_weighted_random_all_zero_weights_is_uniform() -> None:
    hs = hosts(("a", 0), ("b", 0))
    values = scripted([0.0, 0.49, 0.5, 1.0])
    wr = ready(WeightedRandom(lambda: next(values)), hs)
    assert keys([wr.pick() for _ in range(4)]) == "aabb"


def test_weighted_random_follows_updates() -> None:
    hs = hosts(("a", 1), ("b", 1))
    wr = ready(WeightedRandom(lambda: 0.4), hs)
    assert wr.pick().key == "a"
    wr.update(hosts(("a", 0), ("b", 1)))
    assert wr.pick().key == "b"
    wr.update(hosts(("a", 3), ("b", 1)))  # [0, 3) is a now
    assert wr.pick().key == "a"


# --------------------------------------------------------------------------- least connections


def start_request(balancer: Balancer) -> Host:
    """Pick, and start a request on the pick (told to the balancer)."""
    picked = balancer.pick()
    assert isinstance(picked, FakeHost)
    picked.active_requests += 1
    balancer.started(picked)
    return picked


def test_least_connections_picks_the_minimum() -> None:
    hs = [FakeHost("a", 1, 4), FakeHost("b", 1, 2), FakeHost("c", 1, 7), FakeHost("d", 1, 3)]
    lc = ready(LeastConnections(), hs)
    assert lc.pick().key == "b"
    hs[1].active_requests = 9
    lc.started(hs[1])
    assert lc.pick().key == "d"


def test_least_connections_rotates_ties() -> None:
    lc = ready(LeastConnections(), hosts(("a", 1), ("b", 1), ("c", 1)))
    assert keys([lc.pick() for _ in range(7)]) == "abcabca"


def test_least_connections_rotates_among_the_tied_only() -> None:
    hs = [FakeHost("a", 1, 0), FakeHost("b", 1, 5), FakeHost("c", 1, 0), FakeHost("d", 1, 1)]
    lc = ready(LeastConnections(), hs)
    assert keys([lc.pick() for _ in range(6)]) == "acacac"


def test_least_connections_follows_active_requests() -> None:
    # each pick starts a request that never ends: counts stay level
    hs = hosts(("a", 1), ("b", 1), ("c", 1))
    hs[0].active_requests = 2
    lc = ready(LeastConnections(), hs)
    for _ in range(10):
        start_request(lc)
    assert [h.active_requests for h in hs] == [4, 4, 4]


def test_least_connections_sees_finished_requests() -> None:
    hs = hosts(("a", 1), ("b", 1))
    lc = ready(LeastConnections(), hs)
    first = [start_request(lc) for _ in range(6)]
    assert [h.active_requests for h in hs] == [3, 3]
    done = first[0]
    done.active_requests -= 1
    lc.finished(done)
    assert lc.pick() is done


def test_least_connections_weighted_by_default() -> None:
    heavy, light = FakeHost("heavy", 4, 6), FakeHost("light", 1, 2)
    # 6/4 = 1.5 < 2/1 = 2
    assert ready(LeastConnections(), [light, heavy]).pick() is heavy
    assert ready(LeastConnections(weighted=False), [light, heavy]).pick() is light


def test_least_connections_weighted_fills_in_proportion() -> None:
    hs = hosts(("a", 3), ("b", 1))
    lc = ready(LeastConnections(), hs)
    for _ in range(40):
        start_request(lc)
    assert [h.active_requests for h in hs] == [30, 10]


def test_least_connections_zero_weight_counts_as_one() -> None:
    a, b = FakeHost("a", 0, 1), FakeHost("b", 1, 2)
    assert ready(LeastConnections(), [b, a]).pick() is a


def test_least_connections_shrinking_list() -> None:
    big = hosts(("a", 1), ("b", 1), ("c", 1))
    lc = ready(LeastConnections(), big)
    assert keys([lc.pick() for _ in range(3)]) == "abc"
    lc.update(big[:2])
    assert Counter(keys([lc.pick() for _ in range(4)])) == {"a": 2, "b": 2}
    lc.update(big[:1])
    assert lc.pick() is big[0]


def test_least_connections_heap_stays_bounded() -> None:
    hs = hosts(*((k, 1) for k in "abcd"))
    lc = ready(LeastConnections(), hs)
    for _ in range(1000):
        host = start_request(lc)
        host.active_requests -= 1
        lc.finished(host)
    assert len(lc._heap) <= 4 * len(hs) + 16
    assert Counter(keys([lc.pick() for _ in range(8)])) == {k: 2 for k in "abcd"}


# --------------------------------------------------------------------------- consistent hash

SMALL_RING = 256  # points per host where the distribution does not matter


def owners(ch: ConsistentHash, ks: Sequence[str], exclude: Sequence[Host] = ()) -> dict[str, str]:
    return {k: ch.pick(k, exclude).key for k in ks}


def test_consistent_hash_same_key_same_host() -> None:
    hs = [FakeHost(f"10.0.0.{i}:80") for i in range(5)]
    ch = ready(ConsistentHash(random.Random(0).random), hs)
    first = owners(ch, [str(i) for i in range(300)])
    assert owners(ch, list(first)) == first
    # a new balancer (rebuilt ring), new host objects, another order: same answers
    again = [FakeHost(h.key) for h in reversed(hs)]
    other = ready(ConsistentHash(random.Random(1).random), again)
    assert owners(other, list(first)) == first
    # and the keys are spread over every host
    assert set(first.values()) == {h.key for h in hs}


def test_consistent_hash_returns_the_given_objects() -> None:
    ch = ready(ConsistentHash(random.random, points_per_host=SMALL_RING), hosts(("a", 1), ("b", 1)))
    ch.pick("k")
    new = hosts(("a", 1), ("b", 1))
    ch.update(new)
    assert any(ch.pick("k") is h for h in new)


def test_consistent_hash_without_key_is_weighted_random() -> None:
    hs = hosts(("a", 1), ("b", 3))
    values = scripted([0.0, 0.2499, 0.25, 0.99])
    ch = ready(ConsistentHash(lambda: next(values), points_per_host=SMALL_RING), hs)
    assert keys([ch.pick() for _ in range(4)]) == "aabb"
    # keyed picks draw nothing
    assert ch.pick("user") in hs


def test_consistent_hash_leaving_host_moves_only_its_keys() -> None:
    hs = [FakeHost(f"h{i}") for i in range(6)]
    ch = ready(ConsistentHash(random.random, points_per_host=SMALL_RING), hs)
    ks = [f"user-{i}" for i in range(600)]
    before = owners(ch, ks)
    ring = ch.ring
    live = [h for h in hs if h.key != "h2"]
    ch.update(live)
    after = owners(ch, ks)
    assert ch.ring is ring  # a subset is served by the same ring
    assert all(after[k] == before[k] for k in ks if before[k] != "h2")
    assert "h2" not in after.values()
    # the same answers as a balancer that never saw h2
    fresh = ready(ConsistentHash(random.random, points_per_host=SMALL_RING), live)
    assert owners(fresh, ks) == after
    # excluding h2 (a retry) gives the same answers, without an update
    ch.update(hs)
    assert owners(ch, ks, exclude=[hs[2]]) == after
    # back to all hosts: the first answers again
    assert owners(ch, ks) == before


def test_consistent_hash_rebuilds_only_for_new_hosts_or_a_much_smaller_set() -> None:
    hs = [FakeHost(f"h{i}") for i in range(8)]
    ch = ready(ConsistentHash(random.random, points_per_host=SMALL_RING), hs)
    ring = ch.ring
    hs[3].weight = 5  # weights change scoring, not the ring
    ch.update(hs)
    assert ch.ring is ring
    ch.update(hs[:4])  # half remains: kept
    assert ch.ring is ring
    ch.update(hs[:3])  # fewer than half: rebuilt smaller
    assert ch.ring is not ring
    assert ch.ring is not None and len(ch.ring.keys) == 3
    ring = ch.ring
    ch.update([*hs[:3], FakeHost("new")])  # an unknown host: rebuilt
    assert ch.ring is not ring


def test_consistent_hash_deferred_build_keeps_serving_the_old_ring() -> None:
    ks = [f"user-{i}" for i in range(2000)]
    hs = [FakeHost(f"h{i}") for i in range(5)]
    ch = ready(ConsistentHash(random.random, points_per_host=4096, deferred=True), hs)
    assert not ch.building  # the first ring is built at once
    before = owners(ch, ks)
    old = ch.ring
    grown = [*hs, FakeHost("h5")]
    ch.update(grown)
    assert ch.building and ch.ring is old
    assert owners(ch, ks) == before  # the new host takes nothing yet
    steps = 0
    while ch.build_step():
        steps += 1
        assert ch.ring is old
    assert steps >= 2 and not ch.building and ch.ring is not old
    after = owners(ch, ks)
    # now exactly as a ring built at once, and only keys moving to h5 moved
    assert after == owners(ready(ConsistentHash(random.random, points_per_host=4096), grown), ks)
    assert all(after[k] in (before[k], "h5") for k in ks)
    assert 0.1 < sum(1 for k in ks if after[k] == "h5") / len(ks) < 0.24


def test_consistent_hash_deferred_build_at_once_when_no_old_host_remains() -> None:
    ch = ready(ConsistentHash(random.random, points_per_host=64, deferred=True), hosts(("a", 1)))
    ch.update(hosts(("x", 1), ("y", 1)))
    assert not ch.building
    assert ch.pick("k").key in {"x", "y"}


def test_consistent_hash_deferred_build_dropped_when_no_longer_needed() -> None:
    hs = hosts(("a", 1), ("b", 1))
    ch = ready(ConsistentHash(random.random, points_per_host=64, deferred=True), hs)
    ch.update([*hs, FakeHost("c")])
    assert ch.building
    ch.update(hs)  # c left before its ring was ready
    assert not ch.building and not ch.build_step()


def test_consistent_hash_weights() -> None:
    ch = ready(ConsistentHash(random.random), hosts(("a", 1), ("b", 3)))
    n = 20_000
    counts = Counter(ch.pick(f"k{i}").key for i in range(n))
    assert counts["b"] / n == pytest.approx(0.75, abs=0.02)


def test_consistent_hash_zero_weights() -> None:
    ch = ready(ConsistentHash(random.random, points_per_host=SMALL_RING), hosts(("a", 0), ("b", 1)))
    assert {ch.pick(str(i)).key for i in range(200)} == {"b"}
    ch.update(hosts(("a", 0), ("b", 0)))  # nobody weighs anything: shared equally
    assert {ch.pick(str(i)).key for i in range(200)} == {"a", "b"}


def test_consistent_hash_duplicate_keys_use_the_first_host() -> None:
    a1, a2, b = FakeHost("a"), FakeHost("a"), FakeHost("b")
    ch = ready(ConsistentHash(random.random, points_per_host=SMALL_RING), [a1, b, a2])
    picked = {id(ch.pick(str(i))) for i in range(200)}
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
        ConsistentHash(rng.random, points_per_host=16, deferred=True),
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
    unique_by=lambda h: h.key,  # as a cluster's hosts
)


@settings(max_examples=150, deadline=None)
@given(
    calls=st.lists(
        st.tuples(host_lists, st.none() | st.text(max_size=20), st.lists(st.integers(0, 7))),
        min_size=1,
        max_size=6,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_pick_returns_a_given_host_not_excluded_while_one_remains(
    calls: list[tuple[list[FakeHost], str | None, list[int]]], seed: int
) -> None:
    balancers = all_balancers(random.Random(seed))
    for hs, key, excluded in calls:
        exclude = [hs[i] for i in excluded if i < len(hs)]
        others = [h for h in hs if h not in exclude]
        for balancer in balancers:
            balancer.update(hs)
            picked = balancer.pick(key, exclude)
            assert any(picked is h for h in hs), (balancer, hs, key)
            if others:
                assert picked in others, (balancer, hs, key, exclude)
            if isinstance(balancer, ConsistentHash):
                while balancer.build_step():
                    pass


@pytest.mark.parametrize("balancer", all_balancers(random.Random(3)), ids=repr)
def test_retry_exclusion_spreads_over_the_rest(balancer: Balancer) -> None:
    hs = hosts(("a", 1), ("b", 2), ("c", 3))
    balancer.update(hs)
    seen = {balancer.pick(f"k{i}", [hs[1]]).key for i in range(200)}
    assert "b" not in seen and seen <= {"a", "c"}
    assert balancer.pick("k", hs).key in "abc"  # all excluded: exclude is ignored


def test_picking_without_hosts_is_a_lookup_error() -> None:
    for balancer in all_balancers(random.Random(0)):
        with pytest.raises(LookupError):
            balancer.pick()
        balancer.update([])
        with pytest.raises(LookupError):
            balancer.pick("k")


def test_only_least_connections_tracks_load() -> None:
    assert [b.tracks_load for b in all_balancers(random.Random(0))] == [
        False,
        False,
        False,
        False,
        False,
        True,
        True,
        False,
        False,
    ]


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
