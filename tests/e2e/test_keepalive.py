"""Client keep-alive, pipelining, HTTP/1.0 and upstream connection reuse."""

from __future__ import annotations

import asyncio

import httpx

from tests.e2e.conftest import RawConn, make_config, raw_exchange, url


async def agen(*parts: bytes):
    for part in parts:
        yield part


async def test_pipelined_gets_answered_in_order_on_one_connection(gateway, upstream):
    data = b"".join(
        b"GET /headers?i=%d HTTP/1.1\r\nHost: h\r\nX-Seq: %d\r\n\r\n" % (i, i) for i in range(3)
    )
    conn = await RawConn.open(gateway.port)
    try:
        await conn.send(data)  # one write: all three requests at once
        responses = [await conn.read_response() for _ in range(3)]
        # the connection is still usable afterwards
        await conn.send(b"GET /headers?i=3 HTTP/1.1\r\nHost: h\r\n\r\n")
        responses.append(await conn.read_response())
    finally:
        await conn.close()
    assert [r.status for r in responses] == [200] * 4
    assert [r.json()["target"] for r in responses] == [f"/headers?i={i}" for i in range(4)]
    assert all(r.header("connection") is None for r in responses)
    assert [r.header("x-seq") for r in upstream.requests] == ["0", "1", "2", None]


