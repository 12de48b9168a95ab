"""Built-in middleware of the engine: request id and response time.

At the head of a route's chain (nothing before them) they do not run as layers:
`GatewayApp` does the same work around the chain (see `CompiledRoute`)."""

from __future__ import annotations

import time
from typing import Final

from meshgate.pipeline.context import Next, RequestContext

REQUEST_ID_HEADER: Final = "x-request-id"
RESPONSE_TIME_HEADER: Final = "x-response-time"


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
        ctx.response.headers.set(RESPONSE_TIME_HEADER, f"{elapsed_ms:.2f}ms")
