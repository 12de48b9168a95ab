"""The HTTP/2 server protocol driven in-process by an h2 client connection over a
fake transport: the preface sniffer, flow control of request bodies, and the
connection's and streams' deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.settings import SettingCodes

from meshgate.config.models import ListenerConfig
from meshgate.http.messages import Headers, Request, Response
from meshgate.io.h2server import H2ServerProtocol
from meshgate.io.server import HttpServer, HttpServerProtocol, _PrefaceSniffer


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.protocol: Any = None
        self.out = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


class Peer:
    """An h2 client on a fake connection to ``server`` (h2c: through the sniffer)."""

    def __init__(self, server: HttpServer, settings: dict[int, int] | None = None) -> None:
        self.transport = FakeTransport()
        sniffer = _PrefaceSniffer(server)
        self.transport.set_protocol(sniffer)
        sniffer.connection_made(self.transport)
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.events: list[Event] = []

    def send(self, split: int | None = None) -> None:
        data = self.h2.data_to_send()
        parts = [data[:split], data[split:]] if split else [data]
        for part in parts:
            if part:
                self.transport.protocol.data_received(bytes(part))

    def receive(self) -> None:
        out, self.transport.out = bytes(self.transport.out), bytearray()
        if out:
            self.events += self.h2.receive_data(out)
            self.send()  # acknowledgements

    async def until(self, done: Callable[[], bool]) -> None:
        def received_and_done() -> bool:
            self.receive()
            return done()

        await eventually(received_and_done)

    def upload(self, stream_id: int, data: bytes) -> None:
        for i in range(0, len(data), 16384):  # the default SETTINGS_MAX_FRAME_SIZE
            self.h2.send_data(stream_id, data[i : i + 16384])
        self.send()

    def of(self, kind: type[Event], stream_id: int | None = None) -> list[Any]:
        return [
            e
            for e in self.events
            if isinstance(e, kind)
            and (stream_id is None or getattr(e, "stream_id", 0) == stream_id)
        ]

    def request(
        self, stream_id: int, path: str = "/", *, end: bool = True, send: bool = True
    ) -> None:
        headers = [
            (b":method", b"GET" if end else b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", b"unit.test"),
        ]
        self.h2.send_headers(stream_id, headers, end_stream=end)
        if send:
            self.send()

    async def answer(self, stream_id: int) -> tuple[int, bytes]:
        await self.until(
            lambda: bool(self.of(StreamEnded, stream_id) or self.of(StreamReset, stream_id))
        )
        head = self.of(ResponseReceived, stream_id)
        status = int(dict(head[0].headers)[b":status"]) if head else 0
        body = b"".join(e.data for e in self.of(DataReceived, stream_id))
        return status, body


async def echo_app(request: Request) -> Response:
    body = await request.body.read_all()
    return Response(200, {"x-version": request.http_version}, body or request.path.encode())


def make_server(app: Callable[[Request], Any] = echo_app, **listener: Any) -> HttpServer:
    cfg = ListenerConfig(http2=True, **listener)
    return HttpServer(app, cfg, 1 << 20)


async def test_the_preface_split_across_reads_still_switches_to_http2() -> None:
    peer = Peer(make_server())
    peer.send(split=10)  # "PRI * HTTP" first, the rest of the preface and SETTINGS next
    assert isinstance(peer.transport.protocol, H2ServerProtocol)
    peer.request(1, "/hello")
    assert await peer.answer(1) == (200, b"/hello")


async def test_http11_on_a_listener_serving_h2c() -> None:
    server = make_server()
    transport = FakeTransport()
    sniffer = _PrefaceSniffer(server)
    transport.set_protocol(sniffer)
    sniffer.connection_made(transport)
    sniffer.data_received(b"GET /h1 HTTP/1.1\r\nHost: unit.test\r\n\r\n")
    assert isinstance(transport.protocol, HttpServerProtocol)  # the sniffer stepped aside
    await eventually(lambda: b"/h1" in transport.out)
    assert transport.out.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_request_body_window_is_granted_only_as_the_app_reads() -> None:
    go = asyncio.Event()

    async def slow_reader(request: Request) -> Response:
        await go.wait()
        return Response(200, None, str(len(await request.body.read_all())))

    peer = Peer(make_server(slow_reader))
    peer.send()
    peer.request(1, "/upload", end=False)
    window = peer.h2.local_flow_control_window(1)
    assert window == 65535
    peer.upload(1, b"a" * window)
    # Buffered below the high-water mark: granted back although unread (h2 sends
    # WINDOW_UPDATE once half a window is due).
    await peer.until(lambda: peer.h2.local_flow_control_window(1) >= window // 2)
    second = peer.h2.local_flow_control_window(1)
    peer.upload(1, b"b" * second)
    await asyncio.sleep(0.05)  # the app still waits: this window stays held
    peer.receive()
    assert peer.h2.local_flow_control_window(1) == 0
    go.set()  # the app reads everything: the held bytes are granted back
    await peer.until(lambda: peer.h2.local_flow_control_window(1) >= window // 2)
    assert peer.of(WindowUpdated, 1)
    peer.h2.end_stream(1)
    peer.send()
    assert await peer.answer(1) == (200, str(window + second).encode())


async def test_body_timeout_answers_408_on_its_stream_only() -> None:
    peer = Peer(make_server(body_timeout_s=0.05))
    peer.send()
    peer.request(1, "/upload", end=False)  # and no DATA
    status, body = await peer.answer(1)
    assert status == 408
    assert b"no request body data" in body
    peer.request(3, "/next")
    assert await peer.answer(3) == (200, b"/next")
    assert not peer.transport.closed


async def test_a_stalled_window_resets_the_stream_after_send_timeout() -> None:
    peer = Peer(make_server(send_timeout_s=0.05), {SettingCodes.INITIAL_WINDOW_SIZE: 0})
    peer.send()
    peer.request(1, "/never-granted")
    await peer.until(lambda: bool(peer.of(StreamReset, 1)))
    assert peer.of(StreamReset, 1)[0].error_code == ErrorCodes.CANCEL
    assert not peer.transport.closed


async def test_idle_connection_gets_goaway_then_closed() -> None:
    peer = Peer(make_server(idle_timeout_s=0.05))
    peer.send()
    peer.request(1)
    assert (await peer.answer(1))[0] == 200
    await peer.until(lambda: peer.transport.closed)
    peer.receive()
    goaway = peer.of(ConnectionTerminated)
    assert [(g.error_code, g.last_stream_id) for g in goaway] == [(ErrorCodes.NO_ERROR, 1)]


async def test_silent_client_is_closed_after_header_timeout() -> None:
    server = make_server(header_timeout_s=0.05)
    peer = Peer(server)
    peer.send()  # preface and SETTINGS, then nothing
    await peer.until(lambda: peer.transport.closed)
    assert not server.connections


async def test_header_list_past_twice_the_limit_breaks_the_connection() -> None:
    """Up to max_header_bytes: served; past it: 431 on the stream; past twice it (a
    decompression bomb), the HPACK decoder gives up the connection."""
    peer = Peer(make_server(max_header_bytes=1024))
    peer.send()
    peer.h2.send_headers(
        1,
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b":authority", b"unit.test"),
            (b"x-pad", b"p" * 1500),
        ],
        end_stream=True,
    )
    peer.send()
    assert (await peer.answer(1))[0] == 431
    peer.h2.send_headers(
        3,
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b":authority", b"unit.test"),
            (b"x-pad", b"p" * 3000),
        ],
        end_stream=True,
    )
    peer.send()
    await peer.until(lambda: peer.transport.closed)
    peer.receive()
    assert [g.error_code for g in peer.of(ConnectionTerminated)] == [ErrorCodes.ENHANCE_YOUR_CALM]


async def test_a_stream_reset_in_the_read_of_its_headers_is_forgotten() -> None:
    """Its task is cancelled before it starts (its ``finally`` never runs): the
    stream must still be dropped, or the connection would never be idle again."""
    called: list[str] = []

    async def app(request: Request) -> Response:
        called.append(request.path)
        return Response(200)

    peer = Peer(make_server(app, idle_timeout_s=0.05))
    peer.send()
    peer.request(1, "/reset-at-once", send=False)
    peer.h2.reset_stream(1)
    peer.send()  # HEADERS and RST_STREAM in one read
    protocol = peer.transport.protocol
    assert isinstance(protocol, H2ServerProtocol)
    await eventually(lambda: not protocol.streams)
    await peer.until(lambda: peer.transport.closed)  # idle, so GOAWAY and closed
    assert called == []


async def test_answers_still_running_after_resets_are_bounded() -> None:
    """Streams reset by the client leave h2's count at once; an answer that takes
    its time to stop still counts here: past twice the stream limit, new streams
    are refused (REFUSED_STREAM) instead of starting more work."""
    release = asyncio.Event()

    async def stubborn(request: Request) -> Response:
        try:
            await release.wait()
        except asyncio.CancelledError:
            await release.wait()  # winds down slowly
            raise
        return Response(200)

    peer = Peer(make_server(stubborn, http2_max_concurrent_streams=2))
    peer.send()
    for stream_id in (1, 3, 5, 7):
        peer.request(stream_id)
        await asyncio.sleep(0)  # its task starts
        peer.h2.reset_stream(stream_id)
        peer.send()
    peer.request(9)
    await peer.until(lambda: bool(peer.of(StreamReset, 9)))
    assert peer.of(StreamReset, 9)[0].error_code == ErrorCodes.REFUSED_STREAM
    release.set()
    protocol = peer.transport.protocol
    await eventually(lambda: not protocol.streams)
    peer.request(11)
    assert (await peer.answer(11))[0] == 200


async def test_expect_100_continue_is_answered_when_the_app_reads_the_body() -> None:
    peer = Peer(make_server())
    peer.send()
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/upload"),
        (b":authority", b"unit.test"),
        (b"expect", b"100-continue"),
    ]
    peer.h2.send_headers(1, headers)
    peer.send()
    await peer.until(lambda: bool(peer.of(InformationalResponseReceived, 1)))
    assert dict(peer.of(InformationalResponseReceived, 1)[0].headers)[b":status"] == b"100"
    peer.h2.send_data(1, b"after 100", end_stream=True)
    peer.send()
    assert await peer.answer(1) == (200, b"after 100")


async def test_response_fields_as_http2_sends_them() -> None:
    """Connection-specific fields dropped, values trimmed, and the values new on
    every response (request id, response time) sent never-indexed: they do not
    fill the client's HPACK table."""

    async def app(request: Request) -> Response:
        return Response(
            200,
            Headers(
                [
                    ("x-request-id", request.path[1:]),
                    ("x-response-time", "0.42ms"),
                    ("x-padded", "  value \t"),
                    ("connection", "close"),
                    ("keep-alive", "timeout=5"),
                    ("te", "trailers"),
                    ("content-type", "text/plain"),
                ]
            ),
            b"ok",
        )

    peer = Peer(make_server(app))
    peer.send()
    for stream_id in (1, 3):
        peer.request(stream_id, f"/id-{stream_id}")
        # Literals go out as they are (no Huffman coding): readable in the raw bytes.
        marker = f"id-{stream_id}".encode()
        await eventually(lambda marker=marker: marker in bytes(peer.transport.out))
        assert b"0.42ms" in bytes(peer.transport.out)
        assert await peer.answer(stream_id) == (200, b"ok")
        headers = peer.of(ResponseReceived, stream_id)[0].headers
        fields = {bytes(n): bytes(v) for n, v in headers}
        assert fields[b"x-request-id"] == f"id-{stream_id}".encode()
        assert fields[b"x-padded"] == b"value"
        assert not {b"connection", b"keep-alive", b"te"} & fields.keys()
        kinds = {bytes(n): type(h).__name__ for h in headers for n in [h[0]]}
        assert kinds[b"x-request-id"] == "NeverIndexedHeaderTuple"
        assert kinds[b"x-response-time"] == "NeverIndexedHeaderTuple"
        assert kinds[b"content-type"] == "HeaderTuple"
    # The second response found content-type in the table the first one filled.
    table = [bytes(name) for name, _ in peer.h2.decoder.header_table.dynamic_entries]
    assert b"content-type" in table and b"x-request-id" not in table


async def test_a_nul_or_pseudo_header_name_in_a_response_is_answered_500() -> None:
    async def app(request: Request) -> Response:
        if request.path == "/nul":
            return Response(200, Headers([("x-bad", "a\x00b")]), b"never sent")
        return Response(200, Headers([(":fake", "x")]), b"never sent")

    peer = Peer(make_server(app))
    peer.send()
    peer.request(1, "/nul")
    peer.request(3, "/pseudo")
    assert (await peer.answer(1))[0] == 500
    assert (await peer.answer(3))[0] == 500
