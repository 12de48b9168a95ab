"""HTTP/2 server: an `asyncio.Protocol` per connection on the sans-IO ``h2`` library.

A connection gets here from `HttpServerProtocol` when TLS negotiated ``h2`` by
ALPN, or when a plaintext connection opened with the HTTP/2 client preface (h2c
with prior knowledge). Each stream becomes a `Request` answered by the same app
as HTTP/1.1, in its own task, so streams are concurrent and one stream's failure
(an error answer, or RST_STREAM once its response has started) leaves the others
alone.

Flow control both ways: a request body's bytes are granted back to the client
(WINDOW_UPDATE) only while its consumer keeps up (the `StreamBody` buffer is
below its high-water mark), so a slow upstream never makes the gateway buffer
more than the buffer plus one window per stream; a response is sent in DATA
frames no larger than the client's window and maximum frame size, and waits for
the window (and for the socket's write buffer) to open, so a slow reader slows
the upstream read instead of filling memory. ``send_timeout_s`` bounds each wait.

The connection has one deadline: the client preface and first request must come
within ``header_timeout_s``, and a connection without open streams is closed
(GOAWAY) after ``idle_timeout_s``. Each request body has its own
``body_timeout_s`` deadline. A drain sends GOAWAY naming the last stream taken,
lets the streams in flight finish and refuses newer ones (REFUSED_STREAM).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hpack import Encoder, NeverIndexedHeaderTuple
from hyperframe.frame import GoAwayFrame

from meshgate.http.dates import http_date
from meshgate.http.errors import (
    BodyTimeout,
    BodyTooLarge,
    ClientDisconnected,
    HTTPError,
    Refused,
)
from meshgate.http.grpc import error_as_grpc, is_grpc
from meshgate.http.messages import (
    Body,
    BytesBody,
    ErrorResponse,
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
from meshgate.io.timers import Deadline
from meshgate.observability.accesslog import AccessEntry

if TYPE_CHECKING:
    from meshgate.io.server import HttpServer

log = logging.getLogger("meshgate.server")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""What an HTTP/2 client sends first (RFC 9113 3.4)."""

# The protocol's default stream window (SETTINGS_INITIAL_WINDOW_SIZE); a request
# body's buffer pauses (stops granting window) past the same size.
STREAM_WINDOW = 65535
MAX_WINDOW = 2**31 - 1

# Response fields never sent: the connection-specific ones, which make an HTTP/2
# message malformed (RFC 9113 8.2.2), and content-length, set from the body.
_NOT_SENT = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection", "te"}
    | {"content-length"}
)
_NO_BODY_STATUS = frozenset({204, 304})
# Values new on every response (the built-ins' request id and response time): sent
# as HPACK literals that are never indexed. Indexed, each would take a place in the
# client's dynamic table for nothing, and the encoder's table search (linear in the
# table) would go through all of them for every field of every later response.
_UNIQUE_VALUES = frozenset({"x-request-id", "x-response-time"})
_WHITESPACE = " \t"


class _PlainEncoder(Encoder):
    """HPACK without Huffman-coding the literals: hpack's Huffman coder is pure
    Python, and on a gateway's links the CPU it takes per field costs more than the
    ~25 % of literal bytes it saves (nginx and Envoy use it only when it is shorter;
    hpack cannot tell without encoding)."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return super().encode(headers, huffman=False)


def _wire_fields(headers: Headers, fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Append ``headers`` to ``fields`` as HTTP/2 sends them (h2's own outbound
    checks are off, these take their place): connection-specific fields dropped,
    values trimmed of surrounding whitespace (RFC 9113 8.2.1); ValueError for a line
    break or NUL in a value, or a name that would read as a pseudo-header."""
    for name, value in headers.raw():
        if name in _NOT_SENT:
            continue
        if "\r" in value or "\n" in value or "\0" in value:
            raise ValueError(f"response header {name!r} has a line break or NUL")
        if name.startswith(":"):
            raise ValueError(f"response header name {name!r} starts with ':'")
        field = (name.encode("latin-1"), value.strip(_WHITESPACE).encode("latin-1"))
        fields.append(NeverIndexedHeaderTuple(*field) if name in _UNIQUE_VALUES else field)
    return fields


