"""Tests of the rate limiting decisions (meshgate.core.ratelimit)."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core.ratelimit import (
    _SWEEP_EVERY,
    _SWEEP_MAX,
    Algorithm,
    ConcurrencyLimiter,
    Decision,
    LocalLimiter,
    RateLimitError,
    SlidingWindow,
    SlidingWindowState,
    TokenBucket,
    TokenBucketState,
    _decision,
)


class Clock:
    """A clock moved by hand, in seconds."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def allowed(decisions: list[Decision]) -> list[bool]:
    return [d.allowed for d in decisions]


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SlidingWindow(0, 10), r"sliding window limit must be an integer >= 1, got 0"),
        (lambda: SlidingWindow(-5, 10), r"limit .* got -5"),
        (lambda: SlidingWindow(2.5, 10), r"limit .* got 2\.5"),  # type: ignore[arg-type]
        (lambda: SlidingWindow(True, 10), r"limit .* got True"),
        (lambda: SlidingWindow(10, 0), r"window_s must be a finite number > 0, got 0"),
        (lambda: SlidingWindow(10, -1.0), r"window_s .* got -1\.0"),
        (lambda: SlidingWindow(10, math.nan), r"window_s .* got nan"),
        (lambda: SlidingWindow(10, math.inf), r"window_s .* got inf"),
        (lambda: TokenBucket(0, 10), r"token bucket rate_per_s must be a finite number > 0, got 0"),
        (lambda: TokenBucket(-1, 10), r"rate_per_s .* got -1"),
        (lambda: TokenBucket(math.nan, 10), r"rate_per_s .* got nan"),
        (lambda: TokenBucket(math.inf, 10), r"rate_per_s .* got inf"),
        (lambda: TokenBucket(5, 0), r"token bucket burst must be an integer >= 1, got 0"),
        (lambda: TokenBucket(5, 1.5), r"burst .* got 1\.5"),  # type: ignore[arg-type]
        (lambda: TokenBucket(5e-324, 2), r"rate_per_s is too small for burst 2, got 5e-324"),
        (lambda: ConcurrencyLimiter(0), r"concurrency max_in_flight must be an integer >= 1"),
        (lambda: LocalLimiter(SlidingWindow(1, 1), Clock(), 0), r"max_keys .* got 0"),
    ],
)
def test_bad_parameters_are_refused_with_the_value(
    make: Callable[[], object], message: str
) -> None:
    with pytest.raises(RateLimitError, match=message):
        make()
    assert issubclass(RateLimitError, ValueError)


@pytest.mark.parametrize("cost", [0, -1])
def test_cost_below_one_is_refused(cost: int) -> None:
    algorithms: list[Algorithm[Any]] = [SlidingWindow(5, 10), TokenBucket(5, 10)]
    for algorithm in algorithms:
        state = algorithm.new_state(1000.0)
        with pytest.raises(RateLimitError, match=f"cost must be an integer >= 1, got {cost}"):
            algorithm.check(state, 1000.0, cost)
        with pytest.raises(RateLimitError, match="cost"):
            LocalLimiter(algorithm, Clock()).check("k", cost)


def test_describe_and_kind() -> None:
    assert SlidingWindow(100, 10).describe() == "100 per 10s (sliding window)"
    assert SlidingWindow(5, 0.5).describe() == "5 per 0.5s (sliding window)"
    assert TokenBucket(5, 10).describe() == "5/s, burst 10 (token bucket)"
    assert TokenBucket(0.5, 1).describe() == "0.5/s, burst 1 (token bucket)"
    assert SlidingWindow(1, 1).kind == "sliding_window"
    assert TokenBucket(1, 1).kind == "token_bucket"
    # both satisfy the protocol LocalLimiter takes
    window: Algorithm[SlidingWindowState] = SlidingWindow(1, 1)
    bucket: Algorithm[TokenBucketState] = TokenBucket(1, 1)
    assert [window.kind, bucket.kind] == ["sliding_window", "token_bucket"]


