"""Middleware plugins loaded by dotted path (``tests.e2e.plugins_for_tests:NAME``) in e2e tests."""

from __future__ import annotations

from pydantic import BaseModel, Field

from meshgate.http.messages import Response
from meshgate.pipeline.context import Next, RequestContext


class BoomError(RuntimeError):
    pass


async def boom(ctx: RequestContext, call_next: Next) -> None:
    """Fails before the proxy runs when the path contains 'boom'."""
    if "boom" in ctx.request.path:
        raise BoomError("plugin exploded")
    await call_next()


async def boom_after(ctx: RequestContext, call_next: Next) -> None:
    """Fails after the upstream answered (the upstream response must be released)."""
    await call_next()
    raise BoomError("plugin exploded after the proxy")


class AddHeaderConfig(BaseModel):
    name: str = Field(min_length=1)
    value: str
    upstream_too: bool = False


async def add_header(ctx: RequestContext, call_next: Next, config: AddHeaderConfig) -> None:
    """Adds a configured header to the response (and the upstream request if asked)."""
    if config.upstream_too:
        ctx.request.headers.set(config.name, config.value)
    await call_next()
    if ctx.response is not None:
        ctx.response.headers.set(config.name, config.value)


async def deny(ctx: RequestContext, call_next: Next) -> None:
    """Short-circuits with 403 (an authorization check that never calls the upstream)."""
    ctx.response = Response.json(403, {"error": "forbidden", "path": ctx.request.path})


async def next_twice(ctx: RequestContext, call_next: Next) -> None:
    """A buggy middleware that calls the rest of the chain twice."""
    await call_next()
    await call_next()


async def bad_response_header(ctx: RequestContext, call_next: Next) -> None:
    """Tries to inject a header line through a header value."""
    await call_next()
    if ctx.response is not None:
        ctx.response.headers.set("x-injected", "a\r\nset-cookie: pwned=1")


async def bad_request_header(ctx: RequestContext, call_next: Next) -> None:
    """Tries to smuggle a second request line into the upstream request."""
    ctx.request.headers.set("x-injected", "a\r\n\r\nGET /admin HTTP/1.1")
    await call_next()