class _Stream:
    """One request/response exchange on the connection."""

    __slots__ = (
        "body",
        "continue_expected",
        "deadline",
        "held",
        "id",
        "paused",
        "proto",
        "receiving",
        "responded",
        "sent",
        "status",
        "task",
        "waiter",
    )

    def __init__(self, proto: H2ServerProtocol, stream_id: int) -> None:
        self.proto = proto
        self.id = stream_id
        self.receiving = True  # the client has not ended the stream
        self.body: StreamBody | None = None  # the request body, while it arrives
        self.deadline: Deadline | None = None  # body_timeout_s between its DATA frames
        self.paused = False  # the body's buffer is full: received bytes are held
        self.held = 0  # flow-controlled bytes received but not granted back yet
        self.continue_expected = False  # "expect: 100-continue": send 100 on first read
        self.task: asyncio.Task[None] | None = None
        self.waiter: asyncio.Future[None] | None = None  # the send window to open
        self.responded = False  # response headers sent
        self.status = 0
        self.sent = 0  # response body bytes handed to the connection

    # StreamBody callbacks: flow control of the request body.
    def pause(self) -> None:
        self.paused = True
        if self.deadline is not None:
            self.deadline.clear()  # waiting on us, not on the client

    def resume(self) -> None:
        self.paused = False
        held, self.held = self.held, 0
        proto = self.proto
        if held and not proto.closed:
            proto.conn.acknowledge_received_data(held, self.id)
            proto.flush()
        body = self.body
        if self.deadline is not None and body is not None and not body.at_eof:
            self.deadline.set(proto.cfg.body_timeout_s)

    def on_first_read(self) -> None:
        proto = self.proto
        if self.continue_expected and not self.responded and not proto.closed:
            try:
                proto.conn.send_headers(self.id, [(b":status", b"100")])
            except ProtocolError:  # the client reset the stream meanwhile
                return
            proto.flush()

    def done(self, _task: asyncio.Task[None]) -> None:
        """Task callback: also runs for a task cancelled before it started (a stream
        reset in the same read as its HEADERS), whose ``finally`` never runs."""
        self.proto.finish(self)

    def on_body_timeout(self) -> None:
        body = self.body
        if body is not None and not self.proto.closed:
            timeout = self.proto.cfg.body_timeout_s
            body.fail(BodyTimeout(f"no request body data for {timeout:g} s"))


