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
    Host,
    LeastRequest,
    RandomPick,
    RoundRobin,
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


# --------------------------------------------------------------------------- factory


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("round_robin", RoundRobin),
        ("weighted_round_robin", WeightedRoundRobin),
        ("random", RandomPick),
        ("least_request", LeastRequest),
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
