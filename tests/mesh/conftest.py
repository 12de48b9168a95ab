"""Fixtures for the sidecar tests: an in-process control plane (SQLite in
tmp_path), join tokens, small JSON apps and sidecars, all on 127.0.0.1 with
port 0 and real TLS.

`Mesh` keeps everything it started and stops it in reverse order (sidecars
before the control plane, so no long-poll holds the control plane's drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshgate.config.models import ListenerConfig
from meshgate.control.client import ControlPlaneClient
from meshgate.control.config import ControlPlaneConfig
from meshgate.control.server import ControlPlaneServer
from meshgate.control.service import token_hash
from meshgate.http.messages import Request, Response
from meshgate.io.server import HttpServer
from meshgate.mesh.config import SidecarConfig
from meshgate.mesh.sidecar import Sidecar
from meshgate.mesh.state import ServiceKey

ADMIN_TOKEN = "mesh-test-admin-token"
TRUST_DOMAIN = "mesh.test"
WAIT_S = 10.0  # longest wait for a state change the tests cause


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], what: str, timeout_s: float = WAIT_S
) -> None:
    """Poll ``check`` every 50 ms until it is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class App:
    """A JSON app: answers ``{service, instance, path, method, headers, body}``
    and keeps every request it got."""

    service: str
    instance: str
    server: HttpServer | None = None
    hits: list[Hit] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def __call__(self, request: Request) -> Response:
        body = await request.body.read_all(1 << 20)
        headers = dict(request.headers.items())
        self.hits.append(Hit(request.method, request.path, headers, body))
        return Response.json(
            200,
            {
                "service": self.service,
                "instance": self.instance,
                "path": request.path,
                "method": request.method,
                "headers": headers,
                "body": body.decode("utf-8", "replace"),
            },
        )


