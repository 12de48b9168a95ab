"""Stand-in auth middleware for the rate-limit e2e tests (``tests.e2e.ratelimit_plugins:NAME``).

They identify the caller from plain request headers, as a real API-key or JWT middleware
would after verifying them, so that the ``consumer``, ``jwt:CLAIM`` and ``source`` key
parts have something to read.
"""

from __future__ import annotations

from meshgate.pipeline.context import Next, RequestContext


async def fake_auth(ctx: RequestContext, call_next: Next) -> None:
    """``x-api-key`` -> ``ctx.state["consumer"]``; ``x-jwt-sub`` / ``x-jwt-tier`` -> the
    claims ``ctx.state["jwt"]``; ``x-source`` -> ``ctx.state["source_service"]``."""
    headers = ctx.request.headers
    api_key = headers.get("x-api-key")
    if api_key:
        ctx.state["consumer"] = f"consumer-of-{api_key}"
    claims: dict[str, object] = {}
    if headers.get("x-jwt-sub"):
        claims["sub"] = headers.get("x-jwt-sub")
    if headers.get("x-jwt-tier"):
        claims["tier"] = int(headers.get("x-jwt-tier") or 0)  # a non-string claim
    if claims:
        ctx.state["jwt"] = claims
    source = headers.get("x-source")
    if source:
        ctx.state["source_service"] = source
    await call_next()
