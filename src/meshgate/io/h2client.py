"""HTTP/2 to upstreams: multiplexed connections on the sans-IO ``h2`` library.

An upstream with ``protocol: h2c`` (prior knowledge on plain TCP) or ``h2`` (TLS,
ALPN ``h2``) gets an `H2Pool` per instance instead of the HTTP/1.1 `Pool`: a few
`H2Client` connections, each carrying up to the server's
SETTINGS_MAX_CONCURRENT_STREAMS requests at once as `H2Stream` exchanges; a
connection that is full, or going away, makes the next request open another.
Requests that find no room while a connection is being opened wait for it
instead of opening their own, so a burst shares one connection.

Flow control both ways:

- a request body goes out in DATA frames within the stream's and the
  connection's send windows (and waits for the socket's write buffer), so the
  upstream paces the upload;
- a response body is a `StreamBody`; received DATA is granted back
  (WINDOW_UPDATE) while its buffer is below `STREAM_WINDOW`, and held past it
  until the consumer (the client side) reads: a slow client stops the upstream
  after at most the buffer plus one stream window, and the other streams of the
  connection go on (the connection window is the streams' windows together).

GOAWAY: no new stream on that connection; the streams it did not take (above its
last stream id) fail with `UpstreamRefused` (nothing was processed: the proxy
sends them again on another connection), the others finish, then it closes.
A REFUSED_STREAM reset is the same refusal for one stream; any other reset fails
that exchange alone (502). A connection without streams for the pool's
``idle_timeout_s`` is closed (GOAWAY, no PINGs to keep it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, TooManyStreamsError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import Frame, GoAwayFrame

from meshgate.http.errors import (
    HTTPError,
    UpstreamBadResponse,
    UpstreamConnectTimeout,
    UpstreamRefused,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamTlsError,
)
from meshgate.http.messages import Body, BytesBody, Headers
from meshgate.http.stream import StreamBody
from meshgate.io.flow import WriteFlow
from meshgate.io.timers import Deadline
from meshgate.io.upstream import MAX_RESPONSE_HEAD_BYTES, Pool, ResponseHead, dial

if TYPE_CHECKING:
    from meshgate.io.tls import ClientTls

log = logging.getLogger("meshgate.upstream")

# Our SETTINGS_INITIAL_WINDOW_SIZE, and the response body buffer's high-water mark.
STREAM_WINDOW = 256 * 1024
MAX_WINDOW = 2**31 - 1
# The connection window covers this many streams' windows.
WINDOW_STREAMS = 100
# The last stream id a client may open (odd, below 2^31): the connection then retires.
LAST_STREAM_ID = 2**31 - 1


class _ClientConnection(H2Connection):
    """h2's state machine, except that a GOAWAY received does not end the connection:
    h2 refuses every frame after one (its connection state goes CLOSED), while RFC
    9113 (6.8) lets the streams up to the GOAWAY's last stream id finish."""

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        frames, events = super()._receive_goaway_frame(frame)
        self.state_machine.state = ConnectionState.CLIENT_OPEN
        return frames, events


