"""The HTTP/1.1 server's response head: a field that would split the head (a CR or
LF in a name or value, set by a plugin) is never written; the client gets a 500."""

from __future__ import annotations

import asyncio

import pytest

from meshgate.config.models import ListenerConfig
from meshgate.http.messages import Headers, Request, Response
from meshgate.io.server import HttpServer, HttpServerProtocol
from tests.memory_transport import MemoryTransport


async def answer(fields: list[tuple[str, str]]) -> bytes:
    """What a client reads for one GET when the app answers with ``fields``."""

    async def app(request: Request) -> Response:
        return Response(200, Headers(fields), b"body")

    proto = HttpServerProtocol(HttpServer(app, ListenerConfig(), 4096))
    transport = MemoryTransport()
    proto.connection_made(transport)
    proto.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    for _ in range(100):
        if b"\r\n\r\n" in transport.data:
            break
        await asyncio.sleep(0.005)
    proto.connection_lost(None)
    return bytes(transport.data)


async def test_fields_go_out_one_per_line() -> None:
    out = await answer([("x-one", "1"), ("x-two", "two words")])
    head = out.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"HTTP/1.1 200 OK"
    assert b"x-one: 1" in head and b"x-two: two words" in head
    assert out.endswith(b"\r\n\r\nbody")


@pytest.mark.parametrize(
    "field",
    [
        ("x-split", "a\r\nset-cookie: stolen=1"),
        ("x-bare-lf", "a\nb"),
        ("x-bare-cr", "a\rb"),
        ("x-name\r\nset-cookie", "stolen=1"),
    ],
)
async def test_a_line_break_in_a_field_is_answered_500(field: tuple[str, str]) -> None:
    out = await answer([("x-fine", "1"), field])
    assert out.startswith(b"HTTP/1.1 500 ")
    assert b"stolen" not in out and b"x-fine" not in out
    assert b"invalid response header" in out
