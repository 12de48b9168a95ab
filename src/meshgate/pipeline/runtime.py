"""Everything built from one config: route table, compiled chains, clusters.

A `Runtime` is built aside and swapped in one assignment (hot reload); the
old one keeps serving the requests that already hold it.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from meshgate.config.loader import ConfigError, ConfigProblem, LocatedDocument, key_path
from meshgate.config.models import (
    GatewayConfig,
    HeaderTransformConfig,
    MiddlewareRef,
    RouteConfig,
    route_name,
)
from meshgate.config.ratelimit import LimitConfig
from meshgate.core.clientip import parse_networks
from meshgate.core.cors import CorsPolicy
from meshgate.core.matchers import RequestMatcher
from meshgate.core.ratelimit import SlidingWindow, TokenBucket
from meshgate.core.registry import Registry
from meshgate.core.router import Router
from meshgate.core.split import WeightedSplit
from meshgate.pipeline import builtins
from meshgate.pipeline.builtins import REQUEST_ID_HEADER, RESPONSE_TIME_HEADER
from meshgate.pipeline.cache import CacheStage, CacheStore, MemoryCacheStore
from meshgate.pipeline.compose import Handler, compose, terminal
from meshgate.pipeline.compress import CompressStage
from meshgate.pipeline.context import Middleware, RequestContext
from meshgate.pipeline.mirror import Mirror
from meshgate.pipeline.plugins import PluginError, load_middleware
from meshgate.pipeline.proxy import proxy
from meshgate.pipeline.ratelimit import (
    Limit,
    LocalRateLimitStage,
    RateLimitStage,
    RedisCheck,
    RedisFactory,
    WarningClock,
    rate_limit_stage,
)
from meshgate.pipeline.security import (
    AuthStage,
    IpGuard,
    JwtAuth,
    KeyAuth,
    build_jwt,
    cors_stage,
)
from meshgate.pipeline.traffic import (
    HeaderTransform,
    Random,
    Rewrite,
    Split,
    fault_stage,
    redirect_stage,
    request_headers_stage,
    response_headers_stage,
    rewrite_stage,
    split_stage,
)
from meshgate.upstream.cluster import Cluster

if TYPE_CHECKING:
    from redis.asyncio import Redis  # loaded only when a limit or the cache uses Redis


class CompiledRoute:
    """A route ready to serve: its matchers and chain are built once, here."""

    __slots__ = (
        "attempts_header",
        "builtin_names",
        "cache",
        "cluster",
        "compress",
        "config",
        "cors",
        "fault",
        "front",
        "front_names",
        "gate",
        "guard",
        "handler",
        "ip_guard",
        "late_names",
        "middleware",
        "mirror",
        "name",
        "path",
        "per_try_timeout_s",
        "preserve_host",
        "rate_limit",
        "redirect",
        "remove_request_headers",
        "request_headers",
        "response_headers",
        "retry",
        "retry_body_bytes",
        "rewrite",
        "sets_request_id",
        "split",
        "stage_names",
        "stages",
        "subset",
        "timeout_s",
        "times_response",
        "websocket",
    )

    def __init__(
        self,
        config: RouteConfig,
        name: str,
        clusters: dict[str, Cluster],
        middlewares: Sequence[Middleware],
        timeout_s: float,
        random: Random,
        rate_limit: RateLimitStage | None = None,
        front: Sequence[tuple[str, Middleware]] = (),
        cors: CorsPolicy | None = None,
        compress: CompressStage | None = None,
        cache: CacheStage | None = None,
    ) -> None:
        self.config = config
        self.compress = compress
        self.name = name
        self.rate_limit = rate_limit
        self.cache = cache
        self.cors = cors  # answers preflights for this route (see GatewayApp)
        guards = [fn for fn in (fn for _, fn in front) if isinstance(fn, IpGuard)]
        self.ip_guard = guards[0] if guards else None  # also checked before a preflight
        self.front_names = tuple(n for n, _ in front)  # ip_rules, cors, auth: before middleware
        self.front = tuple(fn for _, fn in front)
        self.path = config.path or config.path_prefix or config.path_regex or ""
        self.timeout_s = timeout_s
        self.remove_request_headers = frozenset(config.remove_request_headers)
        self.websocket = config.websocket  # None: upgrades are forwarded as plain requests
        self.guard = _guard(config)
        r = config.retry
        self.retry = r.build(random) if r.max_retries > 0 else None
        self.retry_body_bytes = r.max_body_bytes
        self.subset = config.subset  # instance metadata the route's hosts must have
        self.per_try_timeout_s = r.per_try_timeout_s
        self.attempts_header = r.attempts_header
        self.fault = config.fault.build() if config.fault is not None else None
        self.request_headers = _transform(config.request_headers)
        self.response_headers = _transform(config.response_headers)
        self.rewrite = Rewrite(config.rewrite) if config.rewrite is not None else None
        self.preserve_host = config.preserve_host or (
            self.rewrite is not None and self.rewrite.host is not None
        )
        self.redirect = config.redirect.build() if config.redirect is not None else None
        self.split: Split | None = None
        if config.split is not None:
            sticky = config.sticky
            self.split = Split(
                WeightedSplit([(clusters[t.upstream], t.weight) for t in config.split]),
                random,
                header=sticky.header if sticky is not None else None,
                cookie=sticky.cookie if sticky is not None else None,
            )
        names = config.upstream_names
        self.cluster: Cluster | None = clusters[names[0]] if names else None
        m = config.mirror
        self.mirror = Mirror(m, clusters[m.upstream], random) if m is not None else None
        self.middleware = tuple(middlewares)
        stages = self._stages(random)
        self.stage_names = tuple(n for n, _ in stages)
        self.stages = tuple(fn for _, fn in stages)
        # The built-in request_id / response_time at the head of a chain with nothing
        # before them are applied by GatewayApp around the chain (same order, same
        # effect) instead of as onion layers: two coroutines fewer per request.
        inner = list(middlewares)
        self.sets_request_id = self.times_response = False
        while not self.front and inner:
            if inner[0] is builtins.request_id and not self.sets_request_id:
                self.sets_request_id = True
            elif inner[0] is builtins.response_time and not self.times_response:
                self.times_response = True
            else:
                break
            inner.pop(0)
        layers = [*self.front, *inner, *self.stages]
        # A rate limit stage that decides without awaiting, first in the chain, is a
        # gate the app checks before running the rest (no onion layer for it).
        self.gate: Callable[[RequestContext], bool] | None = None
        first = layers[0] if layers else None
        if isinstance(first, LocalRateLimitStage):
            self.gate = first.decide_local
            layers.pop(0)
        self.builtin_names = frozenset(
            name
            for name, on in (
                (REQUEST_ID_HEADER, self.sets_request_id),
                (RESPONSE_TIME_HEADER, self.times_response),
            )
            if on
        )
        # builtin_names | the names of a request's late headers (GatewayApp), per set
        # of late names: one union per route instead of one per request.
        self.late_names: dict[frozenset[str], frozenset[str]] = {}
        self.handler: Handler = terminal(proxy) if layers == [proxy] else compose(layers)
        if cache is not None:  # what a background refresh of the cache runs
            cache.inner = compose(self.stages[self.stages.index(cache) + 1 :])

    def _stages(self, random: Random) -> list[tuple[str, Middleware]]:
        """The route's own stages after its middleware, in order (see pipeline/traffic.py)."""
        out: list[tuple[str, Middleware]] = []
        if self.rate_limit is not None:
            out.append(("rate_limit", self.rate_limit))
        if self.fault is not None:
            out.append(("fault", fault_stage(self.fault, random)))
        response_headers = self.response_headers
        if self.cache is not None:
            # Response header edits wrap the cache, so that answers from it get them
            # too (with this request's values), and a HIT skips all the rest.
            if response_headers is not None:
                out.append(("response_headers", response_headers_stage(response_headers)))
                response_headers = None
            out.append(("cache", self.cache))
        if self.compress is not None:
            # Inside a cache (which stores each coding as a variant), outside the rest:
            # it sees the client's Accept-Encoding and the final response headers.
            out.append(("compress", self.compress))
        if self.request_headers is not None:
            out.append(("request_headers", request_headers_stage(self.request_headers)))
        if self.rewrite is not None:
            out.append(("rewrite", rewrite_stage(self.rewrite)))
        if self.split is not None:
            out.append(("split", split_stage(self.split)))
        if self.mirror is not None:
            out.append(("mirror", self.mirror))
        if response_headers is not None:
            out.append(("response_headers", response_headers_stage(response_headers)))
        if self.redirect is not None:
            out.append(("redirect", redirect_stage(self.redirect)))
        else:
            out.append(("proxy", proxy))
        return out

    def __repr__(self) -> str:
        target = self.cluster.name if self.cluster is not None else "redirect"
        return f"<CompiledRoute {self.name} {self.path} -> {target}>"


