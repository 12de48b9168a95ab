"""Tests of the onion composition of middleware (meshgate.pipeline.compose)."""

from __future__ import annotations

import asyncio

import pytest

from meshgate.http.messages import BytesBody, Headers, Request, Response
from meshgate.pipeline.compose import NextCalledTwice, compose, terminal
from meshgate.pipeline.context import Middleware, Next, RequestContext


def make_ctx() -> RequestContext:
    request = Request("GET", "/", Headers({"host": "example.com"}), BytesBody())
    return RequestContext(request, None, {}, "rid-1")


def logging_mw(name: str, log: list[str]) -> Middleware:
    async def mw(ctx: RequestContext, call_next: Next) -> None:
        log.append(f"{name}-in")
        await call_next()
        log.append(f"{name}-out")

    mw.__name__ = name
    return mw


async def test_onion_order() -> None:
    log: list[str] = []
    handler = compose([logging_mw(n, log) for n in "abc"])
    await handler(make_ctx())
    assert log == ["a-in", "b-in", "c-in", "c-out", "b-out", "a-out"]


async def test_handler_is_reusable_and_independent_per_run() -> None:
    log: list[str] = []
    handler = compose([logging_mw(n, log) for n in "ab"])
    await handler(make_ctx())
    await handler(make_ctx())
    assert log == ["a-in", "b-in", "b-out", "a-out"] * 2


async def test_concurrent_runs_do_not_share_state() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(ctx: RequestContext, call_next: Next) -> None:
        started.set()
        await release.wait()
        await call_next()

    async def respond(ctx: RequestContext, call_next: Next) -> None:
        ctx.response = Response(200, body=ctx.request_id)
        await call_next()

    handler = compose([slow, respond])
    c1, c2 = make_ctx(), make_ctx()
    c2.request_id = "rid-2"
    t1 = asyncio.create_task(handler(c1))
    await started.wait()
    t2 = asyncio.create_task(handler(c2))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(t1, t2)
    assert c1.response is not None and c2.response is not None
    assert await c1.response.body.read() == b"rid-1"
    assert await c2.response.body.read() == b"rid-2"


async def test_short_circuit_skips_the_rest() -> None:
    log: list[str] = []

    async def gate(ctx: RequestContext, call_next: Next) -> None:
        log.append("gate")
        ctx.error(403, "forbidden")

    handler = compose([logging_mw("a", log), gate, logging_mw("never", log)])
    ctx = make_ctx()
    await handler(ctx)
    assert log == ["a-in", "gate", "a-out"]
    assert ctx.response is not None
    assert ctx.response.status == 403


async def test_after_phase_sees_inner_response() -> None:
    async def outer(ctx: RequestContext, call_next: Next) -> None:
        await call_next()
        assert ctx.response is not None
        ctx.response.headers.set("x-outer", "1")

    async def inner(ctx: RequestContext, call_next: Next) -> None:
        ctx.response = Response(201)
        await call_next()

    ctx = make_ctx()
    await compose([outer, inner])(ctx)
    assert ctx.response is not None
    assert ctx.response.status == 201
    assert ctx.response.headers.get("x-outer") == "1"


async def test_call_next_past_the_end_is_a_no_op() -> None:
    log: list[str] = []
    handler = compose([logging_mw("only", log)])
    await handler(make_ctx())
    assert log == ["only-in", "only-out"]


async def test_empty_chain() -> None:
    ctx = make_ctx()
    await compose([])(ctx)
    assert ctx.response is None


@pytest.mark.parametrize("position", [0, 1, 2])
async def test_call_next_twice_raises(position: int) -> None:
    log: list[str] = []

    async def twice(ctx: RequestContext, call_next: Next) -> None:
        await call_next()
        await call_next()

    chain = [logging_mw("a", log), logging_mw("b", log)]
    chain.insert(position, twice)
    with pytest.raises(NextCalledTwice, match="twice"):
        await compose(chain)(make_ctx())


async def test_call_next_twice_after_inner_short_circuit_raises() -> None:
    async def twice(ctx: RequestContext, call_next: Next) -> None:
        await call_next()
        await call_next()

    async def stop(ctx: RequestContext, call_next: Next) -> None:
        ctx.error(401, "no")

    with pytest.raises(NextCalledTwice):
        await compose([twice, stop])(make_ctx())


async def test_call_next_twice_even_when_first_raised() -> None:
    calls = 0

    async def retrying(ctx: RequestContext, call_next: Next) -> None:
        try:
            await call_next()
        except RuntimeError:
            await call_next()

    async def failing(ctx: RequestContext, call_next: Next) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("upstream exploded")

    with pytest.raises(NextCalledTwice):
        await compose([retrying, failing])(make_ctx())
    assert calls == 1


async def test_exception_propagates_through_outer_middleware() -> None:
    log: list[str] = []

    async def boom(ctx: RequestContext, call_next: Next) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await compose([logging_mw("a", log), boom])(make_ctx())
    # a's after-phase is skipped because it does not catch
    assert log == ["a-in"]


async def test_outer_middleware_can_catch_inner_exception() -> None:
    async def guard(ctx: RequestContext, call_next: Next) -> None:
        try:
            await call_next()
        except KeyError:
            ctx.error(500, "caught")

    async def boom(ctx: RequestContext, call_next: Next) -> None:
        raise KeyError("x")

    ctx = make_ctx()
    await compose([guard, boom])(ctx)
    assert ctx.response is not None
    assert ctx.response.status == 500


async def test_compose_copies_the_sequence() -> None:
    log: list[str] = []
    chain = [logging_mw("a", log)]
    handler = compose(chain)
    chain.append(logging_mw("late", log))
    await handler(make_ctx())
    assert log == ["a-in", "a-out"]


async def test_terminal_stage_runs_alone_and_may_not_call_next() -> None:
    async def answer(ctx: RequestContext, call_next: Next) -> None:
        ctx.response = Response(204, Headers(), BytesBody())

    ctx = make_ctx()
    await terminal(answer)(ctx)
    assert ctx.response is not None and ctx.response.status == 204

    async def misbehaves(ctx: RequestContext, call_next: Next) -> None:
        await call_next()

    with pytest.raises(RuntimeError, match="terminal stage called call_next"):
        await terminal(misbehaves)(make_ctx())
