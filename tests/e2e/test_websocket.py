"""WebSocket through the gateway end to end: the ``websockets`` library as client
and as upstream server, an in-process gateway on 127.0.0.1.

Echo of text, binary, fragmented and 16 MiB messages; ping/pong; close codes
both ways; back-pressure (a client that does not read: the gateway's buffers
stay bounded and nothing is lost); the idle timeout; the route's auth and rate
limits on the upgrade request (401/429, the upstream never asked); ``Upgrade:
h2c`` refused; the access log (101, bytes); the upstream connection never
pooled; wss:// over the TLS listener.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client import generate_latest
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from meshgate.auth.apikeys import hash_key
from meshgate.gateway import Gateway
from meshgate.observability.metrics import GatewayCollector, make_registry
from tests.e2e.conftest import (
    GatewayFactory,
    TestUpstream,
    assert_json_error,
    eventually,
    make_config,
    raw_exchange,
)
from tests.e2e.tls_helpers import CA, TlsFront

MiB = 1024 * 1024
KEY = "mg_wsapp_0123456789abcdefghijklmnopqrstuvwxyzAB"


class WsUpstream:
    """A websockets server: echo, plus behaviours chosen by path.

    ``/ws/echo``             echo every message (text stays text)
    ``/ws/close/CODE``       close at once with CODE and reason "server bye"
    ``/ws/flood/N``          send N messages of 1 MiB, then close 1000
    ``/ws/headers``          send the upgrade request's headers as JSON
    ``/ws/reset``            send one message, then drop the TCP connection
    """

    def __init__(self) -> None:
        self.server: Server | None = None
        self.port = 0
        self.handshakes = 0
        self.close_codes: list[int | None] = []
        self.sent = 0  # flood messages handed to the socket

    async def start(self) -> WsUpstream:
        self.server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            max_size=32 * MiB,
            ping_interval=None,
            compression=None,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, ws: ServerConnection) -> None:
        self.handshakes += 1
        path = ws.request.path if ws.request is not None else ""
        try:
            if path.startswith("/ws/close/"):
                await ws.close(int(path.rsplit("/", 1)[1]), "server bye")
            elif path.startswith("/ws/flood/"):
                block = b"f" * MiB
                for _ in range(int(path.rsplit("/", 1)[1])):
                    await ws.send(block)
                    self.sent += 1
                await ws.close(1000, "flood done")
            elif path == "/ws/reset":
                await ws.send("about to vanish")
                ws.transport.abort()
            elif path == "/ws/headers":
                assert ws.request is not None
                await ws.send(json.dumps(dict(ws.request.headers.raw_items())))
                await ws.wait_closed()
            else:
                async for message in ws:
                    await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.close_codes.append(ws.close_code)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def ws_upstream() -> AsyncIterator[WsUpstream]:
    srv = await WsUpstream().start()
    yield srv
    await srv.stop()


def ws_config(ws_port: int, plain_port: int, **route: Any) -> dict[str, Any]:
    ws_route = {"path_prefix": "/ws", "upstream": "ws", "websocket": {"idle_timeout_s": 5}}
    ws_route.update(route)
    return make_config(
        plain_port,
        upstreams=[
            {
                "name": "ws",
                "connect_timeout_s": 1,
                "instances": [{"host": "127.0.0.1", "port": ws_port}],
            },
            {
                "name": "main",
                "connect_timeout_s": 1,
                "instances": [{"host": "127.0.0.1", "port": plain_port}],
            },
        ],
        routes=[ws_route, {"path": "/*", "upstream": "main"}],
    )


@pytest.fixture
async def ws_gateway(
    gateway_factory: GatewayFactory, ws_upstream: WsUpstream, upstream: TestUpstream
) -> Gateway:
    return await gateway_factory(ws_config(ws_upstream.port, upstream.port))


def ws_url(gw: Gateway, path: str, scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{gw.port}{path}"


def client(gw: Gateway, path: str, **kw: Any) -> Any:
    kw.setdefault("max_size", 32 * MiB)
    kw.setdefault("ping_interval", None)
    kw.setdefault("compression", None)
    kw.setdefault("open_timeout", 5)
    return connect(ws_url(gw, path), **kw)


async def test_echo_text_binary_fragmented_and_ping(ws_gateway: Gateway) -> None:
    async with client(ws_gateway, "/ws/echo") as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"
        await ws.send(["frag", "mented", " text"])  # one message in three frames
        assert await ws.recv() == "fragmented text"
        await ws.send([b"a" * 70_000, b"b" * 70_000])
        assert await ws.recv() == b"a" * 70_000 + b"b" * 70_000
        latency = await asyncio.wait_for(await ws.ping(b"are you there"), 5)
        assert latency >= 0


async def test_16_mib_message(ws_gateway: Gateway) -> None:
    payload = bytes(range(256)) * (16 * MiB // 256)
    async with client(ws_gateway, "/ws/echo") as ws:
        await ws.send(payload)
        got = await asyncio.wait_for(ws.recv(), 30)
    assert got == payload


async def test_close_codes_both_ways(ws_gateway: Gateway, ws_upstream: WsUpstream) -> None:
    async with client(ws_gateway, "/ws/echo") as ws:
        await ws.send("x")
        await ws.recv()
        await ws.close(4000, "client bye")
        assert ws.close_code == 4000
    await eventually(lambda: ws_upstream.close_codes == [4000])

    async with client(ws_gateway, "/ws/close/4001") as ws:
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "server bye")


async def test_upgrade_headers_reach_the_upstream(
    ws_gateway: Gateway, ws_upstream: WsUpstream
) -> None:
    async with client(ws_gateway, "/ws/headers", subprotocols=None) as ws:
        headers = {k.lower(): v for k, v in json.loads(await ws.recv()).items()}
    assert headers["upgrade"] == "websocket"
    assert headers["connection"] == "upgrade"
    assert "sec-websocket-key" in headers and headers["sec-websocket-version"] == "13"
    assert headers["x-forwarded-proto"] == "http"


async def test_slow_reader_back_pressure_keeps_gateway_buffers_bounded(
    ws_gateway: Gateway, ws_upstream: WsUpstream
) -> None:
    total = 48  # MiB the upstream wants to send
    async with client(ws_gateway, f"/ws/flood/{total}", max_queue=1) as ws:
        # The client reads nothing: its socket buffer fills, the gateway pauses the
        # upstream, whose sends then block.
        await asyncio.sleep(1.0)
        stalled_at = ws_upstream.sent
        assert stalled_at < total / 2, stalled_at
        (conn,) = ws_gateway._server.connections  # type: ignore[union-attr]
        assert conn.transport is not None
        # Bounded: the transport's high-water mark plus about one read, not MiBs.
        assert conn.transport.get_write_buffer_size() < 2 * MiB
        await asyncio.sleep(0.5)
        assert ws_upstream.sent <= stalled_at + 1  # still held back
        received = 0
        async for message in ws:  # now read everything: nothing lost
            assert message == b"f" * MiB
            received += 1
    assert received == total
    assert ws.close_code == 1000


async def test_idle_timeout_closes_the_tunnel(
    gateway_factory: GatewayFactory, ws_upstream: WsUpstream, upstream: TestUpstream
) -> None:
    gw = await gateway_factory(
        ws_config(ws_upstream.port, upstream.port, websocket={"idle_timeout_s": 0.3})
    )
    async with client(gw, "/ws/echo") as ws:
        await ws.send("still here")
        assert await ws.recv() == "still here"
        started = asyncio.get_running_loop().time()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        took = asyncio.get_running_loop().time() - started
    assert 0.25 < took < 2.0
    await eventually(lambda: len(ws_upstream.close_codes) == 1)


async def test_auth_and_rate_limit_apply_to_the_upgrade(
    gateway_factory: GatewayFactory, ws_upstream: WsUpstream, upstream: TestUpstream
) -> None:
    cfg = ws_config(
        ws_upstream.port,
        upstream.port,
        auth={"providers": ["api_key"]},
        rate_limits=[{"limit": 1, "window_s": 3600}],
    )
    cfg["auth"] = {
        "api_keys": {
            "key_from": [{"header": "x-api-key"}],
            "consumers": [{"name": "ws-app", "keys": [hash_key(KEY)]}],
        }
    }
    gw = await gateway_factory(cfg)
    with pytest.raises(InvalidStatus) as info:
        async with client(gw, "/ws/echo"):
            pass
    assert info.value.response.status_code == 401
    async with client(gw, "/ws/echo", additional_headers={"x-api-key": KEY}) as ws:
        await ws.send("in")
        assert await ws.recv() == "in"
    with pytest.raises(InvalidStatus) as info:
        async with client(gw, "/ws/echo", additional_headers={"x-api-key": KEY}):
            pass
    assert info.value.response.status_code == 429
    assert ws_upstream.handshakes == 1  # refused upgrades never reached it


async def test_h2c_upgrade_is_refused(ws_gateway: Gateway, upstream: TestUpstream) -> None:
    smuggle = (
        b"GET /anything HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    (resp,), closed = await raw_exchange(ws_gateway.port, smuggle)
    body = assert_json_error(resp, 400)
    assert "h2c" in body["error"]
    assert closed
    # also on a WebSocket route, and with h2c listed next to websocket
    mixed = smuggle.replace(b"/anything", b"/ws/echo").replace(b"h2c", b"websocket, h2c")
    (resp,), _ = await raw_exchange(ws_gateway.port, mixed)
    assert_json_error(resp, 400)
    assert upstream.requests == []


async def test_websocket_upgrade_with_a_body_or_not_get_is_refused(ws_gateway: Gateway) -> None:
    head = (
        b"%s /ws/echo HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    (resp,), _ = await raw_exchange(ws_gateway.port, head % b"POST" + b"\r\n")
    assert_json_error(resp, 400)
    (resp,), _ = await raw_exchange(
        ws_gateway.port, head % b"GET" + b"Content-Length: 3\r\n\r\nabc"
    )
    assert_json_error(resp, 400)


async def test_plain_routes_and_refused_upgrades_are_unaffected(
    ws_gateway: Gateway, ws_upstream: WsUpstream, upstream: TestUpstream
) -> None:
    # A WebSocket upgrade on a route without `websocket:` goes out as a plain request.
    req = (
        b"GET /headers HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    (resp,), closed = await raw_exchange(ws_gateway.port, req)
    assert resp.status == 200 and closed
    assert upstream.requests[-1].header("upgrade") is None
    # The WebSocket upstream refusing the upgrade (no Sec-WebSocket-Key): its answer passes.
    bad = req.replace(b"/headers", b"/ws/echo").replace(b"Sec-WebSocket-Key", b"X-Nope")
    (resp,), closed = await raw_exchange(ws_gateway.port, bad)
    assert resp.status == 400 and closed
    assert ws_upstream.handshakes == 0


async def test_access_log_and_pool_after_a_tunnel(
    gateway_factory: GatewayFactory,
    ws_upstream: WsUpstream,
    upstream: TestUpstream,
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "access.log"
    cfg = ws_config(ws_upstream.port, upstream.port)
    cfg["access_log"] = {"enabled": True, "path": str(log_path)}
    gw = await gateway_factory(cfg)
    async with client(gw, "/ws/echo") as ws:
        await ws.send(b"x" * 1000)
        await ws.recv()
    pool = gw.runtime.clusters["ws"].hosts[0].pool
    await eventually(lambda: pool.open == 0)  # the tunnel's connection closed ...
    assert not pool.idle  # ... and never pooled
    await eventually(lambda: log_path.exists() and log_path.read_text().strip() != "", 5)
    line = json.loads(log_path.read_text().splitlines()[-1])
    assert line["status"] == 101 and line["route"] is not None
    assert line["bytes_in"] > 1000 and line["bytes_out"] > 1000
    assert "aborted" not in line
    # metrics: the 101 as a request, the tunnel and its bytes
    registry = make_registry(
        GatewayCollector(
            lambda: gw.app.stats if gw.app is not None else None,
            lambda: gw.current_runtime,
            gw.client_connections,
            gw.tunnel_stats,
        )
    )
    text = generate_latest(registry).decode()
    assert 'meshgate_requests_total{method="GET",route="routes[0]",status_class="1xx"} 1.0' in text
    assert "meshgate_websocket_tunnels_total 1.0" in text
    assert "meshgate_websocket_tunnels_open 0.0" in text
    assert f'meshgate_websocket_bytes_total{{direction="to_client"}} {line["bytes_out"]:.1f}' in (
        text
    )


async def test_wss_through_the_tls_listener(
    gateway_factory: GatewayFactory,
    ws_upstream: WsUpstream,
    upstream: TestUpstream,
    tmp_path: Path,
) -> None:
    ca = CA(tmp_path)
    pair = ca.issue("gw", ("gw.test",), ips=("127.0.0.1",))
    cfg = ws_config(ws_upstream.port, upstream.port)
    cfg["listener"]["tls"] = {"certificates": [pair.entry()]}
    gw = await gateway_factory(cfg)
    ctx = ssl.create_default_context(cafile=ca.cert_file)
    async with connect(
        ws_url(gw, "/ws/headers", "wss"), ssl=ctx, ping_interval=None, open_timeout=5
    ) as ws:
        headers = {k.lower(): v for k, v in json.loads(await ws.recv()).items()}
    assert headers["x-forwarded-proto"] == "https"
    payload = b"s" * (3 * MiB)
    async with connect(
        ws_url(gw, "/ws/echo", "wss"), ssl=ctx, ping_interval=None, max_size=8 * MiB
    ) as ws:
        await ws.send(payload)
        assert await asyncio.wait_for(ws.recv(), 20) == payload


async def test_broken_tunnels_close_the_other_side(
    ws_gateway: Gateway, ws_upstream: WsUpstream
) -> None:
    # the upstream vanishes: the client's connection ends (no close frame: 1006)
    async with client(ws_gateway, "/ws/reset") as ws:
        assert await ws.recv() == "about to vanish"
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is None
    # the client vanishes: the upstream's connection ends, the pool forgets it
    async with client(ws_gateway, "/ws/echo") as ws:
        await ws.send("x")
        await ws.recv()
        ws.transport.abort()
    await eventually(lambda: len(ws_upstream.close_codes) == 2)
    assert ws_upstream.close_codes[-1] == 1006
    pool = ws_gateway.runtime.clusters["ws"].hosts[0].pool
    await eventually(lambda: pool.open == 0)
    async with client(ws_gateway, "/ws/echo") as ws:  # and the gateway serves on
        await ws.send("again")
        assert await ws.recv() == "again"


async def test_stop_with_an_open_tunnel_is_bounded_by_the_drain_timeout(
    gateway_factory: GatewayFactory, ws_upstream: WsUpstream, upstream: TestUpstream
) -> None:
    gw = await gateway_factory(ws_config(ws_upstream.port, upstream.port))
    async with client(gw, "/ws/echo") as ws:
        await ws.send("x")
        await ws.recv()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(gw.stop(drain_timeout_s=0.3), 5)
        assert loop.time() - started < 3
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    await eventually(lambda: len(ws_upstream.close_codes) == 1)


async def test_uvloop_gateway_process_wss_and_bounded_memory(
    gateway_process: Any, ws_upstream: WsUpstream, upstream: TestUpstream, tmp_path: Path
) -> None:
    """The real process (uvloop workers) over TLS: echo, then a 64 MiB flood to a
    client that reads nothing keeps the gateway's RSS within a few MiB."""
    ca = CA(tmp_path)
    pair = ca.issue("gw", ("gw.test",), ips=("127.0.0.1",))
    cfg = ws_config(ws_upstream.port, upstream.port)
    cfg["listener"]["tls"] = {"certificates": [pair.entry()]}
    cfg["admin"] = {"enabled": False}
    gp = await gateway_process(cfg)
    proc = psutil.Process(gp.proc.pid)
    ctx = ssl.create_default_context(cafile=ca.cert_file)
    base = f"wss://127.0.0.1:{gp.port}"
    async with connect(f"{base}/ws/echo", ssl=ctx, ping_interval=None, max_size=None) as ws:
        await ws.send(b"e" * MiB)
        assert await asyncio.wait_for(ws.recv(), 10) == b"e" * MiB
    rss_before = proc.memory_info().rss
    async with connect(
        f"{base}/ws/flood/64", ssl=ctx, ping_interval=None, max_size=None, max_queue=1
    ) as ws:
        await asyncio.sleep(1.5)
        grown = proc.memory_info().rss - rss_before
        assert ws_upstream.sent < 32
        assert grown < 16 * MiB, grown
        received = 0
        async for message in ws:
            assert len(message) == MiB
            received += 1
    assert received == 64


