"""Rate limiting decisions (sans-IO): sliding window, token bucket, in-flight limits.

An algorithm holds only its parameters. The caller keeps one small mutable state
object per key (`new_state`) and passes it, with the clock reading, to `check`,
which updates the state in place and returns a `Decision` (`decide`: the same
answer as a plain tuple, an `Outcome`, for the request path); `idle` says when a
state has aged out and can be forgotten. `LocalLimiter` is such a caller for one
process: a bounded map of key -> state with an injected clock. Its limits are
per process (per worker); limits shared by a fleet need a shared store.

Clock readings are seconds as floats, from any clock that does not go backwards
(a monotonic clock, or wall-clock seconds where `reset_at` must be a Unix time).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from math import floor
from typing import Any, NamedTuple, Protocol, TypeVar

S = TypeVar("S")

# New keys a LocalLimiter inserts between two sweeps for idle keys, and the most
# keys one sweep may drop: twice the inflow, so a backlog of idle keys drains.
_SWEEP_EVERY = 32
_SWEEP_MAX = 64

# How early (seconds) a token-bucket request may come and still pass: at most a
# thousandth of the emission interval. It absorbs the rounding of float clock
# readings, so that a caller waiting exactly `retry_after_s` passes and
# `remaining` does not lose a request to rounding.
_EARLY_S = 1e-6
_EARLY_MAX_FRACTION = 1e-3


class RateLimitError(ValueError):
    """A rate limit is badly configured, or a check asked for a cost below 1."""


class Decision(NamedTuple):
    """The answer to one check.

    `limit`: the limit in force (requests per window, the burst of a token
    bucket, or the most requests in flight). `remaining` (>= 0): how many more
    requests of cost 1 would pass right now after this decision. `reset_at`:
    clock reading at which the limit resets (see each algorithm; 0.0 for the
    in-flight limit, where it is unknown). `retry_after_s`: 0.0 when allowed;
    when denied, how long to wait before trying again (see each algorithm),
    `math.inf` when the cost is more than the limit can ever admit, and 0.0 for
    the in-flight limit, where it is unknown.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_at: float
    retry_after_s: float


Outcome = tuple[bool, int, int, float, float]
"""A `Decision`'s fields as a plain tuple, in the same order: what the ``decide``
methods return. A request path that needs no Decision object uses them: a plain
tuple costs a fraction of a NamedTuple to build (and the compiled build passes it as
a C struct). A Decision is an Outcome too, so code reading outcomes takes both."""

_new_tuple = tuple.__new__


def _decision(outcome: Outcome) -> Decision:
    """The `Decision` of ``outcome``, without the generated ``__new__``'s Python frame."""
    return _new_tuple(Decision, outcome)


class Algorithm(Protocol[S]):
    """What the algorithms (`SlidingWindow`, `TokenBucket`) offer for a per-key state
    of type `S`; `LocalLimiter` takes the two classes themselves (see there)."""

    kind: str  # "sliding_window" or "token_bucket"

    def new_state(self, now: float) -> S:
        """The state of a key never seen before (or forgotten while idle)."""
        ...

    def check(self, state: S, now: float, cost: int = 1) -> Decision:
        """Decide one request of `cost` at clock reading `now`, updating `state`."""
        ...

    def decide(self, state: S, now: float, cost: int = 1) -> Outcome:
        """`check`, answering an `Outcome`."""
        ...

    def idle(self, state: S, now: float) -> bool:
        """True when `state` decides exactly like `new_state(now)`: it can be dropped."""
        ...

    def describe(self) -> str:
        """One line for `meshgate explain`."""
        ...