class H2ServerProtocol(WriteFlow):
    __slots__ = (
        "_deadline",
        "_flush_due",
        "cfg",
        "client_ip",
        "client_port",
        "closed",
        "conn",
        "draining",
        "goaway_last",
        "server",
        "streams",
        "tls",
        "transport",
    )

    def __init__(
        self, server: HttpServer, tls: TlsInfo | None, client_ip: str, client_port: int
    ) -> None:
        self.server = server
        self.cfg = cfg = server.listener
        self.loop = server.loop
        self.tls = tls
        self.client_ip = client_ip
        self.client_port = client_port
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.draining = False
        self.goaway_last: int | None = None  # last stream id named by our GOAWAY
        self.streams: dict[int, _Stream] = {}
        self._write_paused = False
        self._flush_due = False  # a flush_soon is scheduled
        self._drain_waiter = None
        self._deadline = Deadline(self.loop, self._on_idle_timeout)
        # h2's outbound header checks are off: _wire_fields does what applies to a
        # server's responses in one pass (h2's take ~8 generator steps per field).
        conn = self.conn = H2Connection(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        conn.encoder = _PlainEncoder()
        conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: cfg.http2_max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: cfg.max_header_bytes,
                SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # The advertised list size is answered with 431 on the stream; only twice
        # that (a decompression bomb) breaks the connection, in the HPACK decoder.
        conn.decoder.max_header_list_size = 2 * cfg.max_header_bytes

    # --- connection lifecycle -------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        conn = self.conn
        conn.initiate_connection()
        # One connection window for every stream's window, so a stream whose body
        # is held (slow upstream) does not stall the uploads of the others.
        streams = self.cfg.http2_max_concurrent_streams
        extra = min(streams * STREAM_WINDOW, MAX_WINDOW) - STREAM_WINDOW
        if extra > 0:
            conn.increment_flow_control_window(extra)
        self.flush()
        self._deadline.set(self.cfg.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self._deadline.cancel()
        for stream in self.streams.values():
            self._abandon(stream, ClientDisconnected())
        self._fail_drain(ClientDisconnected())
        self.server.connection_closed()

    def running(self) -> list[asyncio.Task[None]]:
        """The tasks answering this connection's streams."""
        return [s.task for s in self.streams.values() if s.task is not None]

    def flush(self) -> None:
        """Write what the h2 state machine has queued."""
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def flush_soon(self) -> None:
        """`flush` at the end of this loop iteration: a response's HEADERS, DATA and
        end, and the answers of other streams meanwhile, go out in one write."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_due = False
        self.flush()

    def _close(self) -> None:
        """Close after what is queued; the streams still running are given up."""
        for stream in self.streams.values():
            self._abandon(stream, ClientDisconnected())
        self.flush()
        if self.transport is not None and not self.closed:
            self.transport.close()

    def _on_idle_timeout(self) -> None:
        """No request within ``header_timeout_s`` of the connection's start, or no
        stream open for ``idle_timeout_s``: GOAWAY and close."""
        if self.closed or self.streams:
            return
        self._goaway()
        self._close()

    def _goaway(self) -> None:
        """Send GOAWAY(NO_ERROR) naming the last stream taken (streams up to it finish).

        Written beside the h2 state machine: its own ``close_connection`` would
        forbid sending the rest of the responses in flight."""
        if self.goaway_last is not None or self.transport is None or self.closed:
            return
        self.goaway_last = last = self.conn.highest_inbound_stream_id
        self.flush()
        self.transport.write(GoAwayFrame(0, last_stream_id=last, error_code=0).serialize())

    def start_drain(self) -> None:
        """GOAWAY; finish the streams in flight, then close (now, when there are none)."""
        self.draining = True
        self._goaway()
        if not self.streams:
            self._close()

    # --- receiving -------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:  # h2 queued GOAWAY with the error code
            log.debug("HTTP/2 protocol error from %s: %s", self.client_ip, exc)
            self._close()
            return
        for event in events:
            if isinstance(event, DataReceived):
                self._on_data(event)
            elif isinstance(event, RequestReceived):
                self._on_request(event)
            elif isinstance(event, StreamEnded):
                self._on_end(event.stream_id)
            elif isinstance(event, TrailersReceived):
                self._on_trailers(event)
            elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
                self._wake_senders(event)
            elif isinstance(event, StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    self._abandon(stream, ClientDisconnected("client reset the stream"))
            elif isinstance(event, ConnectionTerminated):
                # The client's GOAWAY: h2 sends nothing more after it, so the
                # streams in flight cannot be answered.
                self._close()
                return
        self.flush()

    def _on_request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        if self.goaway_last is not None and stream_id > self.goaway_last:
            self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) >= 2 * self.cfg.http2_max_concurrent_streams:
            # Streams the client reset whose answers are still winding down count
            # here but not in h2's limit: bound them too (the "rapid reset" attack
            # opens and resets streams to run unbounded work).
            self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        stream = _Stream(self, stream_id)
        stream.receiving = event.stream_ended is None
        self.streams[stream_id] = stream
        self._deadline.clear()  # busy: the idle deadline is set again when streams end
        request: Request | Refused
        try:
            headers = cast(list[tuple[bytes, bytes]], event.headers or [])  # header_encoding=None
            request = self._request(stream, headers)
        except Refused as exc:
            request = exc
        stream.task = self.loop.create_task(self._answer(stream, request))
        stream.task.add_done_callback(stream.done)

    def _request(self, stream: _Stream, headers: list[tuple[bytes, bytes]]) -> Request:
        """The request of a HEADERS frame (h2 checked the pseudo-header fields, the
        authority, names in lower case and no connection-specific field)."""
        method = path = authority = ""
        host: str | None = None
        content_length: str | None = None
        fields: list[tuple[str, str]] = []
        cookies: list[str] = []
        size = 0
        for raw_name, raw_value in headers:
            size += len(raw_name) + len(raw_value) + 32  # as SETTINGS_MAX_HEADER_LIST_SIZE
            value = raw_value.decode("latin-1")
            if raw_name[0] == 58:  # ":"
                if raw_name == b":method":
                    method = value
                elif raw_name == b":path":
                    path = value
                elif raw_name == b":authority":
                    authority = value
                continue
            name = raw_name.decode("latin-1")
            if name == "cookie":  # may come split (RFC 9113 8.2.3); one field for HTTP/1.1
                cookies.append(value)
                continue
            if name == "host":
                host = value
            elif name == "content-length":
                content_length = value
            elif name == "expect" and value.strip().lower() == "100-continue":
                stream.continue_expected = True
            fields.append((name, value))
        if size > self.cfg.max_header_bytes:
            raise Refused(431, "request header fields too large")
        if method == "CONNECT":
            raise Refused(405, "CONNECT is not supported")
        # h2 refused a request with neither :authority nor Host, or with both differing.
        if host is None:
            fields.insert(0, ("host", authority))  # what the upstream's HTTP/1.1 needs
        elif not authority:
            authority = host
        if cookies:
            fields.append(("cookie", "; ".join(cookies)))
        if not path.startswith("/"):
            raise Refused(400, "the request target must be a path (origin-form)")
        if "/." in path or "%2" in path:
            path = normalize_target(path)
        length: int | None = None
        if content_length is not None:
            length = int(content_length)  # h2 checked it is a number matching the DATA
            limit = self.server.max_body_bytes
            if limit is not None and length > limit:
                raise Refused(413, f"request body larger than {limit} bytes")
        body: Body
        if not stream.receiving:
            body = BytesBody(b"")
        else:
            stream.body = stream_body = StreamBody(
                length,
                stream.pause,
                stream.resume,
                high_water=STREAM_WINDOW,
                on_abandon=stream.resume,
            )
            if stream.continue_expected:
                stream_body.on_first_read(stream.on_first_read)
            stream.deadline = Deadline(self.loop, stream.on_body_timeout)
            stream.deadline.set(self.cfg.body_timeout_s)
            body = stream_body
        request = Request(
            method,
            path,
            Headers.from_lower(fields),
            body,
            client_ip=self.client_ip,
            client_port=self.client_port,
            http_version="2",
            host=authority,
        )
        if self.tls is not None:
            request.scheme = "https"
            request.tls = self.tls
        return request

    def _on_data(self, event: DataReceived) -> None:
        stream_id = event.stream_id
        size = event.flow_controlled_length or 0
        data = event.data or b""
        stream = self.streams.get(stream_id)
        body = stream.body if stream is not None else None
        if stream is None or body is None or body.consumed or body.error is not None:
            self.conn.acknowledge_received_data(size, stream_id)  # nobody wants it
            return
        limit = self.server.max_body_bytes
        if limit is not None and body.received + len(data) > limit:
            body.fail(BodyTooLarge(limit))
            self.conn.acknowledge_received_data(size, stream_id)
            if stream.deadline is not None:
                stream.deadline.cancel()
            return
        body.feed(data)
        if stream.paused:
            stream.held += size
        else:
            self.conn.acknowledge_received_data(size, stream_id)
            if stream.deadline is not None:
                stream.deadline.set(self.cfg.body_timeout_s)

    def _on_trailers(self, event: TrailersReceived) -> None:
        """Request trailers: on the body, for an HTTP/2 upstream (StreamEnded follows)."""
        stream = self.streams.get(event.stream_id or 0)
        if stream is not None and stream.body is not None:
            headers = cast(list[tuple[bytes, bytes]], event.headers or [])
            stream.body.trailers = Headers.from_lower(
                [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
            )

    def _on_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.receiving = False
        if stream.body is None:
            return
        stream.body.feed_eof()
        if stream.deadline is not None:
            stream.deadline.cancel()

    def _wake_senders(self, event: WindowUpdated | RemoteSettingsChanged) -> None:
        """A window opened (a stream's, or the connection's: every stream's)."""
        stream_id = event.stream_id if isinstance(event, WindowUpdated) else 0
        if stream_id:
            stream = self.streams.get(stream_id)
            targets = [stream] if stream is not None else []
        else:
            targets = list(self.streams.values())
        for stream in targets:
            waiter = stream.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _abandon(self, stream: _Stream, exc: HTTPError) -> None:
        """The client reset the stream or went away: stop its body and its answer."""
        if stream.body is not None:
            stream.body.fail(exc)
        if stream.deadline is not None:
            stream.deadline.cancel()
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()

    # --- answering ---------------------------------------------------------
    async def _answer(self, stream: _Stream, request: Request | Refused) -> None:
        entry: AccessEntry | None = None
        ok = False
        try:
            if isinstance(request, Refused):
                resp = error_response(request.status, request.detail, new_request_id())
                ok = await self._respond(stream, "GET", resp)
                return
            if self.server.access_log is not None:
                entry = AccessEntry(request)
            resp = await run_app(self.server, request, entry)
            if resp.status == ClientDisconnected.status:  # client gone: nobody to answer
                await resp.body.aclose()
                self._reset(stream, ErrorCodes.CANCEL)
                return
            if resp.status < 200:  # no protocol switch (nor a stray 1xx) in HTTP/2
                log.error("a middleware answered %d on HTTP/2: 502", resp.status)
                await resp.body.aclose()
                resp = error_response(502, "invalid protocol switch", new_request_id())
            if isinstance(resp, ErrorResponse) and is_grpc(request):
                resp = error_as_grpc(resp.status, resp.message, resp.headers)
            ok = await self._respond(stream, request.method, resp)
        finally:
            if entry is not None:
                alog = self.server.access_log
                if alog is not None:
                    entry.status = stream.status or ClientDisconnected.status
                    entry.bytes_out = stream.sent
                    entry.aborted = not ok
                    alog.emit(entry)

    def _reset(self, stream: _Stream, code: ErrorCodes) -> None:
        if self.closed:
            return
        try:
            self.conn.reset_stream(stream.id, code)
        except ProtocolError:  # closed meanwhile (both sides ended, or the client reset it)
            return
        self.flush()

    def finish(self, stream: _Stream) -> None:
        """The stream's answer is over: stop a request body nobody will read, give
        back the window its held bytes took, and forget it."""
        if stream.receiving and stream.responded and not self.closed:
            # Answered before the whole request came (RFC 9113 8.1): no more of it.
            if stream.body is not None:
                stream.body.fail(ClientDisconnected())
            self._reset(stream, ErrorCodes.NO_ERROR)
        if stream.held and not self.closed:
            self.conn.acknowledge_received_data(stream.held, stream.id)
            stream.held = 0
            self.flush()
        if stream.deadline is not None:
            stream.deadline.cancel()
        self.streams.pop(stream.id, None)
        if self.closed or self.streams:
            return
        if self.draining:
            self._close()
        else:
            self._deadline.set(self.cfg.idle_timeout_s)

    async def _respond(self, stream: _Stream, method: str, resp: Response) -> bool:
        """Send ``resp`` on the stream; False when it could not be sent whole (the
        stream is reset then, the connection serves on)."""
        status = resp.status
        body = resp.body
        try:
            fields = _wire_fields(resp.headers, [(b":status", str(status).encode())])
        except (ValueError, UnicodeEncodeError) as exc:
            log.error("%s; answering 500", exc)
            await body.aclose()
            error = error_response(500, "invalid response header", new_request_id())
            return await self._respond(stream, method, error)
        if "date" not in resp.headers:
            fields.append((b"date", http_date.get().encode()))
        length = body.length
        no_body = method == "HEAD" or status in _NO_BODY_STATUS
        if length is not None and status != 204:
            fields.append((b"content-length", str(length).encode()))
        stream.status = status
        try:
            if self.closed:
                raise ClientDisconnected()
            if no_body or length == 0:
                await body.aclose()
                self.conn.send_headers(stream.id, fields, end_stream=True)
                stream.responded = True
                self.flush_soon()
                return True
            self.conn.send_headers(stream.id, fields)
            stream.responded = True
            self.flush_soon()
            if isinstance(body, BytesBody):
                await self._send(stream, body.take())
            else:
                while chunk := await body.read():
                    await self._send(stream, chunk)
            if length is not None and stream.sent != length:
                log.warning("response body ended after %d of %d bytes", stream.sent, length)
                self._reset(stream, ErrorCodes.INTERNAL_ERROR)
                return False
            trailers = body.trailers
            if trailers:
                fields = _wire_fields(trailers, [])
                self.conn.send_headers(stream.id, fields, end_stream=True)
            else:
                self.conn.end_stream(stream.id)
            self.flush_soon()
            return True
        except asyncio.CancelledError:  # the client reset the stream or left
            await body.aclose()
            raise
        except ClientDisconnected:  # gone, or no window / no reads for send_timeout_s
            await body.aclose()
            self._reset(stream, ErrorCodes.CANCEL)
            return False
        except Exception as exc:  # e.g. the upstream body broke after the head
            await body.aclose()
            log.warning("HTTP/2 response on stream %d failed: %s", stream.id, exc)
            self._reset(stream, ErrorCodes.INTERNAL_ERROR)
            return False

    async def _send(self, stream: _Stream, data: bytes) -> None:
        """DATA frames within the client's window and frame size, written together
        (one write per chunk while the window allows)."""
        conn = self.conn
        view = memoryview(data)
        while view:
            if self.closed:
                raise ClientDisconnected()
            window = conn.local_flow_control_window(stream.id)
            if window <= 0:
                self.flush_soon()
                await self._wait(stream)
                continue
            n = min(len(view), window, conn.max_outbound_frame_size)
            conn.send_data(stream.id, view[:n])
            stream.sent += n
            view = view[n:]
        self.flush_soon()
        if self._write_paused:
            await self._drain()

    async def _wait(self, stream: _Stream) -> None:
        """Until the client opens the stream's (or the connection's) window."""
        stream.waiter = waiter = self.loop.create_future()
        try:
            async with asyncio.timeout(self.cfg.send_timeout_s):
                await waiter
        except TimeoutError:
            raise ClientDisconnected(
                f"client opened no HTTP/2 window for {self.cfg.send_timeout_s:g} s"
            ) from None
        finally:
            stream.waiter = None

    async def _drain(self) -> None:
        """Until the socket's write buffer is below its low-water mark (shared by the
        streams: shielded, so one stream cancelled does not fail the others' wait)."""
        if self.closed:
            raise ClientDisconnected()
        waiter = self._drain_future()
        try:
            async with asyncio.timeout(self.cfg.send_timeout_s):
                await asyncio.shield(waiter)
        except TimeoutError:
            raise ClientDisconnected(
                f"client read nothing for {self.cfg.send_timeout_s:g} s"
            ) from None
