"""The outbound listener: the ways an app names a service, unknown services, the
destination's SPIFFE ID check, and what travels between sidecars."""

from __future__ import annotations

import httpx

from tests.mesh.conftest import (
    TRUST_DOMAIN,
    Mesh,
    body_of,
    proxy_client,
)
from tests.mesh.tap import Tap


async def test_proxy_host_and_port_map_forms_reach_the_service(cp_mesh: Mesh) -> None:
    users_app = await cp_mesh.app("users")
    cart_app = await cp_mesh.app("cart")
    await cp_mesh.sidecar("users", users_app)
    await cp_mesh.sidecar("cart", cart_app)
    orders = await cp_mesh.sidecar(
        "orders", await cp_mesh.app("orders"), outbound={"ports": {"users": 0, "cart.default": 0}}
    )
    await cp_mesh.sees(orders, "users")
    await cp_mesh.sees(orders, "cart")

    # 1. HTTP proxy (absolute-form request line), bare and qualified names.
    async with proxy_client(orders) as c:
        for host, service in [
            ("users", "users"),
            ("cart", "cart"),
            ("users.default", "users"),
            ("cart.default.svc.cluster.local", "cart"),
        ]:
            r = await c.get(f"http://{host}/via-proxy?x=1")
            assert r.status_code == 200, (host, r.text)
            assert body_of(r)["service"] == service
            assert body_of(r)["path"] == "/via-proxy"
    # 2. Origin-form with a Host header.
    async with httpx.AsyncClient() as c:
        r = await c.get(
            f"http://127.0.0.1:{orders.outbound_port}/via-host", headers={"host": "cart"}
        )
        assert (r.status_code, body_of(r)["service"]) == (200, "cart")
        # 3. The port map: whatever Host the app sends, the port decides.
        r = await c.get(f"http://127.0.0.1:{orders.local_port('users')}/via-port")
        assert (r.status_code, body_of(r)["service"]) == (200, "users")
        r = await c.get(
            f"http://127.0.0.1:{orders.local_port('cart.default')}/via-port",
            headers={"host": "users"},
        )
        assert (r.status_code, body_of(r)["service"]) == (200, "cart")
        r = await c.post(f"http://127.0.0.1:{orders.local_port('users')}/post", content=b"payload")
        assert (r.status_code, body_of(r)["body"]) == (200, "payload")
    assert {h.headers["x-source-service"] for h in users_app.hits + cart_app.hits} == {"orders"}
    assert [h.path for h in users_app.hits].count("/via-proxy") == 2


async def test_unknown_service_is_404(cp_mesh: Mesh) -> None:
    await cp_mesh.sidecar("users", await cp_mesh.app("users"))
    orders = await cp_mesh.sidecar("orders", await cp_mesh.app("orders"))
    await cp_mesh.sees(orders, "users")
    async with proxy_client(orders) as c:
        r = await c.get("http://payments/x")
        assert r.status_code == 404
        r = await c.get("http://users.other-namespace/x")
        assert r.status_code == 404
        assert (await c.get("http://users/x")).status_code == 200


async def test_destination_must_prove_the_service_identity(cp_mesh: Mesh) -> None:
    """`users` is (mis)registered at cart's sidecar: its certificate says cart, so
    the call is refused and nothing reaches cart's app."""
    cart_app = await cp_mesh.app("cart")
    cart = await cp_mesh.sidecar("cart", cart_app)
    cart_addr = [{"host": "127.0.0.1", "port": cart.inbound_port}]
    orders = await cp_mesh.static_sidecar(
        "orders",
        await cp_mesh.app("orders"),
        {"users": cart_addr, "cart": cart_addr},
        outbound={"retries": 1},
    )
    async with proxy_client(orders) as c:
        r = await c.get("http://users/steal")
        assert r.status_code in (502, 503), r.text
        assert cart_app.hits == []
        # The same address under its real name is fine.
        r = await c.get("http://cart/ok")
        assert r.status_code == 200
        assert body_of(r)["headers"]["x-source-identity"] == (
            f"spiffe://{TRUST_DOMAIN}/ns/default/sa/orders"
        )
    assert [h.path for h in cart_app.hits] == ["/ok"]


