"""Upstream side: one HTTP/1.1 exchange at a time per connection, pooled per instance.

Pool bookkeeping happens in plain synchronous methods (`Pool._checkin`,
`Pool._forget`) called from the connection's own events, so cancellation
of the task using a connection can never leave the pool inconsistent: a
connection that is not cleanly finished is closed, never pooled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar, cast

import httptools

from meshgate.http.errors import (
    UpstreamBadResponse,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamTlsError,
)
from meshgate.http.framing import connection_tokens, framing_too_large
from meshgate.http.messages import HOP_BY_HOP, BytesBody
from meshgate.http.stream import StreamBody
from meshgate.io.flow import WriteFlow
from meshgate.io.timers import Deadline

if TYPE_CHECKING:
    from meshgate.io.tls import ClientTls

log = logging.getLogger("meshgate.upstream")

# Response heads larger than this are refused (502), as Envoy's max_response_headers_kb.
MAX_RESPONSE_HEAD_BYTES: Final = 64 * 1024

# Connection values that name no other field (the usual ones): nothing to filter.
_PLAIN_CONNECTION: Final = frozenset({",keep-alive", ",close"})


class ResponseHead:
    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, headers: list[tuple[str, str]], body: StreamBody | BytesBody
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class UpstreamConnection(WriteFlow):
    """A keep-alive connection to one upstream instance."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.requests = 0  # exchanges started on this connection
        self.got_bytes = False  # any response byte for the current exchange
        # The response head of the current exchange goes to the future of
        # `response_head`, or waits in `_head_result` until asked for.
        self._head_waiting = False
        self._head_bytes = 0
        self._head_result: ResponseHead | Exception | None = None
        self._head_future: asyncio.Future[ResponseHead] | None = None
        self._head_deadline = Deadline(self.loop, self._head_timed_out)
        # While a response body arrives: the longest pause between reads (read_timeout_s).
        self._read_deadline = Deadline(self.loop, self._read_timed_out)
        self._head_limit_s = 0.0
        self._head_timeout_s: float | None = None  # armed once the request is written
        self._headers: list[tuple[str, str]] = []
        self._in_head = False
        self._body: StreamBody | None = None
        # A head with a Content-Length body, held until the end of the read that
        # completed it: a body that arrived in the same read goes out as a BytesBody
        # (no stream machinery); otherwise a StreamBody gets the bytes read so far.
        self._held: tuple[int, list[tuple[str, str]], int] | None = None
        self._held_data: list[bytes] = []
        self._chunked = False  # the response being received is chunked
        self._chunked_raw = 0  # raw bytes of later reads while receiving it
        self._chunks = 0
        self._head_request = False
        self._close_delimited = False
        self._keep_alive = False
        self._request_done = True  # our side of the exchange is fully written
        self._response_done = True
        self._write_paused = False
        self._drain_waiter = None
        self._error: Exception | None = None
        # WebSocket: this exchange asked to upgrade; the upstream answered 101 (the
        # connection then belongs to a tunnel, never to the pool); bytes it sent
        # after the 101 head.
        self._upgrade = False
        self.upgraded = False
        self._early = b""

    # --- events from the transport ---------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.pool.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        self.pool.open -= 1
        self._head_deadline.cancel()
        self._read_deadline.cancel()
        body = self._body
        if body is not None and not self._response_done:
            if self._close_delimited and exc is None:
                self._response_done = True
                body.feed_eof()
            else:
                body.fail(UpstreamReset("upstream closed the connection mid-response"))
        self._fail_head(self._error or UpstreamReset("upstream closed the connection"))
        self._wake_drain()

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost finishes the exchange

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self._head_waiting:  # reads that end inside the head count against its limit
            self._head_bytes += len(data)
            if self._head_bytes > MAX_RESPONSE_HEAD_BYTES + len(data):
                self._error = UpstreamBadResponse(
                    f"upstream response head larger than {MAX_RESPONSE_HEAD_BYTES} bytes"
                )
                self._fail_head(self._error)
                self.abort()
                return
        body = self._body if self._chunked and not self._response_done else None
        if self._body is not None and not self._response_done:
            self._read_deadline.set(self.pool.read_timeout_s)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.upgraded:  # the rest is tunnel data: held until the tunnel takes over
                self._early += data[int(exc.args[0]) :]
                if self.transport is not None:
                    self.transport.pause_reading()
                return
            self._error = UpstreamBadResponse("upstream switched protocols without being asked")
            self.abort()
        except httptools.HttpParserError as exc:
            self._error = UpstreamBadResponse(f"invalid response from upstream: {exc}")
            self.abort()
        if body is not None and not self._response_done:
            # Chunk framing and trailers are not body: bound them like the head.
            self._chunked_raw += len(data)
            if framing_too_large(
                self._chunked_raw, body.received, self._chunks, MAX_RESPONSE_HEAD_BYTES
            ):
                body.fail(UpstreamBadResponse("upstream chunk framing or trailers too large"))
                self.abort()
        if self._held is not None:
            self._release_held()

    def _release_held(self) -> None:
        """Deliver the held head: with the whole body in memory when this read completed
        the response, else with a StreamBody fed what arrived so far."""
        held, self._held = self._held, None
        assert held is not None
        status, headers, length = held
        data, self._held_data = self._held_data, []
        if self._response_done and self._error is None:
            self._deliver(ResponseHead(status, headers, BytesBody(b"".join(data))))
            return
        body = self._new_body(length)
        for chunk in data:
            body.feed(chunk)
        if self._response_done:
            body.feed_eof()
        self._deliver(ResponseHead(status, headers, body))

    def _new_body(self, length: int | None) -> StreamBody:
        body = StreamBody(length, self._pause_reading, self._resume_reading, on_abandon=self.abort)
        self._body = body
        return body

    def on_chunk_header(self) -> None:
        self._chunks += 1

    # --- parser callbacks --------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []
        self._in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # fields after a chunked body are trailers: dropped
            self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        status = self.parser.get_status_code()
        if status == 101 and self._upgrade:
            self._switched()
            return
        if 100 <= status < 200:
            self._headers = []  # interim response (100 Continue, 103): not forwarded
            return
        raw, self._headers = self._headers, []
        headers: list[tuple[str, str]] = []  # end-to-end fields only
        length: int | None = None
        chunked = False
        connection = ""
        for name, value in raw:
            if name not in HOP_BY_HOP and not name.startswith("proxy-"):
                headers.append((name, value))
                if name == "content-length":
                    length = int(value)
            elif name == "connection":
                connection = f"{connection},{value}"
            elif name == "transfer-encoding":
                if value.strip().lower() != "chunked":
                    # gzip etc. as a transfer coding: we would have to decode it to drop it
                    self._error = UpstreamBadResponse(f"unsupported transfer coding {value!r}")
                    self._fail_head(self._error)
                    self.abort()
                    return
                chunked = True
        if connection and connection.lower() not in _PLAIN_CONNECTION:
            named = connection_tokens(connection)
            headers = [kv for kv in headers if kv[0] not in named]
        self._keep_alive = self.parser.should_keep_alive()
        no_body = self._head_request or status in (204, 304)
        self._chunked = chunked
        self._chunked_raw = 0
        self._chunks = 0
        self._close_delimited = not no_body and length is None and not chunked
        if self._close_delimited:
            self._keep_alive = False
        if not no_body and length is not None and not chunked:
            self._held = (status, headers, length)  # delivered by data_received
            self._read_deadline.set(self.pool.read_timeout_s)
            return
        body = self._new_body(length if not chunked else None)
        if no_body:
            self._finish_response()
        else:
            self._read_deadline.set(self.pool.read_timeout_s)
        self._deliver(ResponseHead(status, headers, body))

    def _switched(self) -> None:
        """The upstream accepted the upgrade: deliver the 101 head; the exchange never
        finishes (nothing releases the connection to the pool)."""
        self.upgraded = True
        self._keep_alive = False
        self._read_deadline.clear()
        headers = [
            (n, v) for n, v in self._headers if n not in HOP_BY_HOP and not n.startswith("proxy-")
        ]
        self._headers = []
        body = StreamBody(0)
        body.feed_eof()
        self._deliver(ResponseHead(101, headers, body))

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def detach(self) -> bytes:
        """A tunnel takes the connection over: the bytes the upstream sent after its 101."""
        early, self._early = self._early, b""
        return early

    def on_body(self, data: bytes) -> None:
        if self._held is not None:
            self._held_data.append(data)
        elif self._body is not None and not self._response_done:
            self._body.feed(data)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return
        self._finish_response()

    def _finish_response(self) -> None:
        if self._response_done:
            return
        self._response_done = True
        self._read_deadline.clear()
        if self._head_request:
            # llhttp cannot be told a HEAD response has no body: use a fresh parser.
            self.parser = httptools.HttpResponseParser(self)
        body = self._body
        if body is not None:
            body.feed_eof()
        self._maybe_release()

    def _pause_reading(self) -> None:
        """The client is slower than the upstream: stop reading (and timing) the upstream."""
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()
            self._read_deadline.clear()

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
            if not self._response_done:
                self._read_deadline.set(self.pool.read_timeout_s)

    def _read_timed_out(self) -> None:
        body = self._body
        if body is not None and not self._response_done and not self.closed:
            body.fail(UpstreamTimeout(f"no response data for {self.pool.read_timeout_s:g} s"))
            self.abort()

    # --- used by the proxy ---------------------------------------------------
    def start(
        self, head: bytes, *, head_request: bool, body_follows: bool, upgrade: bool = False
    ) -> None:
        """Begin an exchange by writing the request head (``upgrade``: it asks for a
        WebSocket upgrade, a 101 answer is expected)."""
        assert self.transport is not None
        self._upgrade = upgrade
        self.requests += 1
        self.got_bytes = False
        self._head_timeout_s = None
        self._head_request = head_request
        self._request_done = not body_follows
        self._response_done = False
        self._body = None
        self._held = None
        self._held_data = []
        self._head_waiting = True
        self._head_result = None
        self._head_bytes = 0
        self.transport.write(head)

    async def write_body(self, data: bytes) -> None:
        if self.closed:
            raise UpstreamReset("upstream closed the connection while the body was sent")
        assert self.transport is not None
        self.transport.write(data)
        if self._write_paused:
            await self._drain_future()
            if self.closed:
                raise UpstreamReset("upstream closed the connection while the body was sent")

    def request_written(self) -> None:
        self._request_done = True
        if self._head_timeout_s is not None:
            self._arm_head_timer(self._head_timeout_s)
        self._maybe_release()

    async def response_head(self, timeout_s: float) -> ResponseHead:
        """Wait for the response head; the timeout runs from the end of the request
        body (as Envoy's route timeout), so a slow upload is not cut by it."""
        result = self._head_result
        if result is None:
            assert self._head_waiting, "no exchange in progress"
            if self._request_done:
                self._arm_head_timer(timeout_s)
            else:
                self._head_timeout_s = timeout_s
            future: asyncio.Future[ResponseHead] = self.loop.create_future()
            self._head_future = future
            return await future
        self._head_result = None
        if isinstance(result, Exception):
            raise result
        return result

    def _deliver(self, result: ResponseHead | Exception) -> None:
        if not self._head_waiting:
            return
        self._head_waiting = False
        self._head_timeout_s = None
        self._head_deadline.clear()
        future = self._head_future
        if future is not None:
            self._head_future = None
            if not future.done():
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            return
        self._head_result = result

    def _arm_head_timer(self, timeout_s: float) -> None:
        self._head_timeout_s = None
        if self._head_waiting:
            self._head_limit_s = timeout_s
            self._head_deadline.set(timeout_s)

    def _head_timed_out(self) -> None:
        if not self.closed:
            self._fail_head(UpstreamTimeout(f"no response within {self._head_limit_s:g} s"))

    def fail_exchange(self, exc: Exception) -> None:
        """Our side failed (e.g. the client body broke): drop the connection."""
        self._error = exc
        self._fail_head(exc)
        self.abort()

    def _fail_head(self, exc: Exception) -> None:
        self._deliver(exc)
        if isinstance(exc, UpstreamTimeout):
            self.abort()

    def _maybe_release(self) -> None:
        if self._request_done and self._response_done and not self.closed:
            if self._keep_alive:
                self.pool._checkin(self)
            else:
                self.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
            self.pool._forget(self)


