"""Fleet-wide rate limits: the algorithms of `meshgate.core.ratelimit` as Redis Lua scripts.

Every gateway (and every worker) sharing one Redis server counts in the same
keys, so a limit holds across the fleet. One check is one round trip: one
atomic script per algorithm, sent by EVALSHA (redis-py loads it again after a
NOSCRIPT, e.g. after a Redis restart or SCRIPT FLUSH).

Clock: the scripts read Redis's own clock (``TIME``), so gateways with skewed
clocks still agree; Redis >= 5 replicates script effects, which makes ``TIME``
safe in a writing script. ``reset_at`` is in that clock (Unix seconds).
Tests pass ``now`` to compare with the pure Python reference.

Numbers: Redis converts a Lua number reply to an integer, so fractional values
come back as ``%.17g`` strings (exact for a double) and are parsed here;
``now`` and the algorithm's parameters go in as ``repr`` strings (also exact).
The Lua arithmetic follows the Python reference step by step (same IEEE doubles).

Expiry: a sliding-window key lives until the end of the window after its own
(at most two windows), a token-bucket key until the bucket is full again; an
expired key and a fresh one mean the same, so nothing else ever cleans up.

Failures (refused, reset, timeout, script error, odd reply) raise
`RedisUnavailable`; the caller decides fail-open or closed. Nothing retries
inside redis-py: a retried script could count a request twice, and the
caller's deadline is what matters.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.maint_notifications import MaintNotificationsConfig

from meshgate.core.ratelimit import Decision, RateLimitError, SlidingWindow, TokenBucket

HEALTH_CHECK_INTERVAL_S = 30  # PING a connection idle this long before using it
# TokenBucket's tolerance for early requests: min(EARLY_S, EARLY_MAX_FRACTION / rate)
EARLY_S = 1e-6
EARLY_MAX_FRACTION = 1e-3


class RedisUnavailable(Exception):
    """Redis could not answer a rate-limit check (down, slow, or the script failed)."""


def make_client(
    url: str, *, connect_timeout_s: float, timeout_s: float, max_connections: int
) -> aioredis.Redis:
    """A pooled asyncio client: at most ``max_connections`` sockets, waiting at most
    ``timeout_s`` for a free one, no retries. Nothing connects until the first check."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,  # waiting for a free pooled connection
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=timeout_s,
        socket_keepalive=True,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=Retry(NoBackoff(), 0),
        # RESP2 works with every Redis >= 5. Maintenance notifications (a Redis
        # Enterprise feature, on by default with RESP3) would also make the pool skip
        # its check of idle connections, so a connection closed by a restarted Redis
        # would fail one check before being replaced.
        protocol=2,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    return aioredis.Redis.from_pool(pool)


# KEYS[1]: the state. ARGV: the algorithm's numbers, cost, now ("" = Redis TIME).
# Reply: {allowed 0/1, remaining, "reset_at", "retry_after_s"} ("inf": cost never fits).
# Denied requests write nothing.
_CLOCK = """
local now
if ARGV[#ARGV] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[#ARGV])
end
local function fmt(x) return string.format('%.17g', x) end
"""

# ARGV: limit, window_s, cost, now. State: hash {w = window number (floor(now / window_s)),
# c = count admitted in it, p = count admitted in the window before}; it matters until
# window w + 2 starts.
SLIDING_WINDOW_LUA = (
    _CLOCK
    + """
local limit = tonumber(ARGV[1])
local window_s = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local window = math.floor(now / window_s)
local start = window * window_s
local st = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local w, current, previous = window, 0, 0
if st[1] then
  w, current, previous = tonumber(st[1]), tonumber(st[2]), tonumber(st[3])
end
if w < window then
  if w == window - 1 then previous = current else previous = 0 end
  current = 0
  w = window
end
local weighted = previous * (window_s - (now - start)) / window_s
if weighted >= 0 then weighted = math.floor(weighted) else weighted = math.ceil(weighted) end
local count = current + weighted
local reset_at = start + window_s
if count + cost > limit then
  local retry_after = 'inf'
  if cost <= limit then retry_after = fmt(reset_at - now) end
  return {0, math.max(0, limit - count), fmt(reset_at), retry_after}
end
redis.call('HSET', KEYS[1], 'w', fmt(w), 'c', fmt(current + cost), 'p', fmt(previous))
redis.call('PEXPIRE', KEYS[1], fmt(math.max(1, math.ceil(((w + 2) * window_s - now) * 1000))))
return {1, limit - count - cost, fmt(reset_at), '0'}
"""
)

