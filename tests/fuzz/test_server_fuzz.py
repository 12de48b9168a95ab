"""Arbitrary bytes into the HTTP/1.1 server protocol: it answers or closes, never crashes.

The protocol runs on a real event loop with an in-memory transport, so
hypothesis can try thousands of inputs quickly. Each input is split into
arbitrary reads, as TCP may deliver it.
"""

from __future__ import annotations

import asyncio
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshgate.config.models import ListenerConfig
from meshgate.http.messages import Request, Response
from meshgate.io.server import HttpServer, HttpServerProtocol
from tests.memory_transport import MemoryTransport

VALID = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /a?b=c HTTP/1.0\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
]
STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")
ALLOWED = {100, 200, 400, 405, 408, 413, 431, 501}


async def app(request: Request) -> Response:
    await request.body.read_all(1 << 20)
    return Response(200, {"content-type": "text/plain"}, b"ok")


async def serve(chunks: list[bytes]) -> MemoryTransport:
    listener = ListenerConfig(header_timeout_s=0.2, body_timeout_s=0.2, max_header_bytes=1024)
    server = HttpServer(app, listener, 4096)
    proto = HttpServerProtocol(server)
    transport = MemoryTransport()
    proto.connection_made(transport)
    for chunk in chunks:
        proto.data_received(chunk)  # must never raise
        await asyncio.sleep(0)
    proto.eof_received()
    for _ in range(50):  # let queued answers finish (bounded)
        if proto.task is None:
            break
        await asyncio.sleep(0.005)
    if proto.task is not None:
        proto.task.cancel()
    proto.connection_lost(None)
    return transport


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return [p for p in pieces if p]


def check(transport: MemoryTransport) -> None:
    statuses = [int(m.group(1)) for m in STATUS.finditer(bytes(transport.data))]
    assert set(statuses) <= ALLOWED, statuses
    if statuses and statuses[-1] >= 400:
        assert transport.closed, "an error answer must close the connection"


mutated = st.builds(
    lambda base, pos, junk, cut: (
        base[: pos % (len(base) + 1)] + junk + base[pos % (len(base) + 1) + cut :]
    ),
    st.sampled_from(VALID),
    st.integers(0, 200),
    st.binary(max_size=8),
    st.integers(0, 4),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(mutated, st.sampled_from(VALID), st.binary(max_size=64)), max_size=4),
    st.lists(st.integers(0, 400), max_size=6),
)
def test_any_bytes_get_an_answer_or_a_close(messages: list[bytes], cuts: list[int]) -> None:
    data = b"".join(messages)
    check(asyncio.run(serve(split(data, cuts))))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(VALID), min_size=1, max_size=5), st.lists(st.integers(0, 400)))
def test_valid_pipelines_are_all_answered_in_any_split(messages: list[bytes], cuts: list[int]):
    transport = asyncio.run(serve(split(b"".join(messages), cuts)))
    statuses = [int(m.group(1)) for m in STATUS.finditer(bytes(transport.data))]
    # Every request up to the first that closes the connection is answered 200.
    expected = 0
    for message in messages:
        expected += 1
        if b"HTTP/1.0" in message or b"Connection: close" in message:
            break
    assert statuses == [200] * expected
