#!/usr/bin/env python3
"""The "bare" benchmark target: a minimal keep-alive HTTP/1.1 reverse proxy.

uvloop + httptools asyncio.Protocol, no framework, no routing, no middleware. Each client
connection gets its own upstream connection, opened on the first request and reused while
both sides keep it alive. Requests on one connection go upstream one at a time, in order.
Method, path, headers and body are forwarded; the upstream's status, headers and body are
returned. Bodies are buffered and re-sent with Content-Length; hop-by-hop headers are
dropped. It stands for the fastest a Python proxy can reasonably be, so that
meshgate/bare separates the engine's own cost from the cost of Python + asyncio.
Not for production: no timeouts, no limits, no HEAD or upgrade support.

    python bench/bare_proxy.py --port 8080 --upstream-port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections import deque
from typing import cast

import httptools
import uvloop

# Dropped in both directions; Content-Length is recomputed from the buffered body.
HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-connection te trailer transfer-encoding upgrade "
    b"content-length".split()
)
NO_BODY_STATUS = frozenset((204, 304))
BODY_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
KEEP_ALIVE = b"Connection: keep-alive\r\n"
CLOSE = b"Connection: close\r\n"


class Upstream(asyncio.Protocol):
    """One upstream connection owned by one Downstream; parses responses for it."""

    def __init__(self, client: Downstream) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reason = b""
        self.headers: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.upstream_lost(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()
            self.client.upstream_lost(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP_BY_HOP:
            self.headers.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        head = b"HTTP/1.1 %d %s\r\n%s" % (status, self.reason, b"".join(self.headers))
        body = b"".join(self.body)
        if status >= 200 and status not in NO_BODY_STATUS:
            head += b"Content-Length: %d\r\n" % len(body)
        self.reason, self.headers, self.body = b"", [], []
        self.client.response_done(self, head, body, self.parser.should_keep_alive())


class Downstream(asyncio.Protocol):
    """One client connection: parses requests and relays them over its own Upstream."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream_addr = (host, port)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[bytes] = []
        self.body: list[bytes] = []
        self.pending: deque[tuple[bytes, bool, bytes]] = deque()  # request, keep-alive, conn
        self.upstream: Upstream | None = None
        self.connect_task: asyncio.Future[None] | None = None
        self.in_flight = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pending.clear()
        if self.upstream is not None:
            self.upstream.close()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.fail(BAD_REQUEST)

    def fail(self, response: bytes) -> None:
        self.pending.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP_BY_HOP:
            self.headers.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        p = self.parser
        method, body = p.get_method(), b"".join(self.body)
        if body or method in BODY_METHODS:
            self.headers.append(b"Content-Length: %d\r\n" % len(body))
        head = b"%s %s HTTP/1.1\r\n%s\r\n" % (method, self.url, b"".join(self.headers))
        keep = p.should_keep_alive()
        conn = (b"" if p.get_http_version() == "1.1" else KEEP_ALIVE) if keep else CLOSE
        self.url, self.headers, self.body = b"", [], []
        self.pending.append((head + body, keep, conn))
        self.pump()

    def pump(self) -> None:
        if self.in_flight or not self.pending:
            return
        up = self.upstream
        if up is None or up.transport is None or up.transport.is_closing():
            if self.connect_task is None or self.connect_task.done():
                self.connect_task = asyncio.ensure_future(self.connect())
            return
        self.in_flight = True
        up.transport.write(self.pending[0][0])

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(lambda: Upstream(self), *self.upstream_addr)
        except OSError:
            self.fail(BAD_GATEWAY)
            return
        if self.transport is None or self.transport.is_closing():
            up.close()
            return
        self.upstream = up
        self.pump()

    def upstream_lost(self, up: Upstream) -> None:
        if up is self.upstream:
            self.upstream = None
            if self.in_flight:
                self.in_flight = False
                self.fail(BAD_GATEWAY)

    def response_done(self, up: Upstream, head: bytes, body: bytes, up_keep: bool) -> None:
        t = self.transport
        if up is not self.upstream or not self.pending or t is None or t.is_closing():
            return
        _, keep, conn = self.pending.popleft()
        self.in_flight = False
        if not up_keep:
            self.upstream = None
            up.close()
        t.write(b"%s%s\r\n%s" % (head, conn, body))
        if keep:
            self.pump()
        else:
            self.pending.clear()
            t.close()


async def serve(host: str, port: int, upstream_host: str, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Downstream(upstream_host, upstream_port), host, port, backlog=4096
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-host", default="127.0.0.1")
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.upstream_host, args.upstream_port))


if __name__ == "__main__":
    main()