def _guard(config: RouteConfig) -> RequestMatcher | None:
    matcher = RequestMatcher([h.build() for h in config.headers], [q.build() for q in config.query])
    return None if matcher.empty else matcher


def _transform(config: HeaderTransformConfig | None) -> HeaderTransform | None:
    if config is None or not (config.set or config.add or config.remove):
        return None
    return HeaderTransform(config)


# Redis clients being closed after a reload, referenced until done.
_closing: set[asyncio.Task[None]] = set()


class Runtime:
    def __init__(
        self,
        config: GatewayConfig,
        router: Router[CompiledRoute],
        clusters: dict[str, Cluster],
        routes: Sequence[CompiledRoute] = (),
        redis: Redis | None = None,
        jwt: Sequence[JwtAuth] = (),
    ) -> None:
        self.config = config
        self.router = router
        self.clusters = clusters
        self.routes = list(routes)
        self.redis = redis  # client of the Redis rate-limit backend, if any limit uses it
        self.limits: dict[tuple[str, str, str, int], Limit] = {}  # by Limit.identity
        self.jwt = tuple(jwt)
        self.registry = Registry()  # every upstream's instances (build_runtime sets it)
        # The response cache's store (when a route caches). A reload with the same
        # top-level `cache` section reuses it: it is this runtime's to close only once
        # `take_over` hands it over (`cache_owned`).
        self.cache_store: CacheStore | None = None
        self.cache_owned = False
        # Clusters this runtime starts and closes. A reload reuses the clusters of
        # unchanged upstreams (`build_runtime(previous=...)`): they stay the previous
        # runtime's until `take_over` hands them to this one at the swap.
        self.owned: set[str] = set(clusters)

    async def start(self) -> None:
        """Fetch remote key sets (JWKS URLs) and start their refresh; a fetch failure
        is logged and its tokens refused until a later fetch succeeds. Start the
        clusters this runtime owns (reused ones already run)."""
        for auth in self.jwt:
            await auth.provider.start()
        for name in self.owned:
            await self.clusters[name].start()

    def reused(self, previous: Runtime) -> list[str]:
        """Names of the clusters shared with ``previous`` (same objects)."""
        return [n for n, c in self.clusters.items() if previous.clusters.get(n) is c]

    def take_over(self, previous: Runtime) -> None:
        """At the swap: own the clusters reused from ``previous`` (which will not close
        them) and move them into this runtime's registry, instances, health,
        pools and background tasks unchanged."""
        for name in self.reused(previous):
            cluster = self.clusters[name]
            if name in previous.owned:
                previous.owned.discard(name)
                self.owned.add(name)
            cluster.move_to(self.registry)
        if self.cache_store is not None and self.cache_store is previous.cache_store:
            self.cache_owned, previous.cache_owned = previous.cache_owned, False

    def close(self) -> list[asyncio.Task[None]]:
        """Close idle upstream connections (busy ones close when their exchange ends),
        cancel mirrored copies still in flight, and start stopping what runs in the
        background (key-set refreshes, health checks, discovery, Redis connections).
        Cancel background cache refreshes and close the cache store it owns.
        Returns those tasks (referenced until done); `aclose` waits for them."""
        closing: list[Coroutine[Any, Any, None]] = [auth.provider.aclose() for auth in self.jwt]
        if self.redis is not None:
            client, self.redis = self.redis, None
            closing.append(client.aclose())
        for route in self.routes:
            if route.mirror is not None:
                route.mirror.close()
            if route.cache is not None:
                route.cache.close()
        if self.cache_store is not None and self.cache_owned:
            self.cache_owned = False
            closing.append(self.cache_store.aclose())
        for name in sorted(self.owned):
            cluster = self.clusters[name]
            cluster.close()
            if cluster.checker is not None or cluster.source is not None:
                closing.append(cluster.aclose())
        self.owned.clear()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(coro) for coro in closing]
        for task in tasks:
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        return tasks

    async def aclose(self) -> None:
        """`close`, then wait until the background work has stopped."""
        tasks = self.close()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _chain(
    refs: Sequence[MiddlewareRef],
    loc: tuple[str | int, ...],
    doc: LocatedDocument | None,
    problems: list[ConfigProblem],
) -> list[Middleware]:
    out: list[Middleware] = []
    for i, ref in enumerate(refs):
        if ref.name == "proxy":
            if i != len(refs) - 1:
                _problem(doc, (*loc, i, "name"), "'proxy' must be the last middleware", problems)
            continue
        try:
            out.append(load_middleware(ref))
        except PluginError as exc:
            _problem(doc, (*loc, i, *exc.loc), str(exc), problems)
    return out