async def test_route_stages_apply_to_the_upgrade(
    gateway_factory: GatewayFactory, ws_upstream: WsUpstream, upstream: TestUpstream
) -> None:
    cfg = ws_config(
        ws_upstream.port,
        upstream.port,
        compress=True,
        request_headers={"set": {"x-from-gateway": "yes"}},
        response_headers={"set": {"x-route": "ws"}},
        rewrite={"strip_prefix": "/api"},
        path_prefix="/api/ws",
        ip_rules={"allow": ["127.0.0.0/8"]},
    )
    gw = await gateway_factory(cfg)
    async with client(gw, "/api/ws/headers") as ws:
        headers = {k.lower(): v for k, v in json.loads(await ws.recv()).items()}
        assert ws.response is not None
        assert ws.response.headers["x-route"] == "ws"  # on the 101
    assert headers["x-from-gateway"] == "yes"  # the rewritten path reached /ws/headers
    cfg["routes"][0]["ip_rules"] = {"deny": ["127.0.0.0/8"]}
    gw = await gateway_factory(cfg)
    with pytest.raises(InvalidStatus) as info:
        async with client(gw, "/api/ws/echo"):
            pass
    assert info.value.response.status_code == 403
    assert ws_upstream.handshakes == 1


async def test_frames_sent_right_behind_the_handshake_are_not_lost(ws_gateway: Gateway) -> None:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(b"early"))
    frame = b"\x81\x85" + mask + masked  # FIN, text, masked, 5 bytes
    handshake = (
        b"GET /ws/echo HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", ws_gateway.port)
    try:
        writer.write(handshake + frame)  # one write: the frame arrives with the request
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
            assert await reader.readexactly(7) == b"\x81\x05early"
    finally:
        writer.transport.abort()


async def test_tunnel_to_a_tls_upstream(
    gateway_factory: GatewayFactory,
    ws_upstream: WsUpstream,
    upstream: TestUpstream,
    tmp_path: Path,
) -> None:
    ca = CA(tmp_path)
    front = await TlsFront(ca.issue("up", ("ws.internal",)), ws_upstream.port).start()
    try:
        cfg = ws_config(front.port, upstream.port)
        cfg["upstreams"][0]["tls"] = {"ca_file": ca.cert_file, "server_name": "ws.internal"}
        gw = await gateway_factory(cfg)
        payload = b"t" * (2 * MiB)
        async with client(gw, "/ws/echo") as ws:
            await ws.send(payload)
            assert await asyncio.wait_for(ws.recv(), 20) == payload
            await ws.send("small")
            assert await ws.recv() == "small"
        assert front.server_names == ["ws.internal"]
        pool = gw.runtime.clusters["ws"].hosts[0].pool
        await eventually(lambda: pool.open == 0)
    finally:
        await front.stop()
