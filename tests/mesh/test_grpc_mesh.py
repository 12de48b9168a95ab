"""gRPC between services through their sidecars: a grpcio client calls its sidecar's
local port for ``users`` (h2c); the sidecars speak HTTP/2 over mTLS (ALPN h2,
because users' sidecar registered ``protocol: h2``: its app speaks h2c); users'
sidecar forwards to the grpcio server on h2c. Trailers (status, message) and
metadata cross both hops; the server sees the caller's verified identity."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from meshgate.mesh.sidecar import Sidecar
from meshgate.mesh.state import ServiceKey
from tests.e2e.test_grpc import SERVICE, EchoService, ident
from tests.mesh.conftest import Mesh


async def _grpc_pair(mesh: Mesh, port: int) -> tuple[Sidecar, Sidecar]:
    """users (a gRPC app) and orders (its caller, with a local port for users)."""
    await mesh.put_policy("authz", {"name": "users-from-orders", "to": "users", "from": ["orders"]})
    raw = mesh.sidecar_config("users", SimpleNamespace(port=port))  # type: ignore[arg-type]
    raw["app"]["protocol"] = "h2c"
    raw["control_plane"] = await mesh.control_plane_link("users")
    users = await mesh.start_sidecar(raw)
    orders_app = await mesh.app("orders")
    orders = await mesh.sidecar("orders", orders_app, outbound={"ports": {"users": 0}})
    await mesh.sees(orders, "users")
    await mesh.has_policy(users, "users-from-orders")
    return users, orders


@pytest.fixture
async def grpc_app() -> AsyncIterator[tuple[EchoService, int]]:
    """users' app: tests/e2e/test_grpc.py's echo service on a grpcio server (h2c)."""
    service = EchoService()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield service, port
    await server.stop(None)


@pytest.fixture
async def channel() -> AsyncIterator[Any]:
    opened: list[grpc.aio.Channel] = []

    def make(port: int) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        opened.append(ch)
        return ch

    yield make
    for ch in opened:
        await ch.close()


async def test_grpc_calls_cross_two_sidecars_over_h2_mtls(
    cp_mesh: Mesh, grpc_app: tuple[EchoService, int], channel: Any
) -> None:
    service, port = grpc_app
    _, orders = await _grpc_pair(cp_mesh, port)
    cluster = orders.outbound.runtime.clusters[ServiceKey("default", "users").upstream]
    assert cluster.config.protocol == "h2"  # what users' registration asked for

    ch = channel(orders.local_port("users"))
    unary = ch.unary_unary(f"/{SERVICE}/Unary", ident, ident)
    call = unary(b"hi", timeout=5, metadata=(("x-source-service", "spoofed"),))
    assert await call == b"echo:hi"
    assert ("x-checksum", "42") in list(await call.trailing_metadata())
    seen = service.metadata[-1]
    assert seen["x-source-service"] == "orders"  # from orders' certificate, not the caller
    assert seen["x-source-identity"].endswith("/ns/default/sa/orders")

    stream = ch.unary_stream(f"/{SERVICE}/ServerStream", ident, ident)
    assert [m async for m in stream(b"3", timeout=5)] == [b"item-0", b"item-1", b"item-2"]

    async def parts() -> AsyncIterator[bytes]:
        for p in (b"a", b"b"):
            yield p

    bidi = ch.stream_stream(f"/{SERVICE}/Bidi", ident, ident)
    assert [m async for m in bidi(parts(), timeout=5)] == [b"A", b"B"]

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await unary(b"missing", timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "no such thing: missing"


async def test_a_denied_grpc_call_is_permission_denied(
    cp_mesh: Mesh, grpc_app: tuple[EchoService, int], channel: Any
) -> None:
    service, port = grpc_app
    users, orders = await _grpc_pair(cp_mesh, port)
    await cp_mesh.put_policy(
        "authz", {"name": "no-orders", "to": "users", "from": ["orders"], "action": "deny"}
    )
    await cp_mesh.has_policy(users, "no-orders")
    unary = channel(orders.local_port("users")).unary_unary(f"/{SERVICE}/Unary", ident, ident)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await unary(b"hi", timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not call" in (info.value.details() or "")
    assert service.calls == []