def _problem(
    doc: LocatedDocument | None,
    loc: tuple[str | int, ...],
    message: str,
    problems: list[ConfigProblem],
) -> None:
    if doc is not None:
        problems.append(doc.problem(loc, message))
    else:
        problems.append(ConfigProblem("<config>", 0, key_path(loc), message))


def build_runtime(
    config: GatewayConfig,
    doc: LocatedDocument | None = None,
    *,
    rng: random.Random | None = None,
    previous: Runtime | None = None,
    front: Sequence[tuple[str, Middleware]] = (),
) -> Runtime:
    """Resolve plugins, compose chains and build the router; raise `ConfigError`.

    Must run inside the event loop that will serve (pools bind to it). ``rng``
    drives splits, mirroring and fault odds (seed it for reproducible tests).
    ``previous`` (on reload): local rate-limit counts of unchanged limits carry over,
    and an upstream whose config is unchanged keeps its `Cluster` (pools, health,
    breaker and outlier state, discovered instances); the new runtime owns it only
    after `Runtime.take_over` (done by the gateway at the swap).
    ``front``: stages an embedding process puts first in every route's chain, before
    ip_rules, cors and auth (the sidecar's identity and authorization check).
    """
    problems: list[ConfigProblem] = []
    default_chain = _chain(config.middleware, ("middleware",), doc, problems)
    chains = [
        default_chain
        if route.middleware is None
        else _chain(route.middleware, ("routes", i, "middleware"), doc, problems)
        for i, route in enumerate(config.routes)
    ]
    if problems:
        raise ConfigError(problems)
    rng = rng or random.Random()
    registry = Registry()
    clusters: dict[str, Cluster] = {}
    created: list[Cluster] = []
    for up in config.upstreams:
        old_cluster = previous.clusters.get(up.name) if previous is not None else None
        if old_cluster is not None and old_cluster.config == up:
            clusters[up.name] = old_cluster  # unchanged upstream: same pools and state
        else:
            clusters[up.name] = cluster = Cluster(up, rng, registry)
            created.append(cluster)
    redis, redis_factory = _redis_backend(config)
    settings = config.rate_limit
    kept = previous.limits if previous is not None else {}
    limits_by_identity: dict[tuple[str, str, str, int], Limit] = {}

    def limit(c: LimitConfig, scope: str) -> Limit:
        """A compiled limit; one with the same config as before a reload keeps its counts."""
        trusted = config.trusted_proxies
        new = Limit(c, scope, settings, redis_factory, trusted_proxies=trusted)
        old = kept.get(new.identity(settings))
        if old is not None:
            new = Limit(c, scope, settings, redis_factory, old, trusted)
        limits_by_identity[new.identity(settings)] = new
        return new

    global_limits = [limit(c, "global") for c in settings.limits]
    security = _Security(config)
    warnings = WarningClock()  # one Redis warning per 10 s for the whole runtime
    cache_store, cache_created = _cache_store(config, previous)
    cache_warnings = WarningClock()
    router: Router[CompiledRoute] = Router()
    compiled_routes: list[CompiledRoute] = []
    for i, (route, chain) in enumerate(zip(config.routes, chains, strict=True)):
        name = route_name(route, i)
        limits = global_limits + [limit(c, name) for c in route.rate_limits]
        timeout_s = route.timeout_s or config.timeout_s
        cache: CacheStage | None = None
        if route.cache is not None:
            assert cache_store is not None
            cache = CacheStage(
                route.cache,
                cache_store,
                _cache_tag(route, name),
                route_timeout_s=timeout_s,
                warnings=cache_warnings,
                store_kind=config.cache.store,
            )
        try:
            compiled = CompiledRoute(
                route,
                name,
                clusters,
                chain,
                timeout_s,
                rng.random,
                rate_limit_stage(limits, settings.headers, warnings) if limits else None,
                [*front, *security.front(route)],
                security.cors(route),
                _compress(config, route),
                cache,
            )
        except ValueError as exc:  # a matcher, rewrite, template or fault the models let by
            _problem(doc, ("routes", i), str(exc), problems)
            continue
        compiled_routes.append(compiled)
        try:
            _register(router, route, compiled)
        except ValueError as exc:
            _problem(doc, ("routes", i, _path_key(route)), str(exc), problems)
    if problems:
        for cluster in created:
            cluster.close()
        raise ConfigError(problems)  # (a new cache store has not connected to anything)
    runtime = Runtime(config, router, clusters, compiled_routes, redis, security.jwt)
    runtime.owned = {c.name for c in created}
    runtime.cache_store = cache_store
    runtime.cache_owned = cache_created
    runtime.registry = registry
    runtime.limits = limits_by_identity
    return runtime


