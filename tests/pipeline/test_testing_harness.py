"""meshgate.testing used the way a plugin author would: no sockets, no config files."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from pydantic import BaseModel

from meshgate.http.messages import Response
from meshgate.pipeline import builtins
from meshgate.pipeline.compose import NextCalledTwice
from meshgate.pipeline.context import Middleware, Next, RequestContext
from meshgate.testing import FakeClock, make_context, make_request, run_middleware
from tests.pipeline.sample_plugins import AddHeader, add_header

# --------------------------------------------------------------------------- plugins under test


class RequireKey(BaseModel):
    header: str = "x-api-key"
    keys: list[str]


async def require_key(ctx: RequestContext, call_next: Next, config: RequireKey) -> None:
    """A typical auth plugin: 401 unless a known key is sent."""
    if ctx.request.headers.get(config.header) not in config.keys:
        ctx.error(401, "missing or unknown api key", {"www-authenticate": "ApiKey"})
        return
    ctx.state["authenticated"] = True
    await call_next()


def make_rate_limiter(clock: Callable[[], float], per_second: int) -> Middleware:
    """A fixed-window limiter with an injected clock (so tests use FakeClock)."""
    window = {"start": clock(), "count": 0}

    async def limit(ctx: RequestContext, call_next: Next) -> None:
        now = clock()
        if now - window["start"] >= 1.0:
            window["start"], window["count"] = now, 0
        window["count"] += 1
        if window["count"] > per_second:
            ctx.error(429, "rate limited", {"retry-after": "1"})
            return
        await call_next()

    return limit


async def strip_cookie(ctx: RequestContext, call_next: Next) -> None:
    ctx.request.headers.remove("cookie")
    await call_next()


# --------------------------------------------------------------------------- make_request


def test_make_request_defaults() -> None:
    req = make_request()
    assert req.method == "GET"
    assert req.path == "/"
    assert req.host == "gateway.test"
    assert req.headers.get("host") == "gateway.test"
    assert req.client_ip == "127.0.0.1"
    assert req.http_version == "1.1"


async def test_make_request_fields() -> None:
    req = make_request(
        "post",
        "/items/1?a=1&b=two",
        headers=[("X-Thing", "1"), ("x-thing", "2")],
        body="héllo",
        client_ip="10.0.0.9",
        host="api.example.com",
    )
    assert req.method == "POST"
    assert req.path == "/items/1"
    assert req.query == {"a": "1", "b": "two"}
    assert req.headers.get_all("x-thing") == ["1", "2"]
    assert req.host == "api.example.com"
    assert req.client_ip == "10.0.0.9"
    assert await req.body.read_all() == "héllo".encode()
    assert req.body.length == len("héllo".encode())


def test_make_request_explicit_host_header_wins() -> None:
    req = make_request(headers={"Host": "from-header.test"}, host="ignored.test")
    assert req.host == "from-header.test"
    assert req.headers.get_all("host") == ["from-header.test"]


# --------------------------------------------------------------------------- make_context


def test_make_context_defaults() -> None:
    ctx = make_context()
    assert ctx.request.method == "GET"
    assert ctx.request.path == "/"
    assert ctx.route is None
    assert ctx.params == {}
    assert ctx.request_id == "test-request-id"
    assert ctx.response is None
    assert ctx.state == {}


def test_make_context_forwards_request_kwargs() -> None:
    ctx = make_context(
        "DELETE", "/users/7", params={"id": "7"}, request_id="rid", headers={"x-a": "b"}
    )
    assert ctx.request.method == "DELETE"
    assert ctx.params == {"id": "7"}
    assert ctx.request_id == "rid"
    assert ctx.request.headers.get("x-a") == "b"


def test_make_context_around_given_request() -> None:
    req = make_request("PUT", "/x")
    assert make_context(request=req).request is req


# --------------------------------------------------------------------------- run_middleware


async def test_default_upstream_answers_200_once() -> None:
    async def noop(ctx: RequestContext, call_next: Next) -> None:
        await call_next()

    ctx = await run_middleware(noop)
    assert ctx.response is not None
    assert ctx.response.status == 200
    assert ctx.state["upstream_calls"] == 1


async def test_plugin_with_config_model() -> None:
    ctx = await run_middleware(
        add_header, make_context(path="/x"), config=AddHeader(name="x-team", value="core")
    )
    assert ctx.response is not None
    assert ctx.response.headers["x-team"] == "core"
    assert ctx.state["upstream_calls"] == 1


async def test_auth_plugin_short_circuits() -> None:
    config = RequireKey(keys=["k1"])
    denied = await run_middleware(require_key, make_context(request_id="r-1"), config=config)
    assert denied.response is not None
    assert denied.response.status == 401
    assert denied.response.headers.get("www-authenticate") == "ApiKey"
    assert await denied.response.body.read_all() == (
        b'{"error":"missing or unknown api key","request_id":"r-1"}'
    )
    assert denied.state["upstream_calls"] == 0

    allowed = await run_middleware(
        require_key, make_context(headers={"x-api-key": "k1"}), config=config
    )
    assert allowed.response is not None
    assert allowed.response.status == 200
    assert allowed.state == {"authenticated": True, "upstream_calls": 1}


async def test_upstream_response_object() -> None:
    upstream = Response(201, {"x-up": "1"}, b"created")
    ctx = await run_middleware(strip_cookie, upstream=upstream)
    assert ctx.response is upstream


async def test_upstream_function_sees_edited_request() -> None:
    async def upstream(ctx: RequestContext) -> Response:
        return Response(200, body=ctx.request.headers.get("cookie") or "no cookie")

    ctx = await run_middleware(
        strip_cookie, make_context(headers={"cookie": "secret=1"}), upstream=upstream
    )
    assert ctx.response is not None
    assert await ctx.response.body.read_all() == b"no cookie"


async def test_list_of_middleware_runs_in_onion_order() -> None:
    log: list[str] = []

    def tracer(name: str) -> Middleware:
        async def mw(ctx: RequestContext, call_next: Next) -> None:
            log.append(f"{name}-in")
            await call_next()
            log.append(f"{name}-out")

        return mw

    async def upstream(ctx: RequestContext) -> Response:
        log.append("upstream")
        return Response(204)

    ctx = await run_middleware([tracer("a"), tracer("b")], upstream=upstream)
    assert log == ["a-in", "b-in", "upstream", "b-out", "a-out"]
    assert ctx.response is not None
    assert ctx.response.status == 204


async def test_builtin_request_id_with_harness() -> None:
    seen: list[str | None] = []

    async def upstream(ctx: RequestContext) -> Response:
        seen.append(ctx.request.headers.get("x-request-id"))
        return Response(200)

    ctx = await run_middleware(
        builtins.request_id, make_context(request_id="abc"), upstream=upstream
    )
    assert seen == ["abc"]
    assert ctx.response is not None
    assert ctx.response.headers.get("x-request-id") == "abc"


async def test_call_next_twice_surfaces() -> None:
    async def twice(ctx: RequestContext, call_next: Next) -> None:
        await call_next()
        await call_next()

    with pytest.raises(NextCalledTwice):
        await run_middleware(twice)


async def test_plugin_exception_surfaces() -> None:
    async def broken(ctx: RequestContext, call_next: Next) -> None:
        raise LookupError("bad plugin")

    with pytest.raises(LookupError, match="bad plugin"):
        await run_middleware(broken)


async def test_existing_upstream_call_count_is_kept() -> None:
    ctx = make_context()
    ctx.state["upstream_calls"] = 5

    async def noop(c: RequestContext, call_next: Next) -> None:
        await call_next()

    await run_middleware(noop, ctx)
    assert ctx.state["upstream_calls"] == 6


async def test_response_time_builtin_with_harness_is_small() -> None:
    ctx = await run_middleware(builtins.response_time, make_context())
    assert ctx.response is not None
    value = ctx.response.headers.get("x-response-time") or ""
    match = re.fullmatch(r"(\d+\.\d{2})ms", value)
    assert match is not None, value
    assert float(match.group(1)) < 1000.0, value


# --------------------------------------------------------------------------- FakeClock


def test_fake_clock() -> None:
    clock = FakeClock()
    assert clock() == 1000.0
    clock.advance(0.5)
    assert clock() == 1000.5
    clock.advance(0)
    assert clock() == 1000.5
    assert FakeClock(start=3.0)() == 3.0
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    assert clock() == 1000.5


async def test_rate_limiter_with_fake_clock() -> None:
    clock = FakeClock()
    limiter = make_rate_limiter(clock, per_second=2)

    async def status() -> int:
        ctx = await run_middleware(limiter)
        assert ctx.response is not None
        return ctx.response.status

    assert [await status() for _ in range(3)] == [200, 200, 429]
    clock.advance(0.75)
    assert await status() == 429
    clock.advance(0.25)
    assert [await status() for _ in range(3)] == [200, 200, 429]
