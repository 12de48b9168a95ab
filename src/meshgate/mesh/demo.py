"""`meshgate mesh-demo`: a whole mesh in one process, on 127.0.0.1.

* a control plane (SQLite in a temporary directory, generated CA);
* three services, each beside its own sidecar: ``users``, ``cart`` and ``orders``
  (``orders`` calls ``users`` through its sidecar as an HTTP proxy and ``cart``
  through a per-service local port);
* a gateway on ``--port`` (8080) with its own sidecar (service ``gateway``): the
  gateway reaches ``orders`` through that sidecar, so the request crosses
  gateway -> orders -> users/cart over mTLS, each hop authorized by policy.

``curl http://127.0.0.1:8080/orders/7/summary`` shows what each service saw.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from meshgate.config.loader import parse_config
from meshgate.config.models import ListenerConfig
from meshgate.control.client import ControlPlaneClient
from meshgate.control.config import ControlPlaneConfig
from meshgate.control.server import ControlPlaneServer
from meshgate.control.service import token_hash
from meshgate.gateway import Gateway
from meshgate.http.messages import Request, Response
from meshgate.io.server import HttpServer
from meshgate.mesh.config import SidecarConfig
from meshgate.mesh.sidecar import Sidecar

log = logging.getLogger("meshgate.mesh.demo")

CALL_TIMEOUT_S = 5.0
STATE_WAIT_S = 10.0
POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("authz", {"name": "orders-from-gateway", "to": "orders", "from": ["gateway"]}),
    ("authz", {"name": "users-from-orders", "to": "users", "from": ["orders"]}),
    ("authz", {"name": "cart-from-orders", "to": "cart", "from": ["orders"], "methods": ["GET"]}),
    *(("defaults", {"service": s, "default_action": "deny"}) for s in ("orders", "users", "cart")),
]


def _seen(request: Request) -> dict[str, Any]:
    """What a service learns about its caller from its sidecar."""
    h = request.headers
    return {
        "source_service": h.get("x-source-service"),
        "source_identity": h.get("x-source-identity"),
        "traceparent": h.get("traceparent"),
    }


async def users_app(request: Request) -> Response:
    user_id = request.path.rstrip("/").rsplit("/", 1)[-1]
    return Response.json(200, {"id": user_id, "name": f"user-{user_id}", "caller": _seen(request)})


async def cart_app(request: Request) -> Response:
    owner = request.path.rstrip("/").rsplit("/", 1)[-1]
    items = [{"sku": "book", "qty": 1}, {"sku": "pen", "qty": 3}]
    return Response.json(200, {"owner": owner, "items": items, "caller": _seen(request)})


class OrdersApp:
    """``GET /orders/<id>/summary``: asks users (HTTP proxy) and cart (local port)."""

    def __init__(self) -> None:
        self.proxy_url = ""  # http://127.0.0.1:<orders' sidecar outbound port>
        self.cart_url = ""  # http://127.0.0.1:<orders' local port for cart>
        self._users: httpx.AsyncClient | None = None
        self._cart: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._users = httpx.AsyncClient(proxy=self.proxy_url, timeout=CALL_TIMEOUT_S)
        self._cart = httpx.AsyncClient(base_url=self.cart_url, timeout=CALL_TIMEOUT_S)

    async def aclose(self) -> None:
        for client in (self._users, self._cart):
            if client is not None:
                await client.aclose()

    async def __call__(self, request: Request) -> Response:
        parts = request.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "orders" or parts[2] != "summary":
            return Response.json(404, {"error": "try GET /orders/<id>/summary"})
        assert self._users is not None and self._cart is not None
        order_id = parts[1]
        # An app passes the trace context on (as with any mesh): one trace end to end.
        trace = request.headers.get("traceparent")
        headers = {"traceparent": trace} if trace else {}
        try:
            users, cart = await asyncio.gather(
                self._users.get(f"http://users/users/{order_id}", headers=headers),
                self._cart.get(f"/cart/{order_id}", headers=headers),
            )
        except httpx.HTTPError as exc:
            return Response.json(502, {"error": f"calling users/cart failed: {exc!r}"})
        return Response.json(
            200,
            {
                "order": order_id,
                "caller": _seen(request),
                "user": {"status": users.status_code, "body": users.json()},
                "cart": {"status": cart.status_code, "body": cart.json()},
            },
        )


class LocalMesh:
    """A control plane (SQLite, generated CA, in a temporary directory) and sidecars
    joined to it, all on 127.0.0.1 in this process: the demo's and the benchmark's."""

    def __init__(self, workdir: Path | None = None, trust_domain: str = "mesh.demo") -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="meshgate-mesh-")
            workdir = Path(self._tmp.name)
        self.dir = workdir
        self.trust_domain = trust_domain
        self.cp: ControlPlaneServer | None = None
        self.admin: ControlPlaneClient | None = None
        self.sidecars: dict[str, Sidecar] = {}

    @property
    def url(self) -> str:
        assert self.cp is not None
        return f"https://127.0.0.1:{self.cp.port}"

    @property
    def bundle_file(self) -> Path:
        return self.dir / "bundle.pem"

    async def start(self, policies: Sequence[tuple[str, dict[str, Any]]] = ()) -> None:
        admin_token = secrets.token_urlsafe(24)
        self.cp = ControlPlaneServer(
            ControlPlaneConfig.model_validate(
                {
                    "trust_domain": self.trust_domain,
                    "listen": {"host": "127.0.0.1", "port": 0},
                    "admin_token_hash": "sha256:" + token_hash(admin_token),
                    "bundle_file": str(self.bundle_file),
                    "storage": {"type": "sqlite", "path": str(self.dir / "cp.db")},
                }
            )
        )
        await self.cp.start()
        self.admin = ControlPlaneClient(
            self.url, self.bundle_file.read_text(encoding="ascii"), admin_token=admin_token
        )
        for kind, body in policies:
            await self.admin.request("PUT", f"/v1/policies/{kind}", body)

    async def add_sidecar(
        self, name: str, outbound: dict[str, Any], app_port: int = 0, **extra: Any
    ) -> Sidecar:
        """Join ``name`` (a new token) and start its sidecar beside ``app_port`` (none:
        egress only); ``extra``: more sidecar.yaml keys."""
        assert self.admin is not None
        token = (await self.admin.request("POST", "/v1/tokens", {"service": name}))["token"]
        token_file = self.dir / f"{name}.token"
        token_file.write_text(token, encoding="ascii")
        token_file.chmod(0o600)
        config = SidecarConfig.model_validate(
            {
                "service": name,
                "app": {"port": app_port} if app_port else None,
                "inbound": {"host": "127.0.0.1", "port": 0},
                "outbound": outbound,
                "admin": {"port": 0},
                "control_plane": {
                    "url": self.url,
                    "ca_bundle_file": str(self.bundle_file),
                    "token_file": str(token_file),
                    "identity_dir": str(self.dir / name),
                    "instance_ttl_s": 10,
                },
                **extra,
            }
        )
        sidecar = Sidecar(config)
        await sidecar.start()
        self.sidecars[name] = sidecar
        return sidecar

    async def stop(self) -> None:
        for sidecar in self.sidecars.values():
            await sidecar.stop()
        if self.admin is not None:
            await self.admin.aclose()
        if self.cp is not None:
            await self.cp.close()
        if self._tmp is not None:
            self._tmp.cleanup()


class MeshDemo:
    """Everything of the demo, started and stopped together (tests use it too)."""

    def __init__(self, gateway_port: int = 8080, workdir: Path | None = None) -> None:
        self.gateway_port = gateway_port
        self.mesh = LocalMesh(workdir)
        self.apps: dict[str, HttpServer] = {}
        self.gateway: Gateway | None = None
        self.orders = OrdersApp()

    @property
    def sidecars(self) -> dict[str, Sidecar]:
        return self.mesh.sidecars

    async def start(self) -> None:
        mesh = self.mesh
        await mesh.start(POLICIES)
        for name, app in (("users", users_app), ("cart", cart_app), ("orders", self.orders)):
            server = HttpServer(app, ListenerConfig(host="127.0.0.1", port=0), 64 * 1024)
            await server.start()
            self.apps[name] = server
            outbound: dict[str, Any] = {"port": 0}
            if name == "orders":
                outbound["ports"] = {"cart": 0}
            await mesh.add_sidecar(name, outbound, server.port)
        orders_car = self.sidecars["orders"]
        self.orders.proxy_url = f"http://127.0.0.1:{orders_car.outbound_port}"
        self.orders.cart_url = f"http://127.0.0.1:{orders_car.local_port('cart')}"
        self.orders.start()
        # The gateway's sidecar is egress only: nothing calls the gateway through the mesh.
        gw_car = await mesh.add_sidecar("gateway", {"port": 0, "ports": {"orders": 0}})
        await gw_car.wait_for_services({"orders"}, STATE_WAIT_S)
        await orders_car.wait_for_services({"users", "cart"}, STATE_WAIT_S)
        config, doc = parse_config(
            _gateway_yaml(self.gateway_port, gw_car.local_port("orders")), "mesh-demo gateway"
        )
        self.gateway = Gateway(config, doc)
        await self.gateway.start()

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop(drain_timeout_s=2)
        await self.orders.aclose()
        await self.mesh.stop()
        for server in self.apps.values():
            await server.shutdown(1)


def _gateway_yaml(port: int, orders_port: int) -> str:
    return f"""
listener: {{host: 127.0.0.1, port: {port}}}
admin: {{enabled: false}}
upstreams:
  - name: orders-via-mesh     # the gateway's sidecar: its local port for orders
    instances: [{{host: 127.0.0.1, port: {orders_port}}}]
routes:
  - path_prefix: /orders
    upstream: orders-via-mesh
"""


async def run_mesh_demo(gateway_port: int) -> int:
    import signal

    demo = MeshDemo(gateway_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await demo.start()
    except BaseException:
        await demo.stop()
        raise
    assert demo.gateway is not None and demo.mesh.cp is not None
    port = demo.gateway.port
    cars = "\n".join(
        f"  {name:8} inbound {s.inbound.port if s.inbound else '-':>5}  "
        f"outbound {s.outbound_port}  admin {s.admin_port}"
        for name, s in demo.sidecars.items()
    )
    print(
        f"meshgate mesh-demo: control plane {demo.mesh.url}, sidecars:\n{cars}\n"
        f"  curl http://127.0.0.1:{port}/orders/7/summary\n"
        f"  curl http://127.0.0.1:{demo.sidecars['orders'].admin_port}/certs\n"
        "Ctrl-C to stop.",
        flush=True,
    )
    await stop.wait()
    await demo.stop()
    return 0
