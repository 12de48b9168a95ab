"""Upstream failures become 502/503/504 JSON; the gateway keeps serving afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import httpx
import pytest

from tests.e2e.conftest import (
    RawConn,
    TestUpstream,
    assert_json_error,
    eventually,
    free_port,
    make_config,
    raw_exchange,
    url,
)


async def assert_still_serves(client: httpx.AsyncClient, gw) -> None:
    r = await client.get(url(gw, "/headers?after-error"))
    assert r.status_code == 200
    assert r.json()["target"] == "/headers?after-error"


async def test_no_listener_is_503(gateway_factory, upstream: TestUpstream):
    dead = free_port()
    cfg = make_config(
        upstream.port,
        upstreams=[
            {"name": "main", "instances": [{"host": "127.0.0.1", "port": upstream.port}]},
            {
                "name": "dead",
                "connect_timeout_s": 1,
                "instances": [{"host": "127.0.0.1", "port": dead}],
            },
        ],
        routes=[{"path": "/dead/*", "upstream": "dead"}, {"path": "/*", "upstream": "main"}],
    )
    gw = await gateway_factory(cfg)
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/dead/x"), headers={"x-request-id": "dead-1"})
        data = assert_json_error(r, 503)
        assert data["request_id"] == "dead-1"
        assert r.headers["x-request-id"] == "dead-1"
        r2 = await client.post(url(gw, "/dead/y"), content=b"body")
        assert_json_error(r2, 503)
        await assert_still_serves(client, gw)


async def test_slow_upstream_is_504_and_its_connection_dropped(gateway_factory, upstream):
    gw = await gateway_factory(
        routes=[
            {"path": "/slow", "upstream": "main", "timeout_s": 0.3},
            {"path": "/*", "upstream": "main"},
        ]
    )
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/slow?s=3"))
        assert_json_error(r, 504)
        await eventually(lambda: upstream.requests[0].abandoned)
        await assert_still_serves(client, gw)
    # the timed-out connection was not pooled: the next request needed a new one
    assert upstream.connections == 2


async def test_top_level_timeout_applies_to_routes_without_their_own(gateway_factory, upstream):
    gw = await gateway_factory(timeout_s=0.3)
    async with httpx.AsyncClient() as client:
        assert_json_error(await client.get(url(gw, "/slow?s=2")), 504)
        ok = await client.get(url(gw, "/slow?s=0.05"))
        assert (ok.status_code, ok.text) == (200, "slow done")


@pytest.mark.parametrize("how", ["rst", "fin"])
async def test_upstream_closing_without_answer_is_502(gateway, upstream, how):
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gateway, f"/reset?how={how}"))
        assert_json_error(r, 502)
        await assert_still_serves(client, gateway)


@pytest.mark.parametrize(("max_retries", "sent"), [(0, 2), (1, 3)])
async def test_reused_connection_is_not_retried_forever(
    gateway_factory, upstream, max_retries, sent
):
    gateway = await gateway_factory(
        routes=[{"path": "/*", "upstream": "main", "retry": {"max_retries": max_retries}}]
    )
    async with httpx.AsyncClient() as client:
        await assert_still_serves(client, gateway)  # pools one connection
        r = await client.get(url(gateway, "/reset?how=fin"))
        assert_json_error(r, 502)
    # A reset on a pooled connection is tried once more on a new one (it may just have
    # gone stale); then the route's retries (default 1) apply, and nothing more.
    assert upstream.paths().count("/reset") == sent
    assert r.headers.get("x-meshgate-attempts") == (str(max_retries + 1) if max_retries else None)


async def test_invalid_upstream_response_is_502(gateway, upstream):
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gateway, "/garbage"))
        assert_json_error(r, 502)
        await assert_still_serves(client, gateway)


async def test_upstream_error_statuses_pass_through_unchanged(gateway, upstream):
    async with httpx.AsyncClient() as client:
        for status in (500, 502, 503, 504):
            r = await client.get(url(gateway, f"/status/{status}"))
            assert r.status_code == status
            assert r.text == f"status {status}"
            assert r.headers["x-status"] == str(status)


async def test_reset_mid_body_aborts_the_client_connection_httpx(gateway, upstream):
    async with httpx.AsyncClient() as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.get(url(gateway, "/reset?when=partial"))
        await assert_still_serves(client, gateway)


@pytest.mark.parametrize("how", ["rst", "fin"])
async def test_reset_mid_body_truncates_raw_response(gateway, upstream, how):
    conn = await RawConn.open(gateway.port)
    try:
        target = b"/reset?when=partial&how=" + how.encode()
        await conn.send(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target)
        resp = await conn.read_response()
        assert resp.status == 200
        assert resp.header("content-length") == "100000"
        assert not resp.complete
        assert 0 < len(resp.body) < 100000
    finally:
        await conn.close()
    async with httpx.AsyncClient() as client:
        await assert_still_serves(client, gateway)


async def test_upstream_closing_idle_connection_between_requests(gateway, upstream):
    upstream.idle_close_s = 0.2
    async with httpx.AsyncClient() as client:
        await assert_still_serves(client, gateway)
        await eventually(lambda: upstream.open_connections == 0)
        await asyncio.sleep(0.1)
        await assert_still_serves(client, gateway)
    assert upstream.connections == 2


async def test_stale_pooled_connection_is_retried_once(gateway, upstream):
    async with httpx.AsyncClient() as client:
        await assert_still_serves(client, gateway)
        upstream.close_reused = True  # the pooled connection dies when it is used
        r = await client.get(url(gateway, "/headers?second"))
        assert r.status_code == 200
        assert r.json()["target"] == "/headers?second"
    assert [d.target for d in upstream.dropped] == ["/headers?second"]
    assert upstream.connections == 2
    assert upstream.paths().count("/headers") == 2


async def test_request_with_body_is_not_retried_on_stale_connection(gateway, upstream):
    async with httpx.AsyncClient() as client:
        await assert_still_serves(client, gateway)
        upstream.close_reused = True
        r = await client.post(url(gateway, "/echo"), content=b"pay once")
        assert_json_error(r, 502)
        upstream.close_reused = False
        await assert_still_serves(client, gateway)
    assert [d.target for d in upstream.dropped] == ["/echo"]
    assert "/echo" not in upstream.paths()


async def test_client_reset_mid_request_releases_upstream_connection(gateway, upstream):
    conn = await RawConn.open(gateway.port)
    await conn.send(b"GET /slow?s=5 HTTP/1.1\r\nHost: h\r\n\r\n")
    await eventually(lambda: len(upstream.requests) == 1)
    await conn.reset()
    await eventually(lambda: upstream.requests[0].abandoned)
    await eventually(lambda: upstream.open_connections == 0)
    async with httpx.AsyncClient() as client:
        await assert_still_serves(client, gateway)
    assert upstream.connections == 2  # the abandoned connection was not reused


async def test_client_reset_mid_download_closes_upstream(gateway, upstream):
    conn = await RawConn.open(gateway.port)
    await conn.send(b"GET /big?n=1000000000 HTTP/1.1\r\nHost: h\r\n\r\n")
    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 200 ")
    await conn.reader.readexactly(100_000)
    await conn.reset()
    await eventually(lambda: upstream.open_connections == 0)
    async with httpx.AsyncClient() as client:
        await assert_still_serves(client, gateway)


async def test_half_closed_client_waiting_for_slow_upstream_gets_the_answer(gateway, upstream):
    """A FIN after the request is a half-close: the gateway still answers it."""
    conn = await RawConn.open(gateway.port)
    try:
        await conn.send(b"GET /slow?s=0.3 HTTP/1.1\r\nHost: h\r\n\r\n")
        conn.writer.write_eof()
        resp = await conn.read_response()
        assert (resp.status, resp.body) == (200, b"slow done")
        assert await conn.is_closed()
    finally:
        await conn.close()


async def test_unrequested_101_from_upstream_is_502_without_loop_errors(gateway, upstream, caplog):
    caplog.set_level(logging.ERROR, logger="asyncio")
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gateway, "/switch"))
        assert_json_error(r, 502)
        await assert_still_serves(client, gateway)
    loop_errors = [rec.getMessage() for rec in caplog.records if rec.name == "asyncio"]
    assert loop_errors == []


async def test_connect_timeout_is_503(gateway_factory, upstream):
    """An upstream whose accept queue is full drops SYNs: the connect times out."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):  # fill the accept queue; nobody ever accepts
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        await asyncio.sleep(0.1)
        cfg = make_config(
            upstream.port,
            upstreams=[
                {
                    "name": "main",
                    "connect_timeout_s": 0.3,
                    "instances": [{"host": "127.0.0.1", "port": port}],
                }
            ],
        )
        gw = await gateway_factory(cfg)
        async with httpx.AsyncClient() as client:
            r = await client.get(url(gw, "/x"))
        data = assert_json_error(r, 503)
        assert "timed out" in data["error"]
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_upstream_transfer_coding_is_not_silently_dropped(gateway, upstream):
    responses, _ = await raw_exchange(
        gateway.port, b"GET /te-gzip HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    [resp] = responses
    if resp.status == 502:
        return  # refusing the unsupported coding is fine
    assert resp.status == 200
    labelled = "gzip" in (resp.header("transfer-encoding") or "") + (
        resp.header("content-encoding") or ""
    )
    assert resp.body == b"plain text body" or labelled, (resp.headers, resp.body[:10])


async def test_upstream_response_head_over_the_limit_is_502(gateway, upstream):
    """An upstream cannot make the gateway buffer an endless response head."""
    async with httpx.AsyncClient(timeout=10) as client:
        for target in ("/huge-head?n=400000", "/huge-head?n=400000&line=1"):
            resp = await client.get(url(gateway, target))
            assert_json_error(resp, 502)
            assert "head" in resp.json()["error"]
        assert (await client.get(url(gateway, "/headers"))).status_code == 200


async def test_upstream_endless_trailer_is_cut_off(gateway, upstream):
    """The client's response is aborted and the gateway hangs up on the upstream early."""
    with pytest.raises(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=10) as client:
            await client.get(url(gateway, "/endless-trailer"))
    await eventually(lambda: upstream.requests and upstream.requests[0].abandoned, wait_s=10)


async def test_upstream_silent_mid_body_is_cut_after_read_timeout(gateway_factory, upstream):
    gw = await gateway_factory(
        upstreams=[
            {
                "name": "main",
                "read_timeout_s": 0.3,
                "instances": [{"host": "127.0.0.1", "port": upstream.port}],
            }
        ]
    )
    with pytest.raises(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=10) as client:
            await client.get(url(gw, "/stall"))
    await eventually(lambda: upstream.requests and upstream.requests[0].abandoned, wait_s=5)
    async with httpx.AsyncClient(timeout=10) as client:  # and the gateway goes on serving
        assert (await client.get(url(gw, "/headers"))).status_code == 200
