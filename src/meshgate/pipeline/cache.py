"""The response cache stage of a route (docs/cache.md).

A thin shell over `meshgate.core.cache`: the policy decides what is cached,
under which key and for how long; this stage looks entries up in a store
(`MemoryCacheStore` per worker, or `meshgate.io.cache_redis.RedisCacheStore`
shared by a fleet), answers from them, and fills them from the upstream:

* fresh entry: answered here (``x-cache: HIT``), a client's conditional
  request with 304; nothing after this stage runs;
* within stale-while-revalidate: answered here (``STALE``) while one
  background request refreshes the entry;
* stale, or asked to revalidate (request ``no-cache``): the upstream gets a
  conditional request; its 304 refreshes the entry (``REVALIDATED``), its
  error is answered with the entry within stale-if-error (``STALE``);
* miss: one request per key goes upstream (``MISS``); concurrent misses for
  the key wait for it (at most ``max_waiters``, for ``lock_timeout_s``) and
  are answered from what it stored, or go upstream themselves when it stored
  nothing. The response streams to the client while it is buffered, up to
  ``max_object_bytes``, and is stored once complete.

Requests the policy does not cache, and every request while the store fails,
pass through (``BYPASS``). A store failure never fails a request: it is
counted and logged (at most one warning per 10 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from meshgate.config.cache import RouteCacheConfig
from meshgate.core.cache import (
    VARIANT_SEPARATOR,
    CacheError,
    Entry,
    LruBytes,
    SingleFlight,
    StoredResponse,
    VaryIndex,
    not_modified,
    revalidation_headers,
    stored_headers,
    vary_key,
)
from meshgate.http.messages import Body, BytesBody, Headers, Response
from meshgate.pipeline.compose import Handler
from meshgate.pipeline.context import Next, RequestContext
from meshgate.pipeline.ratelimit import WarningClock

log = logging.getLogger("meshgate.cache")

CACHE_HEADER = "x-cache"
HIT = "HIT"
MISS = "MISS"
BYPASS = "BYPASS"
STALE = "STALE"
REVALIDATED = "REVALIDATED"
RESULTS = (HIT, MISS, BYPASS, STALE, REVALIDATED)
# An entry with a validator (ETag, Last-Modified) is kept this long after it can
# no longer be served, so that a conditional request can still revalidate it
# (Redis expiry; the memory store keeps entries until they are evicted).
REVALIDATION_KEEP_S = 600.0
_CONDITIONAL = frozenset({"if-none-match", "if-modified-since"})
# The stored fields a 304 from the cache carries (RFC 9110 section 15.4.5).
_NOT_MODIFIED_FIELDS = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "last-modified", "vary"}
)
_BYPASS_REASONS = {
    "method": "the method is not cached",
    "authorization": "the request carries Authorization (set cache.public for shared content)",
    "no-store": "the request says Cache-Control: no-store",
}

# (the stored response, the variant it was stored as) or None: nothing stored
FillResult = tuple[StoredResponse, str] | None


class CacheUnavailable(Exception):
    """The cache store could not answer (Redis down, slow, or a bad reply)."""


class CacheStore(Protocol):
    """Where entries live; every method may raise `CacheUnavailable`."""

    async def get(self, key: str) -> Entry | None: ...

    async def put(self, key: str, entry: Entry, keep_s: float) -> bool: ...

    async def purge_prefix(self, prefix: str) -> int: ...

    async def aclose(self) -> None: ...


class MemoryCacheStore:
    """Entries in this worker's memory, least recently used evicted past ``max_bytes``."""

    __slots__ = ("lru",)

    def __init__(self, max_bytes: int) -> None:
        self.lru: LruBytes[Entry] = LruBytes(max_bytes)

    async def get(self, key: str) -> Entry | None:
        return self.lru.get(key)

    async def put(self, key: str, entry: Entry, keep_s: float) -> bool:
        """Store ``entry`` (``keep_s`` is not needed: expired entries are just stale)."""
        return self.lru.put(key, entry.size, entry)

    async def purge_prefix(self, prefix: str) -> int:
        return self.lru.purge_prefix(prefix)

    async def aclose(self) -> None:
        return None


