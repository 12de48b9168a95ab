"""Test helpers for middleware authors: run one middleware on a fake request, no sockets.

Example (pytest with pytest-asyncio)::

    from meshgate.testing import make_context, run_middleware

    async def test_adds_header():
        ctx = await run_middleware(add_header, make_context(path="/x"),
                                   config=AddHeader(name="x-team", value="core"))
        assert ctx.response.headers["x-team"] == "core"
        assert ctx.state["upstream_calls"] == 1
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from meshgate.http.messages import BytesBody, Headers, Request, Response
from meshgate.pipeline.compose import compose
from meshgate.pipeline.context import Middleware, RequestContext

Upstream = Response | Callable[[RequestContext], Awaitable[Response]]


class FakeClock:
    """A clock you move by hand: ``clock()`` returns the current time in seconds."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.now += seconds


def make_request(
    method: str = "GET",
    path: str = "/",
    *,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes | str = b"",
    client_ip: str = "127.0.0.1",
    host: str = "gateway.test",
    http_version: str = "1.1",
) -> Request:
    """A request as the server would hand it to the pipeline."""
    hdrs = Headers(headers)
    if "host" not in hdrs:
        hdrs.add("host", host)
    data = body.encode() if isinstance(body, str) else body
    return Request(
        method.upper(), path, hdrs, BytesBody(data), client_ip=client_ip, http_version=http_version
    )


def make_context(
    method: str = "GET",
    path: str = "/",
    *,
    request: Request | None = None,
    params: dict[str, str] | None = None,
    request_id: str = "test-request-id",
    start_time: float | None = None,
    **request_kwargs: Any,
) -> RequestContext:
    """A context around ``request`` (or a new `make_request`), with no route."""
    req = request or make_request(method, path, **request_kwargs)
    return RequestContext(req, None, params or {}, request_id, start_time=start_time)


async def run_middleware(
    middleware: Callable[..., Awaitable[None]] | list[Middleware],
    ctx: RequestContext | None = None,
    *,
    upstream: Upstream | None = None,
    config: BaseModel | None = None,
) -> RequestContext:
    """Run a middleware (or a list of them) in front of a fake upstream.

    ``upstream`` is the response the "proxy" returns (default: 200, empty
    body), or an async function computing it from the context. The number of
    times the upstream was reached is left in ``ctx.state["upstream_calls"]``.
    """
    ctx = ctx or make_context()
    if isinstance(middleware, list):
        chain = list(middleware)
    elif config is not None:
        chain = [functools.partial(middleware, config=config)]
    else:
        chain = [middleware]

    async def fake_upstream(c: RequestContext, _next: Callable[[], Awaitable[None]]) -> None:
        c.state["upstream_calls"] = c.state.get("upstream_calls", 0) + 1
        if upstream is None:
            c.response = Response(200)
        elif isinstance(upstream, Response):
            c.response = upstream
        else:
            c.response = await upstream(c)

    ctx.state.setdefault("upstream_calls", 0)
    await compose([*chain, fake_upstream])(ctx)
    return ctx


__all__ = ["FakeClock", "make_context", "make_request", "run_middleware"]
