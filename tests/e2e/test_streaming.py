"""Streaming bodies (bounded memory), full duplex, Expect: 100-continue, HEAD, 204/304."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os

import httpx
import psutil
import pytest

from tests.e2e.conftest import (
    BLOCK,
    RawConn,
    assert_json_error,
    curl,
    eventually,
    make_config,
    parse_curl_i,
    raw_exchange,
    url,
)

# Bytes moved each way by the bounded-memory tests (1 GiB takes ~1-2 s per
# direction here); MESHGATE_E2E_STREAM_MIB overrides it on slow machines.
STREAM_BYTES = int(os.environ.get("MESHGATE_E2E_STREAM_MIB", "1024")) * 2**20
RSS_GROWTH_LIMIT = 64 * 2**20


async def blocks(total: int):
    left = total
    while left > 0:
        part = BLOCK if left >= len(BLOCK) else BLOCK[:left]
        left -= len(part)
        yield part


class RssSampler:
    """Peak RSS of a process (and its children) sampled in the background."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def rss(self) -> int:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.rss())
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> RssSampler:
        self.peak = self.rss()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, self.rss())


@pytest.fixture
async def gateway_subprocess(gateway_process, upstream):
    cfg = make_config(upstream.port, max_request_body_bytes=None, listener={"body_timeout_s": 5})
    gp = await gateway_process(cfg, workers=1)
    # The memory bounds below hold with the fixed malloc thresholds (meshgate.io.allocator).
    assert "malloc thresholds fixed: mmap 1 MiB, trim 8 MiB" in gp.log()
    # Warm up (imports, first connection, buffers) before the baseline.
    async with httpx.AsyncClient() as client:
        r = await client.post(url(gp.port, "/echo-discard"), content=b"w" * 1_000_000)
        assert r.json() == {"received": 1_000_000}
    return gp


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_large_upload_streams_with_bounded_memory(gateway_subprocess, upstream, framing):
    gp = gateway_subprocess
    headers = {"content-length": str(STREAM_BYTES)} if framing == "content-length" else {}
    sampler = RssSampler(gp.proc.pid)
    baseline = sampler.rss()
    async with sampler, httpx.AsyncClient(timeout=120) as client:
        r = await client.post(
            url(gp.port, "/echo-discard"), content=blocks(STREAM_BYTES), headers=headers
        )
    assert r.status_code == 200
    assert r.json() == {"received": STREAM_BYTES}
    rec = upstream.requests[-1]
    if framing == "chunked":
        assert rec.header("transfer-encoding") == "chunked"
    else:
        assert rec.header("content-length") == str(STREAM_BYTES)
    growth = sampler.peak - baseline
    assert growth < RSS_GROWTH_LIMIT, f"gateway RSS grew by {growth / 2**20:.1f} MiB"


@pytest.mark.parametrize("mode", ["chunked", "length"])
async def test_large_download_streams_with_bounded_memory(gateway_subprocess, upstream, mode):
    gp = gateway_subprocess
    sampler = RssSampler(gp.proc.pid)
    baseline = sampler.rss()
    received = 0
    async with sampler, httpx.AsyncClient(timeout=120) as client:
        target = url(gp.port, f"/big?n={STREAM_BYTES}&mode={mode}")
        async with client.stream("GET", target) as r:
            assert r.status_code == 200
            if mode == "length":
                assert r.headers["content-length"] == str(STREAM_BYTES)
            else:
                assert r.headers["transfer-encoding"] == "chunked"
            first = b""
            async for chunk in r.aiter_raw():
                if not first:
                    first = chunk[:16]
                received += len(chunk)
    assert received == STREAM_BYTES
    assert first == BLOCK[:16]
    growth = sampler.peak - baseline
    assert growth < RSS_GROWTH_LIMIT, f"gateway RSS grew by {growth / 2**20:.1f} MiB"


