"""HTTP/1.1 server: an `asyncio.Protocol` per connection on httptools.

One connection answers its requests strictly in order. Requests parsed ahead
(pipelining) wait in a queue of at most ``max_pipelined_requests``; their
bodies stream into bounded buffers that pause reading the socket when full.
Separate deadlines guard the request head (slowloris), the pauses inside a
request body and the idle time between keep-alive requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Final, cast

import httptools

from meshgate.config.models import ListenerConfig
from meshgate.http.dates import http_date
from meshgate.http.errors import (
    BadRequest,
    BodyTimeout,
    BodyTooLarge,
    ClientDisconnected,
    Refused,
)
from meshgate.http.framing import (
    LAST_CHUNK,
    connection_tokens,
    frame_chunk,
    framing_too_large,
    last_chunk,
    takes_trailers,
)
from meshgate.http.messages import (
    Body,
    BytesBody,
    Headers,
    Request,
    Response,
    error_response,
    new_request_id,
)
from meshgate.http.paths import normalize_target
from meshgate.http.stream import StreamBody
from meshgate.http.tls import TlsInfo
from meshgate.io.dispatch import run_app
from meshgate.io.flow import WriteFlow
from meshgate.io.h2server import PREFACE, H2ServerProtocol
from meshgate.io.timers import Deadline
from meshgate.io.tls import ServerTls, tls_info
from meshgate.io.tunnel import Tunnel, UpgradeResponse
from meshgate.observability.accesslog import AccessEntry, AccessLog, LoggingApp
from meshgate.observability.metrics import TunnelStats

log = logging.getLogger("meshgate.server")

App = Callable[[Request], Awaitable[Response]]

_STATUS_LINES: Final[dict[int, str]] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus
}
_FRAMING: Final = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_NO_BODY_STATUS: Final = frozenset({204, 304})
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
# Fields a client's Connection header may not remove: end-to-end ones, and "te",
# which RFC 9110 (10.1.4) has the client name in Connection and which says whether
# it takes trailers (the proxy forwards only "te: trailers", to HTTP/2 upstreams).
_NEVER_HOP: Final = frozenset({"host", "content-length", "transfer-encoding", "connection", "te"})

# Reasons reading from the client socket is paused (bit flags).
_PAUSE_BODY: Final = 1
_PAUSE_PIPELINE: Final = 2
_PAUSE_STOPPED: Final = 4


def status_line(status: int) -> str:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} Unknown\r\n"
    return line


def _last_chunk(body: Body, request: Request | None) -> bytes:
    """The end of a chunked body: with its trailers when the client takes them
    (``TE: trailers``), else without (RFC 9110 6.5.1: trailers may be dropped)."""
    trailers = body.trailers
    if not trailers or request is None or not takes_trailers(request.headers.get_all("te")):
        return LAST_CHUNK
    return last_chunk(trailers.raw())


class _Pending:
    """A request waiting for its response, or a protocol error to answer in order."""

    __slots__ = (
        "continue_sent",
        "error",
        "keep_alive",
        "request",
        "response_started",
        "sent",
        "status",
    )

    def __init__(
        self, request: Request | None, keep_alive: bool, error: Refused | None = None
    ) -> None:
        self.request = request
        self.keep_alive = keep_alive
        self.error = error
        self.response_started = False
        self.continue_sent = False
        self.status = 0  # of the response sent (head written or being written)
        self.sent = 0  # response body bytes handed to the transport


class HttpServerProtocol(WriteFlow):
    # Slots, not a __dict__: more than 30 attributes make CPython give every instance
    # an unshared dict (~1.5 KB per idle connection).
    __slots__ = (
        "_chunked",
        "_chunked_raw",
        "_chunks",
        "_current",
        "_current_body",
        "_deadline",
        "_deadline_cb",
        "_head_raw_bytes",
        "_header_bytes",
        "_headers",
        "_in_head",
        "_pause_flags",
        "_reject",
        "_stopped",
        "_tunnel_early",
        "_url",
        "cfg",
        "client_ip",
        "client_port",
        "closed",
        "draining",
        "parser",
        "queue",
        "server",
        "task",
        "tls",
        "transport",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.cfg = server.listener
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.client_port = 0
        # Requests answered in order; a list (a deque costs 0.7 KB per idle connection),
        # at most max_pipelined_requests long.
        self.queue: list[_Pending] = []
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.draining = False
        self.tls: TlsInfo | None = None  # the TLS session, on an HTTPS listener
        self._tunnel_early = b""  # bytes read after a WebSocket upgrade request
        # parsing state of the request being received
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._head_raw_bytes = 0  # whole reads that ended inside the head
        self._in_head = False
        self._current: _Pending | None = None  # headers done, body still arriving
        self._current_body: StreamBody | None = None
        self._chunked = False  # the body being received is chunked
        self._chunked_raw = 0  # raw bytes read while receiving it
        self._chunks = 0
        self._stopped = False  # no more requests will be parsed on this connection
        self._reject: Refused | None = None
        # flow control
        self._pause_flags = 0
        self._write_paused = False
        self._drain_waiter = None
        # One deadline at a time: head, body or idle; `_deadline_cb` says which.
        self._deadline = Deadline(self.loop, self._on_deadline)
        self._deadline_cb: Callable[[], None] = self._on_idle_timeout

    # --- connection lifecycle -------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip, self.client_port = peer[0], peer[1]
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:  # (the handshake is done by now)
            self.tls = tls_info(sslobj)
            if self.tls.alpn == "h2":
                self.switch_to_h2(b"")
                return
        self.server.connections.add(self)
        self._set_timer(self.cfg.header_timeout_s, self._on_idle_timeout)

    def switch_to_h2(self, data: bytes) -> None:
        """Hand the connection to an HTTP/2 protocol (ALPN chose ``h2``, or ``data``,
        the first bytes read, start with the HTTP/2 client preface)."""
        transport = self.transport
        assert transport is not None
        self.closed = True  # this protocol is done: nothing of it runs any more
        self._deadline.cancel()
        self.server.connections.discard(self)
        h2 = H2ServerProtocol(self.server, self.tls, self.client_ip, self.client_port)
        transport.set_protocol(h2)
        h2.connection_made(transport)
        if data:
            h2.data_received(data)

    def running(self) -> list[asyncio.Task[None]]:
        """The task answering this connection's requests, if any."""
        return [self.task] if self.task is not None else []

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self._deadline.cancel()
        if self._current_body is not None:
            self._current_body.fail(ClientDisconnected())
        for pending in self.queue:
            body = pending.request.body if pending.request is not None else None
            if isinstance(body, StreamBody):
                body.fail(ClientDisconnected())
        self._fail_drain(ClientDisconnected())
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.server.connection_closed()

    async def _drain(self) -> None:
        if self.closed:
            raise ClientDisconnected()
        if not self._write_paused:
            return
        waiter = self._drain_future()
        try:
            async with asyncio.timeout(self.cfg.send_timeout_s):
                await waiter
        except TimeoutError:
            raise ClientDisconnected(
                f"client read nothing for {self.cfg.send_timeout_s:g} s"
            ) from None

    def _pause(self, flag: int) -> None:
        if not self._pause_flags and self.transport is not None:
            self.transport.pause_reading()
            if self._current_body is not None:
                self._cancel_timer()  # waiting on us, not on the client
        self._pause_flags |= flag

    def _resume(self, flag: int) -> None:
        if not self._pause_flags & flag:
            return
        self._pause_flags &= ~flag
        if not self._pause_flags and self.transport is not None and not self.closed:
            self.transport.resume_reading()
            if self._current_body is not None:
                self._set_timer(self.cfg.body_timeout_s, self._on_body_timeout)

    def _pause_body(self) -> None:
        self._pause(_PAUSE_BODY)

    def _resume_body(self) -> None:
        self._resume(_PAUSE_BODY)

    # --- timers ----------------------------------------------------------
    def _set_timer(self, delay_s: float, callback: Callable[[], None]) -> None:
        self._deadline_cb = callback
        self._deadline.set(delay_s)

    def _cancel_timer(self) -> None:
        self._deadline.clear()

    def _on_deadline(self) -> None:
        if not self.closed:
            self._deadline_cb()

    def _on_idle_timeout(self) -> None:
        if self._in_head:
            self._protocol_error(Refused(408, "request header timeout"))
        elif not self.queue and self.transport is not None:
            self.transport.close()

    def _on_body_timeout(self) -> None:
        body = self._current_body
        if body is not None:
            body.fail(BodyTimeout(f"no request body data for {self.cfg.body_timeout_s:g} s"))
            self._stop_reading()

    # --- parsing ---------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        was_in_head = self._in_head
        chunked_body = self._current_body if self._chunked else None
        try:
            self.parser.feed_data(data)
            if was_in_head and self._in_head:
                # A header line still unfinished: httptools only reports whole
                # fields, so count raw bytes too (overshoot is at most one read).
                self._head_raw_bytes += len(data)
                if self._head_raw_bytes > self.cfg.max_header_bytes:
                    self._protocol_error(Refused(431, "request header fields too large"))
            elif chunked_body is not None and chunked_body is self._current_body:
                self._check_chunk_overhead(chunked_body, len(data))
        except httptools.HttpParserUpgrade as exc:
            # No more HTTP/1.1 on this connection after an upgrade request: a
            # WebSocket one may become a tunnel (the bytes after it are its first
            # data); any other is answered normally and the connection closed.
            if self.queue:
                last = self.queue[-1]
                last.keep_alive = False
                if last.request is not None and last.request.upgrade is not None:
                    self._tunnel_early += data[int(exc.args[0]) :]
            self._stop_reading()
        except httptools.HttpParserError as exc:
            reject = self._reject or Refused(400, f"malformed request: {exc}")
            self._reject = None
            current = self._current_body
            if current is not None and self._current is not None:
                self._current.keep_alive = False
                current.fail(BadRequest(reject.detail))
                self._stop_reading()
            else:
                self._protocol_error(reject)
        if self.queue and self.task is None:
            self.task = self.loop.create_task(self._run())

    def eof_received(self) -> bool | None:
        if self._current_body is not None:
            self._current_body.fail(ClientDisconnected("client closed while sending the body"))
        self._stopped = True
        if not self.queue and self.transport is not None:
            self.transport.close()
        # Keep the write side open to answer what is queued (TLS in asyncio cannot
        # half-close: the transport closes after an EOF whatever is answered).
        return self.tls is None or None

    def _check_chunk_overhead(self, body: StreamBody, read: int) -> None:
        """Chunk framing and trailers are not body: bound them (an endless trailer
        line would otherwise sit in the parser's buffer until the body timeout)."""
        self._chunked_raw += read
        if framing_too_large(
            self._chunked_raw, body.received, self._chunks, self.cfg.max_header_bytes
        ):
            body.fail(BadRequest("chunk framing or trailers too large"))
            if self._current is not None:
                self._current.keep_alive = False
            self._stop_reading()

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._head_raw_bytes = 0
        self._in_head = True
        self._set_timer(self.cfg.header_timeout_s, self._on_idle_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.cfg.max_header_bytes:
            self._raise(431, "request header fields too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.cfg.max_header_bytes:
            self._raise(431, "request header fields too large")
        if self._in_head:  # fields after a chunked body are trailers: counted, dropped
            self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def _raise(self, status: int, detail: str) -> None:
        self._reject = Refused(status, detail)
        raise self._reject

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_timer()
        parser = self.parser
        headers = self._headers
        version = parser.get_http_version()
        host_count = 0
        host = ""
        te: str | None = None
        content_length: int | None = None
        expect_continue = False
        connection: str | None = None
        for name, value in headers:
            if name == "host":
                host_count += 1
                host = value
            elif name == "connection":
                connection = value if connection is None else f"{connection},{value}"
            elif name == "transfer-encoding":
                te = value if te is None else f"{te}, {value}"
            elif name == "content-length":
                content_length = int(value)  # llhttp validated digits and duplicates
            elif name == "expect" and value.strip().lower() == "100-continue":
                expect_continue = True
        if host_count == 0 and version == "1.1":
            self._raise(400, "missing Host header")
        if host_count > 1:
            self._raise(400, "more than one Host header")
        chunked = False
        if te is not None:
            codings = [c.strip().lower() for c in te.split(",")]
            if codings[-1] != "chunked":
                self._raise(400, "Transfer-Encoding must end with chunked")
            if len(codings) > 1:
                self._raise(501, f"unsupported transfer coding {te!r}")
            chunked = True
        limit = self.server.max_body_bytes
        if content_length is not None and limit is not None and content_length > limit:
            self._raise(413, f"request body larger than {limit} bytes")
        body: Body
        self._chunked = chunked
        self._chunked_raw = 0
        self._chunks = 0
        if chunked or (content_length is not None and content_length > 0):
            stream = StreamBody(
                None if chunked else content_length, self._pause_body, self._resume_body
            )
            body = stream
            self._current_body = stream
            self._set_timer(self.cfg.body_timeout_s, self._on_body_timeout)
        else:
            body = BytesBody(b"")
        upgrade: str | None = None
        if connection is not None:
            # Fields named by Connection are hop-by-hop: they end here, before any
            # middleware, so they can never remove what the gateway adds later.
            named = connection_tokens(connection) - _NEVER_HOP
            if "upgrade" in named:
                upgrade = self._upgrade_asked(headers, content_length, te)
            if any(name in named for name, _ in headers):
                headers[:] = [(n, v) for n, v in headers if n not in named]
        method = parser.get_method().decode("ascii")
        target = self._url.decode("latin-1")
        if not target.startswith("/"):
            if method == "CONNECT":
                self._raise(405, "CONNECT is not supported")
            if "://" not in target:
                self._raise(400, "the request target must be a path (origin-form)")
            target, host = self._origin_form(target, headers)
        if "/." in target or "%2" in target:
            target = normalize_target(target)
        request = Request(
            method,
            target,
            Headers.from_lower(headers),
            body,
            client_ip=self.client_ip,
            client_port=self.client_port,
            http_version=version,
            host=host,
        )
        if self.tls is not None:
            request.scheme = "https"
            request.tls = self.tls
        if upgrade is not None:
            request.upgrade = upgrade
        # HTTP/1.0 with Transfer-Encoding: framing is suspect (RFC 9112 6.1), close after.
        keep_alive = parser.should_keep_alive() and not (te is not None and version == "1.0")
        pending = _Pending(request, keep_alive)
        if expect_continue and self._current_body is not None and version == "1.1":
            self._current_body.on_first_read(lambda: self._send_continue(pending))
        self._current = pending
        self.queue.append(pending)
        self._headers = []  # the request owns the list now

    def _upgrade_asked(
        self, headers: list[tuple[str, str]], content_length: int | None, te: str | None
    ) -> str | None:
        """What a request naming ``upgrade`` in Connection upgrades to: "websocket",
        or None (no Upgrade field, or a protocol the gateway does not tunnel: the
        field is dropped with the other Connection-named ones). ``h2c`` is refused
        (400): forwarded, it would let a client speak HTTP/2 to the upstream past
        the route's rules (h2c smuggling)."""
        value = ",".join(v for n, v in headers if n == "upgrade")
        if not value:
            return None
        protocols = [p.strip().lower() for p in value.split(",")]
        if any(p.startswith("h2c") for p in protocols):
            self._raise(400, "Upgrade: h2c is not supported")
        if "websocket" not in protocols:
            return None
        if self.parser.get_method() != b"GET" or te is not None or content_length:
            self._raise(400, "a WebSocket upgrade is a GET request without a body")
        return "websocket"

    def _origin_form(self, target: str, headers: list[tuple[str, str]]) -> tuple[str, str]:
        """Absolute-form target: route on its path; its authority replaces Host (RFC 9112 3.2.2).

        Returns (path, authority)."""
        scheme, _, rest = target.partition("://")
        if scheme.lower() not in ("http", "https"):
            self._raise(400, f"unsupported request target scheme {scheme!r}")
        slash = rest.find("/")
        query = rest.find("?")
        cut = min(i for i in (slash, query, len(rest)) if i != -1)
        authority, path = rest[:cut], rest[cut:]
        if not authority or "@" in authority:
            self._raise(400, "invalid authority in the request target")
        headers[:] = [(n, v) for n, v in headers if n != "host"]
        headers.append(("host", authority))
        if not path.startswith("/"):
            path = "/" + path
        return path, authority

    def on_body(self, data: bytes) -> None:
        body = self._current_body
        if body is None:
            return
        limit = self.server.max_body_bytes
        if limit is not None and body.received + len(data) > limit:
            body.fail(BodyTooLarge(limit))
            if self._current is not None:
                self._current.keep_alive = False
            self._stop_reading()
            raise Refused(413, "request body too large")  # stop the parser here
        body.feed(data)
        if not self._pause_flags:
            self._set_timer(self.cfg.body_timeout_s, self._on_body_timeout)

    def on_message_complete(self) -> None:
        if self._current_body is not None:
            self._current_body.feed_eof()
            self._cancel_timer()
        self._current_body = None
        self._current = None
        if len(self.queue) >= self.cfg.max_pipelined_requests:
            self._pause(_PAUSE_PIPELINE)  # enough parsed ahead; bodies of queued ones are in

    def _stop_reading(self) -> None:
        self._stopped = True
        self._cancel_timer()
        self._pause(_PAUSE_STOPPED)

    def _protocol_error(self, reject: Refused) -> None:
        """Answer ``reject`` after the requests already queued, then close."""
        self._in_head = False
        self._stop_reading()
        self.queue.append(_Pending(None, False, reject))
        if self.task is None:
            self.task = self.loop.create_task(self._run())

    def _send_continue(self, pending: _Pending) -> None:
        if (
            not pending.response_started
            and not pending.continue_sent
            and self.transport is not None
            and not self.closed
            and self.queue
            and self.queue[0] is pending
        ):
            pending.continue_sent = True
            self.transport.write(_CONTINUE)

    # --- answering -------------------------------------------------------
    async def _run(self) -> None:
        entry: AccessEntry | None = None
        alog: AccessLog | None = None
        pending: _Pending | None = None
        try:
            while self.queue and not self.closed:
                pending = self.queue[0]
                if pending.error is not None:
                    err = pending.error
                    resp = error_response(err.status, err.detail, new_request_id())
                    await self._write_response(pending, resp, False)
                    self._close()
                    return
                request = pending.request
                assert request is not None
                alog = self.server.access_log
                if alog is not None:
                    entry = AccessEntry(request)
                early = request.body.error if isinstance(request.body, StreamBody) else None
                if early is not None:  # framing already broken: don't involve the app
                    resp = error_response(early.status, early.detail, new_request_id())
                else:
                    resp = await run_app(self.server, request, entry)
                if resp.status == ClientDisconnected.status:  # client gone: nobody to answer
                    await resp.body.aclose()
                    self._close()
                    return  # (logged as aborted below)
                if resp.status == 101:
                    if isinstance(resp, UpgradeResponse) and request.upgrade is not None:
                        to_client, from_client = await self._tunnel(pending, resp)
                        if entry is not None and alog is not None:
                            entry.status = 101
                            entry.bytes_out = to_client
                            entry.body = Body(from_client)  # bytes_in: what the client sent
                            alog.emit(entry)
                            entry = None
                        return
                    log.error("a middleware answered 101 without an upstream upgrade: 502")
                    await resp.body.aclose()
                    resp = error_response(502, "invalid protocol switch", new_request_id())
                ok, keep = await self._write_response(pending, resp, self._keep(pending, False))
                if entry is not None and alog is not None:
                    entry.status = pending.status
                    entry.bytes_out = pending.sent
                    entry.aborted = not ok
                    alog.emit(entry)
                    entry = None
                keep = keep and self._keep(pending, True)
                if not self._finish(ok, keep):
                    return
            self._await_next()
        finally:
            self.task = None
            if entry is not None and alog is not None:
                # Client gone (or the server stopped) before the response was sent
                # in full: log what is known; 499 when no response head went out.
                entry.aborted = True
                if pending is not None and pending.status:
                    entry.status = pending.status
                    entry.bytes_out = pending.sent
                else:
                    entry.status = ClientDisconnected.status
                alog.emit(entry)

    def _keep(self, pending: _Pending, answered: bool) -> bool:
        """Whether the connection may serve another request after this one.

        Asked before the head (for its Connection field) and again once the
        response is sent: an upstream may answer early and still read the whole
        body (an echo), so a body still being read keeps the connection until
        the end; one nobody reads (or unfinished by then) closes it.
        """
        if not pending.keep_alive or self.draining:
            return False
        body = pending.request.body if pending.request is not None else None
        if not isinstance(body, StreamBody) or body.at_eof:
            return True
        # The rest of the body is still on the wire: fine only while someone reads it.
        return not answered and body.being_read

    def _finish(self, ok: bool, keep: bool) -> bool:
        """The head of the queue is answered; False when the connection is done."""
        self.queue.pop(0)
        if self._pause_flags & _PAUSE_PIPELINE and len(self.queue) < (
            self.cfg.max_pipelined_requests
        ):
            self._resume(_PAUSE_PIPELINE)
        if not ok or not keep:
            self._close()
            return False
        return True

    def _await_next(self) -> None:
        """Nothing left to answer: wait for the next request, or close when stopping."""
        if self.closed or self._in_head or self._current is not None:
            return
        if self.draining or self._stopped:
            self._close()
        else:
            self._set_timer(self.cfg.idle_timeout_s, self._on_idle_timeout)

    def _close(self) -> None:
        self._stopped = True  # whatever still arrives is not parsed
        if self.transport is not None and not self.closed:
            self.transport.close()

    async def _write_response(
        self, pending: _Pending, resp: Response, keep: bool
    ) -> tuple[bool, bool]:
        """Send ``resp``; return (connection still usable, keep-alive).

        A body already in memory goes out with the head in one write; any other
        is streamed.
        """
        transport = self.transport
        assert transport is not None
        pending.response_started = True
        request = pending.request
        status = resp.status
        pending.status = status
        body = resp.body
        head_only = (
            (request is not None and request.method == "HEAD")
            or status in _NO_BODY_STATUS
            or status < 200
        )
        lines = [f"{n}: {v}" for n, v in resp.headers.raw() if n not in _FRAMING]
        for line in lines:  # memchr-fast checks, where counting went through every char
            if "\n" in line or "\r" in line:
                return await self._invalid_head(
                    pending, resp, keep, "a response header has a line break"
                )
        parts = [status_line(status)]
        if lines:
            parts += ("\r\n".join(lines), "\r\n")
        if "date" not in resp.headers:
            parts.append(f"date: {http_date.get()}\r\n")
        chunked = False
        length = body.length
        if head_only:
            if length is not None and status != 204 and status >= 200:
                parts.append(f"content-length: {length}\r\n")
        elif length is not None:
            parts.append(f"content-length: {length}\r\n")
        elif request is not None and request.http_version == "1.1":
            parts.append("transfer-encoding: chunked\r\n")
            chunked = True
        else:
            keep = False  # HTTP/1.0 without a length: the close ends the body
        if not keep:
            parts.append("connection: close\r\n")
        elif request is not None and request.http_version == "1.0":
            parts.append("connection: keep-alive\r\n")
        parts.append("\r\n")
        try:
            head = "".join(parts).encode("latin-1")
        except UnicodeEncodeError:
            return await self._invalid_head(pending, resp, keep, "a response header is not latin-1")
        if head_only:
            await body.aclose()
            transport.write(head)
            return True, keep
        if isinstance(body, BytesBody):
            data = body.take()
            pending.sent = len(data)
            transport.write(head + data)
            return True, keep
        if isinstance(body, StreamBody) and body.is_complete():  # whole body already here
            data = body.take_all()
            if length is not None and len(data) != length:
                log.warning("response body ended after %d of %d bytes", len(data), length)
                transport.abort()
                return False, keep
            pending.sent = len(data)
            if chunked:
                data = (frame_chunk(data) if data else b"") + _last_chunk(body, request)
            transport.write(head + data)
            return True, keep
        return await self._stream_body(pending, transport, head, body, chunked), keep

    async def _invalid_head(
        self, pending: _Pending, resp: Response, keep: bool, problem: str
    ) -> tuple[bool, bool]:
        log.error("%s; answering 500", problem)
        await resp.body.aclose()
        error = error_response(500, "invalid response header", new_request_id())
        return await self._write_response(pending, error, keep)

    async def _stream_body(
        self,
        pending: _Pending,
        transport: asyncio.Transport,
        head: bytes,
        body: Body,
        chunked: bool,
    ) -> bool:
        sent = 0
        try:
            chunk = await body.read()
            out = head + (frame_chunk(chunk) if chunked and chunk else chunk)
            sent = pending.sent = len(chunk)
            transport.write(out)
            while chunk:
                if self._write_paused:
                    await self._drain()
                elif self.closed:
                    raise ClientDisconnected()
                chunk = await body.read()
                if not chunk:
                    break
                sent += len(chunk)
                pending.sent = sent
                transport.write(frame_chunk(chunk) if chunked else chunk)
            if chunked:
                transport.write(_last_chunk(body, pending.request))
        except (Exception, asyncio.CancelledError) as exc:
            await body.aclose()
            if not self.closed:
                if not isinstance(exc, ClientDisconnected | asyncio.CancelledError):
                    log.warning("response body failed after the head was sent: %s", exc)
                transport.abort()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return False
        if body.length is not None and sent != body.length:
            log.warning("response body ended after %d of %d bytes", sent, body.length)
            transport.abort()
            return False
        return True

    # --- upgrade: WebSocket tunnel -----------------------------------------
    async def _tunnel(self, pending: _Pending, resp: UpgradeResponse) -> tuple[int, int]:
        """Answer the 101 and tunnel bytes between the client and the upstream
        connection until either closes; return (bytes to the client, bytes from it).
        This connection serves no more requests."""
        transport = self.transport
        upstream = resp.upstream
        assert transport is not None and pending.request is not None
        pending.response_started = True
        pending.status = 101
        fields = [f"{n}: {v}\r\n" for n, v in resp.headers.raw() if n not in _FRAMING]
        block = "".join(fields)
        if block.count("\n") != len(fields) or block.count("\r") != len(fields):
            log.error("a 101 response header has a line break; closing")
            await resp.body.aclose()
            self._close()
            return 0, 0
        head = (
            f"{status_line(101)}{block}connection: upgrade\r\n"
            f"upgrade: {pending.request.upgrade}\r\n\r\n"
        ).encode("latin-1", "replace")
        upstream_transport = upstream.transport
        if self.closed or upstream.closed or upstream_transport is None:
            await resp.body.aclose()
            self._close()
            return 0, 0
        resp.take()
        self._cancel_timer()
        self._stopped = True
        tunnel = Tunnel(
            transport,
            upstream_transport,
            resp.idle_timeout_s,
            on_upstream_lost=upstream.connection_lost,
        )
        stats = self.server.tunnels
        stats.open += 1
        stats.total += 1
        transport.write(head)
        early, self._tunnel_early = self._tunnel_early, b""
        tunnel.start(
            client_paused=self._write_paused,
            upstream_paused=upstream.write_paused,
            client_early=early,
            upstream_early=upstream.detach(),
        )
        try:
            await tunnel.closed
        finally:
            tunnel.abort()  # (no-op when both sides are gone; cancelled: drop them)
            stats.open -= 1
            stats.bytes_to_client += tunnel.to_client
            stats.bytes_from_client += tunnel.from_client
            self.closed = True
            self._deadline.cancel()
            self.server.connections.discard(self)
            self.server.connection_closed()
        return tunnel.to_client, tunnel.from_client

    # --- draining ----------------------------------------------------------
    def start_drain(self) -> None:
        """Finish what is in flight, then close; close now when idle."""
        self.draining = True
        if not self.queue and not self._in_head and self._current is None:
            self._close()


class _PrefaceSniffer(asyncio.Protocol):
    """The first reads of a plaintext connection on a listener serving h2c: HTTP/2
    with prior knowledge when they start with the client preface, else HTTP/1.1.

    It stands in front of the connection's `HttpServerProtocol` (which starts its
    header timeout and is counted as usual) and steps aside for good with
    ``set_protocol`` after one check, so later reads cost nothing more."""

    __slots__ = ("_early", "http", "transport")

    def __init__(self, server: HttpServer) -> None:
        self.http = HttpServerProtocol(server)
        self.transport: asyncio.Transport | None = None
        self._early = b""  # a first read shorter than the preface, and a prefix of it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.http.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._early:
            data, self._early = self._early + data, b""
        transport = self.transport
        assert transport is not None
        if data.startswith(PREFACE):
            self.http.switch_to_h2(data)
        elif len(data) < len(PREFACE) and PREFACE.startswith(data):
            self._early = data  # the preface split across reads: wait for the rest
        else:
            transport.set_protocol(self.http)
            self.http.data_received(data)

    def eof_received(self) -> bool | None:
        return self.http.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.http.connection_lost(exc)

    def pause_writing(self) -> None:
        self.http.pause_writing()

    def resume_writing(self) -> None:
        self.http.resume_writing()


class HttpServer:
    """Listener plus the set of live connections, with graceful drain."""

    def __init__(
        self,
        app: App,
        listener: ListenerConfig,
        max_body_bytes: int | None,
        *,
        reuse_port: bool = False,
        unix_path: str | None = None,
        tls: ServerTls | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``unix_path``: listen on this Unix socket instead of ``listener``'s host and
        port (a stale socket file there is replaced). ``tls``: terminate TLS with it
        (its certificate reload runs from `start` to `shutdown`); ``ssl_context``: or
        with this fixed context (an internal listener, e.g. the control plane's). The
        client's certificate, if any, reaches the app in ``Request.tls``."""
        assert tls is None or ssl_context is None, "give tls or ssl_context, not both"
        self.ssl_context = ssl_context
        self.app = app
        self.tls = tls
        self.unix_path = unix_path
        # The app's access log is fed by this server (GatewayApp; not the admin app).
        self.logging_app: LoggingApp | None = (
            cast(LoggingApp, app) if hasattr(app, "access_log") else None
        )
        self.listener = listener
        self.max_body_bytes = max_body_bytes
        self.reuse_port = reuse_port
        self.loop = asyncio.get_running_loop()
        self.connections: set[HttpServerProtocol | H2ServerProtocol] = set()
        self.tunnels = TunnelStats()
        self._server: asyncio.base_events.Server | None = None
        self._all_closed: asyncio.Event | None = None
        self.port = 0

    async def start(self) -> None:
        if self.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_path)
            self._server = await self.loop.create_unix_server(
                lambda: HttpServerProtocol(self), path=self.unix_path
            )
            return
        sock = bind_socket(self.listener.host, self.listener.port, reuse_port=self.reuse_port)
        tls = self.tls
        # h2c with prior knowledge: only when asked for (`listener.http2: true`).
        plain_h2 = self.listener.http2 and tls is None and self.ssl_context is None
        protocol = _PrefaceSniffer if plain_h2 else HttpServerProtocol
        self._server = await self.loop.create_server(
            lambda: protocol(self),
            sock=sock,
            backlog=self.listener.backlog,
            ssl=tls.context if tls is not None else self.ssl_context,
            ssl_handshake_timeout=(
                tls.config.handshake_timeout_s
                if tls is not None
                else self.listener.header_timeout_s
                if self.ssl_context is not None
                else None
            ),
        )
        self.port = sock.getsockname()[1]
        if tls is not None:
            tls.start()

    @property
    def access_log(self) -> AccessLog | None:
        app = self.logging_app
        return app.access_log if app is not None else None

    def connection_closed(self) -> None:
        if self._all_closed is not None and not self.connections:
            self._all_closed.set()

    async def shutdown(self, drain_timeout_s: float) -> None:
        """Stop accepting, let in-flight requests finish (bounded), then close."""
        if self._server is not None:
            self._server.close()
        if self.tls is not None:
            await self.tls.aclose()
        self._all_closed = asyncio.Event()
        for conn in list(self.connections):
            conn.start_drain()
        if self.connections:
            try:
                async with asyncio.timeout(drain_timeout_s):
                    await self._all_closed.wait()
            except TimeoutError:
                log.warning(
                    "drain timeout (%g s): closing %d connection(s)",
                    drain_timeout_s,
                    len(self.connections),
                )
        tasks = [task for c in self.connections for task in c.running()]
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if tasks:  # cancelled by the aborts: let them log their requests as aborted
            await asyncio.wait(tasks, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
        if self.logging_app is not None:
            await self.logging_app.aclose()  # writes the queued access log lines


def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening-ready TCP socket (IPv4 or IPv6 by the address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
