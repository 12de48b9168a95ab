"""Built-in middleware of the engine: request id and response time."""

from __future__ import annotations

import time

from meshgate.pipeline.context import Next, RequestContext

REQUEST_ID_HEADER = "x-request-id"


async def request_id(ctx: RequestContext, call_next: Next) -> None:
    """Send ``x-request-id`` upstream and back to the client.

    The id itself is chosen before the chain runs (the client's own when it
    is valid, else a new random one), so error answers carry it too.
    """
    ctx.request.headers.set(REQUEST_ID_HEADER, ctx.request_id)
    await call_next()
    if ctx.response is not None:
        ctx.response.headers.set(REQUEST_ID_HEADER, ctx.request_id)


async def response_time(ctx: RequestContext, call_next: Next) -> None:
    """Add ``x-response-time: <ms>ms``: request start to response head."""
    await call_next()
    if ctx.response is not None:
        elapsed_ms = (time.monotonic() - ctx.start_time) * 1000.0
        ctx.response.headers.set("x-response-time", f"{elapsed_ms:.2f}ms")
