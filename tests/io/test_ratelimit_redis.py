"""Redis rate limits against a real redis-server: the Lua scripts decide exactly as the
pure Python reference, atomically, keys expire by themselves, failures are RedisUnavailable
(quickly, also when Redis hangs), the same client recovers after a restart and NOSCRIPT."""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from meshgate.core.ratelimit import Decision, RateLimitError, SlidingWindow, TokenBucket
from meshgate.io.ratelimit_redis import RedisRateLimiter, RedisUnavailable, make_client
from tests.redis_server import RedisServer, redis_server_fixture

# One server for the module (never killed: tests use their own keys), one per test (killed,
# paused, restarted).
shared_redis = redis_server_fixture("shared_redis", scope="module")
redis_server = redis_server_fixture()

EPOCH = 1_700_000_000.123456  # realistic magnitudes: floor(now / window) loses bits here
TIMEOUT_S = 0.5


def _client(server: RedisServer, timeout_s: float = TIMEOUT_S) -> aioredis.Redis:
    return make_client(server.url, connect_timeout_s=timeout_s, timeout_s=timeout_s,
                       max_connections=16)  # fmt: skip


@pytest.fixture
async def client(shared_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    c = _client(shared_redis, timeout_s=5.0)  # generous: a shared 2-core machine
    yield c
    await c.aclose()


def _same(got: Decision, want: Decision) -> bool:
    return (
        got.allowed == want.allowed
        and got.limit == want.limit
        and got.remaining == want.remaining
        and math.isclose(got.reset_at, want.reset_at, rel_tol=0, abs_tol=1e-6)
        and math.isclose(got.retry_after_s, want.retry_after_s, rel_tol=0, abs_tol=1e-6)
    )


def _timeline(rng: random.Random, n: int, unit_s: float, span_s: float, max_cost: int):
    """(offset, cost) pairs around the sustained rate (one request per ``unit_s``): bursts
    at one instant, small steps, pauses of up to the window / refill time, longer jumps."""
    t, out = 0.0, []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            step = 0.0
        elif r < 0.96:
            step = rng.random() * 1.5 * unit_s
        elif r < 0.985:
            step = rng.random() * span_s
        else:
            step = rng.random() * 3 * span_s  # old state no longer matters
        t += step
        cost = 1 if rng.random() < 0.85 else rng.randint(1, max_cost)
        out.append((t, cost))
    return out


# (algorithm, time per request at the limit, window / time from empty to full)
ALGORITHMS = [
    pytest.param(lambda: SlidingWindow(5, 10.0), 2.0, 10.0, id="window-5/10s"),
    pytest.param(lambda: SlidingWindow(30, 1.5), 0.05, 1.5, id="window-30/1.5s"),
    pytest.param(lambda: SlidingWindow(7, 0.7), 0.1, 0.7, id="window-7/0.7s"),
    pytest.param(lambda: TokenBucket(3.0, 5), 1 / 3.0, 5 / 3.0, id="bucket-3/s-burst-5"),
    pytest.param(lambda: TokenBucket(0.7, 8), 1 / 0.7, 8 / 0.7, id="bucket-0.7/s-burst-8"),
    pytest.param(lambda: TokenBucket(10.0, 1), 0.1, 0.1, id="bucket-10/s-burst-1"),
]


@pytest.mark.parametrize(("make", "unit_s", "span_s"), ALGORITHMS)
@pytest.mark.parametrize("seed", [1, 2])
async def test_same_decisions_as_the_python_reference(client, make, unit_s, span_s, seed):
    """Three interleaved keys, 400 checks at passed times: every Decision is the reference's.

    After each check the key's TTL is checked (it covers the time its state matters) and
    then removed (PERSIST): the passed clock runs apart from Redis's expiry clock, so a
    key must not expire in real time while the passed time has not got there."""
    algorithm = make()
    limiter = RedisRateLimiter(client, algorithm, key_prefix=f"eq-{uuid.uuid4().hex}",
                               timeout_s=5.0)  # fmt: skip
    rng = random.Random(seed)
    cap = algorithm.limit if isinstance(algorithm, SlidingWindow) else algorithm.burst
    keys = ["a", "b", "c"]
    states = {k: algorithm.new_state(EPOCH) for k in keys}
    allowed = denied = 0
    for i, (offset, cost) in enumerate(_timeline(rng, 400, unit_s / len(keys), span_s, cap + 1)):
        key = rng.choice(keys)
        now = EPOCH + offset
        want = algorithm.check(states[key], now, cost)
        got = await limiter.check(key, cost, now=now)
        assert _same(got, want), f"step {i} at {now!r} cost {cost} key {key}: {got} != {want}"
        allowed += want.allowed
        denied += not want.allowed
        if want.allowed:
            name = f"{limiter.key_prefix}:{key}"
            pttl = await client.pttl(name)
            if isinstance(algorithm, SlidingWindow):
                assert 1000 * algorithm.window_s - 200 < pttl <= 2000 * algorithm.window_s
            else:  # until full again: reset_at
                assert pttl <= math.ceil((want.reset_at - now) * 1000)
                assert pttl > (want.reset_at - now) * 1000 - 200
            await client.persist(name)
    assert allowed > 100 and denied > 50  # the timeline exercised both answers


async def test_concurrent_checks_admit_exactly_the_limit(client):
    """300 checks at once against 100 per 10 s with Redis TIME: exactly 100 pass."""
    seconds, _micros = await client.time()
    into_window = seconds % 10
    if into_window >= 8:  # do not straddle a window roll
        await asyncio.sleep(10.1 - into_window)
    limiter = RedisRateLimiter(client, SlidingWindow(100, 10.0), key_prefix="conc",
                               timeout_s=5.0)  # fmt: skip
    decisions = await asyncio.gather(*(limiter.check("k") for _ in range(300)))
    passed = [d for d in decisions if d.allowed]
    assert len(passed) == 100
    assert sorted(d.remaining for d in passed) == list(range(100))
    now = time.time()
    for d in decisions:
        assert d.limit == 100 and abs(d.reset_at - now) < 11  # Redis's clock, in seconds
        if not d.allowed:
            assert d.remaining == 0 and 0 < d.retry_after_s <= 10


async def test_token_bucket_concurrent_burst(client):
    limiter = RedisRateLimiter(client, TokenBucket(0.01, 50), key_prefix="conc-tb",
                               timeout_s=5.0)  # fmt: skip
    decisions = await asyncio.gather(*(limiter.check("k") for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 50
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(50))


async def test_keys_expire_by_themselves(client):
    window = RedisRateLimiter(client, SlidingWindow(10, 3.0), key_prefix="ttl-w", timeout_s=5)
    for _ in range(4):
        assert (await window.check("k")).allowed
    pttl = await client.pttl("ttl-w:k")
    assert 0 < pttl <= 6000  # until the end of the next window: at most 2 windows

    bucket = RedisRateLimiter(client, TokenBucket(1.0, 10), key_prefix="ttl-b", timeout_s=5)
    for _ in range(3):
        assert (await bucket.check("k")).allowed
    pttl = await client.pttl("ttl-b:k")
    assert 1500 < pttl <= 3000  # 3 tokens back at 1/s
    assert not (await bucket.check("k", cost=11)).allowed  # denied: state and TTL unchanged
    assert 1500 < await client.pttl("ttl-b:k") <= pttl

    short_w = RedisRateLimiter(client, SlidingWindow(10, 0.1), key_prefix="exp-w", timeout_s=5)
    short_b = RedisRateLimiter(client, TokenBucket(20.0, 5), key_prefix="exp-b", timeout_s=5)
    assert (await short_w.check("k")).allowed and (await short_b.check("k")).allowed
    assert await client.exists("exp-w:k", "exp-b:k") == 2
    await asyncio.sleep(0.5)
    assert await client.exists("exp-w:k", "exp-b:k") == 0


async def test_decisions_with_redis_time(client):
    bucket = RedisRateLimiter(client, TokenBucket(2.0, 3), key_prefix="time-b", timeout_s=5)
    got = [await bucket.check("k") for _ in range(4)]
    assert [d.allowed for d in got] == [True, True, True, False]
    assert [d.remaining for d in got] == [2, 1, 0, 0]
    assert 0.2 < got[3].retry_after_s <= 0.5  # the next token is 1/rate after the first one
    assert abs(got[2].reset_at - time.time()) < 5
    await asyncio.sleep(got[3].retry_after_s + 0.05)
    assert (await bucket.check("k")).allowed


async def test_script_flush_is_survived(client):
    limiter = RedisRateLimiter(client, SlidingWindow(3, 60.0), key_prefix="flush", timeout_s=5)
    assert (await limiter.check("k", now=EPOCH)).remaining == 2
    await client.script_flush()
    assert (await limiter.check("k", now=EPOCH)).remaining == 1  # reloaded, same state
    await client.script_flush()
    fresh = RedisRateLimiter(client, TokenBucket(1.0, 2), key_prefix="flush", timeout_s=5)
    assert (await fresh.check("b", now=EPOCH)).remaining == 1


async def test_a_cost_below_one_is_refused_before_redis(client):
    limiter = RedisRateLimiter(client, SlidingWindow(3, 1.0), key_prefix="cost", timeout_s=5)
    with pytest.raises(RateLimitError, match="cost must be an integer >= 1"):
        await limiter.check("k", cost=0)
    assert await client.exists("cost:k") == 0


async def test_script_error_is_redis_unavailable(client):
    await client.hset("wrongtype:k", "x", "1")  # a bucket's state is a string
    limiter = RedisRateLimiter(client, TokenBucket(1.0, 2), key_prefix="wrongtype", timeout_s=5)
    with pytest.raises(RedisUnavailable, match=r"WRONGTYPE|wrong kind"):
        await limiter.check("k")


async def test_killed_then_restarted_server(redis_server: RedisServer):
    client = _client(redis_server)
    limiter = RedisRateLimiter(client, SlidingWindow(2, 60.0), key_prefix="kill",
                               timeout_s=TIMEOUT_S)  # fmt: skip
    try:
        assert (await limiter.check("k")).allowed
        redis_server.kill()
        for _ in range(3):  # a pooled connection to a dead server, then new connections
            start = time.monotonic()
            with pytest.raises(RedisUnavailable, match="redis rate limit check of 'kill:k'"):
                await limiter.check("k")
            assert time.monotonic() - start < TIMEOUT_S + 2.0
        redis_server.restart()
        got = await limiter.check("k")  # same client, reconnected
        assert got.allowed and got.remaining == 1  # a fresh server: a fresh count
        assert (await limiter.check("k")).remaining == 0
        redis_server.kill()
        redis_server.restart()  # no check in between: the pooled connection is stale
        await asyncio.sleep(0.05)  # the loop sees the old connection's EOF...
        assert (await limiter.check("k")).remaining == 1  # ...so the pool replaces it
    finally:
        await client.aclose()


async def test_server_that_stops_answering(redis_server: RedisServer):
    client = _client(redis_server)
    limiter = RedisRateLimiter(client, TokenBucket(100.0, 100), key_prefix="stop",
                               timeout_s=TIMEOUT_S)  # fmt: skip
    late = _client(redis_server)  # no connection yet: connects to the stopped server
    late_limiter = RedisRateLimiter(late, TokenBucket(100.0, 100), key_prefix="stop",
                                    timeout_s=TIMEOUT_S)  # fmt: skip
    try:
        assert (await limiter.check("k")).allowed
        with redis_server.paused():
            for lim in (limiter, late_limiter):
                start = time.monotonic()
                with pytest.raises(RedisUnavailable):
                    await lim.check("k")
                elapsed = time.monotonic() - start
                assert TIMEOUT_S * 0.5 <= elapsed < TIMEOUT_S + 2.0
        assert (await limiter.check("k")).allowed  # answering again: same client works
        assert (await late_limiter.check("k")).allowed
    finally:
        await client.aclose()
        await late.aclose()


async def test_nothing_listening_is_redis_unavailable():
    server = RedisServer().start()
    server.close()  # a port with nothing on it
    client = _client(server)
    limiter = RedisRateLimiter(client, SlidingWindow(1, 1.0), key_prefix="x", timeout_s=TIMEOUT_S)
    try:
        with pytest.raises(RedisUnavailable, match="ConnectionError"):
            await limiter.check("k")
    finally:
        await client.aclose()
