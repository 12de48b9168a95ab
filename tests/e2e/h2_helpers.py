"""HTTP/2 test tools: a frame-level client (hyperframe + hpack, no state machine, so
it can break the rules and see every frame, e.g. GOAWAY while a stream is still
answered), a middleware adding connection-specific fields to responses, an
upstream counting the requests it holds at once and one counting the bytes it
could send."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from meshgate.pipeline.context import Next, RequestContext

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Answer:
    """What came back on one stream."""

    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    reset: int | None = None  # RST_STREAM error code
    frame_sizes: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


class RawH2:
    """An HTTP/2 client speaking frames on 127.0.0.1:``port``.

    Received DATA is granted back at once (WINDOW_UPDATE) unless ``auto_window``
    is off; SETTINGS are acknowledged; every HEADERS block is decoded in order (the
    HPACK table is shared by the connection)."""

    def __init__(self, auto_window: bool = True) -> None:
        self.auto_window = auto_window
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.server_settings: dict[int, int] = {}
        self.goaway: GoAwayFrame | None = None
        self.answers: dict[int, Answer] = {}
        self.ended: set[int] = set()
        self.pings = 0
        self.closed = False
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(
        self, port: int, settings: dict[int, int] | None = None, ctx: ssl.SSLContext | None = None
    ) -> RawH2:
        self._reader, self._writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None
        )
        self.send(PREFACE, SettingsFrame(0, settings or {}))
        return self

    def send(self, *parts: Frame | bytes) -> None:
        assert self._writer is not None
        self._writer.write(b"".join(p if isinstance(p, bytes) else p.serialize() for p in parts))

    def request(
        self,
        stream_id: int,
        path: str = "/headers",
        method: str = "GET",
        *,
        authority: str | None = "example.test",
        extra: list[tuple[str, str]] | None = None,
        end: bool = True,
    ) -> None:
        fields = [(":method", method)]
        if method != "CONNECT":  # (a CONNECT request has neither)
            fields += [(":scheme", "http"), (":path", path)]
        if authority is not None:
            fields.append((":authority", authority))
        fields += extra or []
        block = self.encoder.encode(fields)
        first, rest = block[:16384], block[16384:]  # SETTINGS_MAX_FRAME_SIZE default
        flags = ([] if rest else ["END_HEADERS"]) + (["END_STREAM"] if end else [])
        frames: list[Frame] = [HeadersFrame(stream_id, first, flags=flags)]
        while rest:
            part, rest = rest[:16384], rest[16384:]
            frames.append(ContinuationFrame(stream_id, part, flags=[] if rest else ["END_HEADERS"]))
        self.send(*frames)

    def data(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self.send(DataFrame(stream_id, data, flags=["END_STREAM"] if end else []))

    def reset(self, stream_id: int, code: int = 8) -> None:  # 8: CANCEL
        self.send(RstStreamFrame(stream_id, code))

    def grant(self, stream_id: int, size: int) -> None:
        self.send(WindowUpdateFrame(stream_id, size), WindowUpdateFrame(0, size))

    def ping(self) -> None:
        self.send(PingFrame(0, b"12345678"))

    async def frame(self) -> Frame | None:
        """The next frame (None: the server closed the connection)."""
        assert self._reader is not None
        try:
            head = await self._reader.readexactly(9)
            frame, length = Frame.parse_frame_header(memoryview(head))
            frame.parse_body(memoryview(await self._reader.readexactly(length)))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed = True
            return None
        sid = frame.stream_id
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.server_settings.update(frame.settings)
            self.send(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, HeadersFrame):
            answer = self.answers.setdefault(sid, Answer())
            for name, value in self.decoder.decode(frame.data, raw=True):
                n, v = name.decode(), value.decode("latin-1")
                if n == ":status":
                    answer.status = int(v)
                else:
                    answer.headers.append((n, v))
        elif isinstance(frame, DataFrame):
            answer = self.answers.setdefault(sid, Answer())
            answer.body += frame.data
            answer.frame_sizes.append(len(frame.data))
            if self.auto_window and frame.flow_controlled_length:
                self.grant(sid, frame.flow_controlled_length)
        elif isinstance(frame, RstStreamFrame):
            self.answers.setdefault(sid, Answer()).reset = frame.error_code
        elif isinstance(frame, GoAwayFrame):
            self.goaway = frame
        elif isinstance(frame, PingFrame) and "ACK" in frame.flags:
            self.pings += 1
        if "END_STREAM" in frame.flags:
            self.ended.add(sid)
        return frame

    async def until(self, done: Callable[[], bool]) -> None:
        """Read frames until ``done()`` holds (fails if the connection closes first)."""
        while not done():
            if await self.frame() is None:
                raise AssertionError("connection closed")

    async def answer(self, stream_id: int) -> Answer:
        """Read frames until the stream ends or is reset."""

        def over() -> bool:
            reset = self.answers.get(stream_id, Answer()).reset is not None
            return stream_id in self.ended or reset

        await self.until(over)
        return self.answers[stream_id]

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()


async def connection_fields(ctx: RequestContext, call_next: Next) -> None:
    """Adds fields that only mean something on an HTTP/1.1 connection to the response."""
    await call_next()
    if ctx.response is not None:
        for name, value in (
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
        ):
            ctx.response.headers.set(name, value)


class CountingUpstream:
    """HTTP/1.1 upstream answering GETs after ``hold_s``, counting those held at once."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> CountingUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                await asyncio.sleep(self.hold_s)
                self.in_flight -= 1
                self.served += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


class SourceUpstream:
    """HTTP/1.1 upstream answering every request with ``size`` bytes, counting the
    bytes its socket has taken (so a test sees whether back-pressure reached it)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.written = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> SourceUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = b"s" * 65536
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
            while self.written < self.size:
                writer.write(block)
                await writer.drain()
                self.written += len(block)
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
