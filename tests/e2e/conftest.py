"""Fixtures for end-to-end tests: a hand-written test upstream, gateways, raw clients.

Everything listens on 127.0.0.1 with port 0. The test upstream is written here
with plain asyncio streams (not meshgate's server) so the gateway is checked
against an independent HTTP/1.1 implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml

from meshgate.config.loader import parse_config
from meshgate.gateway import Gateway

REPO_ROOT = Path(__file__).resolve().parents[2]
BLOCK = b"0123456789abcdef" * 4096  # 64 KiB


# --------------------------------------------------------------------------
# Test upstream
# --------------------------------------------------------------------------


@dataclass
class Recorded:
    """One request as the test upstream received it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]  # names lower-cased, in order
    body: bytes = b""
    body_len: int = 0
    body_complete: bool = False
    conn_id: int = 0
    abandoned: bool = False  # the gateway closed the connection before the answer

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


class BodyError(Exception):
    pass


class TestUpstream:
    """A small keep-alive HTTP/1.1 server with behaviours chosen by path.

    ``/echo``             echo the request body (read whole; Content-Length reply)
    ``/echo-stream``      echo each received chunk at once (chunked reply)
    ``/echo-discard``     count the body bytes without keeping them; reply JSON
                          (``?delay=SEC`` first stops reading for a while)
    ``/slow?s=SEC``       sleep, then answer 200
    ``/reset?when=W&how=H``  W: before (no answer) | partial (head + part of body);
                          H: rst (abort) | fin (close)
    ``/big?n=N&mode=M``   N bytes download; M: length | chunked
    ``/status/NNN``       answer status NNN
    ``/headers``          JSON of method, target and received headers
    ``/hop``              a response carrying hop-by-hop headers
    ``/close-delimited``  body without length, ended by closing the connection
    ``/interim``          a 103 Early Hints interim response, then 200
    ``/garbage``          an invalid status line
    ``/endless-trailer``  chunked body then an endless trailer line
    ``/stall``            head and 10 of 100 body bytes, then silence
    ``/huge-head?n=&line=`` n bytes of response header fields, head never completed
    ``/switch``           101 Switching Protocols (never asked for)
    ``/trailers?v=V``     chunked body with a trailer field ``X-Checksum: V``
    ``/te-gzip``          ``Transfer-Encoding: gzip, chunked`` response
    anything else         200 JSON like /headers
    """

    __test__ = False  # not a pytest test class

    def __init__(self, name: str = "up") -> None:
        self.name = name
        self.requests: list[Recorded] = []
        self.connections = 0
        self.open_connections = 0
        self.close_reused = False  # drop (close, no answer) requests on reused connections
        self.dropped: list[Recorded] = []  # requests dropped that way
        self.idle_close_s: float | None = None  # close connections idle this long
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> TestUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    # --- connection handling -------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        self.open_connections += 1
        conn_id = self.connections
        served = 0
        try:
            while True:
                try:
                    if self.idle_close_s is not None and served:
                        head = await asyncio.wait_for(
                            reader.readuntil(b"\r\n\r\n"), self.idle_close_s
                        )
                    else:
                        head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    break
                rec = _parse_head(head)
                rec.conn_id = conn_id
                if self.close_reused and served:
                    self.dropped.append(rec)
                    writer.transport.abort()
                    break
                self.requests.append(rec)
                served += 1
                try:
                    keep = await self._dispatch(rec, reader, writer)
                except (BodyError, ConnectionError, asyncio.IncompleteReadError):
                    break
                if not keep:
                    break
        except asyncio.CancelledError:
            pass
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()
            self._tasks.discard(task)

    async def _dispatch(
        self, rec: Recorded, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        url = urlsplit(rec.target)
        query = dict(parse_qsl(url.query))
        path = url.path
        body = BodyReader(reader, rec)
        conn_hdr = (rec.header("connection") or "").lower()
        keep = rec.version == "HTTP/1.1" and "close" not in conn_hdr
        head_req = rec.method == "HEAD"

        async def send(
            status: int,
            payload: bytes = b"",
            headers: list[tuple[str, str]] | None = None,
            *,
            length: bool = True,
        ) -> None:
            lines = [f"HTTP/1.1 {status} X"]
            for n, v in headers or []:
                lines.append(f"{n}: {v}")
            if length and status not in (204, 304) and status >= 200:
                lines.append(f"Content-Length: {len(payload)}")
            if not keep:
                lines.append("Connection: close")
            out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            if not head_req and status not in (204, 304):
                out += payload
            writer.write(out)
            await writer.drain()

        if path == "/echo":
            data = await body.read_all()
            ctype = rec.header("content-type") or "application/octet-stream"
            await send(200, data, [("Content-Type", ctype)])
        elif path == "/echo-stream":
            head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            writer.write((head + ("" if keep else "Connection: close\r\n") + "\r\n").encode())
            async for chunk in body.chunks():
                writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        elif path == "/echo-discard":
            await asyncio.sleep(float(query.get("delay", "0")))  # back-pressure on the gateway
            n = 0
            async for chunk in body.chunks(record=False):
                n += len(chunk)
            await send(200, json.dumps({"received": n}).encode(), [("Content-Type", "json")])
        elif path == "/slow":
            await body.read_all()
            # Sleep, but notice the gateway giving up (EOF or reset) meanwhile.
            try:
                early = await asyncio.wait_for(reader.read(1), float(query.get("s", "1")))
            except TimeoutError:
                early = None
            except ConnectionError:
                early = b""
            if early is not None:
                rec.abandoned = True
                return False
            await send(200, b"slow done")
        elif path == "/reset":
            when = query.get("when", "before")
            if when == "partial":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"p" * 1000)
                await writer.drain()
                await asyncio.sleep(0.05)
            if query.get("how", "rst") == "rst":
                writer.transport.abort()
            else:
                writer.close()
            return False
        elif path == "/big":
            await body.read_all()
            n = int(query.get("n", "0"))
            chunked = query.get("mode", "length") == "chunked"
            framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {n}"
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{framing}\r\n"
            writer.write((head + ("" if keep else "Connection: close\r\n") + "\r\n").encode())
            if not head_req:
                left = n
                while left > 0:
                    part = BLOCK if left >= len(BLOCK) else BLOCK[:left]
                    left -= len(part)
                    writer.write(b"%x\r\n%b\r\n" % (len(part), part) if chunked else part)
                    await writer.drain()
                if chunked:
                    writer.write(b"0\r\n\r\n")
            await writer.drain()
        elif path == "/close-delimited":
            await body.read_all()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n")
            writer.write(b"\r\n")
            for i in range(int(query.get("parts", "3"))):
                writer.write(b"part%d;" % i)
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.close()
            return False
        elif path == "/interim":
            await body.read_all()
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            await send(200, b"final", [("X-Final", "1")])
        elif path == "/switch":
            await body.read_all()
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n"
                b"raw tunnel bytes"
            )
            await writer.drain()
            await asyncio.sleep(0.2)
            return False
        elif path == "/trailers":
            await body.read_all()
            head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n"
            writer.write((head + ("" if keep else "Connection: close\r\n") + "\r\n").encode())
            writer.write(b"4\r\nbody\r\n0\r\nX-Checksum: " + query.get("v", "abc").encode())
            writer.write(b"\r\n\r\n")
            await writer.drain()
        elif path == "/te-gzip":
            await body.read_all()
            z = gzip.compress(b"plain text body")
            head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            head += "Transfer-Encoding: gzip, chunked\r\n"
            writer.write((head + ("" if keep else "Connection: close\r\n") + "\r\n").encode())
            writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(z), z))
            await writer.drain()
        elif path == "/huge-head":
            # n bytes of header fields (one endless line when line=1), never finishing
            await body.read_all()
            n = int(query.get("n", "200000"))
            writer.write(b"HTTP/1.1 200 OK\r\n")
            if query.get("line") == "1":
                writer.write(b"X-Long: " + b"a" * n)
            else:
                writer.write(b"".join(b"X-F%d: %s\r\n" % (i, b"b" * 90) for i in range(n // 100)))
            await writer.drain()
            with contextlib.suppress(ConnectionError):
                await reader.read(1)  # until the gateway gives up
            return False
        elif path == "/stall":
            # the head and part of the body, then silence (until the gateway hangs up)
            await body.read_all()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"s" * 10)
            await writer.drain()
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(1), 10)
            rec.abandoned = True
            return False
        elif path == "/endless-trailer":
            # a chunked body, then one trailer line that never ends
            await body.read_all()
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"3\r\nabc\r\n0\r\nX-T: ")
            with contextlib.suppress(ConnectionError):
                for _ in range(1000):  # up to 8 MB unless the gateway hangs up first
                    writer.write(b"t" * 8192)
                    await writer.drain()
                rec.abandoned = False
                return False
            rec.abandoned = True  # the gateway hung up
            return False
        elif path == "/garbage":
            await body.read_all()
            writer.write(b"HTTP/1.1 abc\r\nthis is not http\r\n\r\n")
            await writer.drain()
            return False
        elif path.startswith("/status/"):
            await body.read_all()
            status = int(path.rsplit("/", 1)[1])
            extra = [("X-Status", str(status)), ("ETag", '"v1"')]
            if status in (204, 304):
                await send(status, b"", extra)
            else:
                await send(status, f"status {status}".encode(), extra)
        elif path == "/hop":
            await body.read_all()
            await send(
                200,
                b"hop",
                [
                    ("Connection", "x-foo, X-Bar"),
                    ("X-Foo", "1"),
                    ("X-Bar", "2"),
                    ("Keep-Alive", "timeout=5"),
                    ("Proxy-Foo", "bar"),
                    ("Proxy-Authenticate", "Basic"),
                    ("Trailer", "x-checksum"),
                    ("TE", "trailers"),
                    ("Upgrade", "foo/1"),
                    ("X-Keep", "yes"),
                ],
            )
        else:
            data = await body.read_all()
            info = {
                "upstream": self.name,
                "method": rec.method,
                "target": rec.target,
                "headers": rec.headers,
                "body": data.decode("latin-1"),
            }
            await send(200, json.dumps(info).encode(), [("Content-Type", "application/json")])
        if not body.done:
            await body.read_all()
        return keep


