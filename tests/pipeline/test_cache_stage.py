"""The cache stage without sockets: a fake clock, a fake upstream, stores that fail."""

from __future__ import annotations

import asyncio
import logging

import pytest

from meshgate.config.cache import RouteCacheConfig
from meshgate.config.loader import parse_config
from meshgate.core.cache import Entry
from meshgate.explain import run_explain
from meshgate.http.messages import Body, Response
from meshgate.io.cache_redis import CacheUnavailable
from meshgate.pipeline.cache import CacheStage, MemoryCacheStore, purge
from meshgate.pipeline.context import Next, RequestContext
from meshgate.pipeline.runtime import build_runtime
from meshgate.testing import FakeClock, make_context, run_middleware


def stage(
    store: object | None = None, clock: FakeClock | None = None, **config: object
) -> CacheStage:
    return CacheStage(
        RouteCacheConfig.model_validate(config),
        store or MemoryCacheStore(1 << 20),  # type: ignore[arg-type]
        "route@test",
        route_timeout_s=5,
        clock=clock or FakeClock(1_700_000_000.0),
    )


async def call(
    cache: CacheStage, path: str = "/a", response: Response | None = None, **kw: object
) -> RequestContext:
    ctx = make_context(path=path, **kw)  # type: ignore[arg-type]
    answer = response

    async def upstream(c: RequestContext) -> Response:
        if answer is not None:
            return answer
        n = c.state["upstream_calls"]
        return Response(200, {"content-type": "text/plain"}, f"{path} #{n}")

    return await run_middleware(cache, ctx, upstream=upstream)


def text_of(ctx: RequestContext) -> str:
    assert ctx.response is not None
    body = ctx.response.body
    assert body.is_complete()
    return body.take().decode()  # type: ignore[attr-defined]


async def test_fresh_until_the_ttl_on_a_fake_clock() -> None:
    clock = FakeClock(1_700_000_000.0)
    cache = stage(clock=clock, ttl_s=10)
    first = await call(cache)
    assert first.response is not None and first.response.headers["x-cache"] == "MISS"
    clock.advance(9.5)
    hit = await call(cache)
    assert hit.state["upstream_calls"] == 0
    assert hit.response is not None
    assert (hit.response.headers["x-cache"], hit.response.headers["age"]) == ("HIT", "9")
    assert text_of(hit) == "/a #1"
    clock.advance(0.5)
    again = await call(cache)
    assert again.state["upstream_calls"] == 1
    assert cache.stats.results == {
        "HIT": 1,
        "MISS": 2,
        "BYPASS": 0,
        "STALE": 0,
        "REVALIDATED": 0,
    }
    assert cache.stats.stored == 2


class BrokenStore(MemoryCacheStore):
    """A store whose reads (or writes) fail like an unreachable Redis."""

    def __init__(self, *, reads: bool = True) -> None:
        super().__init__(1 << 20)
        self.reads = reads

    async def get(self, key: str) -> Entry | None:
        if self.reads:
            raise CacheUnavailable("connection refused")
        return await super().get(key)

    async def put(self, key: str, entry: Entry, keep_s: float) -> bool:
        raise CacheUnavailable("connection refused")


async def test_a_failing_store_bypasses_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    cache = stage(BrokenStore())
    with caplog.at_level(logging.WARNING, "meshgate.cache"):
        for _ in range(3):
            ctx = await call(cache)
            assert ctx.response is not None
            assert (ctx.response.status, ctx.response.headers["x-cache"]) == (200, "BYPASS")
            assert ctx.state["upstream_calls"] == 1
    assert cache.stats.store_errors == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["cache store unavailable (connection refused); requests bypass the cache"]


async def test_a_failing_write_still_answers() -> None:
    cache = stage(BrokenStore(reads=False))
    for _ in range(2):
        ctx = await call(cache)
        assert ctx.response is not None
        assert (ctx.response.headers["x-cache"], text_of(ctx)) == ("MISS", "/a #1")
    assert (cache.stats.store_errors, cache.stats.stored) == (2, 0)


