"""A middleware plugin (``tests.e2e.tls_plugins:client_identity``) reading ``request.tls``."""

from __future__ import annotations

from meshgate.pipeline.context import Next, RequestContext


async def client_identity(ctx: RequestContext, call_next: Next) -> None:
    """Answers with the client certificate's CN, URI SANs and the TLS version as headers."""
    await call_next()
    tls = ctx.request.tls
    if ctx.response is None:
        return
    if tls is None:
        ctx.response.headers.set("x-tls", "none")
        return
    ctx.response.headers.set("x-tls", f"{tls.version} {tls.alpn}")
    cert = tls.client_certificate
    if cert is not None:
        ctx.response.headers.set("x-client-cn", cert.common_name or "")
        uris = [v for k, v in cert.san if k == "URI"]
        ctx.response.headers.set("x-client-uri", ",".join(uris))