def _parse_head(head: bytes) -> Recorded:
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return Recorded(method, target, version, headers)


class BodyReader:
    """Reads a request body framed by Content-Length or chunked encoding."""

    def __init__(self, reader: asyncio.StreamReader, rec: Recorded) -> None:
        self.reader = reader
        self.rec = rec
        te = (rec.header("transfer-encoding") or "").lower()
        self.chunked = "chunked" in te
        cl = rec.header("content-length")
        self.remaining = int(cl) if cl is not None and not self.chunked else 0
        self.done = not self.chunked and self.remaining == 0
        if self.done:
            rec.body_complete = True

    async def chunks(self, *, record: bool = True) -> AsyncIterator[bytes]:
        while not self.done:
            chunk = await self._next()
            if chunk:
                self.rec.body_len += len(chunk)
                if record:
                    self.rec.body += chunk
                yield chunk
        self.rec.body_complete = True

    async def read_all(self) -> bytes:
        parts = [c async for c in self.chunks()]
        return b"".join(parts)

    async def _next(self) -> bytes:
        r = self.reader
        if not self.chunked:
            data = await r.read(min(self.remaining, 1 << 18))
            if not data:
                raise BodyError("eof in body")
            self.remaining -= len(data)
            if self.remaining == 0:
                self.done = True
            return data
        if self.remaining == 0:
            line = await r.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await r.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                self.done = True
                return b""
            self.remaining = size
        data = await r.read(min(self.remaining, 1 << 18))
        if not data:
            raise BodyError("eof in chunk")
        self.remaining -= len(data)
        if self.remaining == 0 and await r.readexactly(2) != b"\r\n":
            raise BodyError("bad chunk end")
        return data