async def test_full_duplex_echo_streams_both_ways(gateway_factory, upstream):
    """Send and receive at once through /echo-stream; bytes come back identical."""
    gw = await gateway_factory(max_request_body_bytes=None)
    total = 32 * 2**20
    conn = await RawConn.open(gw.port)
    sent_hash = hashlib.sha256()
    got_hash = hashlib.sha256()

    async def writer() -> None:
        await conn.send(
            b"POST /echo-stream HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        i = 0
        async for part in blocks(total):
            data = part[i % 7 :] + part[: i % 7]  # vary the content between chunks
            sent_hash.update(data)
            conn.writer.write(b"%x\r\n%b\r\n" % (len(data), data))
            await conn.writer.drain()
            i += 1
        await conn.send(b"0\r\n\r\n")

    async def reader() -> int:
        head = await conn.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"transfer-encoding: chunked" in head.lower()
        n = 0
        while True:
            size = int((await conn.reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await conn.reader.readuntil(b"\r\n")
                return n
            data = await conn.reader.readexactly(size)
            await conn.reader.readexactly(2)
            got_hash.update(data)
            n += size

    try:
        async with asyncio.timeout(60):
            _, received = await asyncio.gather(writer(), reader())
    finally:
        await conn.close()
    assert received == total
    assert got_hash.digest() == sent_hash.digest()


async def test_response_streams_before_request_body_is_complete(gateway, upstream):
    """The first echoed chunk arrives while the request body is still open."""
    conn = await RawConn.open(gateway.port)
    try:
        await conn.send(
            b"POST /echo-stream HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nfirst\r\n"
        )
        head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await asyncio.wait_for(conn.reader.readuntil(b"first\r\n"), 3) == b"5\r\nfirst\r\n"
        await conn.send(b"6\r\nsecond\r\n0\r\n\r\n")
        assert await asyncio.wait_for(conn.reader.readuntil(b"0\r\n\r\n"), 3) == (
            b"6\r\nsecond\r\n0\r\n\r\n"
        )
    finally:
        await conn.close()
    assert upstream.requests[0].body == b"firstsecond"


async def test_httpx_chunked_upload_and_echo(gateway, upstream):
    async def gen():
        for i in range(50):
            yield b"%04d" % i * 100

    async with httpx.AsyncClient() as client:
        r = await client.post(url(gateway, "/echo-stream"), content=gen())
    expected = b"".join(b"%04d" % i * 100 for i in range(50))
    assert r.status_code == 200
    assert r.content == expected
    assert upstream.requests[0].body == expected


async def test_close_delimited_upstream_body_is_rechunked(gateway, upstream):
    conn = await RawConn.open(gateway.port)
    try:
        await conn.send(b"GET /close-delimited?parts=4 HTTP/1.1\r\nHost: h\r\n\r\n")
        resp = await conn.read_response()
        assert resp.status == 200
        assert resp.header("transfer-encoding") == "chunked"
        assert resp.body == b"part0;part1;part2;part3;"
        # the client connection stays usable
        await conn.send(b"GET /headers HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await conn.read_response()).status == 200
    finally:
        await conn.close()


async def test_interim_upstream_response_is_not_forwarded(gateway, upstream):
    responses, _ = await raw_exchange(
        gateway.port, b"GET /interim HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    assert [r.status for r in responses] == [200]
    assert responses[0].body == b"final"
    assert responses[0].header("x-final") == "1"
    assert responses[0].header("link") is None


# --- Expect: 100-continue -------------------------------------------------------


async def test_expect_100_continue(gateway, upstream):
    conn = await RawConn.open(gateway.port)
    try:
        await conn.send(
            b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await conn.read_response(wait_s=3)
        assert (interim.version, interim.status) == ("HTTP/1.1", 100)
        assert interim.headers == []
        await conn.send(b"hello world")
        final = await conn.read_response()
        assert final.status == 200
        assert final.body == b"hello world"
        # and the connection is reusable afterwards
        await conn.send(b"GET /headers HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await conn.read_response()).status == 200
    finally:
        await conn.close()
    rec = upstream.requests[0]
    assert rec.body == b"hello world"
    assert rec.header("expect") is None


async def test_expect_100_continue_with_chunked_body(gateway, upstream):
    conn = await RawConn.open(gateway.port)
    try:
        await conn.send(
            b"PUT /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert (await conn.read_response(wait_s=3)).status == 100
        await conn.send(b"3\r\nabc\r\n0\r\n\r\n")
        final = await conn.read_response()
        assert (final.status, final.body) == (200, b"abc")
    finally:
        await conn.close()


async def test_expect_100_continue_over_limit_gets_413_without_100(gateway, upstream):
    conn = await RawConn.open(gateway.port)
    try:
        await conn.send(
            b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        resp = await conn.read_response(wait_s=3)
        assert_json_error(resp, 413)
        assert await conn.is_closed()
    finally:
        await conn.close()
    assert upstream.requests == []
    assert upstream.connections == 0


async def test_expect_100_continue_answered_by_middleware_gets_no_100(gateway_factory, upstream):
    gw = await gateway_factory(
        routes=[
            {
                "path": "/admin/*",
                "upstream": "main",
                "middleware": ["tests.e2e.plugins_for_tests:deny"],
            },
            {"path": "/*", "upstream": "main"},
        ]
    )
    conn = await RawConn.open(gw.port)
    try:
        await conn.send(
            b"POST /admin/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        resp = await conn.read_response(wait_s=3)
        assert resp.status == 403  # final answer straight away, no 100 Continue
        assert resp.header("connection") == "close"  # the unsent body is never read
        assert await conn.is_closed()
    finally:
        await conn.close()
    assert upstream.connections == 0


# --- HEAD, 204, 304 ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["length", "chunked"])
async def test_head_returns_headers_without_body_and_connection_stays_usable(
    gateway, upstream, mode
):
    conn = await RawConn.open(gateway.port)
    try:
        await conn.send(b"HEAD /big?n=12345&mode=%s HTTP/1.1\r\nHost: h\r\n\r\n" % mode.encode())
        head = await conn.read_response(head=True)
        assert head.status == 200
        assert head.header("content-type") == "application/octet-stream"
        if mode == "length":
            assert head.header("content-length") == "12345"
        # No body bytes: the next response starts right after the head.
        await conn.send(b"GET /big?n=10 HTTP/1.1\r\nHost: h\r\n\r\n")
        nxt = await conn.read_response()
        assert (nxt.status, nxt.body) == (200, b"0123456789")
    finally:
        await conn.close()
    assert [r.method for r in upstream.requests] == ["HEAD", "GET"]
    assert upstream.connections == 1  # the upstream connection survived the HEAD too


async def test_head_with_curl(gateway, upstream):
    code, out, err = await curl("-I", url(gateway, "/big?n=777"))
    assert code == 0, err
    status, headers, body = parse_curl_i(out)
    assert status == 200
    assert headers["content-length"] == ["777"]
    assert body == ""
    assert upstream.requests[0].method == "HEAD"


@pytest.mark.parametrize("status", [204, 304])
async def test_204_and_304_pass_through_without_body(gateway, upstream, status):
    conn = await RawConn.open(gateway.port)
    try:
        await conn.send(b"GET /status/%d HTTP/1.1\r\nHost: h\r\n\r\n" % status)
        resp = await conn.read_response()
        assert resp.status == status
        assert resp.header("etag") == '"v1"'
        assert resp.header("transfer-encoding") is None
        assert resp.header("content-length") is None
        await conn.send(b"GET /big?n=3 HTTP/1.1\r\nHost: h\r\n\r\n")
        nxt = await conn.read_response()
        assert (nxt.status, nxt.body) == (200, b"012")
    finally:
        await conn.close()


async def test_back_pressure_pause_is_not_a_body_timeout(gateway_factory, upstream):
    """The upstream stops reading for longer than body_timeout_s: the gateway pauses the
    client instead of failing the upload with 408."""
    gw = await gateway_factory(max_request_body_bytes=None, listener={"body_timeout_s": 0.5})
    total = 48 * 2**20
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(url(gw, "/echo-discard?delay=1.5"), content=blocks(total))
    assert r.status_code == 200
    assert r.json() == {"received": total}


async def test_expect_100_continue_is_ignored_for_http10(gateway, upstream):
    responses, _ = await raw_exchange(
        gateway.port,
        b"POST /echo HTTP/1.0\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    )
    assert [(r.status, r.body) for r in responses] == [(200, b"hello")]


async def test_client_that_stops_reading_is_dropped_after_send_timeout(gateway_factory, upstream):
    """A reader that stalls cannot hold the gateway and upstream connections forever."""
    gw = await gateway_factory(make_config(upstream.port, listener={"send_timeout_s": 0.5}))
    conn = await RawConn.open(gw.port)
    await conn.send(b"GET /big?n=268435456 HTTP/1.1\r\nHost: t\r\n\r\n")
    await eventually(lambda: upstream.open_connections == 1)
    # Read nothing: socket buffers fill, the gateway waits send_timeout_s, then gives up.
    await eventually(lambda: upstream.open_connections == 0, wait_s=10)
    received = 0
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(conn.reader.read(1 << 20), 5):
            received += len(chunk)
    assert received < 268435456
    conn.writer.close()


async def test_route_timeout_starts_after_a_slow_upload(gateway_factory, upstream):
    """As Envoy's route timeout: a body slower than timeout_s is not cut by it."""
    gw = await gateway_factory(make_config(upstream.port, timeout_s=0.5))

    async def slow_body():
        for _ in range(3):
            yield b"x" * 1000
            await asyncio.sleep(0.4)

    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(url(gw.port, "/echo-discard"), content=slow_body())
    assert resp.status_code == 200, resp.text
    assert upstream.requests[-1].body_len == 3000


async def test_route_timeout_still_applies_after_the_upload(gateway_factory, upstream):
    gw = await gateway_factory(make_config(upstream.port, timeout_s=0.5))

    async def body():
        yield b"x" * 100

    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(url(gw.port, "/slow?s=2"), content=body())
    assert_json_error(resp, 504)