async def test_static_mesh_without_a_control_plane(cp_mesh: Mesh) -> None:
    """Static mode: files and a fixed instance list; the control plane can be gone."""
    users_app = await cp_mesh.app("users")
    users = await cp_mesh.static_sidecar("users", users_app, {})
    orders = await cp_mesh.static_sidecar(
        "orders",
        await cp_mesh.app("orders"),
        {"users": [{"host": "127.0.0.1", "port": users.inbound_port}]},
    )
    await cp_mesh.stop_control_plane()
    async with proxy_client(orders) as c:
        r = await c.get("http://users/static")
    assert r.status_code == 200
    assert body_of(r)["headers"]["x-source-service"] == "orders"


async def test_traffic_between_sidecars_is_tls_on_the_wire(cp_mesh: Mesh) -> None:
    """A tap registered as the only `users` instance, in front of users' inbound
    port, sees a TLS handshake and never the plaintext of either direction."""
    users_app = await cp_mesh.app("users")
    users = await cp_mesh.sidecar("users", users_app, link={"register_instance": False})
    tap = await Tap(users.inbound_port).start()
    cp_mesh.closers.append(tap.aclose)
    # Register the tap's address as a users instance (with a users identity).
    users_workload = await cp_mesh.workload("users")
    await users_workload.register("127.0.0.1", tap.port, ttl_s=60)
    orders = await cp_mesh.sidecar("orders", await cp_mesh.app("orders"))
    await cp_mesh.sees(orders, "users")

    marker = "MARKER-7d1e9c-plaintext"
    async with proxy_client(orders) as c:
        r = await c.post(
            f"http://users/{marker}/path",
            content=f"request body {marker}".encode(),
            headers={"x-marker": marker},
        )
    assert r.status_code == 200
    answer = body_of(r)
    assert answer["body"] == f"request body {marker}"  # echoed back in the response
    assert answer["headers"]["x-marker"] == marker
    assert [h.body for h in users_app.hits] == [f"request body {marker}".encode()]

    assert tap.connections >= 1
    assert tap.to_server[:2] == b"\x16\x03", bytes(tap.to_server[:16])  # ClientHello
    assert tap.to_client[:2] == b"\x16\x03", bytes(tap.to_client[:16])  # ServerHello
    for captured in (bytes(tap.to_server), bytes(tap.to_client)):
        assert len(captured) > 200
        assert marker.encode() not in captured
        assert b"HTTP/1.1" not in captured
        assert b"x-source" not in captured


async def test_services_in_other_namespaces(cp_mesh: Mesh) -> None:
    """`users` lives in namespace shop: orders (default) reaches it as users.shop
    (whose SPIFFE ID says ns/shop), not as bare `users`; the app sees the caller's
    namespace."""
    users_app = await cp_mesh.app("users")
    await cp_mesh.sidecar("users", users_app, namespace="shop")
    orders = await cp_mesh.sidecar("orders", await cp_mesh.app("orders"))
    await cp_mesh.sees(orders, "users", namespace="shop")
    async with proxy_client(orders) as c:
        assert (await c.get("http://users/x")).status_code == 404
        r = await c.get("http://users.shop/x")
        assert r.status_code == 200
        r = await c.get("http://users.shop.svc.cluster.local/y")
        assert r.status_code == 200
    hit = users_app.hits[-1].headers
    assert (hit["x-source-service"], hit["x-source-namespace"]) == ("orders", "default")
    assert [h.path for h in users_app.hits] == ["/x", "/y"]


async def test_service_appearing_and_leaving_later(cp_mesh: Mesh) -> None:
    """orders starts before users exists: its port for users answers 404, then
    reaches users once users registers, and 404 again after users stops."""
    orders = await cp_mesh.sidecar(
        "orders", await cp_mesh.app("orders"), outbound={"ports": {"users": 0}}
    )
    url = f"http://127.0.0.1:{orders.local_port('users')}/later"
    async with httpx.AsyncClient() as c:
        assert (await c.get(url)).status_code == 404
        users = await cp_mesh.sidecar("users", await cp_mesh.app("users"))
        await cp_mesh.sees(orders, "users")
        r = await c.get(url)
        assert (r.status_code, body_of(r)["service"]) == (200, "users")
        await cp_mesh.stop_sidecar(users)
        await cp_mesh.sees(orders, "users", count=0)
        assert (await c.get(url)).status_code == 404