@pytest.fixture
async def upstream() -> AsyncIterator[TestUpstream]:
    srv = await TestUpstream("up1").start()
    yield srv
    await srv.stop()


@pytest.fixture
async def upstream2() -> AsyncIterator[TestUpstream]:
    srv = await TestUpstream("up2").start()
    yield srv
    await srv.stop()


# --------------------------------------------------------------------------
# Gateway config and in-process gateway
# --------------------------------------------------------------------------


def make_config(
    upstream_port: int,
    *,
    routes: list[dict[str, Any]] | None = None,
    upstreams: list[dict[str, Any]] | None = None,
    listener: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """A gateway config dict with small timeouts, one upstream 'main' and a catch-all route."""
    lst = {
        "host": "127.0.0.1",
        "port": 0,
        "header_timeout_s": 0.5,
        "body_timeout_s": 0.5,
        "idle_timeout_s": 3,
    }
    lst.update(listener or {})
    cfg: dict[str, Any] = {
        "listener": lst,
        "timeout_s": 5,
        "max_request_body_bytes": 65536,
        "drain_timeout_s": 2,
        "upstreams": upstreams
        if upstreams is not None
        else [
            {
                "name": "main",
                "connect_timeout_s": 1,
                "instances": [{"host": "127.0.0.1", "port": upstream_port}],
            }
        ],
        "routes": routes if routes is not None else [{"path": "/*", "upstream": "main"}],
    }
    cfg.update(top)
    return cfg


def to_yaml(cfg: dict[str, Any] | str) -> str:
    return cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def gateway_factory(upstream: TestUpstream) -> AsyncIterator[GatewayFactory]:
    """``await make(cfg_or_yaml=None, rng=None, **make_config_kwargs)`` starts a gateway
    in-process (``rng``: a seeded `random.Random` for splits, mirroring and faults)."""
    started: list[Gateway] = []

    async def make(
        cfg: dict[str, Any] | str | None = None, *, rng: random.Random | None = None, **kwargs: Any
    ) -> Gateway:
        if cfg is None:
            cfg = make_config(upstream.port, **kwargs)
        config, doc = parse_config(to_yaml(cfg), "e2e.yaml")
        gw = Gateway(config, doc, rng=rng)
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.stop(drain_timeout_s=1)


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> Gateway:
    return await gateway_factory()


def url(gw: Gateway | int, path: str = "/") -> str:
    port = gw if isinstance(gw, int) else gw.port
    return f"http://127.0.0.1:{port}{path}"


# --------------------------------------------------------------------------
# Raw socket client
# --------------------------------------------------------------------------


@dataclass
class RawResponse:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]  # lower-case names
    body: bytes = b""
    complete: bool = True  # body fully received per its framing

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    def json(self) -> Any:
        return json.loads(self.body)