class Trickle(Body):
    """A response body arriving in parts, released one `step` at a time."""

    def __init__(self, parts: list[bytes]) -> None:
        super().__init__(None)
        self.parts = list(parts)
        self.gate = asyncio.Event()
        self.closed = False

    async def read(self) -> bytes:
        if not self.parts:
            return b""
        await self.gate.wait()
        self.gate.clear()
        return self.parts.pop(0)

    async def aclose(self) -> None:
        self.closed = True


async def test_a_streamed_body_is_stored_only_once_complete() -> None:
    cache = stage(max_object_bytes=10)
    body = Trickle([b"abc", b"def"])
    leader = await call(cache, response=Response(200, None, body))
    assert leader.response is not None
    out = leader.response.body
    waiter = asyncio.ensure_future(call(cache))
    await asyncio.sleep(0.01)
    assert not waiter.done()  # waiting for the leader's body
    assert cache.flights.waiting(cache.policy.key("GET", "gateway.test", "/a", "", [])) == 1
    body.gate.set()
    assert await out.read() == b"abc"
    body.gate.set()
    assert await out.read() == b"def"
    assert await out.read() == b""
    done = await waiter
    assert done.state["upstream_calls"] == 0
    assert done.response is not None and done.response.headers["x-cache"] == "HIT"
    assert text_of(done) == "abcdef"


@pytest.mark.parametrize("how", ["closed", "too-large"])
async def test_an_unfinished_or_oversized_body_releases_the_waiters(how: str) -> None:
    cache = stage(max_object_bytes=5)  # "abcdef" is larger, the waiter's "/a #1" is not
    body = Trickle([b"abc", b"def"])
    leader = await call(cache, response=Response(200, None, body))
    assert leader.response is not None
    waiter = asyncio.ensure_future(call(cache))
    await asyncio.sleep(0.01)
    if how == "closed":
        await leader.response.body.aclose()  # the client went away
        assert body.closed
    else:
        body.gate.set()
        assert await leader.response.body.read() == b"abc"
        body.gate.set()
        assert await leader.response.body.read() == b"def"  # passed on, not kept
    done = await asyncio.wait_for(waiter, 1)
    assert done.state["upstream_calls"] == 1  # asked the upstream itself
    assert done.response is not None and done.response.headers["x-cache"] == "MISS"
    assert cache.stats.stored == 1  # the waiter's own (small) answer


async def test_must_revalidate_forbids_stale_if_error() -> None:
    clock = FakeClock(1_700_000_000.0)
    cache = stage(clock=clock, stale_if_error_s=60)
    ok = Response(200, {"cache-control": "max-age=1, must-revalidate"}, "v1")
    await call(cache, response=ok)
    clock.advance(2)
    failed = await call(cache, response=Response(503, None, "down"))
    assert failed.response is not None
    assert (failed.response.status, failed.response.headers["x-cache"]) == (503, "MISS")
    ok2 = Response(200, {"cache-control": "max-age=1"}, "v2")
    await call(cache, path="/b", response=ok2)
    clock.advance(2)
    stale = await call(cache, path="/b", response=Response(503, None, "down"))
    assert stale.response is not None
    assert (stale.response.status, stale.response.headers["x-cache"]) == (200, "STALE")
    assert stale.response.headers["age"] == "2"


async def test_purge_by_key_is_exact_and_by_prefix_is_not() -> None:
    store = MemoryCacheStore(1 << 20)
    cache = stage(store)
    for path in ("/a", "/ab", "/a?x=1", "/a/b"):
        await call(cache, path=path)
    await call(cache, path="/a", headers={"accept": "x"}, method="HEAD")
    assert await purge(store, key="gateway.test/a") == 1
    assert await purge(store, key="gateway.test/a?x=1") == 1
    assert await purge(store, prefix="gateway.test/a") == 2
    assert len(store.lru) == 0