async def purge(store: CacheStore, *, key: str | None = None, prefix: str | None = None) -> int:
    """Remove entries; how many. ``key``: the URL part of a cache key (``host/path``
    plus ``?query`` when it has one) - every method, key header and variant of it.
    ``prefix``: every entry whose key starts with it (``host/path`` prefix)."""
    if key is not None:
        return await store.purge_prefix(key + "\n")
    assert prefix is not None
    return await store.purge_prefix(prefix)


class CacheStats:
    """Counters of one route's cache (exported as meshgate_cache_* metrics)."""

    __slots__ = ("results", "store_errors", "stored")

    def __init__(self) -> None:
        self.results = dict.fromkeys(RESULTS, 0)  # answers by x-cache value
        self.stored = 0  # entries written (fills and refreshes)
        self.store_errors = 0  # store operations that failed (the request bypassed)


def _empty_body() -> Body:
    """The body of a 304: nothing, and no Content-Length written for it."""
    body = BytesBody()
    body.length = None
    return body


class _Filling(Body):
    """The upstream's response body, passed on chunk by chunk while a copy is kept
    (up to ``limit`` bytes); at its end the copy goes to ``complete``. A body cut
    short, closed early or grown past the limit calls ``abandon`` instead."""

    __slots__ = ("_abandon", "_body", "_complete", "_limit", "_parts", "_size")

    def __init__(
        self,
        body: Body,
        limit: int,
        complete: Callable[[bytes], Awaitable[None]],
        abandon: Callable[[], None],
    ) -> None:
        super().__init__(body.length)
        self._body = body
        self._limit = limit
        self._parts: list[bytes] | None = []
        self._size = 0
        self._complete = complete
        self._abandon: Callable[[], None] | None = abandon

    async def read(self) -> bytes:
        try:
            chunk = await self._body.read()
        except BaseException:
            self._give_up()
            raise
        parts = self._parts
        if chunk:
            if parts is not None:
                self._size += len(chunk)
                if self._size > self._limit:
                    self._give_up()  # too large to store: the client still gets it all
                else:
                    parts.append(chunk)
            return chunk
        if parts is not None:
            self._parts = None
            self._abandon = None
            await self._complete(b"".join(parts))
        return b""

    async def aclose(self) -> None:
        self._give_up()
        await self._body.aclose()

    def _give_up(self) -> None:
        self._parts = None
        abandon, self._abandon = self._abandon, None
        if abandon is not None:
            abandon()

    def __del__(self) -> None:  # dropped unread (client gone): release the waiters
        self._give_up()


