"""The compression stage in front of a fake upstream (meshgate.pipeline.compress)."""

from __future__ import annotations

import gzip
import logging
import zlib

import pytest

from meshgate.config.compress import CompressConfig
from meshgate.http import compression
from meshgate.http.compression import CompressedBody, HeadBody
from meshgate.http.messages import BytesBody, Headers, Response
from meshgate.http.stream import StreamBody
from meshgate.pipeline.compress import CompressStage
from meshgate.pipeline.context import Next, RequestContext
from meshgate.testing import make_context, run_middleware

DATA = b'{"items": [' + b'{"name": "x", "value": 12345}, ' * 200 + b"{}]}"
STAGE = CompressStage(CompressConfig(encodings=["gzip"]))


def upstream_response(body: BytesBody | StreamBody | None = None) -> Response:
    return Response(
        200,
        Headers(
            [
                ("content-type", "application/json"),
                ("content-length", str(len(DATA))),
                ("etag", '"abc"'),
                ("accept-ranges", "bytes"),
            ]
        ),
        body if body is not None else BytesBody(DATA),
    )


def context(method: str = "GET") -> RequestContext:
    return make_context(method, "/items", headers={"accept-encoding": "gzip"})


async def test_a_body_already_in_memory_is_compressed_whole_with_a_length() -> None:
    ctx = await run_middleware(STAGE, context(), upstream=upstream_response())
    resp = ctx.response
    assert resp is not None
    assert isinstance(resp.body, BytesBody)
    packed = await resp.body.read_all()
    assert resp.body.length == len(packed) < len(DATA) / 4
    assert gzip.decompress(packed) == DATA
    assert resp.headers.get("content-encoding") == "gzip"
    assert resp.headers.get("vary") == "Accept-Encoding"
    assert resp.headers.get("etag") == 'W/"abc"'
    assert "content-length" not in resp.headers
    assert "accept-ranges" not in resp.headers


async def test_a_body_still_arriving_is_streamed() -> None:
    source = StreamBody(None)
    source.feed(DATA[:1000])
    ctx = await run_middleware(STAGE, context(), upstream=upstream_response(source))
    resp = ctx.response
    assert resp is not None
    assert isinstance(resp.body, CompressedBody)
    assert resp.body.length is None
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert d.decompress(await resp.body.read()) == DATA[:1000]
    source.feed(DATA[1000:])
    source.feed_eof()
    rest = b""
    while part := await resp.body.read():
        rest += d.decompress(part)
    assert rest == DATA[1000:]
    assert d.eof


async def test_head_keeps_no_body_and_no_length() -> None:
    source = StreamBody(len(DATA))  # as the upstream answers HEAD: a length, no bytes
    source.feed_eof()
    ctx = await run_middleware(STAGE, context("HEAD"), upstream=upstream_response(source))
    resp = ctx.response
    assert resp is not None
    assert isinstance(resp.body, HeadBody)
    assert resp.headers.get("content-encoding") == "gzip"
    assert await resp.body.read() == b""


class _Broken:
    def __init__(self, level: int) -> None:
        pass

    def compress(self, data: bytes | memoryview) -> bytes:
        raise zlib.error("boom")

    def finish(self) -> bytes:
        return b""


async def test_failure_on_a_whole_body_sends_it_uncompressed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(compression.ENCODERS, "gzip", _Broken)
    with caplog.at_level(logging.WARNING, "meshgate.compress"):
        ctx = await run_middleware(STAGE, context(), upstream=upstream_response())
    resp = ctx.response
    assert resp is not None
    assert await resp.body.read_all() == DATA
    assert "content-encoding" not in resp.headers
    assert resp.headers.get("etag") == '"abc"'  # still the tag of these bytes
    assert resp.headers.get("vary") == "Accept-Encoding"
    assert "gzip compression failed: boom; sending GET /items uncompressed" in caplog.text


async def test_client_fields_are_read_before_later_stages_change_them() -> None:
    async def strip(ctx: RequestContext, call_next: Next) -> None:
        ctx.request.headers.remove("accept-encoding")
        await call_next()

    ctx = await run_middleware([STAGE, strip], context(), upstream=upstream_response())
    assert ctx.response is not None
    assert ctx.response.headers.get("content-encoding") == "gzip"


async def test_no_response_is_left_alone() -> None:
    async def answer_nothing(ctx: RequestContext, call_next: Next) -> None:
        return None

    ctx = await run_middleware([STAGE, answer_nothing], context())
    assert ctx.response is None