def _check_count(what: str, value: int | float) -> int:
    """``value``, when it is an integer >= 1. The counts the classes take are typed
    ``int | float`` so that a compiled build (scripts/compile_hot.py) passes a wrong
    one on as it is to this check, whose error names it, as pure Python does (typed
    int, mypyc refuses a float with its own TypeError; typed float, it turns 5 into
    5.0)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RateLimitError(f"{what} must be an integer >= 1, got {value!r}")
    return value


def _check_positive(what: str, value: float) -> None:
    if not 0.0 < value < math.inf:
        raise RateLimitError(f"{what} must be a finite number > 0, got {value!r}")


def _bad_cost(cost: int) -> RateLimitError:
    return RateLimitError(f"cost must be an integer >= 1, got {cost!r}")


class SlidingWindowState:
    """One key's counts: `current` admitted in window number `window`, `previous`
    admitted in the window before it. Window n spans [n * window_s, (n + 1) * window_s)."""

    __slots__ = ("current", "previous", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.current = 0
        self.previous = 0


class SlidingWindow:
    """At most `limit` requests per `window_s`, counted as the seed does.

    Time is cut into aligned windows. A request at `now` sees the count of the
    current window plus the previous window's count weighted by the share of
    the previous window still inside the sliding window ending at `now`, rounded
    down; it passes when that count plus its cost is at most `limit`. Denied
    requests do not count. `reset_at` is the end of the current window and a
    denied request's `retry_after_s` is `reset_at - now` (the seed's values).
    Neither is exact: the previous window's weight decays all the time, so a
    request may pass before `reset_at`; and at `reset_at` the window that ends
    becomes the previous one, weighing 1 at that instant, so after a full window
    a request at exactly `reset_at` is denied again (one passes any instant
    later) and a large cost may have to wait longer.

    Bounds (proved in tests/core/test_ratelimit.py): at most `limit` admitted
    (in cost units) in any aligned window, and at most `2 * limit - floor(limit
    * (1 - x / window_s))` in any window_s-long interval starting `x` seconds
    into an aligned window, which approaches `2 * limit` as x nears window_s.
    """

    __slots__ = ("limit", "window_s")

    kind = "sliding_window"

    def __init__(self, limit: int | float, window_s: float) -> None:
        self.limit = _check_count("sliding window limit", limit)
        _check_positive("sliding window window_s", window_s)
        self.window_s = window_s

    def new_state(self, now: float) -> SlidingWindowState:
        """Zero counts in the window containing `now`."""
        return SlidingWindowState(floor(now / self.window_s))

    def check(self, state: SlidingWindowState, now: float, cost: int = 1) -> Decision:
        """Admit or deny `cost` requests at `now`; admitted ones count in `state`."""
        return _decision(self.decide(state, now, cost))

    def decide(self, state: SlidingWindowState, now: float, cost: int = 1) -> Outcome:
        """`check`, answering an `Outcome`."""
        if cost < 1:
            raise _bad_cost(cost)
        window_s = self.window_s
        window = floor(now / window_s)
        start = window * window_s
        if state.window < window:
            state.previous = state.current if state.window == window - 1 else 0
            state.current = 0
            state.window = window
        # The seed's floor(previous * (1 - elapsed / window)), as one product and one
        # division so that exact inputs give exact counts; a rounding error just below
        # 0 (elapsed a hair over window_s) counts 0. (math.floor, not int(): a third
        # of the cost in pure Python, and native in the compiled build.)
        weighted = state.previous * (window_s - (now - start)) / window_s
        count = state.current + (floor(weighted) if weighted > 0.0 else 0)
        limit = self.limit
        reset_at = start + window_s
        if count + cost > limit:
            retry_after_s = math.inf if cost > limit else reset_at - now
            return (False, limit, max(0, limit - count), reset_at, retry_after_s)
        state.current += cost
        return (True, limit, limit - count - cost, reset_at, 0.0)

    def idle(self, state: SlidingWindowState, now: float) -> bool:
        """True from two windows after the state's window on (window start + 2 *
        window_s <= now): its counts have aged out, previous and current."""
        return floor(now / self.window_s) >= state.window + 2

    def describe(self) -> str:
        """E.g. "100 per 10s (sliding window)"."""
        return f"{self.limit} per {self.window_s:g}s (sliding window)"


class TokenBucketState:
    """One key's theoretical arrival time `tat`: the clock reading at which its
    bucket is full again (full whenever `tat` <= now)."""

    __slots__ = ("tat",)

    def __init__(self, tat: float) -> None:
        self.tat = tat


class TokenBucket:
    """A bucket of `burst` tokens refilled at `rate_per_s`, one token per request
    (GCRA: the state is one time, not a token count).

    A full bucket admits `burst` requests at once, then one every 1 / rate_per_s
    seconds. Denied requests take nothing. The reported limit is `burst`;
    `reset_at` is the time the bucket is full again; a denied request's
    `retry_after_s` is exactly how long until its cost would pass.

    A request may come up to min(1 µs, a thousandth of 1 / rate_per_s) early and
    pass, which absorbs the rounding of float clock readings. Bound (proved in
    tests/core/test_ratelimit.py): in any interval of L seconds at most
    `burst + floor(L * rate_per_s + 0.001)` are admitted (in cost units), i.e.
    `burst + floor(L * rate_per_s)` unless L * rate_per_s is within 0.001 below an
    integer.
    """

    __slots__ = ("_burst_span", "_interval", "_span", "burst", "rate_per_s")

    kind = "token_bucket"

    def __init__(self, rate_per_s: float, burst: int | float) -> None:
        _check_positive("token bucket rate_per_s", rate_per_s)
        count = _check_count("token bucket burst", burst)
        interval = 1.0 / rate_per_s
        if not count * interval < math.inf:
            raise RateLimitError(
                f"token bucket rate_per_s is too small for burst {burst}, got {rate_per_s!r}"
            )
        self.rate_per_s = rate_per_s
        self.burst = count
        self._interval = interval
        # how far the theoretical arrival time may run ahead of now: the burst, plus
        # the tolerance for early requests
        self._burst_span = count * interval
        self._span = self._burst_span + min(_EARLY_S, interval * _EARLY_MAX_FRACTION)

    def new_state(self, now: float) -> TokenBucketState:
        """A full bucket."""
        return TokenBucketState(now)

    def check(self, state: TokenBucketState, now: float, cost: int = 1) -> Decision:
        """Admit or deny `cost` requests at `now`; admitted ones move `state.tat`."""
        return _decision(self.decide(state, now, cost))

    def decide(self, state: TokenBucketState, now: float, cost: int = 1) -> Outcome:
        """`check`, answering an `Outcome`."""
        if cost < 1:
            raise _bad_cost(cost)
        tat = state.tat
        if tat < now:
            tat = now
        new_tat = tat + cost * self._interval
        ahead = new_tat - now
        burst = self.burst
        if ahead > self._span:
            retry_after_s = math.inf if cost > burst else ahead - self._burst_span
            # tat - now <= _span after any admission, so this is >= 0 unless the
            # clock went backwards
            remaining = max(0, int((self._span - (tat - now)) * self.rate_per_s))
            return (False, burst, remaining, tat, retry_after_s)
        state.tat = new_tat
        # ahead <= _span here: floor of a value >= 0
        return (True, burst, floor((self._span - ahead) * self.rate_per_s), new_tat, 0.0)

    def idle(self, state: TokenBucketState, now: float) -> bool:
        """True when the bucket is full again."""
        return state.tat <= now

    def describe(self) -> str:
        """E.g. "5/s, burst 10 (token bucket)"."""
        return f"{self.rate_per_s:g}/s, burst {self.burst} (token bucket)"


class LocalLimiter:
    """One algorithm's states per key in this process, with bounded memory.

    Keys are kept in least-recently-checked order. Every few new keys, a sweep
    drops idle keys from the least recently checked end (stopping at the first
    key still in use); forgetting an idle key changes no decision. If the map
    still holds more than `max_keys`, the least recently checked key is dropped
    even if it is in use: its count is forgotten and it starts afresh, which may
    admit more than its limit (fail open), the price of bounded memory. Each
    check is O(1) amortized.

    States are private to the limiter and made and read by the same algorithm,
    so their type is not a parameter of the class. The algorithm is one of this
    module's (the union, rather than any `Algorithm`, lets the compiled build call
    it directly: ~1.2k instructions less per check).
    """

    __slots__ = ("_algorithm", "_clock", "_max_keys", "_new_keys", "_states")

    def __init__(
        self,
        algorithm: SlidingWindow | TokenBucket,
        clock: Callable[[], float],
        max_keys: int | float = 100_000,
    ) -> None:
        self._max_keys = _check_count("max_keys", max_keys)
        self._algorithm = algorithm
        self._clock = clock
        self._new_keys = 0
        self._states: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        """The number of keys whose state is kept."""
        return len(self._states)

    def check(self, key: str, cost: int = 1) -> Decision:
        """Decide one request of `cost` for `key` at the clock's current reading."""
        return _decision(self.decide(key, cost))

    def decide(self, key: str, cost: int = 1) -> Outcome:
        """`check`, answering an `Outcome`."""
        now = self._clock()
        states = self._states
        state = states.get(key)
        if state is None:
            state = self._add(key, now)
        else:
            states.move_to_end(key)
        return self._algorithm.decide(state, now, cost)

    def _add(self, key: str, now: float) -> Any:
        self._new_keys += 1
        if self._new_keys >= _SWEEP_EVERY:
            self._new_keys = 0
            self._sweep(now)
        state = self._algorithm.new_state(now)
        states = self._states
        states[key] = state
        if len(states) > self._max_keys:
            states.popitem(last=False)
        return state

    def _sweep(self, now: float) -> None:
        states = self._states
        idle = self._algorithm.idle
        for _ in range(_SWEEP_MAX):
            if not states:
                return
            key, state = states.popitem(last=False)
            if not idle(state, now):
                states[key] = state
                states.move_to_end(key, last=False)
                return