def test_decisions_are_frozen_and_built_fully() -> None:
    # checks build decisions with a fast private constructor: it must set every field
    # and give objects equal to (and hashing like) the class's own
    fast = _decision((False, 10, 3, 1010.0, 2.5))
    assert fast == Decision(
        allowed=False, limit=10, remaining=3, reset_at=1010.0, retry_after_s=2.5
    )
    assert hash(fast) == hash(Decision(False, 10, 3, 1010.0, 2.5))
    assert repr(fast) == (
        "Decision(allowed=False, limit=10, remaining=3, reset_at=1010.0, retry_after_s=2.5)"
    )
    assert (fast.allowed, fast.limit, fast.remaining, fast.reset_at, fast.retry_after_s) == (
        False,
        10,
        3,
        1010.0,
        2.5,
    )
    with pytest.raises(AttributeError):
        fast.allowed = True  # type: ignore[misc]
    decision = SlidingWindow(1, 1).check(SlidingWindowState(0), 0.5)
    with pytest.raises(AttributeError):
        decision.remaining = 5  # type: ignore[misc]


# --------------------------------------------------------------------------- sliding window


def test_sliding_window_first_window() -> None:
    window = SlidingWindow(3, 10)
    state = window.new_state(1003.0)
    assert (state.window, state.current, state.previous) == (100, 0, 0)
    assert [window.check(state, 1003.0) for _ in range(3)] == [
        Decision(True, 3, 2, 1010.0, 0.0),
        Decision(True, 3, 1, 1010.0, 0.0),
        Decision(True, 3, 0, 1010.0, 0.0),
    ]
    # denied: remaining 0, the seed's retry: resetAt - now
    assert window.check(state, 1003.0) == Decision(False, 3, 0, 1010.0, 7.0)
    assert window.check(state, 1009.5) == Decision(False, 3, 0, 1010.0, 0.5)
    assert state.current == 3  # denied requests do not count


def test_sliding_window_roll_to_next_window_keeps_current_as_previous() -> None:
    window = SlidingWindow(10, 10)
    state = window.new_state(1000.0)
    for _ in range(4):
        assert window.check(state, 1002.0).allowed
    # at the very start of the next window the previous window weighs fully: 4
    assert window.check(state, 1010.0) == Decision(True, 10, 5, 1020.0, 0.0)
    assert (state.window, state.current, state.previous) == (101, 1, 4)
    # half way: floor(4 * 0.5) = 2, plus 1 current -> 3, this one makes 4
    assert window.check(state, 1015.0) == Decision(True, 10, 6, 1020.0, 0.0)
    # next roll: previous = the 2 of window 101
    assert window.check(state, 1020.0) == Decision(True, 10, 7, 1030.0, 0.0)
    assert (state.window, state.current, state.previous) == (102, 1, 2)


def test_sliding_window_gap_of_more_than_one_window_forgets_everything() -> None:
    window = SlidingWindow(10, 10)
    state = window.new_state(1000.0)
    for _ in range(10):
        assert window.check(state, 1009.0).allowed
    assert not window.check(state, 1009.0).allowed
    # window 102 follows window 100: previous = 0 (not 10)
    assert window.check(state, 1020.0) == Decision(True, 10, 9, 1030.0, 0.0)
    assert (state.window, state.current, state.previous) == (102, 1, 0)


def test_sliding_window_weighting_of_previous_window() -> None:
    window = SlidingWindow(10, 10)
    state = window.new_state(1000.0)
    for _ in range(10):
        assert window.check(state, 1000.0).allowed
    # 25% into the next window: count = floor(10 * 0.75) = 7, so 3 more pass
    decisions = [window.check(state, 1012.5) for _ in range(4)]
    assert decisions == [
        Decision(True, 10, 2, 1020.0, 0.0),
        Decision(True, 10, 1, 1020.0, 0.0),
        Decision(True, 10, 0, 1020.0, 0.0),
        Decision(False, 10, 0, 1020.0, 7.5),
    ]
    # 3 current + floor(10 * 0.69) = 6 -> 9: one more passes as the weight decays
    assert window.check(state, 1013.1) == Decision(True, 10, 0, 1020.0, 0.0)
    assert not window.check(state, 1013.1).allowed


def test_sliding_window_retry_after_is_the_seeds_reset_at_minus_now() -> None:
    window = SlidingWindow(2, 10)
    state = window.new_state(1000.0)
    window.check(state, 1001.0)
    window.check(state, 1001.0)
    denied = window.check(state, 1004.0)
    assert (denied.reset_at, denied.retry_after_s) == (1010.0, 6.0)
    # at exactly reset_at the full previous window still weighs 1: denied again (seed)
    assert window.check(state, 1010.0) == Decision(False, 2, 0, 1020.0, 10.0)
    # any instant later the weight is below 1 and one request passes
    assert window.check(state, 1010.001) == Decision(True, 2, 0, 1020.0, 0.0)


