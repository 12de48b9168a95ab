"""An HTTP/2 test upstream on the h2 library (h2c, or TLS with ALPN h2), answering
by path, counting connections and the streams it holds at once.

``/echo``            the request body back (and its trailers, as response trailers)
``/big?n=N``         N bytes, sent within the client's flow-control windows
``/trailers``        a body, then trailers ``x-checksum: abc`` and ``grpc-status: 0``
``/headers``         JSON of the request's header list (pseudo-fields included)
``/hold?n=N``        held until N ``/hold`` requests are open at once, then 200
``/reset``           RST_STREAM INTERNAL_ERROR on that stream
``/never``           never answered
``/early``           200 ``early`` on the request's HEADERS, then RST_STREAM
                     NO_ERROR: the body is not wanted (RFC 9113 8.1)
``/stall``           the head and 10 bytes, then nothing
``/drain``           waits for another stream on its connection, then sends GOAWAY
                     naming this stream as the last, answers it and leaves the
                     other unanswered (the client must send it again elsewhere)
anything else        200 ``ok``
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from typing import cast
from urllib.parse import parse_qs, urlsplit

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from meshgate.pipeline.context import Next, RequestContext


class _Request:
    def __init__(self, conn: _Conn, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.headers = [(n.decode(), v.decode()) for n, v in headers]
        self.body = b""
        self.trailers: list[tuple[str, str]] = []
        self.sent = 0  # response body bytes handed to the connection

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)

    @property
    def path(self) -> str:
        return self.header(":path") or ""


class H2Upstream:
    __test__ = False

    def __init__(self, *, max_streams: int = 100, tls: ssl.SSLContext | None = None) -> None:
        self.max_streams = max_streams
        self.tls = tls
        self.connections = 0
        self.requests: list[_Request] = []
        self.open_streams = 0
        self.most_open_streams = 0  # on one connection at once
        self.holding = 0
        self._hold_changed = asyncio.Event()
        self._conns: set[_Conn] = set()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> H2Upstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for conn in list(self._conns):
            conn.abort()

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


class _Conn(asyncio.Protocol):
    def __init__(self, server: H2Upstream) -> None:
        self.server = server
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.h2.local_settings = Settings(
            client=False,
            initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: server.max_streams},
        )
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, _Request] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.windows: dict[int, asyncio.Event] = {}
        self.drain_waiting: asyncio.Event | None = None
        self.goaway_last: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections += 1
        self.server._conns.add(self)
        self.h2.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._conns.discard(self)
        for task in self.tasks:
            task.cancel()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            self.flush()
            self.abort()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                sid = event.stream_id or 0
                headers = cast(list[tuple[bytes, bytes]], event.headers)
                req = self.requests[sid] = _Request(self, sid, headers)
                self.server.requests.append(req)
                self.server.open_streams += 1
                open_here = len(self.requests)
                self.server.most_open_streams = max(self.server.most_open_streams, open_here)
                if self.drain_waiting is not None:
                    self.drain_waiting.set()
                if req.path == "/early" and event.stream_ended is None:
                    self.h2.send_headers(sid, [(":status", "200"), ("content-length", "5")])
                    self.h2.send_data(sid, b"early", end_stream=True)
                    with contextlib.suppress(ProtocolError):  # (unless the body came whole)
                        self.h2.reset_stream(sid, ErrorCodes.NO_ERROR)
                    self._done(sid)
            elif isinstance(event, DataReceived):
                sid = event.stream_id or 0
                if sid in self.requests:
                    self.requests[sid].body += event.data or b""
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0, sid)
            elif isinstance(event, TrailersReceived):
                sid = event.stream_id or 0
                headers = cast(list[tuple[bytes, bytes]], event.headers)
                if sid in self.requests:
                    self.requests[sid].trailers = [(n.decode(), v.decode()) for n, v in headers]
            elif isinstance(event, StreamEnded):
                if event.stream_id not in self.requests:
                    continue
                req = self.requests[event.stream_id or 0]
                task = asyncio.get_running_loop().create_task(self._answer(req))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif isinstance(event, StreamReset):
                self._done(event.stream_id or 0)
            elif isinstance(event, WindowUpdated):
                for waiter in self.windows.values():
                    waiter.set()
            elif isinstance(event, ConnectionTerminated):
                self.abort()
        self.flush()

    def _done(self, sid: int) -> None:
        if self.requests.pop(sid, None) is not None:
            self.server.open_streams -= 1

    async def _answer(self, req: _Request) -> None:
        url = urlsplit(req.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        sid = req.stream_id
        if self.goaway_last is not None and sid > self.goaway_last:
            return  # not taken: the client sends it again elsewhere
        path = url.path
        if path == "/never":
            return
        if path == "/stall":
            self.h2.send_headers(sid, [(":status", "200")])
            self.h2.send_data(sid, b"0123456789")
            self.flush()
            return
        if path == "/reset":
            self.h2.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
            self.flush()
            self._done(sid)
            return
        if path == "/hold":
            server = self.server
            server.holding += 1
            server._hold_changed.set()
            while server.holding < int(query["n"]):
                server._hold_changed.clear()
                await server._hold_changed.wait()
            server._hold_changed.set()
        if path == "/drain":
            if len(self.requests) < 2:
                self.drain_waiting = asyncio.Event()
                await self.drain_waiting.wait()
            self.goaway_last = sid
            assert self.transport is not None
            self.flush()
            self.transport.write(GoAwayFrame(0, last_stream_id=sid, error_code=0).serialize())
        trailers: list[tuple[str, str]] = []
        if path == "/echo":
            body = req.body
            trailers = req.trailers
        elif path == "/big":
            body = b"b" * int(query["n"])
        elif path == "/trailers":
            body = b"data"
            trailers = [("x-checksum", "abc"), ("grpc-status", "0")]
        elif path == "/headers":
            body = json.dumps(req.headers).encode()
        else:
            body = b"ok"
        if req.header(":method") == "HEAD":
            fields = [(":status", "200"), ("content-length", str(len(body)))]
            self.h2.send_headers(sid, fields, end_stream=True)
            self.flush()
        else:
            await self._send(req, 200, body, trailers)
        self._done(sid)
        if self.goaway_last is not None and not self.requests:
            self.flush()
            self.abort()

    async def _send(
        self, req: _Request, status: int, body: bytes, trailers: list[tuple[str, str]]
    ) -> None:
        h2 = self.h2
        sid = req.stream_id
        fields: list[tuple[str, str]] = [(":status", str(status))]
        if not trailers:
            fields.append(("content-length", str(len(body))))
        h2.send_headers(sid, fields)
        view = memoryview(body)
        while view:
            window = h2.local_flow_control_window(sid)
            if window <= 0:
                self.flush()
                waiter = self.windows[sid] = asyncio.Event()
                await waiter.wait()
                del self.windows[sid]
                continue
            n = min(len(view), window, h2.max_outbound_frame_size)
            h2.send_data(sid, view[:n].tobytes())
            req.sent += n
            view = view[n:]
        if trailers:
            h2.send_headers(sid, trailers, end_stream=True)
        else:
            h2.end_stream(sid)
        self.flush()


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context offering ALPN h2 only."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def broken_header(ctx: RequestContext, call_next: Next) -> None:
    """A middleware putting a line break into a request header."""
    ctx.request.headers.set("x-injected", "a\r\nx-evil: 1")
    await call_next()
