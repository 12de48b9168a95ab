"""sidecar.yaml validation, the gateway configs a sidecar generates, and the
inbound/outbound middleware's header handling (no sockets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from textwrap import dedent
from typing import Any, cast

import pytest

from meshgate.config.loader import ConfigError, parse_model
from meshgate.config.models import InstanceConfig
from meshgate.control.ca import SpiffeId
from meshgate.control.policy import UpstreamPolicy
from meshgate.http.tls import ClientCertificate, TlsInfo
from meshgate.mesh.config import SidecarConfig
from meshgate.mesh.identity import IdentityManager
from meshgate.mesh.inbound import OutboundTag, peer_identity
from meshgate.mesh.metrics import MeshStats
from meshgate.mesh.sidecar import inbound_config, outbound_config
from meshgate.mesh.state import ServiceKey

STATIC = "static: {cert_file: c.pem, key_file: k.pem, bundle_file: b.pem}\n"


def parse(text: str) -> SidecarConfig:
    return parse_model(SidecarConfig, dedent(text), "sidecar.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return [str(p) for p in info.value.problems]


# ---------------------------------------------------------------------------
# sidecar.yaml
# ---------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = parse("service: orders\napp: {port: 8080}\n" + STATIC)
    assert (cfg.inbound.port, cfg.outbound.port, cfg.admin.port) == (15006, 15001, 15000)
    assert cfg.inbound.min_tls_version == "TLSv1.3"
    assert cfg.outbound.host == "127.0.0.1" and cfg.admin.host == "127.0.0.1"
    assert cfg.outbound.retry_budget.budget_percent == 20.0
    assert cfg.outbound.retry_budget.min_per_s == 3.0
    assert cfg.namespace == "default"
    # Per instance, not per service: an instance dying must not stop the service.
    assert cfg.outbound.circuit_breaker is None
    assert cfg.outbound.outlier_detection is not None


def test_both_control_plane_and_static_points_at_static() -> None:
    text = """\
        service: orders
        app: {port: 8080}
        control_plane: {url: "https://127.0.0.1:15012", ca_bundle_file: cp.pem}
        static: {cert_file: c.pem, key_file: k.pem, bundle_file: b.pem}
        """
    assert problems(text) == ["sidecar.yaml:4: static: give control_plane or static, not both"]


def test_neither_control_plane_nor_static() -> None:
    (problem,) = problems("service: orders\napp: {port: 8080}\n")
    assert problem.startswith("sidecar.yaml:1: (top level): ")
    assert "control_plane" in problem and "static" in problem


def test_duplicate_rate_limit_sources() -> None:
    text = """\
        service: users
        app: {port: 8080}
        inbound:
          rate_limits:
            - {source: cart, requests_per_second: 1}
            - {source: orders, requests_per_second: 1}
            - {source: cart, requests_per_second: 2}
        """
    assert problems(text + STATIC) == [
        "sidecar.yaml:4: inbound.rate_limits: more than one rule for cart"
    ]


def test_two_services_on_one_local_port() -> None:
    text = """\
        service: orders
        app: {port: 8080}
        outbound:
          ports:
            users: 9101
            cart: 9101
            pay: 0
            other: 0
        """
    assert problems(text + STATIC) == [
        "sidecar.yaml:4: outbound.ports: two services share one local port"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("service: Orders\napp: {port: 1}\n", "sidecar.yaml:1: service: "),
        ("service: orders\napp: {port: 0}\n", "sidecar.yaml:2: app.port: "),
        ("service: orders\napp: {port: 1}\ninbound: {prot: 1}\n", "sidecar.yaml:3: inbound.prot: "),
        (
            "service: orders\napp: {port: 1}\ninbound:\n  rate_limits:\n"
            "    - {source: Cart, requests_per_second: 1}\n",
            "sidecar.yaml:5: inbound.rate_limits[0].source: ",
        ),
        (
            "service: orders\napp: {port: 1}\ninbound:\n  rate_limits:\n"
            "    - {source: cart, requests_per_second: 0}\n",
            "sidecar.yaml:5: inbound.rate_limits[0].requests_per_second: ",
        ),
        (
            "service: orders\napp: {port: 1}\noutbound:\n  ports: {Users: 9101}\n",
            "sidecar.yaml:4: outbound.ports: ",
        ),
        (
            "service: orders\napp: {port: 1}\ninbound: {min_tls_version: TLSv1.1}\n",
            "sidecar.yaml:3: inbound.min_tls_version: ",
        ),
        (
            "service: orders\napp: {port: 1}\noutbound: {retries: 11}\n",
            "sidecar.yaml:3: outbound.retries: ",
        ),
    ],
)
def test_bad_values_are_located(text: str, expected: str) -> None:
    (problem,) = problems(text + STATIC)
    assert problem.startswith(expected), problem


def test_redis_backend_needs_redis_url() -> None:
    (problem,) = problems(
        "service: users\napp: {port: 1}\ninbound: {rate_limit_backend: redis}\n" + STATIC
    )
    assert "redis" in problem and problem.startswith("sidecar.yaml:")


# ---------------------------------------------------------------------------
# Generated gateway configs
# ---------------------------------------------------------------------------


@dataclass
class FakeIdentity:
    cert_file: str = "/id/cert.pem"
    key_file: str = "/id/key.pem"
    bundle_file: str = "/id/bundle.pem"
    spiffe_id: SpiffeId = field(default_factory=lambda: SpiffeId("mesh.test", "default", "orders"))


IDENT = cast(IdentityManager, FakeIdentity())


def sidecar(**extra: Any) -> SidecarConfig:
    raw: dict[str, Any] = {
        "service": "users",
        "app": {"port": 8080},
        "static": {"cert_file": "c", "key_file": "k", "bundle_file": "b"},
        **extra,
    }
    return SidecarConfig.model_validate(raw)


def test_inbound_config_requires_client_certificates() -> None:
    cfg = inbound_config(
        sidecar(inbound={"port": 0, "host": "127.0.0.1", "min_tls_version": "TLSv1.2"}), IDENT
    )
    tls = cfg.listener.tls
    assert tls is not None
    assert tls.client_auth == "require"
    assert tls.client_ca_file == "/id/bundle.pem"
    assert tls.min_version == "TLSv1.2"
    assert [(c.cert_file, c.key_file) for c in tls.certificates] == [
        ("/id/cert.pem", "/id/key.pem")
    ]
    assert (cfg.listener.host, cfg.listener.port) == ("127.0.0.1", 0)
    (up,) = cfg.upstreams
    assert [(i.host, i.port) for i in up.instances] == [("127.0.0.1", 8080)]
    assert up.tls is None  # the app is plain HTTP on loopback
    assert [r.upstream for r in cfg.routes] == [up.name]
    assert cfg.rate_limit is None or cfg.rate_limit.limits == []


def test_inbound_config_rate_limits_by_source() -> None:
    cfg = inbound_config(
        sidecar(
            inbound={
                "rate_limits": [
                    {"source": "cart", "requests_per_second": 5},
                    {"source": "orders", "requests_per_second": 0.5},
                    {"source": "*", "requests_per_second": 50, "burst": 70},
                ]
            }
        ),
        IDENT,
    )
    assert cfg.rate_limit is not None
    limits = {lim.name: lim for lim in cfg.rate_limit.limits}
    assert set(limits) == {"source-cart", "source-orders", "source-any"}
    assert limits["source-cart"].sources == ["cart"]
    assert limits["source-cart"].burst == 5
    assert limits["source-orders"].burst == 1  # at least 1
    assert limits["source-any"].sources is None
    assert sorted(limits["source-any"].except_sources) == ["cart", "orders"]
    assert limits["source-any"].burst == 70


def test_outbound_config_one_route_and_upstream_per_service() -> None:
    users, cart_shop = ServiceKey("default", "users"), ServiceKey("shop", "cart")
    services = {
        users: [InstanceConfig(host="10.0.0.1", port=15006)],
        cart_shop: [InstanceConfig(host="10.0.0.2", port=15006, weight=2)],
    }
    policy = UpstreamPolicy(
        name="users", service="users", timeout_s=3, retries=4, balancer="consistent_hash"
    )
    cfg = outbound_config(
        sidecar(outbound={"port": 0, "per_try_timeout_s": 10}),
        IDENT,
        services,
        {users: policy, cart_shop: None},
    )
    assert [u.name for u in cfg.upstreams] == ["users.default", "cart.shop"]
    ups = {u.name: u for u in cfg.upstreams}
    tls = ups["users.default"].tls
    assert tls is not None
    assert tls.spiffe_id == "spiffe://mesh.test/ns/default/sa/users"
    assert (tls.ca_file, tls.cert_file, tls.key_file) == (
        "/id/bundle.pem",
        "/id/cert.pem",
        "/id/key.pem",
    )
    cart_tls = ups["cart.shop"].tls
    assert cart_tls is not None and cart_tls.spiffe_id == "spiffe://mesh.test/ns/shop/sa/cart"
    assert ups["users.default"].load_balancer == "least_request"  # no hash key
    assert ups["cart.shop"].instances[0].weight == 2
    # Retries in flight are left to the retry budget (not capped at the engine's 3).
    assert ups["users.default"].limits.max_retries == ups["users.default"].limits.max_connections
    routes = {r.name: r for r in cfg.routes}
    # The bare name only for the sidecar's own namespace.
    assert "users" in routes["users.default"].hosts
    assert "users.default.svc.cluster.local" in routes["users.default"].hosts
    assert "cart" not in routes["cart.shop"].hosts
    assert "cart.shop" in routes["cart.shop"].hosts
    users_retry = routes["users.default"].retry
    assert users_retry is not None and users_retry.max_retries == 4
    assert users_retry.per_try_timeout_s == 3  # capped by the policy's timeout
    assert routes["users.default"].timeout_s == 3
    cart_retry = routes["cart.shop"].retry
    assert cart_retry is not None and cart_retry.max_retries == 2  # outbound.retries
    assert routes["cart.shop"].timeout_s == 15.0


def test_outbound_config_without_services_is_valid() -> None:
    cfg = outbound_config(sidecar(), IDENT, {}, {})
    assert cfg.routes == [] and cfg.upstreams == []
    assert cfg.listener.tls is None  # plain HTTP from the app


# ---------------------------------------------------------------------------
# Identity headers
# ---------------------------------------------------------------------------


def tls_with(*san: tuple[str, str]) -> TlsInfo:
    cert = ClientCertificate(subject=(), issuer=(), san=san, serial_number="1", not_after="")
    return TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", None, cert)


def test_peer_identity() -> None:
    uri = "spiffe://mesh.test/ns/shop/sa/cart"
    sid = peer_identity(tls_with(("DNS", "x"), ("URI", uri)), "mesh.test")
    assert sid is not None
    assert (sid.namespace, sid.service, sid.uri) == ("shop", "cart", uri)
    assert peer_identity(tls_with(("URI", uri)), "other.test") is None  # trust domain
    assert peer_identity(tls_with(("URI", "spiffe://mesh.test/bogus")), "mesh.test") is None
    assert peer_identity(tls_with(("URI", "https://example.com/")), "mesh.test") is None
    assert peer_identity(tls_with(("DNS", "cart")), "mesh.test") is None
    assert peer_identity(TlsInfo("TLSv1.3", "x", None, None), "mesh.test") is None
    assert peer_identity(None, "mesh.test") is None


async def test_outbound_tag_drops_the_apps_identity_headers() -> None:
    from meshgate.http.messages import Headers, Response

    class Ctx:
        def __init__(self) -> None:
            self.request = type("R", (), {})()
            self.request.headers = Headers(
                [
                    ("x-source-service", "evil"),
                    ("X-Source-Identity", "spiffe://mesh.test/ns/default/sa/evil"),
                    ("x-source-namespace", "evil"),
                    ("x-keep", "1"),
                ]
            )
            self.response = None
            self.route = type("Route", (), {"name": "users.default"})()

    ctx = Ctx()
    seen: list[list[tuple[str, str]]] = []

    async def call_next() -> None:
        seen.append(list(ctx.request.headers.items()))
        ctx.response = Response.json(200, {})  # type: ignore[assignment]

    stats = MeshStats()
    await OutboundTag("orders.default", stats)(ctx, call_next)  # type: ignore[arg-type]
    assert seen == [[("x-keep", "1")]]
    assert stats.counts == {("outbound", "orders.default", "users.default", "2xx"): 1}


# ---------------------------------------------------------------------------
# Renewal retries (fake clock and sleep)
# ---------------------------------------------------------------------------


async def test_failed_renewals_retry_within_the_remaining_life(monkeypatch: Any) -> None:
    """A renewal failing again and again is retried with a backoff that never waits
    out a large share of the certificate's remaining life (60 s certificates: a
    30 s backoff step would let it expire between two attempts)."""
    import types

    from meshgate.control.client import ControlPlaneError
    from meshgate.mesh import identity as identity_mod
    from meshgate.mesh.identity import CertInfo

    now = [30.0]
    sleeps: list[tuple[float, float]] = []

    class StopLoop(Exception):
        pass

    async def fake_sleep(seconds: float) -> None:
        sleeps.append((now[0], seconds))
        now[0] += seconds
        if now[0] >= 60:
            raise StopLoop

    class DownClient:
        attempts = 0

        async def renew(self, ttl_s: float | None = None) -> None:
            DownClient.attempts += 1
            raise ControlPlaneError(0, "control plane unreachable")

    monkeypatch.setattr(identity_mod, "asyncio", types.SimpleNamespace(sleep=fake_sleep))
    config = SidecarConfig.model_validate(
        {
            "service": "users",
            "app": {"port": 8080},
            "control_plane": {"url": "https://127.0.0.1:1", "ca_bundle_file": "b.pem"},
        }
    )
    ident = IdentityManager(config, clock=lambda: now[0])
    ident.client = DownClient()  # type: ignore[assignment]
    ident.cert = CertInfo(SpiffeId("mesh.test", "default", "users"), 0.0, 60.0, 1)
    ident.received_at = 0.0
    with pytest.raises(StopLoop):
        await ident._run()
    assert ident.last_error is not None and ident.renewals == 0
    for at, delay in sleeps:
        assert delay <= max(1.0, (60.0 - at) / 4), (at, delay, sleeps)
    assert DownClient.attempts >= 8  # still trying in the last seconds