def test_sliding_window_cost() -> None:
    window = SlidingWindow(10, 10)
    state = window.new_state(1000.0)
    assert window.check(state, 1000.0, 4) == Decision(True, 10, 6, 1010.0, 0.0)
    # 4 + 7 > 10: denied, takes nothing; 6 units are still there
    assert window.check(state, 1001.0, 7) == Decision(False, 10, 6, 1010.0, 9.0)
    assert window.check(state, 1001.0, 6) == Decision(True, 10, 0, 1010.0, 0.0)
    assert state.current == 10
    # a cost above the limit never passes
    assert window.check(state, 1050.0, 11) == Decision(False, 10, 10, 1060.0, math.inf)
    assert window.check(state, 1050.0, 10) == Decision(True, 10, 0, 1060.0, 0.0)


def test_sliding_window_denied_requests_do_not_count() -> None:
    window = SlidingWindow(5, 1)
    state = window.new_state(0.0)
    results = [window.check(state, 0.5) for _ in range(100)]
    assert allowed(results).count(True) == 5
    assert state.current == 5
    # the next window sees 5 as previous, not 100
    # count 0 + floor(5 * 0.5) = 2, this request makes 3: 2 remain
    assert window.check(state, 1.5) == Decision(True, 5, 2, 2.0, 0.0)


def test_sliding_window_idle() -> None:
    window = SlidingWindow(5, 10)
    state = window.new_state(1003.0)
    window.check(state, 1003.0)
    # window 100: its count matters in windows 100 and 101, not from 1020 on
    assert not window.idle(state, 1019.999)
    assert window.idle(state, 1020.0)
    assert window.idle(state, 5000.0)


def _seed(limit: int, window: int, times: list[int]) -> list[tuple[bool, int, int]]:
    """The seed's algorithm, transcribed with exact arithmetic (times in integer units)."""
    state: dict[str, int] | None = None
    out = []
    for now in times:
        window_start = now // window * window
        prev_window_start = window_start - window
        if state is None:
            state = {"current": 0, "previous": 0, "window_start": window_start}
        if state["window_start"] < window_start:
            was_previous = state["window_start"] == prev_window_start
            state["previous"] = state["current"] if was_previous else 0
            state["current"] = 0
            state["window_start"] = window_start
        weight = 1 - Fraction(now - window_start, window)
        count = state["current"] + math.floor(state["previous"] * weight)
        if count >= limit:
            out.append((False, 0, window_start + window))
            continue
        state["current"] += 1
        out.append((True, limit - count - 1, window_start + window))
    return out


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 12),
    window=st.sampled_from([1, 7, 10, 1000, 60_000]),
    gaps=st.lists(st.integers(0, 2500), min_size=1, max_size=80),  # thousandths of a window
)
def test_sliding_window_is_the_seed_for_cost_one(limit: int, window: int, gaps: list[int]) -> None:
    times = []
    now = 1_700_000_000_000  # milliseconds, like the seed's Date.now()
    for gap in gaps:
        now += gap * window // 1000
        times.append(now)
    algorithm = SlidingWindow(limit, float(window))
    state = algorithm.new_state(float(times[0]))
    got = []
    for now in times:
        d = algorithm.check(state, float(now))
        assert d.limit == limit
        assert d.retry_after_s == (0.0 if d.allowed else d.reset_at - now)
        got.append((d.allowed, d.remaining, d.reset_at))
    assert got == _seed(limit, window, times)


