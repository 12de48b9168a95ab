"""Arbitrary and mutated HTTP/2 client bytes into the HTTP/2 server protocol: it never
raises, everything it writes is well-formed frames, and no stream outlives the
connection.

Client sessions are made with the h2 library (requests with and without bodies,
resets, pings, window updates), then cut, mutated and split into arbitrary reads.
"""

from __future__ import annotations

import asyncio

from h2.config import H2Configuration
from h2.connection import H2Connection
from hyperframe.frame import Frame, SettingsFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshgate.config.models import ListenerConfig
from meshgate.io.h2server import H2ServerProtocol
from meshgate.io.server import HttpServer
from tests.fuzz.test_server_fuzz import MemoryTransport, app, split


def _headers(path: bytes, method: bytes = b"GET") -> list[tuple[bytes, bytes]]:
    return [(b":method", method), (b":scheme", b"http"), (b":path", path), (b":authority", b"a")]


def _session() -> list[bytes]:
    """One client session, as the byte groups of its successive actions."""
    client = H2Connection(H2Configuration(client_side=True))
    parts: list[bytes] = []

    def step() -> None:
        parts.append(client.data_to_send())

    client.initiate_connection()
    step()
    client.send_headers(1, _headers(b"/a"), end_stream=True)
    step()
    client.send_headers(3, _headers(b"/b", b"POST"))
    client.send_data(3, b"body")
    step()
    client.end_stream(3)
    step()
    client.send_headers(5, _headers(b"/c?x=1"), end_stream=True)
    client.reset_stream(5)
    step()
    client.ping(b"12345678")
    client.increment_flow_control_window(1000)
    step()
    client.send_headers(7, [*_headers(b"/d"), (b"cookie", b"a=1"), (b"cookie", b"b=2")])
    client.send_data(7, b"x" * 3000, end_stream=True)
    step()
    return parts


SESSION = _session()
PREFACE_AND_SETTINGS = SESSION[0]


async def serve(chunks: list[bytes]) -> tuple[MemoryTransport, H2ServerProtocol]:
    listener = ListenerConfig(
        http2=True, header_timeout_s=0.2, body_timeout_s=0.2, max_header_bytes=1024
    )
    server = HttpServer(app, listener, 4096)
    proto = H2ServerProtocol(server, None, "127.0.0.1", 4321)
    transport = MemoryTransport()
    proto.connection_made(transport)
    for chunk in chunks:
        proto.data_received(chunk)  # must never raise
        await asyncio.sleep(0)
    for _ in range(50):  # let the answers finish (bounded)
        if not proto.streams:
            break
        await asyncio.sleep(0.005)
    proto.connection_lost(None)
    for _ in range(50):  # cancelled answers wind down
        if not proto.streams:
            break
        await asyncio.sleep(0.005)
    return transport, proto


def check(transport: MemoryTransport, proto: H2ServerProtocol) -> None:
    assert not proto.streams, "a stream outlived its connection"
    data = memoryview(bytes(transport.data))
    frames: list[Frame] = []
    while data:
        frame, length = Frame.parse_frame_header(data[:9])
        assert len(data) >= 9 + length, "a truncated frame"
        frame.parse_body(data[9 : 9 + length])
        frames.append(frame)
        data = data[9 + length :]
    assert isinstance(frames[0], SettingsFrame)


mutated = st.builds(
    lambda base, pos, junk, cut: (
        base[: pos % (len(base) + 1)] + junk + base[pos % (len(base) + 1) + cut :]
    ),
    st.sampled_from(SESSION[1:]),
    st.integers(0, 200),
    st.binary(max_size=8),
    st.integers(0, 4),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(mutated, st.sampled_from(SESSION[1:]), st.binary(max_size=64)), max_size=5),
    st.lists(st.integers(0, 400), max_size=6),
)
def test_any_frames_after_the_preface_never_crash_the_connection(
    actions: list[bytes], cuts: list[int]
) -> None:
    data = PREFACE_AND_SETTINGS + b"".join(actions)
    check(*asyncio.run(serve(split(data, cuts))))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 4000), max_size=8))
def test_the_whole_session_in_any_split_is_answered(cuts: list[int]) -> None:
    transport, proto = asyncio.run(serve(split(b"".join(SESSION), cuts)))
    check(transport, proto)
    assert b"ok" in bytes(transport.data)