class IncompleteResponse(Exception):
    pass


class RawConn:
    """A raw TCP connection to the gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawConn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_response(self, *, head: bool = False, wait_s: float = 5.0) -> RawResponse:
        """One response (interim 1xx responses are returned on their own)."""
        async with asyncio.timeout(wait_s):
            try:
                raw = await self.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                raise IncompleteResponse(f"closed before a full head: {exc.partial!r}") from None
            resp = parse_head(raw)
            if head or resp.status < 200 or resp.status in (204, 304):
                return resp
            te = (resp.header("transfer-encoding") or "").lower()
            cl = resp.header("content-length")
            try:
                if "chunked" in te:
                    parts = []
                    while True:
                        line = await self.reader.readuntil(b"\r\n")
                        size = int(line.split(b";")[0].strip(), 16)
                        if size == 0:
                            while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                                pass
                            break
                        parts.append(await self.reader.readexactly(size))
                        await self.reader.readexactly(2)
                    resp.body = b"".join(parts)
                elif cl is not None:
                    resp.body = await self.reader.readexactly(int(cl))
                else:
                    resp.body = await self.reader.read()
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                resp.complete = False
                if isinstance(exc, asyncio.IncompleteReadError):
                    resp.body = exc.partial
            return resp

    async def read_all(self, wait_s: float = 5.0) -> bytes:
        """Everything until the peer closes (TimeoutError if it does not)."""
        out = bytearray()
        async with asyncio.timeout(wait_s):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionError:
                    break
                if not data:
                    break
                out += data
        return bytes(out)

    async def is_closed(self, wait_s: float = 3.0) -> bool:
        """True when the peer closes within ``wait_s`` (any extra bytes fail the test)."""
        try:
            rest = await self.read_all(wait_s)
        except TimeoutError:
            return False
        assert rest == b"", f"unexpected bytes before close: {rest[:200]!r}"
        return True

    async def close(self) -> None:
        """Close (FIN), without waiting for the peer."""
        self.writer.transport.abort()

    async def reset(self) -> None:
        """Abort with a TCP RST (SO_LINGER 0), like a client that crashed."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


def parse_head(raw: bytes) -> RawResponse:
    lines = raw.decode("latin-1").split("\r\n")
    version, status, *reason = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
    return RawResponse(version, int(status), reason[0] if reason else "", headers)


