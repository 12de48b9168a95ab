"""The compression stage: encodes the upstream's response for the client.

It sits inside the response cache (closer to the proxy), so a cache stores each
compressed variant under ``Vary: Accept-Encoding``, and outside the other
route stages, so it sees the client's own ``Accept-Encoding`` and the response
as ``response_headers`` left it. The decision is `CompressPolicy.decide`
(core/encoding.py); the streaming is `CompressedBody` (http/compression.py).
"""

from __future__ import annotations

import logging

from meshgate.config.compress import CompressConfig
from meshgate.core.encoding import vary_with_accept_encoding, weak_etag
from meshgate.http.compression import CompressedBody, CompressionFailed, HeadBody, compress_whole
from meshgate.http.messages import BytesBody, Headers
from meshgate.pipeline.context import Next, RequestContext

log = logging.getLogger("meshgate.compress")

# Fields describing the bytes as the upstream sent them: wrong once they are encoded.
_STALE = frozenset(
    {"content-length", "accept-ranges", "content-md5", "digest", "content-digest", "repr-digest"}
)


def _joined(headers: Headers, name: str) -> str | None:
    values = headers.get_all(name)
    if not values:
        return None
    return values[0] if len(values) == 1 else ", ".join(values)


class CompressStage:
    """A route's compression, built once from its config."""

    __slots__ = ("config", "policy")

    def __init__(self, config: CompressConfig) -> None:
        self.config = config
        self.policy = config.build()

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        # Read the client's fields first: later stages may edit the request.
        req = ctx.request
        head_only = req.method == "HEAD"
        accept_encoding = _joined(req.headers, "accept-encoding")
        request_cache_control = req.headers.get_all("cache-control")
        ranged = "range" in req.headers
        if_none_match = _joined(req.headers, "if-none-match")
        await call_next()
        resp = ctx.response
        if resp is None:
            return
        rh = resp.headers
        decision = self.policy.decide(
            status=resp.status,
            accept_encoding=accept_encoding,
            content_type=rh.get("content-type"),
            length=resp.body.length,
            content_encoding=_joined(rh, "content-encoding"),
            cache_control=rh.get_all("cache-control"),
            request_cache_control=request_cache_control,
            ranged=ranged,
            etag=rh.get("etag"),
            if_none_match=if_none_match,
        )
        if decision.vary:
            vary = vary_with_accept_encoding(rh.get_all("vary"))
            if vary is not None:
                rh.set("vary", vary)
        coding = decision.coding
        if coding is not None:
            body = resp.body
            if head_only:
                resp.body = HeadBody(body)
            elif body.is_complete():  # all here already: compress it whole, keep a length
                data = await body.read_all()
                try:
                    resp.body = BytesBody(await compress_whole(data, coding, self.level(coding)))
                except CompressionFailed as exc:
                    log.warning("%s; sending %s %s uncompressed", exc.detail, req.method, req.path)
                    resp.body = BytesBody(data)
                    return
            else:
                resp.body = CompressedBody(body, coding, self.level(coding))
            items = rh.raw()
            items[:] = [kv for kv in items if kv[0] not in _STALE]
            items.append(("content-encoding", coding))
        if decision.weaken_etag:
            etag = rh.get("etag")
            if etag is not None:
                rh.set("etag", weak_etag(etag))

    def level(self, coding: str) -> int:
        return self.config.level(coding)
