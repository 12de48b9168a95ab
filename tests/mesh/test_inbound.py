"""The inbound mTLS listener: who may connect, who may call, what the app is told."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from meshgate.config.loader import ConfigError
from meshgate.control.client import ControlPlaneClient
from tests.e2e.tls_helpers import CA
from tests.mesh.conftest import (
    TRUST_DOMAIN,
    Mesh,
    body_of,
    eventually,
    mtls_context,
    proxy_client,
    raw_exchange,
)
from tests.redis_server import RedisServer, redis_server_fixture

REQUEST = b"GET /secret HTTP/1.1\r\nHost: users\r\nConnection: close\r\n\r\n"


def sid(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}"


def workload_context(client: ControlPlaneClient) -> ssl.SSLContext:
    ident = client.identity
    assert ident is not None and client.identity_dir is not None
    return mtls_context(ident.cert_file, ident.key_file, str(client.identity_dir / "bundle.pem"))


async def refused(port: int, ctx: ssl.SSLContext | None) -> None:
    """Send one request: it must get no HTTP answer (a TLS error, a reset, or the
    connection closed). With TLS 1.3 the client finishes its side of the handshake
    before the server checks the client certificate, and no alert reaches the
    client (seen on 127.0.0.1): it mostly sees the connection close."""
    try:
        answer = await raw_exchange(port, REQUEST, ctx)
    except (ssl.SSLError, ConnectionError):
        return
    assert not answer.startswith(b"HTTP/"), answer[:200]


async def test_plain_http_client_is_refused(cp_mesh: Mesh) -> None:
    app = await cp_mesh.app("users")
    users = await cp_mesh.sidecar("users", app)
    await refused(users.inbound_port, None)
    assert app.hits == []


async def test_client_certificate_from_another_ca_is_refused(cp_mesh: Mesh, tmp_path: Path) -> None:
    app = await cp_mesh.app("users")
    users = await cp_mesh.sidecar("users", app)
    # Same trust domain and a plausible SPIFFE ID, but signed by a stranger's CA.
    stranger = CA(tmp_path / "stranger", "not the mesh CA")
    pair = stranger.issue("orders", uris=(sid("orders"),), client=True)
    ctx = mtls_context(pair.cert_file, pair.key_file, str(cp_mesh.bundle_file))
    await refused(users.inbound_port, ctx)
    assert app.hits == []


async def test_tls_without_client_certificate_is_refused(cp_mesh: Mesh) -> None:
    app = await cp_mesh.app("users")
    users = await cp_mesh.sidecar("users", app)
    await refused(users.inbound_port, mtls_context(None, None, str(cp_mesh.bundle_file)))
    assert app.hits == []
    # The same raw request with a mesh certificate is answered.
    orders = await cp_mesh.workload("orders")
    answer = await raw_exchange(users.inbound_port, REQUEST, workload_context(orders))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert [h.path for h in app.hits] == ["/secret"]


async def test_server_certificate_is_the_services_spiffe_id(cp_mesh: Mesh) -> None:
    app = await cp_mesh.app("users")
    users = await cp_mesh.sidecar("users", app)
    orders = await cp_mesh.workload("orders")
    async with httpx.AsyncClient(verify=workload_context(orders)) as c:
        r = await c.get(f"https://127.0.0.1:{users.inbound_port}/hello")
        assert r.status_code == 200
        stream = r.extensions["network_stream"]
        der = stream.get_extra_info("ssl_object").getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [sid("users")]


async def test_authz_policy_denies_other_identities(cp_mesh: Mesh) -> None:
    users_app = await cp_mesh.app("users")
    users = await cp_mesh.sidecar("users", users_app)
    orders = await cp_mesh.sidecar("orders", await cp_mesh.app("orders"))
    cart = await cp_mesh.sidecar("cart", await cp_mesh.app("cart"))
    for car in (orders, cart):
        await cp_mesh.sees(car, "users")
    await cp_mesh.put_policy(
        "authz", {"name": "users-from-orders", "to": "users", "from": ["orders"]}
    )
    await cp_mesh.has_policy(users, "users-from-orders")

    async with proxy_client(orders) as c:
        r = await c.get("http://users/profile")
    assert r.status_code == 200
    assert body_of(r)["headers"]["x-source-service"] == "orders"

    async with proxy_client(cart) as c:
        r = await c.get("http://users/profile")
    assert r.status_code == 403
    assert sid("cart") in r.text
    assert [h.headers["x-source-service"] for h in users_app.hits] == ["orders"]

    # The same with a bare mTLS client holding a valid mesh certificate for cart.
    cart_workload = await cp_mesh.workload("cart")
    async with httpx.AsyncClient(verify=workload_context(cart_workload)) as c:
        r = await c.get(f"https://127.0.0.1:{users.inbound_port}/profile")
    assert r.status_code == 403
    assert len(users_app.hits) == 1

    # Deleting the policy lets cart in again (no allow policies left: default allow).
    assert cp_mesh.admin is not None
    await cp_mesh.admin.request("DELETE", "/v1/policies/authz/users-from-orders")
    await cp_mesh.has_policy(users, "users-from-orders", present=False)
    async with proxy_client(cart) as c:
        r = await c.get("http://users/profile")
    assert r.status_code == 200
    assert body_of(r)["headers"]["x-source-service"] == "cart"


async def test_deny_policy_and_default_deny(cp_mesh: Mesh) -> None:
    users = await cp_mesh.sidecar("users", await cp_mesh.app("users"))
    orders = await cp_mesh.sidecar("orders", await cp_mesh.app("orders"))
    await cp_mesh.sees(orders, "users")
    await cp_mesh.put_policy(
        "authz",
        {
            "name": "no-admin",
            "to": "users",
            "from": ["orders"],
            "paths": ["/admin/*"],
            "action": "deny",
        },
    )
    await cp_mesh.has_policy(users, "no-admin")
    async with proxy_client(orders) as c:
        assert (await c.get("http://users/admin/x")).status_code == 403
        assert (await c.get("http://users/public")).status_code == 200
        await cp_mesh.put_policy("defaults", {"service": "users", "default_action": "deny"})

        def denied_by_default() -> bool:
            d = users.state.defaults.get("users")
            return d is not None and d.default_action == "deny"

        await eventually(denied_by_default, "users' default deny")
        assert (await c.get("http://users/public")).status_code == 403


async def test_spoofed_identity_headers_are_replaced(cp_mesh: Mesh) -> None:
    users_app = await cp_mesh.app("users")
    users = await cp_mesh.sidecar("users", users_app)
    orders = await cp_mesh.sidecar("orders", await cp_mesh.app("orders"))
    await cp_mesh.sees(orders, "users")
    spoof = {
        "x-source-service": "payments",
        "x-source-identity": sid("payments"),
        "x-source-namespace": "kube-system",
    }
    async with proxy_client(orders) as c:
        r = await c.get("http://users/who", headers=spoof)
    assert r.status_code == 200
    seen = body_of(r)["headers"]
    assert seen["x-source-service"] == "orders"
    assert seen["x-source-identity"] == sid("orders")
    assert seen["x-source-namespace"] == "default"
    assert "payments" not in str(users_app.hits[-1].headers)

    # A caller talking mTLS directly (no outbound sidecar to strip them) gets its
    # headers replaced by the inbound side, from its certificate.
    cart = await cp_mesh.workload("cart")
    async with httpx.AsyncClient(verify=workload_context(cart)) as c:
        r = await c.get(f"https://127.0.0.1:{users.inbound_port}/who", headers=spoof)
    assert r.status_code == 200
    hit = users_app.hits[-1].headers
    assert (hit["x-source-service"], hit["x-source-identity"]) == ("cart", sid("cart"))
    assert hit["x-source-namespace"] == "default"
    assert "traceparent" in hit


async def test_per_source_rate_limit(cp_mesh: Mesh) -> None:
    users_app = await cp_mesh.app("users")
    # 0.1/s: no token comes back during the test, whatever the machine's speed.
    limits = [{"source": "cart", "requests_per_second": 0.1, "burst": 2}]
    await cp_mesh.sidecar("users", users_app, inbound={"rate_limits": limits})
    orders = await cp_mesh.sidecar("orders", await cp_mesh.app("orders"))
    cart = await cp_mesh.sidecar("cart", await cp_mesh.app("cart"))
    for car in (orders, cart):
        await cp_mesh.sees(car, "users")
    async with proxy_client(cart) as c:
        cart_statuses = [(await c.get(f"http://users/c{i}")).status_code for i in range(4)]
    async with proxy_client(orders) as c:
        orders_statuses = [(await c.get(f"http://users/o{i}")).status_code for i in range(6)]
    assert cart_statuses == [200, 200, 429, 429]
    assert orders_statuses == [200] * 6
    by_source = [h.headers["x-source-service"] for h in users_app.hits]
    assert by_source.count("cart") == 2 and by_source.count("orders") == 6


async def test_wildcard_rate_limit_spares_named_sources(cp_mesh: Mesh) -> None:
    users_app = await cp_mesh.app("users")
    limits = [
        {"source": "orders", "requests_per_second": 100, "burst": 100},
        {"source": "*", "requests_per_second": 0.1, "burst": 1},
    ]
    await cp_mesh.sidecar("users", users_app, inbound={"rate_limits": limits})
    orders = await cp_mesh.sidecar("orders", await cp_mesh.app("orders"))
    cart = await cp_mesh.sidecar("cart", await cp_mesh.app("cart"))
    for car in (orders, cart):
        await cp_mesh.sees(car, "users")
    async with proxy_client(cart) as c:
        assert [(await c.get("http://users/c")).status_code for _ in range(2)] == [200, 429]
    async with proxy_client(orders) as c:
        assert [(await c.get("http://users/o")).status_code for _ in range(5)] == [200] * 5


async def test_tls_version_floor(cp_mesh: Mesh) -> None:
    """TLS 1.3 only by default; ``inbound.min_tls_version: TLSv1.2`` lets 1.2 in."""
    strict_app, lenient_app = await cp_mesh.app("users"), await cp_mesh.app("cart")
    strict = await cp_mesh.sidecar("users", strict_app)
    lenient = await cp_mesh.sidecar("cart", lenient_app, inbound={"min_tls_version": "TLSv1.2"})
    ctx = workload_context(await cp_mesh.workload("orders"))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await raw_exchange(strict.inbound_port, REQUEST, ctx)
    assert strict_app.hits == []
    answer = await raw_exchange(lenient.inbound_port, REQUEST, ctx)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert lenient_app.hits[0].headers["x-source-service"] == "orders"


redis_server = redis_server_fixture()


async def test_per_source_limit_shared_by_replicas_through_redis(
    cp_mesh: Mesh, redis_server: RedisServer
) -> None:
    """Two users replicas with ``rate_limit_backend: redis`` count cart's calls
    together: its burst of 2 is for the service, not for each replica."""
    limits = [{"source": "cart", "requests_per_second": 0.1, "burst": 2}]
    apps = [await cp_mesh.app("users", f"users-{i}") for i in (1, 2)]
    for app in apps:
        await cp_mesh.sidecar(
            "users",
            app,
            inbound={"rate_limits": limits, "rate_limit_backend": "redis"},
            redis={"url": redis_server.url},
            outbound={"load_balancer": "round_robin"},
        )
    cart = await cp_mesh.sidecar(
        "cart", await cp_mesh.app("cart"), outbound={"load_balancer": "round_robin"}
    )
    await cp_mesh.sees(cart, "users", count=2)
    async with proxy_client(cart) as c:
        statuses = [(await c.get(f"http://users/r{i}")).status_code for i in range(6)]
    assert statuses.count(200) == 2 and statuses.count(429) == 4, statuses
    assert sum(len(a.hits) for a in apps) == 2


async def test_static_mode_policies_file(cp_mesh: Mesh, tmp_path: Path) -> None:
    """Static mode reads authorization policies from `static.policies_file` (the
    `meshgate ctl policy` format); a bad file is refused with file:line."""
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        "- kind: authz\n  name: users-from-cart\n  to: users\n  from: [cart]\n"
        "- kind: route\n  name: ignored\n  path: /\n  service: users\n"
    )
    users_app = await cp_mesh.app("users")
    users = await cp_mesh.static_sidecar(
        "users", users_app, {}, static={"policies_file": str(policies)}
    )
    assert list(users.state.authz) == ["users-from-cart"]
    addr = [{"host": "127.0.0.1", "port": users.inbound_port}]
    orders = await cp_mesh.static_sidecar("orders", await cp_mesh.app("orders"), {"users": addr})
    cart = await cp_mesh.static_sidecar("cart", await cp_mesh.app("cart"), {"users": addr})
    async with proxy_client(orders) as c:
        assert (await c.get("http://users/p")).status_code == 403
    async with proxy_client(cart) as c:
        assert (await c.get("http://users/p")).status_code == 200
    assert [h.headers["x-source-service"] for h in users_app.hits] == ["cart"]

    bad = tmp_path / "bad.yaml"
    bad.write_text("- kind: authz\n  name: x\n  to: users\n  from: [cart]\n  action: maybe\n")
    with pytest.raises(ConfigError) as info:
        await cp_mesh.static_sidecar("users", users_app, {}, static={"policies_file": str(bad)})
    (problem,) = info.value.problems
    assert str(problem).startswith(f"{bad}:5: [0].action: "), problem