def _fail_future(future: asyncio.Future[ResponseHead], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # retrieved: nobody may be waiting any more


class H2Stream:
    """One request/response exchange on an `H2Client` (what the proxy drives)."""

    __slots__ = (
        "_head",
        "_head_deadline",
        "_head_limit_s",
        "_head_timeout_s",
        "_read_deadline",
        "_request_body",
        "_waiter",
        "body",
        "client",
        "head_request",
        "held",
        "id",
        "paused",
        "request_done",
        "response_done",
    )

    def __init__(self, client: H2Client, stream_id: int) -> None:
        self.client = client
        self.id = stream_id
        loop = client.loop
        self._head: asyncio.Future[ResponseHead] = loop.create_future()
        self._head_deadline = Deadline(loop, self._head_timed_out)
        self._head_limit_s = 0.0
        self._head_timeout_s: float | None = None  # armed once the request is written
        self._read_deadline = Deadline(loop, self._read_timed_out)
        self._request_body: Body | None = None
        self._waiter: asyncio.Future[None] | None = None  # the send window to open
        self.body: StreamBody | None = None  # the response body, once its head came
        self.head_request = False
        self.held = 0  # response bytes received but not granted back (body paused)
        self.paused = False
        self.request_done = False
        self.response_done = False

    # --- used by the proxy -------------------------------------------------
    def start(self, headers: list[tuple[bytes, bytes]], body: Body | None, method: str) -> None:
        """Send the request's HEADERS; ``body``: what follows (None: nothing)."""
        self.head_request = method == "HEAD"
        self._request_body = body
        client = self.client
        try:
            client.conn.send_headers(self.id, headers, end_stream=body is None)
        except TooManyStreamsError:  # the upstream lowered its limit meanwhile
            self._forget()
            raise UpstreamRefused("upstream has no room for another stream") from None
        except ProtocolError as exc:
            self._forget()
            raise HTTPError(f"request not sendable over HTTP/2: {exc}") from None
        client.flush_soon()
        if body is None:
            self.request_done = True

    async def write_body(self, data: bytes) -> None:
        """Send request body bytes within the upstream's flow-control windows."""
        client = self.client
        conn = client.conn
        view = memoryview(data)
        while view:
            self._check_sendable()
            window = conn.local_flow_control_window(self.id)
            if window <= 0:
                client.flush_soon()
                await self._wait_window()
                continue
            n = min(len(view), window, conn.max_outbound_frame_size)
            conn.send_data(self.id, view[:n].tobytes())
            view = view[n:]
        client.flush_soon()
        await client.drain()

    def request_written(self) -> None:
        """The body is sent: end the stream (with the request's trailers, if any)."""
        self._check_sendable()
        client = self.client
        body = self._request_body
        trailers = body.trailers if body is not None else None
        try:
            if trailers:
                fields = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in trailers.raw()]
                client.conn.send_headers(self.id, fields, end_stream=True)
            else:
                client.conn.end_stream(self.id)
        except ProtocolError as exc:
            raise UpstreamReset(f"request could not be ended: {exc}") from None
        client.flush_soon()
        self.request_done = True
        if self._head_timeout_s is not None:
            self._arm_head_timer(self._head_timeout_s)
        self._maybe_forget()

    async def response_head(self, timeout_s: float) -> ResponseHead:
        """The response head; the timeout runs from the end of the request body."""
        if not self._head.done():
            if self.request_done:
                self._arm_head_timer(timeout_s)
            else:
                self._head_timeout_s = timeout_s
        return await self._head

    @property
    def answered(self) -> bool:
        """The response head came (the upstream may still stop the upload: RFC 9113
        8.1 lets it reset the stream with NO_ERROR once it answered)."""
        head = self._head
        return head.done() and head.exception() is None

    def fail_exchange(self, exc: Exception) -> None:
        """Our side failed (e.g. the client's body broke): give the stream up."""
        _fail_future(self._head, exc)
        self.abort()

    def abort(self) -> None:
        """Reset the stream (CANCEL) unless it is over; the connection serves on."""
        if self.id not in self.client.streams:
            return
        self._end(UpstreamReset("upstream exchange given up"))
        self.client.reset(self.id, ErrorCodes.CANCEL)

    # --- events from the connection -----------------------------------------
    def on_response(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        status = 0
        fields: list[tuple[str, str]] = []
        length: int | None = None
        try:
            for raw_name, raw_value in headers:
                value = raw_value.decode("latin-1")
                if raw_name[0] == 58:  # ":"
                    if raw_name == b":status":
                        status = int(value)
                    continue
                name = raw_name.decode("latin-1")
                if name == "content-length":
                    length = int(value)
                fields.append((name, value))
        except ValueError:
            self._bad("invalid :status or content-length from upstream")
            return
        body: StreamBody | BytesBody
        if ended or self.head_request or status in (204, 304):
            body = StreamBody(length if self.head_request or status == 304 else 0)
            body.feed_eof()
            if not ended:  # (a HEAD answer ending with DATA would be malformed: h2 checks)
                self.response_done = True
        else:
            body = self.body = StreamBody(
                length,
                self._pause,
                self._resume,
                high_water=STREAM_WINDOW,
                on_abandon=self.abort,
            )
            self._read_deadline.set(self.client.pool.read_timeout_s)
        self._head_deadline.cancel()
        self._head_timeout_s = None
        if not self._head.done():
            self._head.set_result(ResponseHead(status, fields, body))

    def on_data(self, data: bytes, size: int) -> None:
        body = self.body
        if body is None or body.consumed:
            self.client.conn.acknowledge_received_data(size, self.id)
            return
        body.feed(data)
        if self.paused:
            self.held += size
        else:
            self.client.conn.acknowledge_received_data(size, self.id)
            self._read_deadline.set(self.client.pool.read_timeout_s)

    def on_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        if self.body is not None:
            self.body.trailers = Headers.from_lower(
                [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
            )

    def on_end(self) -> None:
        self.response_done = True
        self._read_deadline.cancel()
        if self.body is not None:
            self.body.feed_eof()
        if not self._head.done():  # (h2 never ends a stream before its response head)
            _fail_future(self._head, UpstreamBadResponse("upstream ended the stream early"))
        self._maybe_forget()

    def on_reset(self, code: int) -> None:
        if code == ErrorCodes.REFUSED_STREAM and not self._head.done():
            self._end(UpstreamRefused("upstream refused the stream (REFUSED_STREAM)"))
        else:
            try:
                name = ErrorCodes(code).name
            except ValueError:
                name = str(code)
            self._end(UpstreamReset(f"upstream reset the stream ({name})"))

    def on_window(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_lost(self, exc: Exception) -> None:
        """The connection is gone (or refused this stream by GOAWAY)."""
        self._end(exc)

    # --- internals ------------------------------------------------------------
    def _end(self, exc: Exception) -> None:
        """The exchange is over before its end: fail whoever waits, forget it."""
        _fail_future(self._head, exc)
        body = self.body
        if body is not None and not self.response_done:
            body.fail(exc)
        self.response_done = True
        self.on_window()  # a body upload waiting for window sees the failure
        self._forget()

    def _forget(self) -> None:
        self._head_deadline.cancel()
        self._read_deadline.cancel()
        client = self.client
        if self.held and not client.closed:
            client.conn.acknowledge_received_data(self.held, self.id)
            self.held = 0
        client.forget(self)

    def _maybe_forget(self) -> None:
        if self.request_done and self.response_done:
            self._forget()

    def _check_sendable(self) -> None:
        if self.client.closed:
            raise UpstreamReset("upstream closed the connection while the body was sent")
        if self.id not in self.client.streams:
            raise UpstreamReset("upstream stream ended while the body was sent")

    async def _wait_window(self) -> None:
        self._waiter = waiter = self.client.loop.create_future()
        timeout_s = self.client.pool.read_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except TimeoutError:
            raise UpstreamTimeout(f"upstream opened no HTTP/2 window for {timeout_s:g} s") from None
        finally:
            self._waiter = None

    def _pause(self) -> None:
        self.paused = True
        self._read_deadline.clear()  # waiting on the client, not the upstream

    def _resume(self) -> None:
        self.paused = False
        client = self.client
        held, self.held = self.held, 0
        if held and not client.closed:
            client.conn.acknowledge_received_data(held, self.id)
            client.flush_soon()
        if not self.response_done:
            self._read_deadline.set(client.pool.read_timeout_s)

    def _arm_head_timer(self, timeout_s: float) -> None:
        self._head_timeout_s = None
        if not self._head.done():
            self._head_limit_s = timeout_s
            self._head_deadline.set(timeout_s)

    def _head_timed_out(self) -> None:
        if not self._head.done():
            _fail_future(
                self._head, UpstreamTimeout(f"no response within {self._head_limit_s:g} s")
            )
            self.abort()

    def _read_timed_out(self) -> None:
        if not self.response_done:
            timeout_s = self.client.pool.read_timeout_s
            self._end(UpstreamTimeout(f"no response data for {timeout_s:g} s"))
            self.client.reset(self.id, ErrorCodes.CANCEL)

    def _bad(self, detail: str) -> None:
        self._end(UpstreamBadResponse(detail))
        self.client.reset(self.id, ErrorCodes.PROTOCOL_ERROR)


class H2Client(WriteFlow):
    """One HTTP/2 connection to an upstream instance, carrying many `H2Stream`s."""

    def __init__(self, pool: H2Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.going_away = False  # GOAWAY received (or the pool closed): no new streams
        self.streams: dict[int, H2Stream] = {}
        self.ready: asyncio.Future[None] = self.loop.create_future()  # first SETTINGS
        self._write_paused = False
        self._flush_due = False  # a flush_soon is scheduled
        self._drain_waiter = None
        self._idle = Deadline(self.loop, self._idle_timed_out)
        # Outbound validation off: the proxy builds the header list from validated
        # requests (lower-case names, no connection-specific field, te only
        # "trailers", values without CR/LF/NUL, no host beside :authority), and h2's
        # checks were a sixth of the gateway's CPU per gRPC call. Normalising (which
        # keeps authorization and cookies out of the HPACK table) stays on.
        conn = self.conn = _ClientConnection(
            H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False)
        )
        conn.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_HEADER_LIST_SIZE: MAX_RESPONSE_HEAD_BYTES,
            },
        )

    # --- used by the pool and the streams ------------------------------------
    def has_room(self) -> bool:
        """A new stream may start here now."""
        return (
            not self.closed
            and not self.going_away
            and len(self.streams) < self.conn.remote_settings.max_concurrent_streams
        )

    def open_stream(self) -> H2Stream:
        stream = H2Stream(self, self.conn.get_next_available_stream_id())
        self.streams[stream.id] = stream
        self._idle.clear()
        if stream.id >= LAST_STREAM_ID:  # ids run out (after 2^30 requests): retire it
            self.going_away = True
            self.pool.forget(self)
        return stream

    def forget(self, stream: H2Stream) -> None:
        if self.streams.pop(stream.id, None) is None or self.streams:
            return
        if self.going_away or self.closed:
            self.close()
        else:
            self._idle.set(self.pool.idle_timeout_s)

    def reset(self, stream_id: int, code: ErrorCodes) -> None:
        if self.closed:
            return
        try:
            self.conn.reset_stream(stream_id, code)
        except ProtocolError:  # closed meanwhile
            return
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def flush_soon(self) -> None:
        """Write what is queued at the end of this loop iteration: the frames of the
        streams served meanwhile go out in one write."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_due = False
        self.flush()

    async def drain(self) -> None:
        """Until the socket's write buffer is below its low-water mark."""
        if not self._write_paused:
            return
        await asyncio.shield(self._drain_future())
        if self.closed:
            raise UpstreamReset("upstream closed the connection while the body was sent")

    def close(self) -> None:
        """GOAWAY and close; streams still open fail."""
        if self.closed or self.transport is None:
            return
        self.going_away = True
        self.transport.write(GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
        self.transport.close()

    def _idle_timed_out(self) -> None:
        if not self.streams:
            self.close()

    # --- events from the transport ---------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.pool.open += 1
        conn = self.conn
        conn.initiate_connection()
        conn.increment_flow_control_window(min(WINDOW_STREAMS * STREAM_WINDOW, MAX_WINDOW) - 65535)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self.pool.open -= 1
        self._idle.cancel()
        if not self.ready.done():
            self.ready.set_exception(UpstreamReset("upstream closed the connection"))
            self.ready.exception()
        for stream in list(self.streams.values()):
            stream.on_lost(UpstreamReset("upstream closed the connection"))
        self._wake_drain()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:  # h2 queued GOAWAY with the error code
            error = UpstreamBadResponse(f"HTTP/2 protocol error from upstream: {exc}")
            if not self.ready.done():
                self.ready.set_exception(error)
                self.ready.exception()
            for lost in list(self.streams.values()):
                lost.on_lost(error)
            self.flush()
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            return
        streams = self.streams
        stream: H2Stream | None
        for event in events:
            if isinstance(event, DataReceived):
                size = event.flow_controlled_length or 0
                stream = streams.get(event.stream_id or 0)
                if stream is None:
                    self.conn.acknowledge_received_data(size, event.stream_id or 0)
                else:
                    stream.on_data(event.data or b"", size)
            elif isinstance(event, ResponseReceived):
                stream = streams.get(event.stream_id or 0)
                if stream is not None:
                    headers = cast(list[tuple[bytes, bytes]], event.headers or [])
                    stream.on_response(headers, event.stream_ended is not None)
            elif isinstance(event, TrailersReceived):
                stream = streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.on_trailers(cast(list[tuple[bytes, bytes]], event.headers or []))
            elif isinstance(event, StreamEnded):
                stream = streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.on_end()
            elif isinstance(event, StreamReset):
                stream = streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.on_reset(event.error_code or 0)
            elif isinstance(event, WindowUpdated):
                if event.stream_id:
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.on_window()
                else:
                    for waiting in list(streams.values()):
                        waiting.on_window()
            elif isinstance(event, RemoteSettingsChanged):
                if not self.ready.done():
                    self.ready.set_result(None)
                for waiting in list(streams.values()):
                    waiting.on_window()
            elif isinstance(event, ConnectionTerminated):
                self._goaway(event)
        self.flush()

    def _goaway(self, event: ConnectionTerminated) -> None:
        """No new streams here; the ones the upstream did not take are refused."""
        self.going_away = True
        self.pool.forget(self)
        last = event.last_stream_id or 0
        refused = UpstreamRefused(f"upstream is going away (GOAWAY, last stream {last})")
        for stream in [s for s in self.streams.values() if s.id > last]:
            stream.on_lost(refused)
        if event.error_code:
            log.warning(
                "%s:%d sent GOAWAY with error %s",
                self.pool.host,
                self.pool.port,
                event.error_code,
            )
        if not self.streams:
            self.close()


class H2Pool:
    """HTTP/2 connections to one instance (``host:port``): requests share them."""

    multiplexed = True

    def __init__(
        self,
        host: str,
        port: int,
        *,
        idle_timeout_s: float,
        connect_timeout_s: float,
        read_timeout_s: float = 60.0,
        tls: ClientTls | None = None,
    ) -> None:
        """``tls``: HTTP/2 over TLS (the context must offer ALPN ``h2``); else h2c with
        prior knowledge."""
        self.host = host
        self.port = port
        self.tls = tls
        self.server_name = (tls.server_name or host) if tls is not None else None
        self.scheme = b"https" if tls is not None else b"http"
        self.idle_timeout_s = idle_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.loop = asyncio.get_running_loop()
        self.clients: list[H2Client] = []  # usable for new streams (room permitting)
        self.connecting: asyncio.Future[None] | None = None  # a connect in progress
        self.closed = False
        self.connects = 0
        self.open = 0

    @property
    def idle(self) -> list[H2Client]:
        """Connections without a stream (for metrics)."""
        return [c for c in self.clients if not c.streams]

    def open_stream(self) -> H2Stream | None:
        """A new stream on a connection with room, if any (no await)."""
        for client in self.clients:
            if client.has_room():
                return client.open_stream()
        return None

    async def connect(self) -> H2Client:
        """A new connection, ready once the upstream's SETTINGS came (its stream limit
        is known); requests arriving meanwhile wait on ``connecting``."""
        done = self.connecting = self.loop.create_future()
        try:
            client = await self._open()
        except HTTPError as exc:
            done.set_exception(exc)  # the waiters fail as this request does
            done.exception()
            raise
        finally:
            if self.connecting is done:
                self.connecting = None
            if not done.done():
                done.set_result(None)  # cancelled: the waiters connect themselves
        self.connects += 1
        if self.closed:
            client.close()
        else:
            self.clients.append(client)
        return client

    async def _open(self) -> H2Client:
        started = self.loop.time()
        transport, client = await dial(
            lambda: H2Client(self),
            self.host,
            self.port,
            self.tls,
            self.server_name,
            self.connect_timeout_s,
        )
        if self.tls is not None:
            sslobj = transport.get_extra_info("ssl_object")
            alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
            if alpn != "h2":
                transport.abort()
                raise UpstreamTlsError(
                    f"{self.host}:{self.port} did not agree to HTTP/2 (ALPN {alpn or 'none'})"
                )
        remaining = self.connect_timeout_s - (self.loop.time() - started)
        try:
            async with asyncio.timeout(max(remaining, 0.001)):
                await asyncio.shield(client.ready)
        except TimeoutError:
            transport.abort()
            raise UpstreamConnectTimeout(
                f"no HTTP/2 SETTINGS from {self.host}:{self.port} "
                f"within {self.connect_timeout_s:g} s"
            ) from None
        except UpstreamReset as exc:
            raise UpstreamBadResponse(
                f"{self.host}:{self.port} does not speak HTTP/2 ({exc.detail})"
            ) from None
        except BaseException:
            transport.abort()
            raise
        return client

    def forget(self, client: H2Client) -> None:
        if client in self.clients:
            self.clients.remove(client)

    def close(self) -> None:
        """No new streams; connections close when their streams are done (idle ones now)."""
        self.closed = True
        clients, self.clients = self.clients, []
        for client in clients:
            client.going_away = True
            if not client.streams:
                client.close()


class AutoPool:
    """``protocol: auto``: which HTTP an instance speaks is asked once, by ALPN
    (``h2``, ``http/1.1``) on a first TLS connection, closed right after; the
    instance then gets an `H2Pool` or an HTTP/1.1 `Pool` (made by ``make``). A
    failed probe is an attempt's connect failure; the next attempt asks again."""

    multiplexed = False

    def __init__(
        self,
        host: str,
        port: int,
        tls: ClientTls,
        connect_timeout_s: float,
        make: Callable[[bool], Pool | H2Pool],
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.connect_timeout_s = connect_timeout_s
        self._make = make
        self._probe: asyncio.Task[Pool | H2Pool] | None = None
        self.open = 0  # no connection is kept before the answer (metrics)
        self.idle: tuple[()] = ()
        self.connects = 0
        self.closed = False

    async def resolve(self) -> Pool | H2Pool:
        """The instance's pool, asking first if nobody has (concurrent callers share
        one probe)."""
        probe = self._probe
        if probe is None:
            probe = self._probe = asyncio.get_running_loop().create_task(self._ask())
        try:
            return await asyncio.shield(probe)
        except BaseException:
            if self._probe is probe and probe.done():
                self._probe = None  # failed: the next attempt asks again
            raise

    async def _ask(self) -> Pool | H2Pool:
        server_name = self.tls.server_name or self.host
        transport, _ = await dial(
            asyncio.Protocol, self.host, self.port, self.tls, server_name, self.connect_timeout_s
        )
        sslobj = transport.get_extra_info("ssl_object")
        alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
        transport.close()
        log.info("%s:%d speaks %s (ALPN)", self.host, self.port, alpn or "http/1.1 (no ALPN)")
        return self._make(alpn == "h2")

    def close(self) -> None:
        self.closed = True
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