# Bounds. Write L for the limit, w for window_s, W_k = [k w, (k + 1) w) for the aligned
# windows, and count admissions in cost units.
#
# 1. At most L in any W_k: a request passes only if current + floor(...) + cost <= L,
#    and floor(...) >= 0, so `current` never exceeds L.
#
# 2. An interval I = [k w + x, k w + x + w) with 0 <= x < w covers the tail of W_k and
#    the head [(k + 1) w, (k + 1) w + x) of W_(k+1). Let a be W_k's whole count. A
#    request of W_(k+1) admitted at offset e < x saw previous = a (or 0 if W_k saw no
#    request, then a = 0) and needed current + floor(a (1 - e/w)) + cost <= L, so after
#    it current <= L - floor(a (1 - e/w)) <= L - floor(a (1 - x/w)) (the weight only
#    grows as e shrinks). Hence I holds at most
#        a + L - floor(a y)  with y = 1 - x/w in (0, 1],
#    which never decreases as a grows (a + 1 adds 1 and floor(a y) grows by at most 1),
#    so with a <= L:   count(I) <= 2 L - floor(L (1 - x / w)).
#    x = 0 gives L (an aligned window); x -> w gives 2 L.
#
# 3. The bound is reached: W_(k-1) empty, L requests just before the end of W_k (from
#    offset x on), then in W_(k+1) a burst at an offset e just below x passes
#    L - floor(L (1 - e/w)) requests. With x > w (1 - 1/L) that is L + L = 2 L in one
#    interval of length w (test_sliding_window_admits_twice_the_limit_in_a_sliding_window).
#    So no bound below 2 L holds for every interval of length w.


