"""The rate-limit stage: every limit of a route must pass; 429 otherwise.

A route's limits are the top-level ``rate_limit.limits`` (one shared state
for all routes) followed by the route's own ``rate_limits``. Each limit has a
key made of request parts (client ip, header, param, consumer, JWT claim...);
local limits count per worker process, Redis limits count across every
gateway sharing the Redis server. The algorithms are the sans-IO classes of
`meshgate.core.ratelimit`; this module extracts keys, calls the backends,
sets the headers and keeps counters.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence

from mypy_extensions import mypyc_attr

from meshgate.config.ratelimit import LimitConfig, RateLimitConfig
from meshgate.core.clientip import client_ip, parse_networks
from meshgate.core.matchers import parse_query
from meshgate.core.ratelimit import (
    ConcurrencyLimiter,
    Decision,
    LocalLimiter,
    Outcome,
    SlidingWindow,
    TokenBucket,
)
from meshgate.http.errors import HTTPError
from meshgate.http.messages import Body, cookie_value
from meshgate.pipeline.context import Next, RequestContext

log = logging.getLogger("meshgate.ratelimit")

KeyPart = Callable[[RequestContext], str | None]
RedisCheck = Callable[[str], Awaitable[Decision]]
RedisFactory = Callable[[SlidingWindow | TokenBucket, str], RedisCheck]
KEY_SEPARATOR = "\x1f"  # cannot appear in a header value
FALLBACK_KEY = "\x00missing"
WARN_EVERY_S = 10.0  # Redis failure warnings: at most one per this many seconds
_SEED = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
_IETF = ("ratelimit-policy", "ratelimit")
HEADER_NAMES = {  # the fields each `headers` style sets
    "seed": frozenset(_SEED),
    "ietf": frozenset(_IETF),
    "both": frozenset(_SEED + _IETF),
    "none": frozenset(),
}


class LimitStats:
    """Counters of one limit on one route (exported by the metrics issue)."""

    __slots__ = ("allowed", "backend_errors", "limited", "skipped")

    def __init__(self) -> None:
        self.allowed = 0
        self.limited = 0
        self.skipped = 0  # no key value and on_missing_key: skip
        self.backend_errors = 0  # Redis unavailable (then fail_open decides)


def key_part(part: str, trusted: tuple[object, ...]) -> KeyPart:
    """The function reading one key part from a request (None: no value)."""
    kind, _, name = part.partition(":")
    if part == "ip":
        if not trusted:
            return lambda ctx: ctx.request.client_ip
        nets = trusted
        return lambda ctx: client_ip(
            ctx.request.client_ip,
            ctx.request.headers.get_all("x-forwarded-for"),
            nets,  # type: ignore[arg-type]
        )
    if part == "route":
        return lambda ctx: ctx.route.name if ctx.route is not None else None
    if part == "method":
        return lambda ctx: ctx.request.method
    if part == "path":
        return lambda ctx: ctx.request.path
    if part == "consumer":  # set by an auth middleware (API key or JWT consumer)
        return lambda ctx: _text(ctx.state.get("consumer"))
    if part == "source":  # the calling service in the mesh (sidecar inbound)
        return lambda ctx: _text(ctx.state.get("source_service"))
    if kind == "header":
        return lambda ctx: ctx.request.headers.get(name) or None
    if kind == "param":
        return lambda ctx: ctx.params.get(name) or None
    if kind == "query":
        return lambda ctx: _first(parse_query(ctx.request.query_string).get(name))
    if kind == "cookie":
        return lambda ctx: cookie_value(ctx.request.headers, name) or None
    if kind == "jwt":
        return lambda ctx: _claim(ctx, name)
    raise ValueError(f"unknown key part {part!r}")  # the config model checked it


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _first(values: list[str] | None) -> str | None:
    return values[0] if values else None


def _claim(ctx: RequestContext, name: str) -> str | None:
    claims = ctx.state.get("jwt")
    return _text(claims.get(name)) if isinstance(claims, dict) else None


class Limit:
    """One configured limit, compiled: its key reader and its backend."""

    __slots__ = (
        "_reset_at",
        "_reset_field",
        "applies",
        "backend",
        "concurrency",
        "config",
        "fail_open",
        "label",
        "limit_field",
        "limit_text",
        "local",
        "parts",
        "policy_text",
        "quoted",
        "read_key",
        "redis",
        "scope",
    )

    def __init__(
        self,
        config: LimitConfig,
        scope: str,
        settings: RateLimitConfig,
        redis_limiter: RedisFactory | None,
        previous: Limit | None = None,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.scope = scope  # "global" or the route's name
        self.label = config.label
        trusted = parse_networks(trusted_proxies)
        self.parts = tuple(key_part(p, trusted) for p in config.key)
        # A limit for some calling services only (mesh inbound): False skips it.
        self.applies: Callable[[RequestContext], bool] | None = None
        if config.sources is not None or config.except_sources:
            only = frozenset(config.sources) if config.sources is not None else None
            skip = frozenset(config.except_sources)

            def applies(ctx: RequestContext) -> bool:
                source = ctx.state.get("source_service")
                return (only is None or source in only) and source not in skip

            self.applies = applies
        self.local: LocalLimiter | None = None
        self.redis: RedisCheck | None = None
        self.concurrency: ConcurrencyLimiter | None = None
        self.fail_open = settings.redis.fail_open if settings.redis is not None else True
        algorithm: SlidingWindow | TokenBucket | None = None
        if config.algorithm == "sliding_window":
            assert config.limit is not None and config.window_s is not None
            algorithm = SlidingWindow(config.limit, config.window_s)
            policy = (config.limit, math.ceil(config.window_s))
        elif config.algorithm == "token_bucket":
            assert config.rate_per_s is not None and config.burst is not None
            algorithm = TokenBucket(config.rate_per_s, config.burst)
            policy = (config.burst, math.ceil(config.burst / config.rate_per_s))
        else:
            assert config.limit is not None
            self.concurrency = ConcurrencyLimiter(config.limit)
            policy = (config.limit, 0)
        quota, window = policy
        self.limit_text = str(quota)  # what x-ratelimit-limit says
        self.limit_field = ("x-ratelimit-limit", self.limit_text)
        # x-ratelimit-reset for the decisions resetting at reset_at (see reset_field_at)
        self._reset_at = -1.0
        self._reset_field = ("x-ratelimit-reset", "")
        self.quoted = '"' + self.label.replace('"', "").replace("\\", "") + '"'
        self.policy_text = f"{self.quoted};q={quota}" + (f";w={window}" if window else "")
        if algorithm is not None:
            if config.backend == "redis":
                assert redis_limiter is not None, "the config model requires rate_limit.redis"
                self.redis = redis_limiter(algorithm, f"{scope}:{self.label}")
            elif previous is not None and previous.local is not None:
                self.local = previous.local
            else:
                self.local = LocalLimiter(algorithm, time.time, settings.max_local_keys)
        if self.concurrency is not None and previous is not None:
            self.concurrency = previous.concurrency
        self.backend = config.backend
        # What a check calls for the key: the one key part itself when nothing else
        # decides (no source filter, no fallback bucket), else `key`.
        simple = len(self.parts) == 1 and self.applies is None
        self.read_key: KeyPart = (
            self.parts[0] if simple and config.on_missing_key != "fallback" else self.key
        )

    def reset_field_at(self, reset_at: float) -> tuple[str, str]:
        """The ``x-ratelimit-reset`` field for ``reset_at``: kept, as it changes once
        a window for a sliding window (a token bucket's moves with every request)."""
        if reset_at != self._reset_at:
            self._reset_at = reset_at
            self._reset_field = ("x-ratelimit-reset", str(math.ceil(reset_at)))
        return self._reset_field

    def identity(self, settings: RateLimitConfig) -> tuple[str, str, str, int]:
        """Limits with the same identity keep their local state across a reload."""
        return (self.scope, self.label, self.config.model_dump_json(), settings.max_local_keys)

    def key(self, ctx: RequestContext) -> str | None:
        """The bucket this request counts in; None: skip this limit."""
        applies = self.applies
        if applies is not None and not applies(ctx):
            return None
        parts = self.parts
        if len(parts) == 1:
            value = parts[0](ctx)
        else:
            values = [p(ctx) for p in parts]
            value = None if None in values else KEY_SEPARATOR.join(values)  # type: ignore[arg-type]
        if value is None and self.config.on_missing_key == "fallback":
            return FALLBACK_KEY
        return value

    def describe(self) -> str:
        c = self.config
        if c.algorithm == "sliding_window":
            what = f"{c.limit} per {c.window_s:g}s (sliding window)"
        elif c.algorithm == "token_bucket":
            what = f"{c.rate_per_s:g}/s, burst {c.burst} (token bucket)"
        else:
            what = f"{c.limit} in flight (concurrency)"
        return f"{self.label} [{self.scope}, {c.backend}]: {what} by {'+'.join(c.key)}"


# A plain Python class in the compiled build too (see upstream/cluster.NoHealthyUpstream).
@mypyc_attr(native_class=False)
class RateLimitUnavailable(HTTPError):
    """A Redis limit could not be checked and fail_open is off."""

    status = 503
    reason = "rate limit backend unavailable"


class _Released(Body):
    """A response body that releases a concurrency slot when it ends or is dropped."""

    __slots__ = ("_body", "_release")

    def __init__(self, body: Body, release: Callable[[], None]) -> None:
        super().__init__(body.length)
        self._body = body
        self._release: Callable[[], None] | None = release

    async def read(self) -> bytes:
        try:
            chunk = await self._body.read()
        except BaseException:
            self._done()
            raise
        if not chunk:
            self.trailers = self._body.trailers
            self._done()
        return chunk

    async def aclose(self) -> None:
        self._done()
        await self._body.aclose()

    def _done(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __del__(self) -> None:  # the server dropped it (client gone): free the slot
        self._done()


class WarningClock:
    """At most one Redis warning every `WARN_EVERY_S` for all the routes sharing it."""

    __slots__ = ("warned_at",)

    def __init__(self) -> None:
        self.warned_at = -math.inf

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.warned_at < WARN_EVERY_S:
            return False
        self.warned_at = now
        return True


class _Verdict:
    """One request's decisions so far: the denial that waits longest, and the most
    restrictive admission of a window or bucket (whose numbers the headers show; an
    in-flight count has no reset time)."""

    __slots__ = ("denied", "worst")

    def __init__(self) -> None:
        self.denied: tuple[Limit, Outcome] | None = None
        self.worst: tuple[Limit, Outcome] | None = None

    def add(self, limit: Limit, stats: LimitStats, outcome: Outcome) -> None:
        if outcome[0]:  # allowed
            stats.allowed += 1
        else:
            stats.limited += 1
            denied = self.denied
            if denied is None or outcome[4] > denied[1][4]:  # waits longer
                self.denied = (limit, outcome)
        worst = self.worst
        if limit.concurrency is None and (worst is None or outcome[2] < worst[1][2]):
            self.worst = (limit, outcome)


class RateLimitStage:
    """The middleware enforcing a route's limits."""

    __slots__ = ("entries", "header_names", "headers", "limits", "stats", "warnings")

    def __init__(
        self, limits: Sequence[Limit], headers: str, warnings: WarningClock | None = None
    ) -> None:
        self.limits = tuple(limits)
        self.headers = headers
        self.stats = {limit.label: LimitStats() for limit in self.limits}
        self.entries = tuple((limit, self.stats[limit.label]) for limit in self.limits)
        self.warnings = warnings or WarningClock()
        self.header_names = HEADER_NAMES[headers]

    def explain(self, ctx: RequestContext) -> list[str]:
        """For `meshgate explain`: each limit and the key this request counts under."""
        out = []
        for limit in self.limits:
            key = limit.key(ctx)
            if key is None:
                shown = "skipped (no value)"
            elif key == FALLBACK_KEY:
                shown = "the shared fallback bucket (a key part has no value)"
            else:
                shown = repr(key.replace(KEY_SEPARATOR, "|"))
            out.append(f"{limit.describe()}; key {shown}")
        return out

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        held: list[tuple[ConcurrencyLimiter, str]] = []  # concurrency slots taken
        verdict = _Verdict()
        try:
            for limit, stats in self.entries:
                key = limit.key(ctx)
                if key is None:
                    stats.skipped += 1
                    continue
                local = limit.local
                outcome: Outcome
                if local is not None:
                    outcome = local.decide(key)
                elif limit.concurrency is not None:
                    outcome = limit.concurrency.acquire(key)
                    if outcome[0]:
                        held.append((limit.concurrency, key))
                else:
                    remote = await self._remote(limit, key, stats)
                    if remote is None:  # Redis unavailable, failing open
                        continue
                    outcome = remote
                verdict.add(limit, stats, outcome)
            if verdict.denied is not None:
                _release(held)
                self._deny(ctx, *verdict.denied)
                return
            await call_next()
        except BaseException:
            _release(held)
            raise
        resp = ctx.response
        if resp is None:
            _release(held)
            return
        if held:
            resp.body = _Released(resp.body, lambda: _release(held))
        if verdict.worst is not None and self.headers != "none":
            resp.headers.set_fields(self._fields(*verdict.worst))

    def _deny(self, ctx: RequestContext, limit: Limit, outcome: Outcome) -> None:
        answer = ctx.error(429, "rate limit exceeded")
        fields = self._fields(limit, outcome)
        fields.append(("retry-after", str(max(1, math.ceil(min(outcome[4], 1e9))))))
        answer.headers.set_fields(fields)

    async def _remote(self, limit: Limit, key: str, stats: LimitStats) -> Decision | None:
        """A Redis check; None when Redis is unavailable and the limit fails open."""
        assert limit.redis is not None
        try:
            return await limit.redis(key)
        except Exception as exc:  # RedisUnavailable (or anything the client raised)
            stats.backend_errors += 1
            if self.warnings.due():
                log.warning(
                    "rate limit %s: redis unavailable (%s); %s",
                    limit.label,
                    exc,
                    "letting requests through" if limit.fail_open else "answering 503",
                )
            if limit.fail_open:
                return None
            raise RateLimitUnavailable() from None

    def _fields(self, limit: Limit, outcome: Outcome) -> list[tuple[str, str]]:
        """The rate-limit header fields for ``outcome`` in the configured style."""
        remaining = outcome[2]  # indexed: unpacking "_" boxes them in the compiled build
        reset_at = outcome[3]
        mode = self.headers
        if mode == "seed" and limit.concurrency is None:  # the default, in one list
            return [
                limit.limit_field,
                ("x-ratelimit-remaining", str(remaining)),
                limit.reset_field_at(reset_at),
            ]
        fields: list[tuple[str, str]] = []
        if mode == "seed" or mode == "both":
            fields.append(limit.limit_field)
            fields.append(("x-ratelimit-remaining", str(remaining)))
            if limit.concurrency is None:  # an in-flight count has no reset time
                fields.append(limit.reset_field_at(reset_at))
        if mode == "ietf" or mode == "both":
            reset_s = max(0, math.ceil(reset_at - time.time()))
            fields.append(("ratelimit-policy", limit.policy_text))
            fields.append(("ratelimit", f"{limit.quoted};r={remaining};t={reset_s}"))
        return fields


class LocalRateLimitStage(RateLimitStage):
    """A route whose limits are all in-process windows or buckets: nothing to await
    and nothing to release, so the stage is a plain function (no coroutine of its own)
    and its headers go on the response through ``ctx.late_headers``."""

    __slots__ = ("_local", "_one")

    def __init__(
        self, limits: Sequence[Limit], headers: str, warnings: WarningClock | None = None
    ) -> None:
        super().__init__(limits, headers, warnings)
        local = []
        for limit, stats in self.entries:
            assert limit.local is not None, "rate_limit_stage picks this stage for local limits"
            local.append((limit, stats, limit.local))
        self._local = tuple(local)
        # The usual route: one limit, no verdict to combine.
        self._one = self._local[0] if len(self._local) == 1 else None

    def __call__(self, ctx: RequestContext, call_next: Next) -> Awaitable[None]:  # type: ignore[override]
        return call_next() if self.decide_local(ctx) else _answered()

    def decide_local(self, ctx: RequestContext) -> bool:
        """Check limits that are all in process and count requests (no slot to hold).

        False: denied, the 429 is set. True: go on; the most restrictive decision's
        headers wait in ``ctx.late_headers``.
        """
        one = self._one
        if one is not None:
            limit, stats, local = one
            key = limit.read_key(ctx)
            if key is None:
                stats.skipped += 1
                return True
            outcome = local.decide(key)
            if not outcome[0]:
                stats.limited += 1
                self._deny(ctx, limit, outcome)
                return False
            stats.allowed += 1
            if self.header_names:
                ctx.late_headers = (self.header_names, self._fields(limit, outcome))
            return True
        verdict = _Verdict()
        for limit, stats, local in self._local:
            key = limit.key(ctx)
            if key is None:
                stats.skipped += 1
                continue
            verdict.add(limit, stats, local.decide(key))
        if verdict.denied is not None:
            self._deny(ctx, *verdict.denied)
            return False
        if verdict.worst is not None and self.header_names:
            ctx.late_headers = (self.header_names, self._fields(*verdict.worst))
        return True


async def _answered() -> None:
    return None


def rate_limit_stage(
    limits: Sequence[Limit], headers: str, warnings: WarningClock
) -> RateLimitStage:
    """The cheapest stage able to enforce ``limits``."""
    if all(limit.local is not None for limit in limits):
        return LocalRateLimitStage(limits, headers, warnings)
    return RateLimitStage(limits, headers, warnings)


def _release(held: list[tuple[ConcurrencyLimiter, str]]) -> None:
    for limiter, key in held:
        limiter.release(key)
    held.clear()