def _compress(config: GatewayConfig, route: RouteConfig) -> CompressStage | None:
    """The route's own compress block, else the top-level one; None when off."""
    settings = route.compress if route.compress is not None else config.compress
    return CompressStage(settings) if settings is not None and settings.enabled else None


class _Security:
    """The security objects shared by routes: providers, keys, global CORS and IP rules."""

    def __init__(self, config: GatewayConfig) -> None:
        self.trusted = parse_networks(config.trusted_proxies)
        self.jwt = [build_jwt(c) for c in config.auth.jwt]
        api_keys = config.auth.api_keys
        self.keys = KeyAuth(api_keys) if api_keys is not None else None
        cors = config.cors
        self.global_cors = cors.build() if cors is not None and cors.enabled else None
        self.global_ip = config.ip_rules.build() if config.ip_rules is not None else None

    def cors(self, route: RouteConfig) -> CorsPolicy | None:
        if route.cors is None:
            return self.global_cors
        return route.cors.build() if route.cors.enabled else None

    def front(self, route: RouteConfig) -> list[tuple[str, Middleware]]:
        """ip_rules -> cors -> auth, each only when configured."""
        out: list[tuple[str, Middleware]] = []
        rules = [self.global_ip] if self.global_ip is not None else []
        if route.ip_rules is not None:
            rules.append(route.ip_rules.build())
        if rules:
            out.append(("ip_rules", IpGuard(rules, self.trusted)))
        policy = self.cors(route)
        if policy is not None:
            out.append(("cors", cors_stage(policy)))
        if route.auth is not None:
            out.append(("auth", AuthStage(route.auth, self.jwt, self.keys)))
        return out


