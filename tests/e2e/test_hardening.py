"""Hostile and malformed requests over raw sockets.

Each test asserts the status the client gets, that the error body is the
gateway's JSON format, and what (if anything) reached the test upstream.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.e2e.conftest import (
    GatewayFactory,
    RawConn,
    TestUpstream,
    assert_json_error,
    make_config,
    raw_exchange,
)

LIMITS = {"max_request_body_bytes": 4096, "listener": {"max_header_bytes": 2048}}


@pytest.fixture
async def gw(gateway_factory: GatewayFactory):
    return await gateway_factory(**LIMITS)


def assert_nothing_upstream(upstream: TestUpstream) -> None:
    assert upstream.requests == [], [(r.method, r.target) for r in upstream.requests]
    assert upstream.connections == 0


async def rejected(port: int, data: bytes, status: int) -> dict:
    """Send ``data``; expect exactly one JSON error with ``status``, then a close."""
    responses, closed = await raw_exchange(port, data, wait_s=3)
    assert [r.status for r in responses] == [status], [(r.status, r.body) for r in responses]
    resp = responses[0]
    assert resp.header("connection") == "close"
    assert resp.header("content-type") == "application/json"
    body = assert_json_error(resp, status)
    assert resp.header("x-request-id") == body["request_id"]
    assert closed
    return body


# --- header limits -----------------------------------------------------------


async def test_header_block_over_max_header_bytes_is_431(gw, upstream):
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 60) for i in range(40))
    data = b"GET /headers HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n"
    assert len(data) > 2048
    await rejected(gw.port, data, 431)
    assert_nothing_upstream(upstream)


async def test_long_request_target_is_431(gw, upstream):
    data = b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    await rejected(gw.port, data, 431)
    assert_nothing_upstream(upstream)


async def test_header_block_just_under_limit_is_served(gw, upstream):
    data = b"GET /headers HTTP/1.1\r\nHost: h\r\nX-Fill: " + b"v" * 1500 + b"\r\n\r\n"
    responses, _ = await raw_exchange(gw.port, data, wait_s=1)
    assert [r.status for r in responses] == [200]
    assert upstream.requests[0].header("x-fill") == "v" * 1500


async def test_single_endless_header_line_is_rejected_by_size(gateway_factory, upstream):
    gw = await gateway_factory(listener={"max_header_bytes": 2048, "header_timeout_s": 2})
    conn = await RawConn.open(gw.port)
    accepted = 0
    try:
        await conn.send(b"GET /headers HTTP/1.1\r\nHost: h\r\nX-Big: ")
        # 1 MiB of one header value (no line end), 512 times max_header_bytes.
        for _ in range(16):
            conn.writer.write(b"a" * 65536)
            await asyncio.wait_for(conn.writer.drain(), 2)
            accepted += 65536
        resp = await conn.read_response(wait_s=4)
        status = resp.status
    except (ConnectionError, TimeoutError):
        status = None  # refused by closing: acceptable
    finally:
        await conn.close()
    assert status in (431, None), f"answered {status} after accepting {accepted} header bytes"
    assert_nothing_upstream(upstream)


# --- body limits -------------------------------------------------------------


async def test_content_length_over_limit_is_413_without_upstream_contact(gw, upstream):
    data = b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4097\r\n\r\n"
    await rejected(gw.port, data, 413)
    assert_nothing_upstream(upstream)


async def test_content_length_at_limit_is_served(gw, upstream):
    body = b"b" * 4096
    data = b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4096\r\n\r\n" + body
    responses, _ = await raw_exchange(gw.port, data, wait_s=1)
    assert [r.status for r in responses] == [200]
    assert responses[0].body == body


async def test_chunked_body_over_limit_never_gets_2xx(gw, upstream):
    chunk = b"1000\r\n" + b"z" * 4096 + b"\r\n"
    data = b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    data += chunk * 4 + b"0\r\n\r\n"
    responses, closed = await raw_exchange(gw.port, data, wait_s=3)
    assert closed
    # What the engine does: the head is forwarded as soon as it is parsed; the
    # body stream fails once past the limit and the client gets 413.
    assert [r.status for r in responses] == [413]
    assert_json_error(responses[0], 413)
    assert all(not r.body_complete for r in upstream.requests)


async def test_no_body_bytes_past_the_limit_are_forwarded(gw, upstream):
    chunk = b"1000\r\n" + b"z" * 4096 + b"\r\n"
    data = b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    responses, _ = await raw_exchange(gw.port, data + chunk * 4 + b"0\r\n\r\n", wait_s=3)
    assert [r.status for r in responses] == [413]
    forwarded = [r.body_len for r in upstream.requests]
    assert all(n <= 4096 for n in forwarded), forwarded


async def test_chunked_body_under_limit_is_served(gw, upstream):
    data = (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    responses, _ = await raw_exchange(gw.port, data, wait_s=1)
    assert [r.status for r in responses] == [200]
    assert responses[0].body == b"hello world"
    assert upstream.requests[0].body == b"hello world"


# --- framing -----------------------------------------------------------------

FRAMING_400 = {
    "content-length-and-chunked": (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ),
    "two-differing-content-lengths": (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    ),
    "content-length-list": (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!"
    ),
    "negative-content-length": b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
    "overflowing-content-length": (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n"
    ),
    "transfer-encoding-gzip": (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nhello"
    ),
    "transfer-encoding-chunked-then-gzip": (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    ),
    "obs-fold": b"GET /headers HTTP/1.1\r\nHost: h\r\nX-Fold: a\r\n  b\r\n\r\n",
    "bare-cr-in-header": b"GET /headers HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",
    "nul-in-header-value": b"GET /headers HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
    "control-char-in-header-value": b"GET /headers HTTP/1.1\r\nHost: h\r\nX-A: a\x01b\r\n\r\n",
    "del-in-header-value": b"GET /headers HTTP/1.1\r\nHost: h\r\nX-A: a\x7fb\r\n\r\n",
    "space-before-colon": b"GET /headers HTTP/1.1\r\nHost: h\r\nX-A : v\r\n\r\n",
    "missing-host-http11": b"GET /headers HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "two-host-headers": b"GET /headers HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
    "bare-lf-line-ends": b"GET /headers HTTP/1.1\nHost: h\n\n",
}


@pytest.mark.parametrize("data", FRAMING_400.values(), ids=FRAMING_400.keys())
async def test_malformed_request_is_400_and_never_forwarded(gw, upstream, data):
    await rejected(gw.port, data, 400)
    assert_nothing_upstream(upstream)


async def test_missing_host_is_fine_on_http10(gw, upstream):
    responses, closed = await raw_exchange(gw.port, b"GET /headers HTTP/1.0\r\n\r\n")
    assert [r.status for r in responses] == [200]
    assert closed


async def test_error_is_answered_after_earlier_pipelined_requests(gw, upstream):
    data = (
        b"GET /headers?n=1 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /headers?n=2 HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n"
    )
    responses, closed = await raw_exchange(gw.port, data, wait_s=3)
    assert [r.status for r in responses] == [200, 400]
    assert responses[0].json()["target"] == "/headers?n=1"
    assert closed
    assert [r.target for r in upstream.requests] == ["/headers?n=1"]


async def test_invalid_chunk_size_is_400_and_no_complete_request_upstream(gw, upstream):
    data = (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n"
    )
    await rejected(gw.port, data, 400)
    assert all(not r.body_complete for r in upstream.requests)


async def test_invalid_chunk_size_after_good_chunks_is_400(gw, upstream):
    conn = await RawConn.open(gw.port)
    try:
        await conn.send(
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        await asyncio.sleep(0.1)
        await conn.send(b"-5\r\nhello\r\n0\r\n\r\n")
        resp = await conn.read_response(wait_s=3)
        assert_json_error(resp, 400)
        assert await conn.is_closed()
    finally:
        await conn.close()
    assert all(not r.body_complete for r in upstream.requests)


async def test_invalid_chunk_size_in_first_packet_never_reaches_upstream(gw, upstream):
    data = (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n"
    )
    await rejected(gw.port, data, 400)
    assert_nothing_upstream(upstream)


async def test_unsupported_transfer_coding_before_chunked_is_refused(gw, upstream):
    data = (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    responses, _ = await raw_exchange(gw.port, data, wait_s=3)
    assert [r.status for r in responses] in ([400], [501])
    assert_nothing_upstream(upstream)


async def test_http10_with_transfer_encoding_does_not_keep_the_connection(gw, upstream):
    data = (
        b"POST /echo HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        b"GET /headers?smuggled=1 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    responses, closed = await raw_exchange(gw.port, data, wait_s=2)
    assert len(responses) == 1
    assert responses[0].status == 400 or responses[0].header("connection") == "close"
    assert closed
    assert "/headers?smuggled=1" not in [r.target for r in upstream.requests]


async def test_absolute_form_target_cannot_bypass_route_middleware(gateway_factory, upstream):
    gw = await gateway_factory(
        routes=[
            {
                "path": "/admin/*",
                "upstream": "main",
                "middleware": ["tests.e2e.plugins_for_tests:deny"],
            },
            {"path": "/*", "upstream": "main"},
        ]
    )
    direct, _ = await raw_exchange(
        gw.port, b"GET /admin/secret HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    assert [r.status for r in direct] == [403]
    responses, _ = await raw_exchange(
        gw.port,
        b"GET http://h/admin/secret HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    assert [r.status for r in responses] in ([403], [400])
    assert upstream.requests == []


# --- timeouts ----------------------------------------------------------------


async def test_slowloris_partial_head_gets_408_and_nothing_upstream(gw, upstream):
    conn = await RawConn.open(gw.port)
    try:
        await conn.send(b"GET /headers HTTP/1.1\r\nHost: h\r\nX-Slow: ")
        await asyncio.sleep(0.2)
        await conn.send(b"still")  # trickling bytes does not extend the deadline
        data = await conn.read_all(wait_s=3)  # header_timeout_s is 0.5
    finally:
        await conn.close()
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    _, _, body = data.partition(b"\r\n\r\n")
    assert b'"error"' in body and b'"request_id"' in body
    assert_nothing_upstream(upstream)


async def test_silent_connection_is_closed_after_header_timeout(gw, upstream):
    conn = await RawConn.open(gw.port)
    try:
        assert await conn.is_closed(wait_s=3)
    finally:
        await conn.close()
    assert_nothing_upstream(upstream)


async def test_body_timeout_never_gives_2xx(gw, upstream):
    conn = await RawConn.open(gw.port)
    try:
        await conn.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789")
        data = await conn.read_all(wait_s=3)  # body_timeout_s is 0.5
    finally:
        await conn.close()
    if data:
        assert data.startswith(b"HTTP/1.1 408 "), data[:200]
        assert b'"request_id"' in data
    assert all(not r.body_complete for r in upstream.requests)
    assert all(r.body_len <= 10 for r in upstream.requests)


async def test_idle_keep_alive_connection_is_closed(gateway_factory, upstream):
    gw = await gateway_factory(listener={"idle_timeout_s": 0.4})
    conn = await RawConn.open(gw.port)
    try:
        await conn.send(b"GET /headers HTTP/1.1\r\nHost: h\r\n\r\n")
        resp = await conn.read_response()
        assert resp.status == 200
        assert resp.header("connection") is None  # kept alive
        await conn.send(b"GET /headers HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await conn.read_response()).status == 200
        assert await conn.is_closed(wait_s=3)
    finally:
        await conn.close()
    assert len(upstream.requests) == 2


async def test_request_trailers_do_not_become_headers(gw, upstream):
    data = (
        b"POST /echo HTTP/1.1\r\nHost: good.example\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\nHost: evil.example\r\nX-Trailer: t\r\n\r\n"
    )
    responses, _ = await raw_exchange(gw.port, data, wait_s=3)
    assert [r.status for r in responses] in ([200], [400])
    for rec in upstream.requests:
        assert rec.header_all("host") == ["good.example"]
        assert rec.header("x-trailer") is None


async def test_dot_segments_cannot_escape_a_route(gateway_factory, upstream: TestUpstream):
    """`/public/../admin/x` is routed (and forwarded) as `/admin/x`, so /admin's chain applies."""
    gw = await gateway_factory(
        make_config(
            upstream.port,
            routes=[
                {"path": "/public/*", "upstream": "main"},
                {
                    "path": "/admin/*",
                    "upstream": "main",
                    "middleware": ["tests.e2e.plugins_for_tests:deny"],
                },
            ],
        )
    )
    for target in ("/public/../admin/x", "/public/%2e%2e/admin/x", "/public/./../admin/x"):
        request = f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        responses, _ = await raw_exchange(gw.port, request.encode())
        assert [r.status for r in responses] == [403], target
    assert upstream.requests == []
    responses, _ = await raw_exchange(
        gw.port, b"GET /public/a/../b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert [r.status for r in responses] == [200]
    assert [r.target for r in upstream.requests] == ["/public/b"]


@pytest.mark.parametrize(
    ("request_line", "status"),
    [(b"CONNECT evil.example:443 HTTP/1.1", 405), (b"GET * HTTP/1.1", 400)],
)
async def test_connect_and_asterisk_targets_are_refused(
    gateway_factory, upstream: TestUpstream, request_line: bytes, status: int
):
    gw = await gateway_factory(make_config(upstream.port))
    responses, closed = await raw_exchange(gw.port, request_line + b"\r\nHost: t\r\n\r\n")
    assert len(responses) == 1
    assert_json_error(responses[0], status)
    assert closed
    assert upstream.requests == []


async def test_endless_trailer_line_is_cut_off(gw, upstream):
    """Trailers are framing, not body: bounded by max_header_bytes, not by the body timeout."""
    conn = await RawConn.open(gw.port)

    async def flood() -> None:
        await conn.send(
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Trailer: "
        )
        with contextlib.suppress(ConnectionError):
            for _ in range(250):  # up to 2 MB of one trailer line
                await conn.send(b"t" * 8192)

    sender = asyncio.create_task(flood())
    try:
        resp = await conn.read_response(wait_s=5)
        assert resp.status == 400
        assert await conn.is_closed()
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        await conn.close()
    assert all(not r.body_complete for r in upstream.requests)


async def test_many_tiny_chunks_are_fine(gw, upstream):
    body = b"".join(b"1\r\n%c\r\n" % (65 + i % 26) for i in range(3000))
    responses, _ = await raw_exchange(
        gw.port,
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + body
        + b"0\r\n\r\n",
    )
    assert [r.status for r in responses] == [200]
    assert len(responses[0].body) == 3000