def _sliding_bound(limit: int, y: Fraction) -> int:
    return 2 * limit - math.floor(limit * y)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 8),
    window_s=st.sampled_from([1.0, 2.5, 10.0, 60.0]),
    requests=st.lists(
        st.tuples(st.integers(0, 64 * 6), st.sampled_from([1, 1, 1, 2, 3])),
        min_size=1,
        max_size=150,
    ),
)
def test_sliding_window_bounds(
    limit: int, window_s: float, requests: list[tuple[int, int]]
) -> None:
    # times on a grid of w/64 (exact binary fractions, so the arithmetic is exact)
    requests.sort()
    algorithm = SlidingWindow(limit, window_s)
    state = algorithm.new_state(requests[0][0] * window_s / 64)
    admitted: dict[int, int] = {}  # tick -> admitted cost
    for tick, cost in requests:
        if algorithm.check(state, tick * window_s / 64, cost).allowed:
            admitted[tick] = admitted.get(tick, 0) + cost

    def count(first_tick: int) -> int:  # admitted in [first_tick, first_tick + 64) ticks
        return sum(c for t, c in admitted.items() if first_tick <= t < first_tick + 64)

    last = requests[-1][0]
    for k in range(last // 64 + 1):
        assert count(64 * k) <= limit  # 1. aligned windows
    # 2. every interval of length w, starting at any real time: the count only changes at
    # grid points, so check each grid point g and the open stretch (g, g + 1 tick), where
    # the count is that of g + 1 and the bound is smallest just after g
    for g in range(-64, last + 1):
        y = 1 - Fraction(g % 64, 64)  # 1 - x / w
        assert count(g) <= _sliding_bound(limit, y) <= 2 * limit
        just_after = 2 * limit - (math.ceil(limit * y) - 1)
        assert count(g + 1) <= just_after <= 2 * limit


def test_sliding_window_admits_twice_the_limit_in_a_sliding_window() -> None:
    window = SlidingWindow(10, 10)
    state = window.new_state(1000.0)  # windows 99 (1990..) empty
    first = [window.check(state, 1009.5) for _ in range(12)]
    assert allowed(first).count(True) == 10
    # 94% into the next window: floor(10 * 0.06) = 0, a full limit passes again
    second = [window.check(state, 1019.4) for _ in range(12)]
    assert allowed(second).count(True) == 10
    # 20 admitted in [1009.5, 1019.5): the bound 2L - floor(L (1 - 0.95)) = 20 is reached
    assert _sliding_bound(10, Fraction(1, 20)) == 20


# --------------------------------------------------------------------------- token bucket


def test_token_bucket_burst_then_steady_rate() -> None:
    bucket = TokenBucket(4, 3)  # one every 0.25 s
    state = bucket.new_state(1000.0)
    assert [bucket.check(state, 1000.0) for _ in range(4)] == [
        Decision(True, 3, 2, 1000.25, 0.0),
        Decision(True, 3, 1, 1000.5, 0.0),
        Decision(True, 3, 0, 1000.75, 0.0),
        Decision(False, 3, 0, 1000.75, 0.25),
    ]
    assert bucket.check(state, 1000.125) == Decision(False, 3, 0, 1000.75, 0.125)
    assert bucket.check(state, 1000.25) == Decision(True, 3, 0, 1001.0, 0.0)
    assert not bucket.check(state, 1000.25).allowed
    # then one per 0.25 s, never more
    got = []
    for i in range(2, 40):
        now = 1000.0 + i * 0.25
        got.append(allowed([bucket.check(state, now), bucket.check(state, now)]))
    assert got == [[True, False]] * 38
    # after a pause the bucket refills, up to the burst only
    assert bucket.check(state, 1100.0) == Decision(True, 3, 2, 1100.25, 0.0)


def test_token_bucket_remaining_counts_whole_requests() -> None:
    bucket = TokenBucket(4, 5)
    state = bucket.new_state(1000.0)
    assert bucket.check(state, 1000.0, 3) == Decision(True, 5, 2, 1000.75, 0.0)
    # 0.2 s later: 2 + 0.8 tokens, this request takes 1, 1 whole one is left
    assert bucket.check(state, 1000.2).remaining == 1
    # 0.3 s later: 1.8 + 1.2 tokens, minus this request: 2 left
    assert bucket.check(state, 1000.5).remaining == 2


def test_token_bucket_cost_and_denials_take_nothing() -> None:
    bucket = TokenBucket(2, 5)  # one every 0.5 s
    state = bucket.new_state(1000.0)
    assert bucket.check(state, 1000.0, 3).remaining == 2
    # cost 3 with 2 tokens: denied, remaining says 2 would pass; wait for one token
    assert bucket.check(state, 1000.0, 3) == Decision(False, 5, 2, 1001.5, 0.5)
    assert state.tat == 1001.5
    assert bucket.check(state, 1000.0, 2) == Decision(True, 5, 0, 1002.5, 0.0)
    # more than the burst never passes, even from a full bucket
    assert bucket.check(state, 2000.0, 6) == Decision(False, 5, 5, 2000.0, math.inf)
    assert bucket.check(state, 2000.0, 5) == Decision(True, 5, 0, 2002.5, 0.0)


@pytest.mark.parametrize("rate", [5.0, 3.0, 0.1, 7.7, 1000.0, 1 / 3])
@pytest.mark.parametrize("start", [0.0, 1000.0, 1_700_000_000.0])
def test_token_bucket_waiting_retry_after_passes(rate: float, start: float) -> None:
    # 1.7e9: wall-clock seconds, where a float's step is 2.4e-7 s
    bucket = TokenBucket(rate, 2)
    state = bucket.new_state(start)
    now = start
    assert allowed([bucket.check(state, now) for _ in range(3)]) == [True, True, False]
    for _ in range(100):
        denied = bucket.check(state, now)
        assert not denied.allowed
        assert denied.retry_after_s == pytest.approx(1 / rate, abs=2e-6)
        assert denied.reset_at == pytest.approx(now + 2 / rate, abs=2e-6)
        now += denied.retry_after_s
        assert bucket.check(state, now).allowed


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 3.0, 4.0, 5.0, 7.0, 10.0, 0.3]),
    burst=st.integers(1, 6),
    start=st.sampled_from([0.0, 1000.0, 123456.789]),
    requests=st.lists(
        st.tuples(st.integers(0, 400), st.sampled_from([1, 1, 2, 3])), min_size=1, max_size=60
    ),
)
def test_token_bucket_retry_after_is_exact(
    rate: float, burst: int, start: float, requests: list[tuple[int, int]]
) -> None:
    bucket = TokenBucket(rate, burst)
    state = bucket.new_state(start)
    interval = 1 / rate
    for tick, cost in sorted(requests):
        now = start + tick / 64
        decision = bucket.check(state, now, cost)
        if decision.allowed or cost > burst:
            continue
        probe = TokenBucketState(state.tat)
        # a hundredth of a token earlier is still too early; at retry_after it passes
        assert not bucket.check(probe, now + decision.retry_after_s - interval / 100, cost).allowed
        assert bucket.check(probe, now + decision.retry_after_s, cost).allowed