def test_explain_shows_the_key_or_the_bypass_reason() -> None:
    config, doc = parse_config(
        """\
upstreams:
  - name: a
    instances: [{host: 127.0.0.1, port: 9001}]
routes:
  - name: pages
    path: /pages/*
    upstream: a
    cache: {ttl_s: 60, key_query: [id], stale_if_error_s: 30}
""",
        "gw.yaml",
    )
    out = "\n".join(run_explain(config, doc, "GET", "http://example.com/pages/1?id=2&x=3", []))
    assert "chain: request_id -> response_time -> cache -> proxy" in out
    assert (
        "  cache: memory store; ttl 60s unless Cache-Control/Expires say otherwise; "
        "methods GET, HEAD; statuses 200, 301, 404; bodies up to 1048576 bytes; "
        "stale-while-revalidate 0s, stale-if-error 30s"
    ) in out
    assert (
        "  cache: key 'example.com/pages/1?id=2 | GET' (purge key 'example.com/pages/1?id=2')"
        in out
    )
    auth = run_explain(config, doc, "GET", "/pages/1", ["authorization: Bearer x"])
    assert (
        "  cache: BYPASS: the request carries Authorization (set cache.public for shared content)"
        in auth
    )


async def test_edits_outside_the_stage_do_not_reach_the_stored_entry() -> None:
    cache = stage()

    async def editor(ctx: RequestContext, call_next: Next) -> None:
        await call_next()
        assert ctx.response is not None
        ctx.response.headers.set("content-type", "edited")

    for _ in range(2):
        upstream = Response(200, {"content-type": "text/plain"}, "e")
        ctx = await run_middleware([editor, cache], make_context(path="/e"), upstream=upstream)
        assert ctx.response is not None and ctx.response.headers["content-type"] == "edited"
    assert ctx.response.headers["x-cache"] == "HIT"
    entry = await cache.store.get(cache.policy.key("GET", "gateway.test", "/e", "", []))
    assert entry is not None and ("content-type", "text/plain") in entry.headers  # type: ignore[union-attr]


async def test_stage_order_on_a_cached_route() -> None:
    config, doc = parse_config(
        """\
upstreams:
  - name: a
    instances: [{host: 127.0.0.1, port: 9001}]
routes:
  - name: all
    path: /*
    upstream: a
    rate_limits: [{limit: 10, window_s: 1}]
    fault: {header_trigger: true}
    request_headers: {set: {x-a: "1"}}
    response_headers: {set: {x-b: "2"}}
    rewrite: {strip_prefix: /x}
    cache: {}
  - name: plain
    path: /p
    upstream: a
    response_headers: {set: {x-b: "2"}}
""",
        "gw.yaml",
    )
    runtime = build_runtime(config, doc)
    try:
        cached, plain = runtime.routes
        assert cached.stage_names == (
            "rate_limit",
            "fault",
            "response_headers",
            "cache",
            "request_headers",
            "rewrite",
            "proxy",
        )
        assert plain.stage_names == ("response_headers", "proxy")
        assert cached.cache is not None and cached.cache.inner is not None
        assert runtime.cache_store is not None and runtime.cache_owned
    finally:
        await runtime.aclose()


async def test_a_reload_keeps_the_store_while_the_cache_section_is_unchanged() -> None:
    text = """\
upstreams:
  - name: a
    instances: [{host: 127.0.0.1, port: 9001}]
routes:
  - {path: /*, upstream: a, cache: {}}
"""
    first = build_runtime(parse_config(text, "gw.yaml")[0])
    same = build_runtime(parse_config(text, "gw.yaml")[0], previous=first)
    assert same.cache_store is first.cache_store
    assert (first.cache_owned, same.cache_owned) == (True, False)
    same.take_over(first)
    assert (first.cache_owned, same.cache_owned) == (False, True)
    await first.aclose()  # not its store any more
    resized = build_runtime(
        parse_config(text + "cache: {max_bytes: 1000}\n", "gw.yaml")[0], previous=same
    )
    assert resized.cache_store is not same.cache_store
    assert resized.cache_store.lru.max_bytes == 1000  # type: ignore[union-attr]
    none = build_runtime(
        parse_config(text.replace(", cache: {}", ""), "gw.yaml")[0], previous=resized
    )
    assert none.cache_store is None
    for runtime in (same, resized, none):
        await runtime.aclose()
    assert not (same.cache_owned or resized.cache_owned)