class CacheStage:
    """The middleware caching one route's responses (see the module docstring)."""

    __slots__ = (
        "_fields",
        "_fills",
        "_local",
        "clock",
        "config",
        "flights",
        "inner",
        "policy",
        "stats",
        "store",
        "store_kind",
        "tag",
        "tasks",
        "timeout_s",
        "warnings",
    )

    def __init__(
        self,
        config: RouteCacheConfig,
        store: CacheStore,
        tag: str,
        *,
        route_timeout_s: float,
        warnings: WarningClock | None = None,
        clock: Callable[[], float] = time.time,
        store_kind: str = "memory",
    ) -> None:
        """``tag``: names the route config (entries stored by another are ignored).
        ``clock``: Unix time (entries may be shared by processes through Redis)."""
        self.config = config
        self.policy = config.policy()
        self._fields = self.policy.request_fields
        self.store = store
        # The memory store answers without awaiting (the common HIT path).
        self._local = store.lru if type(store) is MemoryCacheStore else None
        self.store_kind = store_kind
        self.tag = tag
        self.timeout_s = route_timeout_s  # deadline of a background refresh
        self.flights = SingleFlight(config.max_waiters)
        self._fills: dict[str, asyncio.Future[FillResult]] = {}
        self.stats = CacheStats()
        self.warnings = warnings or WarningClock()
        self.clock = clock
        self.tasks: set[asyncio.Task[None]] = set()  # background refreshes
        # The stages after this one (set by the route): what a background refresh runs.
        self.inner: Handler | None = None

    # --- the request path -----------------------------------------------------------
    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        req = ctx.request
        headers = req.headers.raw()
        # One pass for the fields the policy reads (usually none of them is sent).
        fields = [kv for kv in headers if kv[0] in self._fields]
        if self.policy.request_cacheable(req.method, fields) is not None:
            await self._pass(ctx, call_next, BYPASS)
            return
        key = self.policy.key(req.method, req.host, req.path, req.query_string, fields)
        try:
            entry = await self._lookup(key, headers)
        except CacheUnavailable as exc:
            self._store_failed(exc)
            await self._pass(ctx, call_next, BYPASS)
            return
        revalidate = self.policy.request_revalidates(fields)
        if entry is not None and not revalidate:
            now = self.clock()
            state = entry.freshness.state(now)
            if state == "fresh":
                self._serve(ctx, entry, HIT, now, fields)
                return
            if state == "stale-while-revalidate":
                self._serve(ctx, entry, STALE, now, fields)
                self._refresh_in_background(ctx, key, entry)
                return
        if req.method == "HEAD":  # only a GET fills an entry (HEAD is answered from it)
            await self._pass(ctx, call_next, MISS)
            return
        snapshot = req.headers.copy()  # the client's fields, before later stages edit them
        release = self._lead(key)
        if release is None and self.flights.join(key):
            shared = await self._wait(key)
            if shared is not None:
                stored, variant = shared
                if not stored.vary or vary_key(stored.vary, snapshot.raw()) == variant:
                    self._serve(ctx, stored, HIT, self.clock(), fields)
                    return
        await self._fill(
            ctx, call_next, key, entry, snapshot, release, may_serve_stale=not revalidate
        )

    async def _pass(self, ctx: RequestContext, call_next: Next, result: str) -> None:
        """Forward without the cache."""
        self.stats.results[result] += 1
        await call_next()
        if ctx.response is not None:
            ctx.response.headers.set(CACHE_HEADER, result)

    async def _lookup(self, key: str, headers: list[tuple[str, str]]) -> StoredResponse | None:
        """The entry answering a request with ``headers`` (its variant when the
        response varies); None when there is none stored by this route's config."""
        local = self._local
        found = local.get(key) if local is not None else await self.store.get(key)
        if isinstance(found, VaryIndex):
            if found.tag != self.tag:
                return None
            try:
                variant = vary_key(found.vary, headers)
            except CacheError:
                return None
            found = await self.store.get(key + VARIANT_SEPARATOR + variant)
        if not isinstance(found, StoredResponse) or found.tag != self.tag:
            return None
        return found

    def _serve(
        self,
        ctx: RequestContext,
        entry: StoredResponse,
        result: str,
        now: float,
        request_headers: list[tuple[str, str]],
    ) -> None:
        """Answer with ``entry`` (304 when the client's conditional request matches it;
        ``request_headers`` holds at least the request's conditional fields)."""
        if (
            request_headers
            and entry.status == 200
            and not_modified(request_headers, entry.etag, entry.last_modified)
        ):
            fields = [kv for kv in entry.headers if kv[0] in _NOT_MODIFIED_FIELDS]
            resp = Response(304, Headers.from_lower(fields), _empty_body())
        else:
            resp = Response(
                entry.status, Headers.from_lower(list(entry.headers)), BytesBody(entry.body)
            )
        resp.headers.add("age", str(entry.freshness.age(now)))
        resp.headers.add(CACHE_HEADER, result)
        ctx.response = resp
        self.stats.results[result] += 1

    # --- single flight --------------------------------------------------------------
    def _lead(self, key: str) -> Callable[[FillResult], None] | None:
        """Start the fill of ``key``: its release function; None when one is running."""
        if not self.flights.begin(key):
            return None
        future: asyncio.Future[FillResult] = asyncio.get_running_loop().create_future()
        self._fills[key] = future

        def release(result: FillResult) -> None:
            if self._fills.get(key) is future:
                del self._fills[key]
                self.flights.end(key)
            # (also called from a body's __del__, possibly after its loop closed)
            if not future.done() and not future.get_loop().is_closed():
                future.set_result(result)

        return release

    async def _wait(self, key: str) -> FillResult:
        """What the running fill of ``key`` stored (None: nothing, or it took too long)."""
        future = self._fills[key]
        try:
            async with asyncio.timeout(self.config.lock_timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            self._leave(key, future)
            return None
        except asyncio.CancelledError:
            self._leave(key, future)
            raise

    def _leave(self, key: str, future: asyncio.Future[FillResult]) -> None:
        if not future.done() and self._fills.get(key) is future:
            self.flights.leave(key)

    # --- filling --------------------------------------------------------------------
    async def _fill(
        self,
        ctx: RequestContext,
        call_next: Next,
        key: str,
        entry: StoredResponse | None,
        client: Headers,
        release: Callable[[FillResult], None] | None,
        *,
        may_serve_stale: bool,
    ) -> None:
        """Ask the upstream (conditionally when ``entry`` has validators), answer and
        store. ``client``: the request's fields as the client sent them."""
        done: Callable[[FillResult], None] = release or _ignore
        headers = ctx.request.headers
        if any(n in _CONDITIONAL for n, _ in headers.raw()):
            # the client's validators are answered here, from what is stored
            headers.set_fields([], _CONDITIONAL)
        if entry is not None:
            headers.set_fields(revalidation_headers(entry.etag, entry.last_modified))
        try:
            await call_next()
        except BaseException:
            done(None)
            raise
        resp = ctx.response
        if resp is None:
            done(None)
            return
        now = self.clock()
        status = resp.status
        if status >= 500:
            done(None)
            if entry is not None and may_serve_stale and entry.freshness.state(now) != "expired":
                await resp.body.aclose()
                self._serve(ctx, entry, STALE, now, client.raw())
                return
            self._mark(resp, MISS)
            return
        if status == 304 and entry is not None and (entry.etag or entry.last_modified):
            await resp.body.aclose()
            refreshed = entry.refreshed(resp.headers.raw(), self.policy, now, now)
            variant = vary_key(refreshed.vary, client.raw()) if refreshed.vary else ""
            stored = await self._store(key, variant, refreshed, now)
            done((refreshed, variant) if stored else None)
            self._serve(ctx, refreshed, REVALIDATED, now, client.raw())
            return
        authorized = "authorization" in client
        ok, _ = self.policy.storable(status, resp.headers.raw(), resp.body.length, authorized)
        self._mark(resp, MISS)
        if not ok:
            done(None)
            return
        fields = stored_headers(resp.headers.raw())
        vary = tuple(resp.headers.get_all("vary"))
        variant = vary_key(vary, client.raw()) if vary else ""
        freshness = self.policy.freshness(fields, now, now)

        async def complete(data: bytes) -> None:
            entry = StoredResponse(status, fields, data, freshness, self.tag, vary)
            stored = await self._store(key, variant, entry, self.clock())
            done((entry, variant) if stored else None)

        limit = self.policy.max_object_bytes
        body = resp.body
        if body.is_complete():  # all here already (small bodies): store before answering
            data = await body.read_all()
            resp.body = BytesBody(data)
            if len(data) <= limit:
                await complete(data)
            else:
                done(None)
        else:
            resp.body = _Filling(body, limit, complete, lambda: done(None))

    def _mark(self, resp: Response, result: str) -> None:
        resp.headers.set(CACHE_HEADER, result)
        self.stats.results[result] += 1

    async def _store(self, key: str, variant: str, entry: StoredResponse, now: float) -> bool:
        """Write ``entry``; False when it was not (already expired, too large, store down)."""
        keep_s = entry.freshness.servable_until() - now
        if entry.etag is not None or entry.last_modified is not None:
            keep_s += REVALIDATION_KEEP_S
        if keep_s <= 0:
            return False
        try:
            if entry.vary:
                await self.store.put(key, VaryIndex(entry.vary, self.tag), keep_s)
                stored = await self.store.put(key + VARIANT_SEPARATOR + variant, entry, keep_s)
            else:
                stored = await self.store.put(key, entry, keep_s)
        except CacheUnavailable as exc:
            self._store_failed(exc)
            return False
        if stored:
            self.stats.stored += 1
        return stored

    def _store_failed(self, exc: Exception) -> None:
        self.stats.store_errors += 1
        if self.warnings.due():
            log.warning("cache store unavailable (%s); requests bypass the cache", exc)

    # --- stale-while-revalidate -------------------------------------------------------
    def _refresh_in_background(self, ctx: RequestContext, key: str, entry: StoredResponse) -> None:
        """Revalidate ``entry`` with one request of our own (none when a fill of the
        key is already running)."""
        inner = self.inner
        if inner is None:
            return
        release = self._lead(key)
        if release is None:
            return
        req = ctx.request
        headers = Headers.from_lower([kv for kv in req.headers.raw() if kv[0] not in _CONDITIONAL])
        bctx = ctx.spin_off("GET", headers, BytesBody(), self.timeout_s)
        bctx.state.update(ctx.state)
        task = asyncio.get_running_loop().create_task(
            self._refresh(bctx, inner, key, entry, headers.copy(), release)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _refresh(
        self,
        ctx: RequestContext,
        inner: Handler,
        key: str,
        entry: StoredResponse,
        client: Headers,
        release: Callable[[FillResult], None],
    ) -> None:
        try:
            await self._fill(
                ctx, lambda: inner(ctx), key, entry, client, release, may_serve_stale=False
            )
            resp = ctx.response
            if resp is not None:
                while await resp.body.read():  # read to the end: that stores it
                    pass
        except asyncio.CancelledError:
            if ctx.response is not None:
                await ctx.response.body.aclose()
            raise
        except Exception:
            log.exception("background refresh of a cached response failed")
            if ctx.response is not None:
                await ctx.response.body.aclose()

    def close(self) -> None:
        """Cancel the background refreshes (shutdown or reload)."""
        for task in list(self.tasks):
            task.cancel()

    # --- explain ----------------------------------------------------------------------
    def describe(self) -> str:
        c = self.config
        text = (
            f"{self.store_kind} store; ttl {c.ttl_s:g}s unless Cache-Control/Expires say "
            f"otherwise; methods {', '.join(c.methods)}; statuses "
            f"{', '.join(map(str, c.statuses))}; bodies up to {c.max_object_bytes} bytes"
        )
        if c.stale_while_revalidate_s or c.stale_if_error_s:
            text += (
                f"; stale-while-revalidate {c.stale_while_revalidate_s:g}s, "
                f"stale-if-error {c.stale_if_error_s:g}s"
            )
        return text

    def explain(self, ctx: RequestContext) -> list[str]:
        """For `meshgate explain`: the policy, and this request's key or why it bypasses."""
        req = ctx.request
        headers = req.headers.raw()
        lines = [self.describe()]
        reason = self.policy.request_cacheable(req.method, headers)
        if reason is not None:
            lines.append(f"BYPASS: {_BYPASS_REASONS.get(reason, reason)}")
            return lines
        key = self.policy.key(req.method, req.host, req.path, req.query_string, headers)
        lines.append(f"key {key.replace(chr(10), ' | ')!r} (purge key {key.split(chr(10))[0]!r})")
        if self.policy.request_revalidates(headers):
            lines.append(
                "the request asks for revalidation (no-cache): a stored entry is "
                "revalidated with the upstream before use"
            )
        if req.method == "HEAD":
            lines.append("HEAD: answered from the GET entry when fresh, else forwarded as is")
        return lines


def _ignore(result: FillResult) -> None:
    return None