# Bound: a request of cost c at time u passes only if max(tat, u) + c T - u <= b T + tol,
# with T = 1 / rate, b = burst, tol = min(1 µs, T / 1000) (tolerance for rounding). Take
# the admissions within [t_i, t_j], n cost units in all. The first one leaves
# tat >= t_i + c_i T and each later one adds its c T, so after the last (at t_j)
# tat >= t_i + n T, and it passed: t_i + n T - t_j <= b T + tol, i.e.
#     n <= b + (t_j - t_i) * rate + tol * rate,   tol * rate <= 0.001,
# so any interval of length L holds at most b + floor(L * rate + 0.001). The exact
# GCRA bound b + floor(L * rate) gains 1 only when L * rate falls within 0.001 below
# an integer. Reached: a full burst at t, then one request every T
# (test_token_bucket_burst_then_steady_rate: 3 + 4 k in [1000, 1000 + k]).


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 2.5, 3.0, 4.0, 7.0, 10.0]),
    burst=st.integers(1, 6),
    requests=st.lists(
        st.tuples(st.integers(0, 640), st.sampled_from([1, 1, 1, 2, 3])),
        min_size=1,
        max_size=150,
    ),
)
def test_token_bucket_bound_in_any_interval(
    rate: float, burst: int, requests: list[tuple[int, int]]
) -> None:
    bucket = TokenBucket(rate, burst)
    requests.sort()
    state = bucket.new_state(1000.0)
    admitted: list[tuple[int, int]] = []
    for tick, cost in requests:
        if bucket.check(state, 1000.0 + tick / 64, cost).allowed:
            admitted.append((tick, cost))
    exact_rate = Fraction(rate)
    # the count of an interval is largest when it starts and ends on admissions
    for i, (first, _) in enumerate(admitted):
        total = 0
        for last, cost in admitted[i:]:
            total += cost
            span = Fraction(last - first, 64)
            assert total <= burst + math.floor(span * exact_rate + Fraction(1, 1000))
            # the grid keeps L * rate at least 1/64 off the next integer: exact GCRA bound
            assert total <= burst + math.floor(span * exact_rate)


def test_token_bucket_idle_when_full_again() -> None:
    bucket = TokenBucket(2, 4)
    state = bucket.new_state(1000.0)
    assert bucket.idle(state, 1000.0)  # a new bucket is full
    for _ in range(3):
        bucket.check(state, 1000.0)
    assert state.tat == 1001.5
    assert not bucket.idle(state, 1001.499)
    assert bucket.idle(state, 1001.5)
    # and then it decides like a fresh bucket
    fresh = bucket.new_state(1001.5)
    assert [bucket.check(state, 1001.5) for _ in range(5)] == [
        bucket.check(fresh, 1001.5) for _ in range(5)
    ]


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["window", "bucket"]),
    history=st.lists(st.tuples(st.integers(0, 300), st.integers(1, 3)), max_size=30),
    probe=st.lists(st.tuples(st.integers(0, 300), st.integers(1, 3)), min_size=1, max_size=10),
)
def test_an_idle_state_decides_like_a_new_one(
    kind: str, history: list[tuple[int, int]], probe: list[tuple[int, int]]
) -> None:
    algorithm: Algorithm[Any] = SlidingWindow(4, 1.5) if kind == "window" else TokenBucket(2.0, 4)
    history.sort()
    state = algorithm.new_state(0.0)
    for tick, cost in history:
        algorithm.check(state, tick / 16, cost)
    later = (history[-1][0] if history else 0) / 16
    timed = sorted((later + tick / 16, cost) for tick, cost in probe)
    first = timed[0][0]
    if not algorithm.idle(state, first):
        return
    fresh = algorithm.new_state(first)
    for now, cost in timed:
        assert algorithm.check(state, now, cost) == algorithm.check(fresh, now, cost)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["window", "bucket"]),
    timeline=st.lists(st.tuples(st.integers(0, 300), st.integers(1, 5)), max_size=40),
)
def test_decide_answers_as_check_does(kind: str, timeline: list[tuple[int, int]]) -> None:
    # decide (a plain tuple, the gateway's hot path) and check (a Decision) are one
    # algorithm: the same answers and the same state changes, through LocalLimiter too
    algorithm: Algorithm[Any] = SlidingWindow(4, 1.5) if kind == "window" else TokenBucket(2.0, 4)
    timeline.sort()
    checked, decided = algorithm.new_state(0.0), algorithm.new_state(0.0)
    clock = Clock(0.0)
    by_check, by_decide = LocalLimiter(algorithm, clock), LocalLimiter(algorithm, clock)
    for tick, cost in timeline:
        now = clock.now = tick / 16
        decision = algorithm.check(checked, now, cost)
        outcome = algorithm.decide(decided, now, cost)
        assert type(outcome) is tuple
        assert decision == outcome
        assert by_check.check("k", cost) == decision
        assert by_decide.decide("k", cost) == outcome