def _redis_backend(config: GatewayConfig) -> tuple[Redis | None, RedisFactory | None]:
    """One pooled Redis client per runtime, only when a limit uses it."""
    settings = config.rate_limit
    rc = settings.redis
    uses = any(c.backend == "redis" for c in settings.limits) or any(
        c.backend == "redis" for r in config.routes for c in r.rate_limits
    )
    if rc is None or not uses:
        return None, None
    from meshgate.io.ratelimit_redis import RedisRateLimiter, make_client

    client = make_client(
        rc.url,
        connect_timeout_s=rc.connect_timeout_s,
        timeout_s=rc.timeout_s,
        max_connections=rc.max_connections,
    )

    def factory(algorithm: SlidingWindow | TokenBucket, ident: str) -> RedisCheck:
        limiter = RedisRateLimiter(
            client, algorithm, key_prefix=f"{rc.key_prefix}:{ident}", timeout_s=rc.timeout_s
        )
        return limiter.check

    return client, factory


def _cache_store(config: GatewayConfig, previous: Runtime | None) -> tuple[CacheStore | None, bool]:
    """The store of the routes' cached responses, None when no route caches, and
    whether it is new. The previous runtime's store is kept when the top-level
    `cache` section is unchanged (its entries survive the reload)."""
    if not any(route.cache is not None for route in config.routes):
        return None, False
    settings = config.cache
    if (
        previous is not None
        and previous.cache_store is not None
        and previous.config.cache == settings
    ):
        return previous.cache_store, False
    rc = settings.redis
    if settings.store == "redis":
        assert rc is not None, "the config model requires cache.redis"
        from meshgate.io.cache_redis import RedisCacheStore
        from meshgate.io.ratelimit_redis import make_client

        client = make_client(
            rc.url,
            connect_timeout_s=rc.connect_timeout_s,
            timeout_s=rc.timeout_s,
            max_connections=rc.max_connections,
        )
        return RedisCacheStore(client, key_prefix=rc.key_prefix, timeout_s=rc.timeout_s), True
    return MemoryCacheStore(settings.max_bytes), True


def _cache_tag(route: RouteConfig, name: str) -> str:
    """Names a route's config in its cache entries: after a reload that changes the
    route, the entries it stored before are ignored."""
    digest = hashlib.sha256(route.model_dump_json().encode()).hexdigest()[:16]
    return f"{name}@{digest}"


def _path_key(route: RouteConfig) -> str:
    if route.path_prefix is not None:
        return "path_prefix"
    if route.path_regex is not None:
        return "path_regex"
    return "path"


def _register(router: Router[CompiledRoute], route: RouteConfig, compiled: CompiledRoute) -> None:
    guard = compiled.guard
    if route.path_regex is not None:
        router.add_regex(route.path_regex, compiled, route.methods, route.hosts, guard=guard)
        return
    pattern = route.path
    if route.path_prefix is not None:
        pattern = route.path_prefix.rstrip("/") + "/*"
    assert pattern is not None
    router.add(pattern, compiled, route.methods, route.hosts, guard=guard)