async def test_pipelined_slow_first_request_keeps_order(gateway, upstream):
    data = (
        b"GET /slow?s=0.3 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nsecond"
        b"GET /headers?third HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    responses, closed = await raw_exchange(gateway.port, data, wait_s=5)
    assert [r.status for r in responses] == [200, 200, 200]
    assert responses[0].body == b"slow done"
    assert responses[1].body == b"second"
    assert responses[2].json()["target"] == "/headers?third"
    assert responses[2].header("connection") == "close"
    assert closed


async def test_many_pipelined_requests_beyond_the_queue_limit(gateway_factory, upstream):
    gw = await gateway_factory(listener={"max_pipelined_requests": 2})
    n = 12
    data = b"".join(b"GET /headers?i=%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(n))
    conn = await RawConn.open(gw.port)
    try:
        await conn.send(data)
        responses = [await conn.read_response() for _ in range(n)]
    finally:
        await conn.close()
    assert [r.json()["target"] for r in responses] == [f"/headers?i={i}" for i in range(n)]


async def test_http10_without_keep_alive_gets_connection_close(gateway, upstream):
    responses, closed = await raw_exchange(
        gateway.port, b"GET /headers HTTP/1.0\r\nHost: h\r\n\r\n"
    )
    assert [r.status for r in responses] == [200]
    assert responses[0].version == "HTTP/1.1"
    assert responses[0].header("connection") == "close"
    assert closed


async def test_http10_keep_alive_is_honoured(gateway, upstream):
    conn = await RawConn.open(gateway.port)
    try:
        for _ in range(2):
            await conn.send(b"GET /headers HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
            resp = await conn.read_response()
            assert resp.status == 200
            assert resp.header("connection") == "keep-alive"
            assert resp.header("content-length") is not None
    finally:
        await conn.close()
    assert len(upstream.requests) == 2


async def test_http10_client_gets_chunked_upstream_body_close_delimited(gateway, upstream):
    responses, closed = await raw_exchange(
        gateway.port, b"GET /big?n=100000&mode=chunked HTTP/1.0\r\nHost: h\r\n\r\n"
    )
    assert [r.status for r in responses] == [200]
    resp = responses[0]
    assert resp.header("transfer-encoding") is None
    assert resp.header("connection") == "close"
    assert len(resp.body) == 100000
    assert closed


async def test_http11_connection_close_request(gateway, upstream):
    responses, closed = await raw_exchange(
        gateway.port,
        b"GET /headers HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        b"GET /headers?never HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    assert [r.status for r in responses] == [200]
    assert responses[0].header("connection") == "close"
    assert closed
    assert [r.target for r in upstream.requests] == ["/headers"]


async def test_half_closed_client_still_gets_its_response(gateway, upstream):
    conn = await RawConn.open(gateway.port)
    try:
        await conn.send(b"GET /headers HTTP/1.1\r\nHost: h\r\n\r\n")
        conn.writer.write_eof()
        resp = await conn.read_response()
        assert resp.status == 200
        assert await conn.is_closed()
    finally:
        await conn.close()


async def test_sequential_requests_reuse_one_upstream_connection(gateway, upstream):
    async with httpx.AsyncClient() as client:
        for i in range(20):
            r = await client.get(url(gateway, f"/headers?i={i}"))
            assert r.status_code == 200
    assert len(upstream.requests) == 20
    assert upstream.connections == 1
    assert {r.conn_id for r in upstream.requests} == {1}


async def test_upstream_connection_reused_across_client_connections(gateway, upstream):
    for i in range(5):
        responses, _ = await raw_exchange(
            gateway.port, b"GET /headers?i=%d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % i
        )
        assert [r.status for r in responses] == [200]
    assert upstream.connections == 1


async def test_posts_with_bodies_reuse_the_upstream_connection(gateway, upstream):
    async with httpx.AsyncClient() as client:
        for i in range(10):
            body = b"x" * (i * 1000)
            r = await client.post(url(gateway, "/echo"), content=body)
            assert r.content == body
        r = await client.post(url(gateway, "/echo"), content=agen(b"chunk1-", b"chunk2"))
        assert r.content == b"chunk1-chunk2"
    assert upstream.connections == 1
    assert upstream.requests[-1].header("transfer-encoding") == "chunked"


async def test_concurrent_requests_open_parallel_upstream_connections(gateway, upstream):
    async with httpx.AsyncClient() as client:
        results = await asyncio.gather(*(client.get(url(gateway, "/slow?s=0.3")) for _ in range(4)))
        assert [r.status_code for r in results] == [200] * 4
        assert upstream.connections == 4
        # Afterwards the pooled connections serve new requests without new connects.
        for _ in range(4):
            assert (await client.get(url(gateway, "/headers"))).status_code == 200
    assert upstream.connections == 4


async def test_pool_max_idle_zero_opens_a_connection_per_request(gateway_factory, upstream):
    cfg = make_config(
        upstream.port,
        upstreams=[
            {
                "name": "main",
                "pool": {"max_idle": 0},
                "instances": [{"host": "127.0.0.1", "port": upstream.port}],
            }
        ],
    )
    gw = await gateway_factory(cfg)
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            assert (await client.get(url(gw, "/headers"))).status_code == 200
    assert upstream.connections == 3


async def test_max_pipelined_one_still_reads_request_bodies(gateway_factory, upstream):
    gw = await gateway_factory(timeout_s=2, listener={"max_pipelined_requests": 1})
    conn = await RawConn.open(gw.port)
    try:
        await conn.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n")
        await asyncio.sleep(0.1)
        await conn.send(b"hello")
        resp = await conn.read_response(wait_s=5)
    finally:
        await conn.close()
    assert (resp.status, resp.body) == (200, b"hello")


async def test_pipelined_large_posts_with_mixed_framing(gateway_factory, upstream):
    gw = await gateway_factory(max_request_body_bytes=None, listener={"max_pipelined_requests": 2})
    bodies = [bytes([65 + i]) * (1_000_000 + i) for i in range(5)]
    data = b""
    for i, body in enumerate(bodies):
        if i % 2:
            data += b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            data += b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        else:
            data += b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body)
            data += body
    conn = await RawConn.open(gw.port)

    async def writer() -> None:
        for i in range(0, len(data), 100_000):
            await conn.send(data[i : i + 100_000])

    try:
        sending = asyncio.create_task(writer())
        responses = [await conn.read_response(wait_s=20) for _ in bodies]
        await sending
    finally:
        await conn.close()
    assert [r.status for r in responses] == [200] * 5
    assert [r.body == b for r, b in zip(responses, bodies, strict=True)] == [True] * 5
    assert upstream.connections == 1


async def test_http10_keepalive_client_gets_close_delimited_body_then_close(
    gateway_factory, upstream
):
    """No length and no chunked for HTTP/1.0: the close must end the body (not the idle timer)."""
    gateway = await gateway_factory(make_config(upstream.port, listener={"idle_timeout_s": 60}))
    conn = await RawConn.open(gateway.port)
    await conn.send(b"GET /big?n=5000&mode=chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    raw = await asyncio.wait_for(conn.reader.read(), 10)  # returns only once the gateway closes
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in head.lower()
    assert b"transfer-encoding" not in head.lower()
    assert len(body) == 5000