# --------------------------------------------------------------------------- LocalLimiter


def test_local_limiter_keys_are_independent() -> None:
    clock = Clock()
    limiter = LocalLimiter(SlidingWindow(2, 10), clock)
    assert allowed([limiter.check("a") for _ in range(3)]) == [True, True, False]
    assert allowed([limiter.check("b") for _ in range(3)]) == [True, True, False]
    assert limiter.check("c", 2) == Decision(True, 2, 0, 1010.0, 0.0)
    assert len(limiter) == 3
    clock.now = 1020.0
    assert limiter.check("a").allowed


def test_local_limiter_reads_its_clock() -> None:
    clock = Clock(1000.0)
    limiter = LocalLimiter(TokenBucket(1, 1), clock)
    assert limiter.check("k") == Decision(True, 1, 0, 1001.0, 0.0)
    clock.now = 1000.75
    assert limiter.check("k") == Decision(False, 1, 0, 1001.0, 0.25)
    clock.now = 1001.0
    assert limiter.check("k").allowed


@pytest.mark.parametrize(
    ("algorithm", "horizon_s"),
    [
        # a key ages out 1 to 2 windows after its request; when a window ends, its
        # keys all age out at once and are swept during the next half window
        (SlidingWindow(5, 1.0), 3.0),
        (TokenBucket(10, 5), 0.1),  # one request's token comes back after 0.1 s
    ],
)
def test_local_limiter_evicts_idle_keys_of_a_stream(
    algorithm: Algorithm[Any], horizon_s: float
) -> None:
    # 20 000 distinct keys, one per ms: only the keys of the last few windows stay
    clock = Clock(0.0)
    limiter = LocalLimiter(algorithm, clock)
    most = 0
    for i in range(20_000):
        clock.now = i / 1000
        assert limiter.check(f"client-{i}").allowed
        most = max(most, len(limiter))
    assert most <= horizon_s * 1000 + _SWEEP_MAX
    # later, new keys sweep out all the old ones (_SWEEP_MAX per _SWEEP_EVERY new keys)
    clock.now = 100.0
    late = 2 * most
    for i in range(late):
        limiter.check(f"late-{i}")
    assert len(limiter) == late


def test_local_limiter_sweep_keeps_keys_in_use() -> None:
    clock = Clock(0.0)
    limiter = LocalLimiter(SlidingWindow(1, 10), clock)
    assert limiter.check("busy").allowed
    for i in range(3 * _SWEEP_EVERY):
        clock.now = 5.0 + i / 1000
        limiter.check(f"k{i}")
    # nothing idle yet: all kept, and "busy" still counts
    assert len(limiter) == 1 + 3 * _SWEEP_EVERY
    assert not limiter.check("busy").allowed


def test_local_limiter_drops_least_recently_used_beyond_max_keys() -> None:
    clock = Clock()
    limiter = LocalLimiter(SlidingWindow(1, 60), clock, max_keys=3)
    for key in "abc":
        assert limiter.check(key).allowed
    assert not limiter.check("a").allowed  # a is now the most recently used
    assert limiter.check("d").allowed  # drops b, the least recently used
    assert len(limiter) == 3
    # b was forgotten though in use: it passes again (fail open); this drops c
    assert limiter.check("b").allowed
    assert not limiter.check("a").allowed
    assert not limiter.check("d").allowed
    assert limiter.check("c").allowed  # c was dropped too
    assert len(limiter) == 3


@settings(max_examples=100, deadline=None)
@given(
    max_keys=st.integers(1, 20),
    keys=st.lists(st.integers(0, 40), min_size=1, max_size=200),
)
def test_local_limiter_never_holds_more_than_max_keys(max_keys: int, keys: list[int]) -> None:
    limiter = LocalLimiter(SlidingWindow(3, 10), Clock(), max_keys)
    for key in keys:
        limiter.check(str(key))
        assert len(limiter) <= max_keys
    assert len(limiter) == min(max_keys, len(set(keys)))