async def raw_exchange(
    port: int, data: bytes, *, wait_s: float = 5.0, head: bool = False
) -> tuple[list[RawResponse], bool]:
    """Send ``data``, read responses until the gateway closes; return (responses, closed)."""
    conn = await RawConn.open(port)
    responses: list[RawResponse] = []
    closed = False
    try:
        await conn.send(data)
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                resp = await conn.read_response(wait_s=left, head=head)
            except IncompleteResponse as exc:
                assert "b''" in str(exc), str(exc)
                closed = True
                break
            except TimeoutError:
                break
            except ConnectionError:
                closed = True
                break
            responses.append(resp)
            if not resp.complete:
                closed = True
                break
    finally:
        await conn.close()
    return responses, closed


def assert_json_error(resp: RawResponse | Any, status: int) -> dict[str, Any]:
    """The gateway's error format, for raw and httpx responses."""
    code = resp.status if isinstance(resp, RawResponse) else resp.status_code
    assert code == status, (code, getattr(resp, "body", None) or resp.text)
    data = resp.json()
    assert isinstance(data, dict)
    assert isinstance(data.get("error"), str) and data["error"]
    assert re.fullmatch(r"[0-9a-f]{32}|[A-Za-z0-9._:\-]{1,128}", data["request_id"])
    return data


async def eventually(predicate: Callable[[], Any], wait_s: float = 3.0) -> None:
    """Poll ``predicate`` (sync or async) until it holds; fail the test after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {wait_s} s")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------
# Gateway in a subprocess
# --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return True
        return False


@dataclass
class GatewayProcess:
    proc: asyncio.subprocess.Process
    log_path: Path
    port: int = 0
    ports: list[int] = field(default_factory=list)
    signalled: bool = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_listening(self, count: int = 1, wait_s: float = 20.0) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            found = re.findall(r"gateway listening on [\d.]+:(\d+)", self.log())
            if len(found) >= count:
                self.ports = [int(p) for p in found]
                self.port = self.ports[0]
                return
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"gateway did not start listening; log:\n{self.log()}")

    def send(self, sig: int) -> None:
        self.signalled = True
        self.proc.send_signal(sig)

    async def stop(self, sig: int = signal.SIGTERM, wait_s: float = 15.0) -> int:
        """Send ``sig`` (unless `send` already did) and return the exit code."""
        if self.proc.returncode is None and not self.signalled:
            self.send(sig)
        try:
            return await asyncio.wait_for(self.proc.wait(), wait_s)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"gateway did not exit after signal; log:\n{self.log()}") from None


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
async def gateway_process(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[GatewayProcess]]]:
    """``await start(cfg_dict, workers=1, extra=())`` runs ``python -m meshgate gateway`` on it."""
    procs: list[GatewayProcess] = []

    async def start(
        cfg: dict[str, Any] | str, workers: int = 1, extra: tuple[str, ...] = ()
    ) -> GatewayProcess:
        n = len(procs)
        cfg_path = tmp_path / f"gateway{n}.yaml"
        cfg_path.write_text(to_yaml(cfg))
        log_path = tmp_path / f"gateway{n}.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "meshgate",
                "gateway",
                "-c",
                str(cfg_path),
                "--workers",
                str(workers),
                *extra,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env=subprocess_env(),
                cwd=str(tmp_path),
            )
        gp = GatewayProcess(proc, log_path)
        procs.append(gp)
        await gp.wait_listening(count=workers)
        return gp

    yield start
    for gp in procs:
        if gp.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                gp.proc.kill()
            await gp.proc.wait()


async def run_cmd(
    *args: str, wait_s: float = 30.0, cwd: Path | None = None
) -> tuple[int, str, str]:
    """Run a command without blocking the event loop; return (code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=subprocess_env(),
        cwd=str(cwd or REPO_ROOT),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), wait_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def curl(*args: str, max_time_s: float = 10.0) -> tuple[int, str, str]:
    return await run_cmd("curl", "-sS", "--max-time", str(max_time_s), *args, wait_s=max_time_s + 5)


def parse_curl_i(out: str) -> tuple[int, dict[str, list[str]], str]:
    """Split ``curl -i`` output into (status, headers, body)."""
    head, _, body = out.partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, body