class Mesh:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.cp: ControlPlaneServer | None = None
        self.admin: ControlPlaneClient | None = None
        self.apps: list[App] = []
        self.sidecars: list[Sidecar] = []
        self.clients: list[ControlPlaneClient] = []
        self.closers: list[Callable[[], Awaitable[Any]]] = []

    # -- control plane ---------------------------------------------------------------
    @property
    def bundle_file(self) -> Path:
        return self.dir / "cp-bundle.pem"

    @property
    def url(self) -> str:
        assert self.cp is not None
        return f"https://127.0.0.1:{self.cp.port}"

    async def start_control_plane(self, **overrides: Any) -> ControlPlaneServer:
        raw: dict[str, Any] = {
            "trust_domain": TRUST_DOMAIN,
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin_token_hash": "sha256:" + token_hash(ADMIN_TOKEN),
            "bundle_file": str(self.bundle_file),
            "storage": {"type": "sqlite", "path": str(self.dir / "cp.db")},
            **overrides,
        }
        self.cp = ControlPlaneServer(ControlPlaneConfig.model_validate(raw))
        await self.cp.start()
        self.admin = ControlPlaneClient(
            self.url, self.bundle_file.read_text(), admin_token=ADMIN_TOKEN
        )
        return self.cp

    async def stop_control_plane(self) -> None:
        if self.admin is not None:
            await self.admin.aclose()
            self.admin = None
        if self.cp is not None:
            cp, self.cp = self.cp, None
            await cp.close()

    async def token(self, service: str, namespace: str = "default") -> str:
        assert self.admin is not None
        body = {"service": service, "namespace": namespace}
        data = await self.admin.request("POST", "/v1/tokens", body)
        return str(data["token"])

    async def token_file(self, service: str, namespace: str = "default") -> str:
        token = await self.token(service, namespace)
        path = self.dir / f"token-{service}-{len(list(self.dir.glob('token-*')))}"
        path.write_text(token)
        return str(path)

    async def put_policy(self, kind: str, policy: dict[str, Any]) -> None:
        assert self.admin is not None
        await self.admin.request("PUT", f"/v1/policies/{kind}", policy)

    async def workload(self, service: str) -> ControlPlaneClient:
        """A workload client joined as ``service`` (its files in its identity_dir)."""
        token = await self.token(service)
        identity_dir = self.dir / f"workload-{service}-{len(self.clients)}"
        client = ControlPlaneClient(
            self.url, self.bundle_file.read_text(), identity_dir=str(identity_dir)
        )
        self.clients.append(client)
        await client.join(token, service=service)
        return client

    # -- apps and sidecars -----------------------------------------------------------
    async def app(self, service: str, instance: str | None = None) -> App:
        app = App(service, instance or f"{service}-{len(self.apps)}")
        app.server = HttpServer(app, ListenerConfig(host="127.0.0.1", port=0), 1 << 20)
        await app.server.start()
        self.apps.append(app)
        return app

    def sidecar_config(self, service: str, app: App, **overrides: Any) -> dict[str, Any]:
        """A sidecar.yaml (as a dict) for ``service`` beside ``app``, without a source."""
        raw: dict[str, Any] = {
            "service": service,
            "app": {"port": app.port},
            "inbound": {"host": "127.0.0.1", "port": 0},
            "outbound": {"port": 0},
            "admin": {"port": 0},
            "drain_timeout_s": 1.0,
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        return raw

    async def control_plane_link(
        self, service: str, namespace: str = "default", **link: Any
    ) -> dict[str, Any]:
        return {
            "url": self.url,
            "ca_bundle_file": str(self.bundle_file),
            "token_file": await self.token_file(service, namespace),
            "identity_dir": str(self.dir / f"identity-{service}-{len(self.sidecars)}"),
            "instance_ttl_s": 5.0,
            **link,
        }

    async def sidecar(
        self, service: str, app: App, *, link: dict[str, Any] | None = None, **overrides: Any
    ) -> Sidecar:
        """A sidecar with its identity from the control plane."""
        raw = self.sidecar_config(service, app, **overrides)
        namespace = str(raw.get("namespace", "default"))
        raw["control_plane"] = await self.control_plane_link(service, namespace, **(link or {}))
        return await self.start_sidecar(raw)

    async def static_sidecar(
        self,
        service: str,
        app: App,
        services: dict[str, list[dict[str, Any]]],
        **overrides: Any,
    ) -> Sidecar:
        """A sidecar without a control plane: a certificate the control plane issued
        (kept as files) and a fixed list of destination instances."""
        workload = await self.workload(service)
        ident = workload.identity
        assert ident is not None and workload.identity_dir is not None
        static = overrides.pop("static", {})
        raw = self.sidecar_config(service, app, **overrides)
        raw["static"] = {
            "cert_file": ident.cert_file,
            "key_file": ident.key_file,
            "bundle_file": str(workload.identity_dir / "bundle.pem"),
            "services": services,
            **static,
        }
        return await self.start_sidecar(raw)

    async def start_sidecar(self, raw: dict[str, Any]) -> Sidecar:
        car = Sidecar(SidecarConfig.model_validate(raw))
        await car.start()
        self.sidecars.append(car)
        return car

    async def stop_sidecar(self, car: Sidecar) -> None:
        if car in self.sidecars:
            self.sidecars.remove(car)
            await car.stop()

    # -- waiting ---------------------------------------------------------------------
    async def registered(self, car: Sidecar) -> None:
        await eventually(lambda: car.registration is not None, f"{car.config.service} registered")

    async def sees(
        self, car: Sidecar, service: str, count: int = 1, namespace: str = "default"
    ) -> None:
        """Wait until ``car``'s outbound has ``count`` instances of ``service``."""
        key = ServiceKey(namespace, service)

        def check() -> bool:
            runtime = car.outbound.current_runtime if car.outbound is not None else None
            cluster = runtime.clusters.get(key.upstream) if runtime else None
            if count == 0:  # the service is gone: so are its route and cluster
                return cluster is None and not car.state.instance_list(key)
            return (
                cluster is not None
                and len(cluster.snapshot()["hosts"]) == count
                and len(car.state.instance_list(key)) == count
            )

        await eventually(check, f"{car.config.service} sees {count} instance(s) of {service}")

    async def has_policy(self, car: Sidecar, name: str, present: bool = True) -> None:
        await eventually(
            lambda: (name in car.state.authz) == present,
            f"{car.config.service} {'has' if present else 'dropped'} policy {name}",
        )

    async def aclose(self) -> None:
        for car in reversed(self.sidecars):
            await car.stop()
        self.sidecars = []
        for closer in reversed(self.closers):
            await closer()
        for app in self.apps:
            if app.server is not None:
                await app.server.shutdown(1.0)
        for client in self.clients:
            await client.aclose()
        await self.stop_control_plane()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        yield m
    finally:
        async with asyncio.timeout(30):
            await m.aclose()


@pytest.fixture
async def cp_mesh(mesh: Mesh) -> Mesh:
    """`mesh` with its control plane started."""
    await mesh.start_control_plane()
    return mesh


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------


def proxy_client(car: Sidecar, **kw: Any) -> httpx.AsyncClient:
    """The app's HTTP client with the sidecar's outbound port as its HTTP proxy."""
    return httpx.AsyncClient(
        proxy=f"http://127.0.0.1:{car.outbound_port}", timeout=kw.pop("timeout", 10.0), **kw
    )


def admin_url(car: Sidecar, path: str) -> str:
    return f"http://127.0.0.1:{car.admin_port}{path}"


def mtls_context(cert_file: str | None, key_file: str | None, ca_file: str) -> ssl.SSLContext:
    """A client context trusting ``ca_file`` (no host name check: SPIFFE IDs are URIs)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.check_hostname = False
    if cert_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


async def raw_exchange(port: int, data: bytes, ctx: ssl.SSLContext | None = None) -> bytes:
    """Send ``data`` to 127.0.0.1:port (over TLS with ``ctx``) and read until the
    peer closes or 5 s pass; TLS and connection errors propagate."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        try:
            writer.write(data)
            await writer.drain()
            out = b""
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return out
                out += chunk
                if b"\r\n\r\n" in out and _complete(out):
                    return out
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def body_of(resp: httpx.Response) -> dict[str, Any]:
    data = json.loads(resp.content)
    assert isinstance(data, dict)
    return data
