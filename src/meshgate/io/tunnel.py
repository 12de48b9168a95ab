"""A tunnel between a client connection and an upstream connection after a
``101 Switching Protocols`` (WebSocket): raw bytes both ways.

Each transport gets a `_End` protocol (``transport.set_protocol``), so the
HTTP/1.1 machinery of either side is out of the way and plain HTTP
connections carry nothing for tunnels. Back-pressure: when one side's
transport buffer passes its high-water mark (``pause_writing``), reading
the other side pauses until it drains. The tunnel closes when either side
closes (the other is closed after its buffered bytes are written; a reset is
passed on as a reset), or when no byte moved for ``idle_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from meshgate.http.messages import Body, Headers, Response
from meshgate.io.timers import Deadline
from meshgate.io.upstream import UpstreamConnection

log = logging.getLogger("meshgate.tunnel")


class _End(asyncio.Protocol):
    """One side of the tunnel: what it reads goes to the other side's transport."""

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: _End
        self.received = 0  # bytes read from this side
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.tunnel.touch()
        peer = self.peer
        if not peer.lost:
            peer.transport.write(data)

    def eof_received(self) -> bool | None:
        return False  # close this side; connection_lost passes the close on

    def pause_writing(self) -> None:
        if not self.peer.lost:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.peer.lost:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.tunnel.end_lost(self, exc)


class Tunnel:
    """Bytes between ``client`` and ``upstream`` until one closes or it idles out."""

    def __init__(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        idle_timeout_s: float,
        *,
        on_upstream_lost: Callable[[Exception | None], None],
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle_timeout_s = idle_timeout_s
        self.client = _End(self, client)
        self.upstream = _End(self, upstream)
        self.client.peer = self.upstream
        self.upstream.peer = self.client
        self._on_upstream_lost = on_upstream_lost
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._idle = Deadline(self.loop, self._idle_timed_out)

    @property
    def to_client(self) -> int:
        """Bytes read from the upstream (written to the client)."""
        return self.upstream.received

    @property
    def from_client(self) -> int:
        return self.client.received

    def start(
        self,
        *,
        client_paused: bool,
        upstream_paused: bool,
        client_early: bytes,
        upstream_early: bytes,
    ) -> None:
        """Take both transports over. ``*_paused``: that side's write buffer is
        above its high-water mark now; ``*_early``: bytes that side already sent
        after the HTTP exchange (read together with it)."""
        client, upstream = self.client, self.upstream
        client.transport.set_protocol(client)
        upstream.transport.set_protocol(upstream)
        self._idle.set(self.idle_timeout_s)
        if client_early:
            client.data_received(client_early)
        if upstream_early:
            upstream.data_received(upstream_early)
        # Read each side unless the other cannot take more now.
        if not upstream_paused:
            client.transport.resume_reading()
        if not client_paused:
            upstream.transport.resume_reading()

    def touch(self) -> None:
        self._idle.set(self.idle_timeout_s)

    def _idle_timed_out(self) -> None:
        log.info("tunnel idle for %g s: closing both sides", self.idle_timeout_s)
        self.abort()

    def end_lost(self, end: _End, exc: Exception | None) -> None:
        if end is self.upstream:
            self._on_upstream_lost(exc)
        peer = end.peer
        if not peer.lost:
            if exc is None:
                peer.transport.close()  # after what is buffered for it
            else:
                peer.transport.abort()
        if self.client.lost and self.upstream.lost:
            self._idle.cancel()
            if not self.closed.done():
                self.closed.set_result(None)

    def abort(self) -> None:
        """Drop both sides now (idle timeout, shutdown)."""
        for end in (self.client, self.upstream):
            if not end.lost:
                end.transport.abort()


class _UpgradeBody(Body):
    """The empty body of a 101: given up on (the tunnel never started), it closes
    the upstream connection, which must never go back to a pool."""

    __slots__ = ("_abort",)

    def __init__(self, abort: Callable[[], None]) -> None:
        super().__init__(0)
        self._abort: Callable[[], None] | None = abort

    async def read(self) -> bytes:
        return b""

    def is_complete(self) -> bool:
        return True

    def taken(self) -> None:
        """The tunnel owns the connection now."""
        self._abort = None

    async def aclose(self) -> None:
        abort, self._abort = self._abort, None
        if abort is not None:
            abort()


class UpgradeResponse(Response):
    """A ``101`` from the upstream for a WebSocket upgrade: the server answers it and
    tunnels the client connection to ``upstream`` (an `UpstreamConnection`)."""

    __slots__ = ("idle_timeout_s", "upstream")

    def __init__(
        self,
        headers: Headers,
        upstream: UpstreamConnection,
        idle_timeout_s: float,
    ) -> None:
        super().__init__(101, headers, _UpgradeBody(upstream.abort))
        self.upstream = upstream
        self.idle_timeout_s = idle_timeout_s

    def take(self) -> None:
        body = self.body
        if isinstance(body, _UpgradeBody):
            body.taken()
