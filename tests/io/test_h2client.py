"""The HTTP/2 upstream connection without sockets: an `H2Client` fed the frames of
an h2 server connection (and its writes fed back), to check the protocol details
the end-to-end tests cannot steer: GOAWAY followed by DATA in one read, the
stream limit, flow control held while the body is not read, idle close."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import RequestReceived, WindowUpdated
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from meshgate.http.errors import UpstreamRefused, UpstreamReset
from meshgate.http.stream import StreamBody
from meshgate.io.h2client import LAST_STREAM_ID, STREAM_WINDOW, H2Client, H2Pool


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.closed_event = asyncio.Event()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def close(self) -> None:
        self.closed = True
        self.closed_event.set()

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Peer:
    """An h2 server connection wired to an `H2Client`."""

    def __init__(self, max_streams: int = 100) -> None:
        self.pool = H2Pool("127.0.0.1", 1, idle_timeout_s=0.05, connect_timeout_s=1)
        self.client = H2Client(self.pool)
        self.transport = FakeTransport()
        self.server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.server.local_settings = Settings(
            client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: max_streams}
        )
        self.client.connection_made(self.transport)
        self.server.initiate_connection()
        self.events: list[Any] = []

    async def start(self) -> Peer:
        await self.exchange()
        assert self.client.ready.done()
        return self

    async def exchange(self) -> None:
        """Deliver what each side wrote until both are quiet (after a loop iteration:
        the client writes its frames at the end of one)."""
        while True:
            await asyncio.sleep(0)
            to_server = self.transport.take()
            if to_server:
                self.events += self.server.receive_data(to_server)
            to_client = self.server.data_to_send()
            if to_client:
                self.client.data_received(to_client)
            if not to_server and not to_client:
                return

    def requests(self) -> list[int]:
        return [e.stream_id for e in self.events if isinstance(e, RequestReceived)]


def get(path: str) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"x"),
        (b":path", path.encode()),
    ]


async def test_goaway_then_data_in_one_read_finishes_the_taken_stream() -> None:
    peer = await Peer().start()
    one = peer.client.open_stream()
    one.start(get("/one"), None, "GET")
    three = peer.client.open_stream()
    three.start(get("/three"), None, "GET")
    await peer.exchange()
    assert peer.requests() == [1, 3]
    server = peer.server
    # GOAWAY naming stream 1, then stream 1's answer: written together, read as one
    peer.transport.take()
    server.send_headers(1, [(":status", "200")])
    head_frames = server.data_to_send()
    goaway = GoAwayFrame(0, last_stream_id=1, error_code=0).serialize()
    server.send_data(1, b"done", end_stream=True)
    peer.client.data_received(goaway + head_frames + server.data_to_send())
    head = await one.response_head(1)
    assert head.status == 200 and await head.body.read_all() == b"done"
    with pytest.raises(UpstreamRefused):
        await three.response_head(1)
    assert peer.client.going_away and not peer.client.has_room()
    assert peer.transport.closed  # its last stream done: closed


async def test_stream_limit_of_the_server() -> None:
    peer = await Peer(max_streams=2).start()
    assert peer.client.has_room()
    for path in ("/a", "/b"):
        peer.client.open_stream().start(get(path), None, "GET")
    assert not peer.client.has_room()
    assert peer.pool.open_stream() is None  # (the client is not in the pool's list here)


async def test_response_window_granted_only_while_the_body_is_read() -> None:
    peer = await Peer().start()
    stream = peer.client.open_stream()
    stream.start(get("/big"), None, "GET")
    await peer.exchange()
    server = peer.server
    server.send_headers(1, [(":status", "200")])
    await peer.exchange()
    head = await stream.response_head(1)
    body = head.body
    assert isinstance(body, StreamBody)
    sent = 0
    while server.local_flow_control_window(1) > 0:  # fill everything we granted
        n = min(server.local_flow_control_window(1), server.max_outbound_frame_size)
        server.send_data(1, b"x" * n)
        sent += n
        await peer.exchange()
    assert sent >= STREAM_WINDOW  # the first window, and what the buffer took
    assert stream.paused and stream.held > 0
    peer.events.clear()
    assert await body.read()  # the consumer reads: the held bytes are granted back
    await peer.exchange()
    assert any(isinstance(e, WindowUpdated) and e.stream_id == 1 for e in peer.events)
    assert not stream.paused and stream.held == 0


async def test_reset_fails_one_stream_and_idle_close() -> None:
    peer = await Peer().start()
    bad = peer.client.open_stream()
    bad.start(get("/bad"), None, "GET")
    good = peer.client.open_stream()
    good.start(get("/good"), None, "GET")
    await peer.exchange()
    peer.server.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
    peer.server.send_headers(3, [(":status", "204")], end_stream=True)
    await peer.exchange()
    with pytest.raises(UpstreamReset, match="INTERNAL_ERROR"):
        await bad.response_head(1)
    assert (await good.response_head(1)).status == 204
    assert not peer.client.streams
    await asyncio.wait_for(peer.transport.closed_event.wait(), 5)  # idle_timeout_s: 0.05


async def test_a_connection_retires_when_its_stream_ids_run_out() -> None:
    peer = await Peer().start()
    peer.pool.clients.append(peer.client)
    peer.client.conn.highest_outbound_stream_id = LAST_STREAM_ID - 2
    stream = peer.pool.open_stream()
    assert stream is not None and stream.id == LAST_STREAM_ID
    assert peer.client.going_away and peer.pool.clients == []
    assert peer.pool.open_stream() is None  # the next request opens a new connection