# ARGV: rate_per_s, burst, interval, burst_span, span, cost, now (see TokenBucket).
# State: string, the theoretical arrival time (TAT) = when the bucket is full again,
# which is when the key expires: no key = a full bucket.
TOKEN_BUCKET_LUA = (
    _CLOCK
    + """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local interval = tonumber(ARGV[3])
local burst_span = tonumber(ARGV[4])
local span = tonumber(ARGV[5])
local cost = tonumber(ARGV[6])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + cost * interval
local ahead = new_tat - now
if ahead > span then
  local retry_after = 'inf'
  if cost <= burst then retry_after = fmt(ahead - burst_span) end
  return {0, math.max(0, math.floor((span - (tat - now)) * rate)), fmt(tat), retry_after}
end
redis.call('SET', KEYS[1], fmt(new_tat), 'PX', fmt(math.max(1, math.ceil(ahead * 1000))))
return {1, math.floor((span - ahead) * rate), fmt(new_tat), '0'}
"""
)


class RedisRateLimiter:
    """One limit (algorithm and numbers) counted in Redis under ``key_prefix``."""

    __slots__ = ("_args", "_limit", "_script", "algorithm", "key_prefix", "timeout_s")

    def __init__(
        self,
        client: aioredis.Redis,
        algorithm: SlidingWindow | TokenBucket,
        *,
        key_prefix: str,
        timeout_s: float,
    ) -> None:
        self.algorithm = algorithm
        self.key_prefix = key_prefix
        self.timeout_s = timeout_s
        self._args: tuple[int | str, ...]  # the ARGV before cost and now
        if isinstance(algorithm, SlidingWindow):
            self._script = client.register_script(SLIDING_WINDOW_LUA)
            self._args = (algorithm.limit, repr(float(algorithm.window_s)))
            self._limit = algorithm.limit
        else:
            # the numbers of TokenBucket.__init__, computed the same way
            interval = 1.0 / algorithm.rate_per_s
            burst_span = algorithm.burst * interval
            span = burst_span + min(EARLY_S, interval * EARLY_MAX_FRACTION)
            self._script = client.register_script(TOKEN_BUCKET_LUA)
            self._args = (
                repr(float(algorithm.rate_per_s)),
                algorithm.burst,
                repr(interval),
                repr(burst_span),
                repr(span),
            )
            self._limit = algorithm.burst

    async def check(self, key: str, cost: int = 1, now: float | None = None) -> Decision:
        """Count ``cost`` against ``key`` (allowed) or not (denied); one round trip.

        ``now``: Unix seconds for the script instead of Redis ``TIME`` (tests).
        A cost below 1 raises `RateLimitError` (as the in-process algorithms do)."""
        if cost < 1:
            raise RateLimitError(f"cost must be an integer >= 1, got {cost!r}")
        name = f"{self.key_prefix}:{key}"
        args = (*self._args, int(cost), "" if now is None else repr(float(now)))
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await self._script(keys=[name], args=args)
            allowed, remaining, reset_at, retry_after = reply
            return Decision(
                allowed=bool(int(allowed)),
                limit=self._limit,
                remaining=int(remaining),
                reset_at=float(reset_at),
                retry_after_s=float(retry_after),
            )
        except TimeoutError as exc:  # asyncio.timeout; redis' own TimeoutError is a RedisError
            raise RedisUnavailable(
                f"redis rate limit check of {name!r}: no answer within {self.timeout_s} s"
            ) from exc
        except (RedisError, OSError, ValueError, TypeError) as exc:
            raise RedisUnavailable(
                f"redis rate limit check of {name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