P = TypeVar("P", bound=asyncio.Protocol)


async def dial(
    factory: Callable[[], P],
    host: str,
    port: int,
    tls: ClientTls | None,
    server_name: str | None,
    timeout_s: float,
) -> tuple[asyncio.Transport, P]:
    """Open a connection to ``host:port`` (TLS with SNI ``server_name`` when ``tls``,
    the handshake and the peer's SPIFFE ID checked within ``timeout_s``); failures
    raised as the `UpstreamConnectError` that says what went wrong."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            transport, conn = await loop.create_connection(
                factory,
                host,
                port,
                ssl=tls.context() if tls is not None else None,
                server_hostname=server_name,
                ssl_handshake_timeout=timeout_s if tls is not None else None,
            )
    except TimeoutError:
        raise UpstreamConnectTimeout(
            f"connect to {host}:{port} timed out after {timeout_s:g} s"
        ) from None
    except ssl.SSLError as exc:
        detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        raise UpstreamTlsError(
            f"TLS handshake with {host}:{port} (server name {server_name}) failed: {detail}"
        ) from None
    except OSError as exc:
        raise UpstreamConnectError(
            f"connect to {host}:{port} failed: {exc.strerror or exc}"
        ) from None
    if tls is not None:
        problem = tls.peer_problem(transport.get_extra_info("ssl_object"))
        if problem is not None:
            transport.abort()
            raise UpstreamTlsError(f"TLS handshake with {host}:{port}: wrong peer: {problem}")
    return transport, conn


class Pool:
    """Keep-alive connections to one instance (``host:port``)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_idle: int,
        idle_timeout_s: float,
        connect_timeout_s: float,
        read_timeout_s: float = 60.0,
        clock: Callable[[], float] | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        """``tls``: connect with TLS, sending its ``server_name`` (default ``host``) as
        SNI and verifying the certificate for it (or for its SPIFFE ID); the handshake
        is part of the connect (``connect_timeout_s``)."""
        self.host = host
        self.tls = tls
        self.server_name = (tls.server_name or host) if tls is not None else None
        self.port = port
        self.max_idle = max_idle
        self.idle_timeout_s = idle_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.loop = asyncio.get_running_loop()
        self._clock = clock or self.loop.time
        self.idle: deque[UpstreamConnection] = deque()
        self.closed = False
        self.connects = 0  # connections opened, for tests and metrics
        self.open = 0  # connections open now (idle or busy)
        self._sweeper: asyncio.TimerHandle | None = None

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used live idle connection, if any (no await on the hot path)."""
        idle = self.idle
        if not idle:
            return None
        now = self._clock()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_timeout_s:
                return conn
            conn.abort()
        return None

    async def connect(self) -> UpstreamConnection:
        _, conn = await dial(
            lambda: UpstreamConnection(self),
            self.host,
            self.port,
            self.tls,
            self.server_name,
            self.connect_timeout_s,
        )
        self.connects += 1
        return conn

    def _checkin(self, conn: UpstreamConnection) -> None:
        if self.closed or len(self.idle) >= self.max_idle:
            conn.abort()
            return
        conn.idle_since = self._clock()
        self.idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_timeout_s, self._sweep)

    def _forget(self, conn: UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self._clock() - self.idle_timeout_s
        while self.idle and self.idle[0].idle_since <= cutoff:
            self.idle.popleft().abort()
        if self.idle:
            delay = self.idle[0].idle_since + self.idle_timeout_s - self._clock()
            self._sweeper = self.loop.call_later(max(delay, 0.01), self._sweep)

    def close(self) -> None:
        """Close idle connections; connections in use close when they finish."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self.idle:
            self.idle.pop().abort()
