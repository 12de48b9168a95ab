"""Response compression end to end: a real upstream on 127.0.0.1 serving known
bodies, the gateway compressing them, and httpx (or a raw socket) decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import random
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from meshgate.http import compression
from tests.e2e.conftest import RawConn, make_config, parse_head, url
from tests.e2e.test_streaming import RssSampler

# --------------------------------------------------------------------------- the upstream

WORDS = [f"{w}{i}" for i, w in enumerate(["alpha", "beta", "gamma", "delta", "omega"] * 40)]


def text(n: int, seed: int = 1) -> bytes:
    """``n`` bytes of word soup: compresses well, but not to nothing."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += " ".join(rng.choices(WORDS, k=64)).encode() + b"\n"
    return bytes(out[:n])


JSON_BODY = json.dumps([{"id": i, "name": f"user {i}", "tags": ["a", "b"]} for i in range(400)])
BODY = JSON_BODY.encode()

Stream = Callable[[asyncio.StreamWriter, bool], Awaitable[None]]


@dataclass
class Resource:
    status: int = 200
    headers: list[tuple[str, str]] = field(
        default_factory=lambda: [("Content-Type", "application/json")]
    )
    body: bytes = BODY
    chunked: bool = False


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]


class Upstream:
    """Keep-alive HTTP/1.1 server answering each path from ``resources`` (fixed
    responses) or ``streams`` (handlers writing the whole response themselves)."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.streams: dict[str, Stream] = {}
        self.seen: list[Seen] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                self.seen.append(Seen(method, target, headers))
                path = target.partition("?")[0]
                head_only = method == "HEAD"
                if path in self.streams:
                    await self.streams[path](writer, head_only)
                    continue
                res = self.resources.get(path) or Resource(404, [], b"no such resource")
                out = [f"HTTP/1.1 {res.status} X"]
                out += [f"{n}: {v}" for n, v in res.headers]
                no_body = res.status in (204, 304)
                if res.chunked:
                    out.append("Transfer-Encoding: chunked")
                elif not no_body:
                    out.append(f"Content-Length: {len(res.body)}")
                data = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
                if not head_only and not no_body:
                    data += chunk(res.body) + b"0\r\n\r\n" if res.chunked else res.body
                writer.write(data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.fixture
async def origin() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    yield up
    await up.stop()


@pytest.fixture
async def gateway_for(gateway_factory: Any, origin: Upstream) -> Callable[..., Awaitable[Any]]:
    """``await gateway_for(compress={...}, **route_keys)``: a gateway in front of
    ``origin`` with one catch-all route carrying ``compress`` and ``route_keys``."""

    async def make(compress: Any = True, top: dict[str, Any] | None = None, **route: Any) -> Any:
        route_cfg: dict[str, Any] = {"path": "/*", "upstream": "main", **route}
        if compress is not None:
            route_cfg["compress"] = compress
        cfg = make_config(origin.port, routes=[route_cfg], **(top or {}))
        return await gateway_factory(cfg)

    return make


async def get(
    gw: Any, path: str, accept: str | None = "gzip, br, zstd", method: str = "GET", **headers: str
) -> httpx.Response:
    """One request; ``accept=None`` sends no Accept-Encoding at all. httpx decodes."""
    async with httpx.AsyncClient(timeout=30) as client:
        hdrs = httpx.Headers({k.replace("_", "-"): v for k, v in headers.items()})
        if accept is None:
            del client.headers["accept-encoding"]
        else:
            hdrs["accept-encoding"] = accept
        return await client.request(method, url(gw, path), headers=hdrs)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
async def test_round_trip_of_a_body_that_arrived_whole(gateway_for, origin, coding):
    origin.resources["/users"] = Resource(headers=[("Content-Type", "application/json")])
    gw = await gateway_for()
    r = await get(gw, "/users", accept=coding)
    assert r.status_code == 200
    assert r.headers["content-encoding"] == coding
    assert r.headers["vary"] == "Accept-Encoding"
    # compressed at once: sent with its new length
    assert r.headers["content-length"] == str(r.num_bytes_downloaded)
    assert r.content == BODY  # decoded by httpx
    assert r.num_bytes_downloaded < len(BODY) / 4
    # the upstream was asked with the client's own Accept-Encoding (and answered plain)
    assert origin.seen[-1].headers["accept-encoding"] == coding


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
async def test_round_trip_of_a_streamed_body(gateway_for, origin, coding):
    release = asyncio.Event()
    first, second = text(30000, seed=2), text(50000, seed=3)

    async def halves(writer: asyncio.StreamWriter, head_only: bool) -> None:
        head = CHUNKED_HEAD.replace(b"text/plain", b"application/json")
        writer.write(head + chunk(first))
        await writer.drain()
        await asyncio.wait_for(release.wait(), 10)
        writer.write(chunk(second) + b"0\r\n\r\n")
        await writer.drain()

    origin.streams["/halves"] = halves
    gw = await gateway_for()
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url(gw, "/halves"), headers={"accept-encoding": coding}) as r,
    ):
        release.set()
        assert r.headers["content-encoding"] == coding
        assert r.headers["vary"] == "Accept-Encoding"
        assert "content-length" not in r.headers
        assert r.headers["transfer-encoding"] == "chunked"
        assert await r.aread() == first + second
    assert r.num_bytes_downloaded < (len(first) + len(second)) / 2


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("gzip, deflate, br, zstd", "br"),  # a browser: the server's order (br > zstd > gzip)
        ("gzip;q=0.5, br;q=0.9", "br"),
        ("gzip;q=0.9, br;q=0.5", "gzip"),
        ("br;q=0.2, zstd;q=0.3, gzip;q=0.1", "zstd"),
        ("br;q=0, gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("*", "br"),
        ("*;q=0.1, br;q=0", "zstd"),
        ("identity", None),
        ("gzip;q=0.5, identity", None),
        ("br;q=0, zstd;q=0, gzip;q=0", None),
        ("*;q=0", None),
        ("deflate", None),
        ("", None),
    ],
)
async def test_coding_chosen_by_q_values(gateway_for, origin, accept, expected):
    origin.resources["/users"] = Resource()
    gw = await gateway_for()
    r = await get(gw, "/users", accept=accept)
    assert r.status_code == 200
    assert r.headers.get("content-encoding") == expected
    # the answer depends on Accept-Encoding either way
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.content == BODY
    if expected is None:
        assert r.headers["content-length"] == str(len(BODY))


async def test_no_accept_encoding_gets_the_body_as_is(gateway_for, origin):
    origin.resources["/users"] = Resource(headers=[("Content-Type", "application/json")])
    gw = await gateway_for()
    conn = await RawConn.open(gw.port)
    try:
        await conn.send(b"GET /users HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 200
    assert resp.header("content-encoding") is None
    assert resp.header("vary") == "Accept-Encoding"
    assert resp.body == BODY
    assert "accept-encoding" not in origin.seen[-1].headers


async def test_server_order_is_configurable(gateway_for, origin):
    origin.resources["/users"] = Resource()
    gw = await gateway_for({"encodings": ["gzip", "zstd"], "gzip_level": 1})
    assert (await get(gw, "/users", "br, zstd, gzip")).headers["content-encoding"] == "gzip"
    assert (await get(gw, "/users", "br, zstd")).headers["content-encoding"] == "zstd"
    r = await get(gw, "/users", "br")
    assert "content-encoding" not in r.headers
    assert r.headers["vary"] == "Accept-Encoding"


# --------------------------------------------------------------------------- what is compressed


async def test_min_size(gateway_for, origin):
    small, edge = text(1023), text(1024)
    origin.resources["/small"] = Resource(headers=[("Content-Type", "text/plain")], body=small)
    origin.resources["/edge"] = Resource(headers=[("Content-Type", "text/plain")], body=edge)
    origin.resources["/small-chunked"] = Resource(
        headers=[("Content-Type", "text/plain")], body=b"tiny but of unknown length", chunked=True
    )
    gw = await gateway_for()
    r = await get(gw, "/small")
    assert "content-encoding" not in r.headers
    assert "vary" not in r.headers  # too small for every client
    assert r.headers["content-length"] == "1023"
    assert r.content == small
    r = await get(gw, "/edge")
    assert r.headers["content-encoding"] == "br"
    assert r.content == edge
    r = await get(gw, "/small-chunked")
    assert r.headers["content-encoding"] == "br"  # no Content-Length: compressed
    assert r.content == b"tiny but of unknown length"
    gw2 = await gateway_for({"min_size_bytes": 2000})
    assert "content-encoding" not in (await get(gw2, "/edge")).headers


@pytest.mark.parametrize(
    ("content_type", "compressed"),
    [
        ("text/html; charset=utf-8", True),
        ("application/json", True),
        ("application/problem+json", True),
        ("application/javascript", True),
        ("image/svg+xml", True),
        ("Text/CSS", True),
        ("image/png", False),
        ("application/octet-stream", False),
        ("application/zip", False),
        (None, False),
    ],
)
async def test_default_content_types(gateway_for, origin, content_type, compressed):
    headers = [("Content-Type", content_type)] if content_type else []
    origin.resources["/r"] = Resource(headers=headers, body=text(5000))
    gw = await gateway_for()
    r = await get(gw, "/r")
    assert (r.headers.get("content-encoding") == "br") is compressed
    assert ("vary" in r.headers) is compressed
    assert r.content == text(5000)


async def test_configured_content_types(gateway_for, origin):
    origin.resources["/plain"] = Resource(headers=[("Content-Type", "text/plain")], body=text(5000))
    origin.resources["/csv"] = Resource(headers=[("Content-Type", "text/csv")], body=text(5000))
    gw = await gateway_for({"content_types": ["text/csv"]})
    assert "content-encoding" not in (await get(gw, "/plain")).headers
    assert (await get(gw, "/csv")).headers["content-encoding"] == "br"


async def test_already_encoded_upstream_is_untouched(gateway_for, origin):
    packed = gzip.compress(text(20000))
    origin.resources["/packed"] = Resource(
        headers=[("Content-Type", "text/plain"), ("Content-Encoding", "gzip")], body=packed
    )
    gw = await gateway_for()
    conn = await RawConn.open(gw.port)
    try:
        await conn.send(b"GET /packed HTTP/1.1\r\nHost: t\r\nAccept-Encoding: br, gzip\r\n\r\n")
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.header("content-encoding") == "gzip"
    assert resp.header("content-length") == str(len(packed))
    assert resp.header("vary") is None
    assert resp.body == packed  # the upstream's bytes, not encoded twice


async def test_no_transform(gateway_for, origin):
    origin.resources["/nt"] = Resource(
        headers=[("Content-Type", "text/plain"), ("Cache-Control", "public, no-transform")],
        body=text(5000),
    )
    origin.resources["/plain"] = Resource(headers=[("Content-Type", "text/plain")], body=text(5000))
    gw = await gateway_for()
    r = await get(gw, "/nt")
    assert "content-encoding" not in r.headers
    assert r.headers["content-length"] == "5000"
    r = await get(gw, "/plain", cache_control="no-transform")  # the client asks too
    assert "content-encoding" not in r.headers


async def test_range_requests_are_not_compressed(gateway_for, origin):
    origin.resources["/partial"] = Resource(
        206, [("Content-Type", "text/plain"), ("Content-Range", "bytes 0-1999/5000")], text(2000)
    )
    origin.resources["/full"] = Resource(headers=[("Content-Type", "text/plain")], body=text(5000))
    gw = await gateway_for()
    r = await get(gw, "/partial", range="bytes=0-1999")
    assert r.status_code == 206
    assert "content-encoding" not in r.headers
    assert r.content == text(2000)
    r = await get(gw, "/full", range="bytes=0-1999")  # range ignored by the upstream
    assert "content-encoding" not in r.headers
    assert r.content == text(5000)


async def test_vary_is_merged(gateway_for, origin):
    origin.resources["/origin"] = Resource(
        headers=[("Content-Type", "text/plain"), ("Vary", "Origin"), ("Vary", "Cookie")],
        body=text(5000),
    )
    origin.resources["/already"] = Resource(
        headers=[("Content-Type", "text/plain"), ("Vary", "accept-encoding, Origin")],
        body=text(5000),
    )
    origin.resources["/star"] = Resource(
        headers=[("Content-Type", "text/plain"), ("Vary", "*")], body=text(5000)
    )
    gw = await gateway_for()
    r = await get(gw, "/origin")
    assert r.headers.get_list("vary") == ["Origin, Cookie, Accept-Encoding"]
    r = await get(gw, "/already")
    assert r.headers.get_list("vary") == ["accept-encoding, Origin"]
    assert r.headers["content-encoding"] == "br"
    r = await get(gw, "/star")
    assert r.headers.get_list("vary") == ["*"]


async def test_stale_fields_dropped_and_etag_weakened(gateway_for, origin):
    origin.resources["/doc"] = Resource(
        headers=[
            ("Content-Type", "text/plain"),
            ("ETag", '"v1"'),
            ("Accept-Ranges", "bytes"),
            ("Content-MD5", "Q2hlY2sgSW50ZWdyaXR5IQ=="),
            ("Last-Modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
        ],
        body=text(5000),
    )
    gw = await gateway_for()
    r = await get(gw, "/doc")
    assert r.headers["content-encoding"] == "br"
    assert r.headers["etag"] == 'W/"v1"'
    assert "accept-ranges" not in r.headers
    assert "content-md5" not in r.headers
    assert r.headers["last-modified"] == "Tue, 01 Jan 2030 00:00:00 GMT"
    r = await get(gw, "/doc", accept="identity")
    assert r.headers["etag"] == '"v1"'  # the bytes as tagged
    assert r.headers["accept-ranges"] == "bytes"


async def test_http_10_clients(gateway_for, origin):
    """A whole body keeps a length (and the keep-alive connection); a streamed one
    is ended by closing the connection."""
    origin.resources["/users"] = Resource()

    release = asyncio.Event()

    async def streamed(writer: asyncio.StreamWriter, head_only: bool) -> None:
        writer.write(CHUNKED_HEAD + chunk(text(3000)))
        await writer.drain()
        await asyncio.wait_for(release.wait(), 10)
        writer.write(chunk(text(3000, seed=5)) + b"0\r\n\r\n")
        await writer.drain()

    origin.streams["/streamed"] = streamed
    gw = await gateway_for()
    conn = await RawConn.open(gw.port)
    try:
        ask = b"GET %b HTTP/1.0\r\nConnection: keep-alive\r\nAccept-Encoding: gzip\r\n\r\n"
        await conn.send(ask % b"/users")
        whole = await conn.read_response()
        assert whole.header("content-encoding") == "gzip"
        assert whole.header("content-length") == str(len(whole.body))
        assert whole.header("connection") == "keep-alive"
        assert gzip.decompress(whole.body) == BODY
        await conn.send(ask % b"/streamed")
        stream = parse_head(await conn.reader.readuntil(b"\r\n\r\n"))
        release.set()
        assert stream.header("content-encoding") == "gzip"
        assert stream.header("content-length") is None
        assert stream.header("connection") == "close"
        body = await conn.read_all()  # until the gateway closes
        assert gzip.decompress(body) == text(3000) + text(3000, seed=5)
    finally:
        await conn.close()


async def test_head_has_the_headers_of_get_and_no_body(gateway_for, origin):
    origin.resources["/users"] = Resource(headers=[("Content-Type", "application/json")])
    gw = await gateway_for()
    conn = await RawConn.open(gw.port)
    try:
        await conn.send(b"HEAD /users HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n")
        head = await conn.read_response(head=True)
        # the same connection goes on: no stray body bytes were sent
        await conn.send(b"GET /users HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n")
        full = await conn.read_response()
    finally:
        await conn.close()
    assert head.status == 200
    assert head.header("content-encoding") == "gzip"
    assert head.header("vary") == "Accept-Encoding"
    assert head.header("content-length") is None
    assert head.header("transfer-encoding") is None
    assert full.header("content-encoding") == "gzip"
    assert gzip.decompress(full.body) == BODY
    assert [s.method for s in origin.seen] == ["HEAD", "GET"]


async def test_304_and_204_are_not_compressed(gateway_for, origin):
    origin.resources["/cached"] = Resource(304, [("ETag", '"v1"'), ("Cache-Control", "max-age=9")])
    origin.resources["/empty"] = Resource(204, [("Content-Type", "text/plain")], b"")
    gw = await gateway_for()
    # a client revalidating the variant we compressed gets that variant's validator back
    r = await get(gw, "/cached", if_none_match='W/"v1"')
    assert r.status_code == 304
    assert r.headers["etag"] == 'W/"v1"'
    assert r.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in r.headers
    assert r.content == b""
    # one holding the uncompressed bytes' strong tag: untouched
    r = await get(gw, "/cached", if_none_match='"v1"')
    assert r.status_code == 304
    assert r.headers["etag"] == '"v1"'
    assert "vary" not in r.headers
    r = await get(gw, "/empty")
    assert r.status_code == 204
    assert "content-encoding" not in r.headers


async def test_error_statuses_are_compressed_too(gateway_for, origin):
    origin.resources["/missing"] = Resource(404, [("Content-Type", "text/html")], text(4000))
    gw = await gateway_for()
    r = await get(gw, "/missing", accept="gzip")
    assert r.status_code == 404
    assert r.headers["content-encoding"] == "gzip"
    assert r.content == text(4000)


# --------------------------------------------------------------------------- config and order


async def test_top_level_default_and_route_opt_out(gateway_factory, origin):
    origin.resources["/users"] = Resource()
    cfg = make_config(
        origin.port,
        routes=[
            {
                "path": "/off/*",
                "upstream": "main",
                "compress": False,
                "rewrite": {"strip_prefix": "/off"},
            },
            {"path": "/*", "upstream": "main"},
        ],
        compress={"encodings": ["gzip"]},
    )
    gw = await gateway_factory(cfg)
    assert (await get(gw, "/users")).headers["content-encoding"] == "gzip"
    r = await get(gw, "/off/users")
    assert "content-encoding" not in r.headers
    assert r.content == BODY


async def test_no_compress_block_means_no_compression(gateway_for, origin):
    origin.resources["/users"] = Resource()
    gw = await gateway_for(compress=None)
    r = await get(gw, "/users")
    assert "content-encoding" not in r.headers
    assert "vary" not in r.headers


async def test_sees_the_client_accept_encoding_and_the_final_headers(gateway_for, origin):
    """Compression runs outside request_headers and response_headers: the upstream may
    be asked for identity while the client still gets br, and a content type set by
    response_headers decides."""
    origin.resources["/blob"] = Resource(
        headers=[("Content-Type", "application/octet-stream")], body=text(5000)
    )
    gw = await gateway_for(
        request_headers={"remove": ["accept-encoding"]},
        response_headers={"set": {"content-type": "text/plain"}},
    )
    r = await get(gw, "/blob")
    assert "accept-encoding" not in origin.seen[-1].headers
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["content-encoding"] == "br"
    assert r.content == text(5000)


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
async def test_slow_stream_reaches_the_client_progressively(gateway_for, origin, coding):
    release = asyncio.Event()
    finished = asyncio.Event()

    async def slow(writer: asyncio.StreamWriter, head_only: bool) -> None:
        writer.write(CHUNKED_HEAD + chunk(b"first event\n" * 10))
        await writer.drain()
        await asyncio.wait_for(release.wait(), 10)
        writer.write(chunk(b"second event\n" * 10) + b"0\r\n\r\n")
        await writer.drain()
        finished.set()

    origin.streams["/events"] = slow
    gw = await gateway_for()
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url(gw, "/events"), headers={"accept-encoding": coding}) as r,
    ):
        assert r.headers["content-encoding"] == coding
        parts = r.aiter_bytes()
        first = await asyncio.wait_for(anext(parts), 5)
        assert first == b"first event\n" * 10  # decodable before the upstream went on
        assert not finished.is_set()
        release.set()
        rest = b"".join([p async for p in parts])
    assert rest == b"second event\n" * 10
    assert finished.is_set()


async def test_upstream_failure_mid_stream_ends_only_that_response(gateway_for, origin):
    async def broken(writer: asyncio.StreamWriter, head_only: bool) -> None:
        writer.write(CHUNKED_HEAD + chunk(text(40000)))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    origin.streams["/broken"] = broken
    origin.resources["/users"] = Resource()
    gw = await gateway_for()
    with pytest.raises(httpx.RemoteProtocolError):
        await get(gw, "/broken", accept="gzip")
    r = await get(gw, "/users", accept="gzip")
    assert r.content == BODY


class _FailingEncoder:
    """Compresses the first chunk, then fails like a broken encoder would."""

    def __init__(self, level: int) -> None:
        self._real = compression.GzipEncoder(level)
        self._calls = 0

    def compress(self, data: bytes | memoryview) -> bytes:
        self._calls += 1
        if self._calls > 1:
            raise zlib.error("simulated encoder failure")
        return self._real.compress(data)

    def finish(self) -> bytes:
        raise zlib.error("simulated encoder failure")


async def test_encoder_failure_ends_that_response_not_the_gateway(
    gateway_for, origin, monkeypatch, caplog
):
    release = asyncio.Event()

    async def two_parts(writer: asyncio.StreamWriter, head_only: bool) -> None:
        writer.write(CHUNKED_HEAD + chunk(b"part one " * 200))
        await writer.drain()
        await asyncio.wait_for(release.wait(), 10)
        writer.write(chunk(b"part two " * 200) + b"0\r\n\r\n")
        await writer.drain()

    origin.streams["/two"] = two_parts
    origin.resources["/users"] = Resource()
    gw = await gateway_for({"encodings": ["gzip", "br"]})
    monkeypatch.setitem(compression.ENCODERS, "gzip", _FailingEncoder)
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", url(gw, "/two"), headers={"accept-encoding": "gzip"}) as r:
            parts = r.aiter_bytes()
            assert await anext(parts) == b"part one " * 200
            release.set()
            with pytest.raises(httpx.RemoteProtocolError):
                async for _ in parts:
                    pass
        r = await client.get(url(gw, "/users"), headers={"accept-encoding": "br"})
        assert r.content == BODY
    assert "gzip compression failed: simulated encoder failure" in caplog.text


# 50 MiB of text streamed chunked by the upstream; the gateway must not hold it.
LARGE_BYTES = 50 * 2**20
LARGE_BLOCK = text(2**20, seed=7)
RSS_GROWTH_LIMIT = 24 * 2**20


async def test_large_chunked_body_compressed_in_bounded_memory(gateway_process, origin):
    async def large(writer: asyncio.StreamWriter, head_only: bool) -> None:
        writer.write(CHUNKED_HEAD)
        for _ in range(LARGE_BYTES // len(LARGE_BLOCK)):
            for i in range(0, len(LARGE_BLOCK), 65536):
                writer.write(chunk(LARGE_BLOCK[i : i + 65536]))
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    origin.streams["/large"] = large
    warm = text(300000)
    origin.resources["/warm"] = Resource(headers=[("Content-Type", "text/plain")], body=warm)
    cfg = make_config(origin.port, routes=[{"path": "/*", "upstream": "main", "compress": True}])
    cfg["timeout_s"] = 60
    gp = await gateway_process(cfg, workers=1)
    async with httpx.AsyncClient(timeout=120) as client:
        for coding in ("gzip", "br"):  # warm up: imports, encoders, worker threads
            r = await client.get(url(gp.port, "/warm"), headers={"accept-encoding": coding})
            assert r.content == warm
        sampler = RssSampler(gp.proc.pid)
        baseline = sampler.rss()
        expected = hashlib.sha256(LARGE_BLOCK * (LARGE_BYTES // len(LARGE_BLOCK))).hexdigest()
        got = hashlib.sha256()
        size = 0
        async with (
            sampler,
            client.stream("GET", url(gp.port, "/large"), headers={"accept-encoding": "gzip"}) as r,
        ):
            assert r.headers["content-encoding"] == "gzip"
            async for part in r.aiter_bytes():
                got.update(part)
                size += len(part)
            wire = r.num_bytes_downloaded
    assert size == LARGE_BYTES
    assert got.hexdigest() == expected
    assert wire < LARGE_BYTES / 2
    growth = sampler.peak - baseline
    assert growth < RSS_GROWTH_LIMIT, f"gateway RSS grew by {growth / 2**20:.1f} MiB"
