"""HTTP/2 to upstreams end to end: httpx (HTTP/2) -> gateway -> an h2-based test
upstream (h2c, and TLS with ALPN h2): multiplexing on few connections within the
upstream's stream limit, flow control of large bodies both ways, trailers, GOAWAY,
a reset stream, idle close, and a meshgate listener as the HTTP/2 upstream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hyperframe.frame import HeadersFrame

from meshgate.gateway import Gateway
from tests.e2e.conftest import (
    GatewayFactory,
    TestUpstream,
    assert_json_error,
    eventually,
    free_port,
    make_config,
    url,
)
from tests.e2e.h2_helpers import Answer, RawH2
from tests.e2e.h2_upstream import H2Upstream, tls_context
from tests.e2e.tls_helpers import CA

H2C = {"http2": True}
BODY_LIMIT = 4 * 1024 * 1024


def h2c_upstream(port: int, **more: Any) -> list[dict[str, Any]]:
    up: dict[str, Any] = {
        "name": "main",
        "protocol": "h2c",
        "connect_timeout_s": 2,
        "instances": [{"host": "127.0.0.1", "port": port}],
    }
    up.update(more)
    return [up]


def h2_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(http1=False, http2=True, timeout=10)


@pytest.fixture
async def h2up() -> AsyncIterator[H2Upstream]:
    srv = await H2Upstream().start()
    yield srv
    await srv.stop()


async def gateway_to(
    factory: GatewayFactory,
    upstream_port: int,
    *,
    listener: dict[str, Any] | None = None,
    **up: Any,
) -> Gateway:
    return await factory(
        make_config(
            0,
            upstreams=h2c_upstream(upstream_port, **up),
            listener=listener if listener is not None else H2C,
            max_request_body_bytes=BODY_LIMIT,
        )
    )


def pool_of(gw: Gateway) -> Any:
    return gw.runtime.clusters["main"].hosts[0].pool


async def test_h2c_upstream_gets_an_http2_request(
    gateway_factory: GatewayFactory, h2up: H2Upstream
) -> None:
    gw = await gateway_to(gateway_factory, h2up.port)
    async with h2_client() as c:
        r = await c.get(url(gw, "/headers?q=1"), headers={"x-custom": "v", "te": "trailers"})
    assert r.status_code == 200 and r.http_version == "HTTP/2"
    fields = dict(json.loads(r.content))
    assert fields[":method"] == "GET" and fields[":path"] == "/headers?q=1"
    assert fields[":scheme"] == "http"
    assert fields[":authority"] == f"127.0.0.1:{gw.port}"  # preserve_host (the default)
    assert fields["x-custom"] == "v"
    assert fields["te"] == "trailers"  # the one TE value HTTP/2 allows, forwarded
    assert fields["x-forwarded-proto"] == "http"
    assert "host" not in fields and "connection" not in fields


async def test_http1_client_to_h2c_upstream(
    gateway_factory: GatewayFactory, h2up: H2Upstream
) -> None:
    gw = await gateway_to(gateway_factory, h2up.port, listener={})
    async with httpx.AsyncClient() as c:
        r = await c.post(url(gw, "/echo"), content=b"hello")
        assert r.status_code == 200 and r.content == b"hello"
        r = await c.head(url(gw, "/big?n=1000"))
        assert r.status_code == 200 and r.headers["content-length"] == "1000"


async def test_many_concurrent_streams_share_one_connection(
    gateway_factory: GatewayFactory, h2up: H2Upstream
) -> None:
    gw = await gateway_to(gateway_factory, h2up.port)
    async with h2_client() as c:
        rs = await asyncio.gather(*(c.get(url(gw, "/hold?n=40")) for _ in range(40)))
    assert [r.status_code for r in rs] == [200] * 40
    assert h2up.connections == 1
    assert h2up.most_open_streams == 40  # all held at once, on that one connection
    assert pool_of(gw).connects == 1


async def test_the_upstream_stream_limit_opens_more_connections(
    gateway_factory: GatewayFactory,
) -> None:
    srv = await H2Upstream(max_streams=5).start()
    try:
        gw = await gateway_to(gateway_factory, srv.port)
        async with h2_client() as c:
            rs = await asyncio.gather(*(c.get(url(gw, "/hold?n=20")) for _ in range(20)))
        # 20 held at once, 5 per connection (h2 on the upstream would have refused a sixth)
        assert [r.status_code for r in rs] == [200] * 20
        assert srv.connections == 4
        assert srv.most_open_streams == 5
    finally:
        await srv.stop()


async def test_large_bodies_both_ways_within_flow_control(
    gateway_factory: GatewayFactory, h2up: H2Upstream
) -> None:
    gw = await gateway_to(gateway_factory, h2up.port)
    payload = bytes(range(256)) * 4096  # 1 MiB: many windows of the upstream's 64 KiB
    async with h2_client() as c:
        r = await c.post(url(gw, "/echo"), content=payload)
        assert r.status_code == 200 and r.content == payload

        async def upload() -> AsyncIterator[bytes]:  # streamed: no content-length
            for i in range(0, len(payload), 100_000):
                yield payload[i : i + 100_000]

        r = await c.post(url(gw, "/echo"), content=upload())
        assert r.status_code == 200 and r.content == payload
        r = await c.get(url(gw, "/big?n=3000000"))
        assert r.status_code == 200 and len(r.content) == 3_000_000
    assert max(len(req.body) for req in h2up.requests) == len(payload)


async def test_slow_reader_holds_the_upstream_stream_not_the_connection(
    gateway_factory: GatewayFactory, h2up: H2Upstream
) -> None:
    """A response nobody reads stops at its windows and the gateway's buffer; another
    request is served meanwhile on the same upstream connection."""
    gw = await gateway_to(gateway_factory, h2up.port)
    slow = await RawH2(auto_window=False).connect(gw.port)  # grants no window back
    try:
        slow.request(1, "/big?n=5000000", authority="x")
        await slow.until(lambda: bool(slow.answers.get(1, Answer()).body))
        async with h2_client() as c:
            r = await c.get(url(gw, "/big?n=200000"))
        assert r.status_code == 200 and len(r.content) == 200_000
        # held back, whatever the timing: the client's 64 KiB window, one chunk the
        # listener holds, the body buffer (256 KiB), the upstream window (256 KiB)
        upstream_side = next(req for req in h2up.requests if req.path == "/big?n=5000000")
        assert upstream_side.sent <= 1024 * 1024
        slow.grant(1, 5_000_000)  # now read it all
        answer = await slow.answer(1)
    finally:
        await slow.close()
    assert answer.status == 200 and len(answer.body) == 5_000_000
    assert h2up.connections == 1


async def test_response_trailers_reach_http2_and_te_trailers_http1_clients(
    gateway_factory: GatewayFactory, h2up: H2Upstream
) -> None:
    gw = await gateway_to(gateway_factory, h2up.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    for te in ("te: trailers\r\nconnection: te\r\n", ""):
        writer.write(f"GET /trailers HTTP/1.1\r\nhost: x\r\n{te}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        body = await reader.readuntil(b"0\r\n")
        assert body.endswith(b"4\r\ndata\r\n0\r\n")
        rest = await reader.readuntil(b"\r\n\r\n") if te else await reader.readexactly(2)
        if te:
            assert rest == b"x-checksum: abc\r\ngrpc-status: 0\r\n\r\n"
        else:
            assert rest == b"\r\n"  # dropped: the client did not say it takes them
    writer.close()


async def test_trailers_both_ways_over_http2(
    gateway_factory: GatewayFactory, h2up: H2Upstream
) -> None:
    gw = await gateway_to(gateway_factory, h2up.port)
    raw = await RawH2().connect(gw.port)
    try:
        raw.request(1, "/trailers", authority="x")
        answer = await raw.answer(1)
        assert answer.status == 200 and answer.body == b"data"
        assert answer.headers[-2:] == [("x-checksum", "abc"), ("grpc-status", "0")]
        raw.request(3, "/echo", "POST", authority="x", end=False)
        raw.data(3, b"abc")
        trailers = raw.encoder.encode([("x-sum", "3")])
        raw.send(HeadersFrame(3, trailers, flags=["END_HEADERS", "END_STREAM"]))
        answer = await raw.answer(3)
    finally:
        await raw.close()
    assert answer.status == 200 and answer.body == b"abc"
    assert h2up.requests[-1].trailers == [("x-sum", "3")]  # request trailers went through
    assert answer.headers[-1:] == [("x-sum", "3")]  # and the echo's response trailers back


async def test_reset_stream_is_a_502_for_that_request_only(
    gateway_factory: GatewayFactory, h2up: H2Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await gateway_to(gateway_factory, h2up.port)
    caplog.set_level(logging.WARNING, "meshgate.proxy")
    async with h2_client() as c:
        bad, good = await asyncio.gather(c.get(url(gw, "/reset")), c.get(url(gw, "/x")))
    assert_json_error(bad, 502)
    assert good.status_code == 200 and good.content == b"ok"
    assert h2up.connections == 1  # the connection served on
    assert "upstream reset the stream (INTERNAL_ERROR)" in caplog.text


async def test_goaway_streams_it_did_not_take_are_sent_again(
    gateway_factory: GatewayFactory, h2up: H2Upstream
) -> None:
    gw = await gateway_to(gateway_factory, h2up.port)
    async with h2_client() as c:
        first = asyncio.ensure_future(c.get(url(gw, "/drain")))
        await eventually(lambda: h2up.paths() == ["/drain"])
        second = await c.get(url(gw, "/x"))
        r = await first
    assert r.status_code == 200 and second.status_code == 200
    # /x went first on the draining connection (above its GOAWAY's last stream: not
    # taken), then again on a new one
    assert h2up.paths() == ["/drain", "/x", "/x"]
    assert h2up.connections == 2


async def test_idle_connection_closed_after_pool_idle_timeout(
    gateway_factory: GatewayFactory, h2up: H2Upstream
) -> None:
    gw = await gateway_to(gateway_factory, h2up.port, pool={"idle_timeout_s": 0.2})
    async with h2_client() as c:
        assert (await c.get(url(gw, "/x"))).status_code == 200
        await eventually(lambda: pool_of(gw).open == 0)
        assert (await c.get(url(gw, "/x"))).status_code == 200
    assert h2up.connections == 2


async def test_upstream_down_is_503_and_non_h2_upstream_502(
    gateway_factory: GatewayFactory, upstream: TestUpstream
) -> None:
    gw = await gateway_to(gateway_factory, free_port())
    async with h2_client() as c:
        assert_json_error(await c.get(url(gw, "/x")), 503)
    gw = await gateway_to(gateway_factory, upstream.port)  # an HTTP/1.1-only server
    async with h2_client() as c:
        assert_json_error(await c.get(url(gw, "/x")), 502)


@pytest.mark.parametrize(("protocol", "connections"), [("h2", 1), ("auto", 2)])
async def test_tls_h2_upstream_with_alpn(
    gateway_factory: GatewayFactory, tmp_path: Path, protocol: str, connections: int
) -> None:
    """h2: ALPN h2 only. auto: asks once (a probe connection closed after the
    handshake), then the same single HTTP/2 connection carries the requests."""
    ca = CA(tmp_path / "ca")
    pair = ca.issue("upstream", ("upstream.test",), ips=("127.0.0.1",))
    srv = await H2Upstream(tls=tls_context(pair.cert_file, pair.key_file)).start()
    try:
        ups = h2c_upstream(
            srv.port,
            protocol=protocol,
            tls={"ca_file": ca.cert_file, "server_name": "upstream.test"},
        )
        gw = await gateway_factory(make_config(0, upstreams=ups, listener=H2C))
        async with h2_client() as c:
            rs = await asyncio.gather(*(c.get(url(gw, "/headers")) for _ in range(10)))
        assert [r.status_code for r in rs] == [200] * 10
        assert dict(json.loads(rs[0].content))[":scheme"] == "https"
        assert type(pool_of(gw)).__name__ == "H2Pool"
        assert srv.connections == connections
    finally:
        await srv.stop()


async def test_meshgate_listener_as_the_http2_upstream(
    gateway_factory: GatewayFactory, upstream: TestUpstream
) -> None:
    """Gateway -> (h2c) gateway -> HTTP/1.1 test upstream: sidecar-to-sidecar style."""
    inner = await gateway_factory(
        make_config(upstream.port, listener=H2C, max_request_body_bytes=BODY_LIMIT)
    )
    outer = await gateway_to(gateway_factory, inner.port, listener={})
    async with httpx.AsyncClient() as c:
        rs = await asyncio.gather(
            *(c.post(url(outer, "/echo"), content=b"x" * 100_000) for _ in range(5))
        )
    assert all(r.status_code == 200 and r.content == b"x" * 100_000 for r in rs)
    assert pool_of(outer).connects == 1


async def test_a_header_a_middleware_broke_is_not_sent(
    gateway_factory: GatewayFactory, h2up: H2Upstream
) -> None:
    cfg = make_config(0, upstreams=h2c_upstream(h2up.port), listener=H2C)
    cfg["routes"][0]["middleware"] = ["tests.e2e.h2_upstream:broken_header"]
    gw = await gateway_factory(cfg)
    async with h2_client() as c:
        r = await c.get(url(gw, "/x"))
    assert assert_json_error(r, 500)["error"] == (
        "a middleware put a line break into the request line or a header"
    )
    assert h2up.requests == []


async def test_a_stalled_response_body_is_cut_after_read_timeout(
    gateway_factory: GatewayFactory, h2up: H2Upstream
) -> None:
    gw = await gateway_to(gateway_factory, h2up.port, read_timeout_s=0.3)
    async with h2_client() as c:
        async with c.stream("GET", url(gw, "/stall")) as r:
            assert r.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):  # the stream is reset
                await r.aread()
        ok = await c.get(url(gw, "/x"))  # the upstream connection serves on
    assert ok.status_code == 200
    assert h2up.connections == 1


async def test_an_answer_before_the_body_stands_when_the_upstream_stops_the_upload(
    gateway_factory: GatewayFactory, h2up: H2Upstream
) -> None:
    """The upstream answers on the request's HEADERS and resets the stream with
    NO_ERROR (RFC 9113 8.1): the client gets that answer, for a body already whole
    at the gateway and for one still coming (whose client then gets the answer and
    RST_STREAM NO_ERROR: httpx cannot take that, hence the frame-level client)."""
    gw = await gateway_to(gateway_factory, h2up.port)
    async with httpx.AsyncClient() as c:  # HTTP/1.1: the gateway buffers up to 256 KiB
        r = await c.post(url(gw, "/early"), content=b"x" * 200_000)
    assert (r.status_code, r.content) == (200, b"early")
    raw = await RawH2().connect(gw.port)
    try:
        raw.request(1, "/early", "POST", authority="x", end=False)
        raw.data(1, b"x" * 16_000)  # more to come, never sent
        answer = await raw.answer(1)
    finally:
        await raw.close()
    assert (answer.status, answer.body) == (200, b"early")
    assert h2up.connections == 1