@settings(max_examples=100, deadline=None)
@given(
    kind=st.sampled_from(["window", "bucket"]),
    stream=st.lists(
        st.tuples(st.integers(0, 120), st.integers(0, 400), st.integers(1, 2)),
        min_size=1,
        max_size=300,
    ),
)
def test_local_limiter_forgets_only_what_changes_no_decision(
    kind: str, stream: list[tuple[int, int, int]]
) -> None:
    # sweeps drop idle keys as they go; a key dropped while idle must decide exactly as
    # if its state had been kept (states that are never dropped are the reference)
    algorithm: Algorithm[Any] = SlidingWindow(3, 2.0) if kind == "window" else TokenBucket(1.5, 3)
    clock = Clock(0.0)
    limiter = LocalLimiter(algorithm, clock)
    kept: dict[str, Any] = {}
    now = 0.0
    for key_number, gap, cost in stream:
        now += gap / 64
        clock.now = now
        key = f"k{key_number}"
        if key not in kept:
            kept[key] = algorithm.new_state(now)
        expected = algorithm.check(kept[key], now, cost)
        assert limiter.check(key, cost) == expected
    assert len(limiter) <= len(kept)


def test_a_key_evicted_while_idle_starts_fresh() -> None:
    clock = Clock(0.0)
    limiter = LocalLimiter(SlidingWindow(2, 10), clock)
    assert allowed([limiter.check("k") for _ in range(3)]) == [True, True, False]
    clock.now = 25.0  # window 2: "k" (window 0) is idle
    for i in range(_SWEEP_EVERY):
        limiter.check(f"other-{i}")
    assert len(limiter) == _SWEEP_EVERY  # "k" was swept out
    assert limiter.check("k") == Decision(True, 2, 1, 30.0, 0.0)


# --------------------------------------------------------------------------- concurrency


def test_concurrency_acquire_release() -> None:
    limiter = ConcurrencyLimiter(2)
    assert limiter.acquire("a") == Decision(True, 2, 1, 0.0, 0.0)
    assert limiter.acquire("a") == Decision(True, 2, 0, 0.0, 0.0)
    # full: denied, and reset / retry are unknown (0.0)
    assert limiter.acquire("a") == Decision(False, 2, 0, 0.0, 0.0)
    assert limiter.in_flight("a") == 2  # a denied acquire takes nothing
    assert limiter.acquire("b").allowed  # other keys are independent
    limiter.release("a")
    assert limiter.in_flight("a") == 1
    assert limiter.acquire("a") == Decision(True, 2, 0, 0.0, 0.0)


def test_concurrency_release_never_goes_negative_and_frees_memory() -> None:
    limiter = ConcurrencyLimiter(3)
    limiter.release("never-acquired")
    assert limiter.in_flight("never-acquired") == 0
    assert len(limiter) == 0
    limiter.acquire("a")
    limiter.acquire("a")
    limiter.acquire("b")
    assert len(limiter) == 2
    for _ in range(5):
        limiter.release("a")
    assert limiter.in_flight("a") == 0
    assert len(limiter) == 1
    limiter.release("b")
    assert len(limiter) == 0
    assert [limiter.acquire("a").remaining for _ in range(3)] == [2, 1, 0]


@settings(max_examples=200, deadline=None)
@given(
    max_in_flight=st.integers(1, 4),
    ops=st.lists(st.tuples(st.booleans(), st.sampled_from("abc")), max_size=100),
)
def test_concurrency_matches_a_counter_model(
    max_in_flight: int, ops: list[tuple[bool, str]]
) -> None:
    limiter = ConcurrencyLimiter(max_in_flight)
    model = {"a": 0, "b": 0, "c": 0}
    for is_acquire, key in ops:
        if is_acquire:
            decision = limiter.acquire(key)
            assert decision.allowed == (model[key] < max_in_flight)
            model[key] += decision.allowed
            assert decision.remaining == max_in_flight - model[key]
        else:
            limiter.release(key)
            model[key] = max(0, model[key] - 1)
        assert all(limiter.in_flight(k) == n for k, n in model.items())
        assert len(limiter) == sum(1 for n in model.values() if n)