class ConcurrencyLimiter:
    """At most `max_in_flight` requests in flight per key.

    `acquire` before the request, `release` exactly once when it ends (response
    done or client gone). Only keys with requests in flight are kept. A denied
    acquire cannot say when a slot frees up: its `reset_at` and `retry_after_s`
    are 0.0, meaning unknown.
    """

    __slots__ = ("_denied", "_in_flight", "max_in_flight")

    def __init__(self, max_in_flight: int | float) -> None:
        self.max_in_flight = count = _check_count("concurrency max_in_flight", max_in_flight)
        self._in_flight: dict[str, int] = {}
        self._denied = Decision(False, count, 0, 0.0, 0.0)

    def __len__(self) -> int:
        """The number of keys with requests in flight."""
        return len(self._in_flight)

    def acquire(self, key: str) -> Decision:
        """Take a slot for `key` if one is free; a denied acquire takes nothing."""
        n = self._in_flight.get(key, 0)
        if n >= self.max_in_flight:
            return self._denied
        self._in_flight[key] = n + 1
        return _decision((True, self.max_in_flight, self.max_in_flight - n - 1, 0.0, 0.0))

    def release(self, key: str) -> None:
        """Give back a slot of `key`; a release without a slot held does nothing."""
        n = self._in_flight.get(key, 0)
        if n > 1:
            self._in_flight[key] = n - 1
        elif n == 1:
            del self._in_flight[key]

    def in_flight(self, key: str) -> int:
        """The number of slots `key` holds."""
        return self._in_flight.get(key, 0)
