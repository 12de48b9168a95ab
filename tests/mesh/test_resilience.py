"""Certificate rotation under load, an instance killed, the control plane gone,
an expired certificate: what callers see (each test bounded in time and count)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

import meshgate
from meshgate.mesh.config import SidecarConfig
from meshgate.mesh.sidecar import Sidecar
from tests.mesh.conftest import (
    Mesh,
    admin_url,
    body_of,
    eventually,
    mtls_context,
    proxy_client,
)

# Where the tests' meshgate comes from (src/, or build/compiled in the compiled run):
# the subprocesses run the same build.
PACKAGE_ROOT = Path(meshgate.__file__).resolve().parent.parent


@dataclass
class Load:
    """Requests through a sidecar's outbound port until stopped, counting outcomes."""

    car: Sidecar
    url: str
    workers: int = 4
    pause_s: float = 0.02
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)  # who answered, in order
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _worker(self) -> None:
        async with proxy_client(self.car, timeout=10.0) as c:
            while not self._stop.is_set():
                try:
                    r = await c.get(self.url)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                else:
                    if r.status_code == 200:
                        self.ok += 1
                        self.instances.append(body_of(r)["instance"])
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                await asyncio.sleep(self.pause_s)

    def start(self) -> Load:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        async with asyncio.timeout(15):
            await asyncio.gather(*self._tasks)

    async def run_until(self, done: Any, what: str, timeout_s: float) -> None:
        """Keep the load on until ``done()``; fail (after stopping) past the deadline."""
        try:
            await eventually(done, what, timeout_s)
        finally:
            if not self._stop.is_set():
                await self.stop()


async def certs(car: Sidecar) -> dict[str, Any]:
    async with httpx.AsyncClient() as c:
        r = await c.get(admin_url(car, "/certs"))
    assert r.status_code == 200
    return body_of(r)


async def cluster_state(car: Sidecar, name: str) -> dict[str, Any]:
    """``car``'s /clusters entry for ``name`` (breaker, limits, budget: for messages)."""
    async with httpx.AsyncClient() as c:
        clusters = body_of(await c.get(admin_url(car, "/clusters")))["clusters"]
    return next((cl for cl in clusters if cl["name"] == name), {})


async def ready(car: Sidecar) -> int:
    async with httpx.AsyncClient() as c:
        return (await c.get(admin_url(car, "/ready"))).status_code


async def served_serial(mesh: Mesh, car: Sidecar) -> str:
    """The serial of the certificate ``car``'s inbound port presents to a new connection."""
    client = await mesh.workload("cart")
    ident = client.identity
    assert ident is not None and client.identity_dir is not None
    ctx = mtls_context(ident.cert_file, ident.key_file, str(client.identity_dir / "bundle.pem"))
    async with httpx.AsyncClient(verify=ctx) as c:
        r = await c.get(f"https://127.0.0.1:{car.inbound_port}/serial")
        assert r.status_code == 200
        der = r.extensions["network_stream"].get_extra_info("ssl_object").getpeercert(True)
    return f"{x509.load_der_x509_certificate(der).serial_number:x}"


# ---------------------------------------------------------------------------
# Rotation
# ---------------------------------------------------------------------------


async def test_certificate_rotation_under_load(mesh: Mesh) -> None:
    """60 s certificates (the CA's minimum) are renewed at half-life (~30 s) while
    requests flow from orders to users: none fails, both sidecars renew, the
    inbound port serves the new certificate."""
    await mesh.start_control_plane(ca={"workload_ttl_s": 60})
    link = {"cert_ttl_s": 60}
    users = await mesh.sidecar("users", await mesh.app("users"), link=link)
    orders = await mesh.sidecar("orders", await mesh.app("orders"), link=link)
    await mesh.sees(orders, "users")
    before = {car.config.service: await certs(car) for car in (users, orders)}
    for info in before.values():
        assert info["renewals"] == 0
        assert 50 < info["expires_in_s"] <= 60
        assert info["renew_at"] - time.time() < 35

    load = Load(orders, "http://users/rotating").start()
    renewed_at: list[float] = []

    async def both_renewed_then_more() -> bool:
        if not renewed_at:
            if users.identity.renewals >= 1 and orders.identity.renewals >= 1:
                renewed_at.append(time.monotonic())
            return False
        # Keep the load on for 3 s more: new connections use the new certificates.
        return time.monotonic() - renewed_at[0] >= 3.0

    await load.run_until(both_renewed_then_more, "both certificates renewed", timeout_s=50)
    assert load.failures == []
    assert load.ok >= 100

    for car in (users, orders):
        after = await certs(car)
        old = before[car.config.service]
        assert after["renewals"] >= 1
        assert after["serial"] != old["serial"]
        assert after["identity"] == old["identity"]
        assert after["not_after"] > old["not_after"]
        assert after["last_error"] is None
        assert after["expired"] is False
    assert await served_serial(mesh, users) == (await certs(users))["serial"]
    # And a new connection from orders (its new client certificate) still passes.
    async with proxy_client(orders) as c:
        assert (await c.get("http://users/after")).status_code == 200


# ---------------------------------------------------------------------------
# An instance killed
# ---------------------------------------------------------------------------


class SidecarProcess:
    """``python -m meshgate sidecar -c FILE`` with its ports read from its log."""

    def __init__(self, config: dict[str, Any], path: Path) -> None:
        self.path = path
        path.write_text(json.dumps(config))  # JSON is YAML
        self.proc: asyncio.subprocess.Process | None = None
        self.ports: dict[str, int] = {}
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> SidecarProcess:
        env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meshgate",
            "sidecar",
            "-c",
            str(self.path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        started = asyncio.Event()
        self._reader = asyncio.create_task(self._read(started))
        try:
            async with asyncio.timeout(30):
                await started.wait()
        except TimeoutError:
            await self.kill()
            pytest.fail("the sidecar process did not start:\n" + "\n".join(self.log[-20:]))
        return self

    async def _read(self, started: asyncio.Event) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self.log.append(text)
            if "): inbound " in text and not started.is_set():
                # "sidecar users (spiffe://...): inbound 1, outbound 2, admin 3"
                tail = text.rsplit("): ", 1)[1]
                for part in tail.split(", "):
                    name, port = part.split()
                    self.ports[name] = int(port)
                started.set()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            async with asyncio.timeout(10):
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await self._reader


@pytest.fixture
async def processes() -> AsyncIterator[list[SidecarProcess]]:
    procs: list[SidecarProcess] = []
    yield procs
    for p in procs:
        await p.kill()


async def test_killed_instance_traffic_moves_to_the_other(
    cp_mesh: Mesh, processes: list[SidecarProcess]
) -> None:
    """users has two instances; one sidecar is SIGKILLed (no deregistration). Its
    lease (3 s) expires and callers move to the other instance; idempotent requests
    never fail meanwhile (retries on connect failures and resets)."""
    mesh = cp_mesh
    app1, app2 = await mesh.app("users", "users-1"), await mesh.app("users", "users-2")
    await mesh.sidecar("users", app1, link={"instance_ttl_s": 3})
    raw = mesh.sidecar_config("users", app2)
    raw["control_plane"] = await mesh.control_plane_link("users", instance_ttl_s=3)
    SidecarConfig.model_validate(raw)  # the same file is valid in-process
    doomed = await SidecarProcess(raw, mesh.dir / "users-2.yaml").start()
    processes.append(doomed)
    orders = await mesh.sidecar("orders", await mesh.app("orders"))
    await mesh.sees(orders, "users", count=2)

    # Both instances answer (least_request among idle hosts picks either).
    async with proxy_client(orders) as c:
        for _ in range(200):
            r = await c.get("http://users/warm")
            assert r.status_code == 200
            if app1.hits and app2.hits:
                break
    assert app1.hits and app2.hits

    # 8 callers: more than the 5 consecutive failures that would open a per-service
    # circuit breaker, and than the 3 retries in flight the engine allows by default.
    load = Load(orders, "http://users/failover", workers=8).start()
    await eventually(lambda: load.ok >= 20, "load flowing before the kill")
    await doomed.kill()
    killed_at = len(load.instances)
    app2_hits = len(app2.hits)
    done_at: list[int] = []

    def moved() -> bool:
        if not done_at:
            if len(orders.state.instance_list(_users())) == 1:
                done_at.append(load.ok)
            return False
        return load.ok - done_at[0] >= 50

    await load.run_until(moved, "the lease of the killed instance to expire", timeout_s=20)
    assert load.failures == [], await cluster_state(orders, "users.default")
    assert len(app2.hits) == app2_hits  # nothing more reached the dead instance's app
    after = load.instances[killed_at + 8 :]  # (requests in flight at the kill aside)
    assert after and set(after) == {"users-1"}
    assert mesh.admin is not None
    registry = await mesh.admin.request("GET", "/v1/instances", params={"service": "users"})
    ports = [i["port"] for i in registry["instances"]]
    assert doomed.ports["inbound"] not in ports and len(ports) == 1


def _users() -> Any:
    from meshgate.mesh.state import ServiceKey

    return ServiceKey("default", "users")


# ---------------------------------------------------------------------------
# Control plane stopped
# ---------------------------------------------------------------------------


async def test_traffic_continues_without_the_control_plane(cp_mesh: Mesh) -> None:
    mesh = cp_mesh
    users_app = await mesh.app("users")
    # A 2 s lease: a control plane that, stopping, kept long-polls open through its
    # drain (5 s) used to expire it meanwhile (no heartbeat can reach a closed
    # listener) and tell every sidecar that users was gone.
    users = await mesh.sidecar("users", users_app, link={"instance_ttl_s": 2})
    orders = await mesh.sidecar("orders", await mesh.app("orders"))
    await mesh.sees(orders, "users")
    async with proxy_client(orders) as c:
        assert (await c.get("http://users/before")).status_code == 200

    await mesh.stop_control_plane()
    await eventually(
        lambda: orders.watch_errors >= 1 and users.watch_errors >= 1,
        "both sidecars to notice the control plane is gone",
        timeout_s=20,
    )
    async with proxy_client(orders) as c:
        statuses = [(await c.get(f"http://users/after-{i}")).status_code for i in range(20)]
    async with proxy_client(orders, headers={"connection": "close"}) as c:
        statuses += [(await c.get(f"http://users/close-{i}")).status_code for i in range(5)]
    assert statuses == [200] * 25
    assert sum(h.path.startswith(("/after-", "/close-")) for h in users_app.hits) == 25
    for car in (users, orders):
        assert await ready(car) == 200
        info = await certs(car)
        assert info["expired"] is False
    async with httpx.AsyncClient() as c:
        clusters = body_of(await c.get(admin_url(orders, "/clusters")))
    assert "users.default" in [cl["name"] for cl in clusters["clusters"]]


async def test_stopping_control_plane_answers_pending_watches(cp_mesh: Mesh) -> None:
    """A long-poll waiting when the control plane stops gets its (empty) answer at
    once, rather than being held through the drain and cut."""
    mesh = cp_mesh
    watcher = await mesh.workload("users")
    first = await watcher.watch(None, timeout_s=0)
    pending = asyncio.create_task(watcher.watch(first.revision, timeout_s=30))
    await asyncio.sleep(0.2)  # let the long-poll reach the server (not a timing assertion)
    assert not pending.done()
    await mesh.stop_control_plane()
    async with asyncio.timeout(10):
        result = await pending
    assert not result.snapshot and result.events == []
    assert result.revision == first.revision


# ---------------------------------------------------------------------------
# Expired certificate
# ---------------------------------------------------------------------------


async def test_expired_certificate_refuses_inbound_traffic(cp_mesh: Mesh) -> None:
    """Static mode with a clock the test moves past the certificate's end: the
    sidecar answers 503 instead of forwarding, and /ready turns 503."""
    mesh = cp_mesh
    skew = [0.0]
    users_app = await mesh.app("users")
    workload = await mesh.workload("users")
    ident = workload.identity
    assert ident is not None and workload.identity_dir is not None
    raw = mesh.sidecar_config("users", users_app)
    raw["static"] = {
        "cert_file": ident.cert_file,
        "key_file": ident.key_file,
        "bundle_file": str(workload.identity_dir / "bundle.pem"),
    }
    users = Sidecar(SidecarConfig.model_validate(raw), clock=lambda: time.time() + skew[0])
    await users.start()
    mesh.sidecars.append(users)
    orders = await mesh.static_sidecar(
        "orders",
        await mesh.app("orders"),
        {"users": [{"host": "127.0.0.1", "port": users.inbound_port}]},
    )
    async with proxy_client(orders) as c:
        assert (await c.get("http://users/valid")).status_code == 200
        assert await ready(users) == 200
        skew[0] = ident.not_after - time.time() + 1
        r = await c.get("http://users/expired")
        assert r.status_code == 503
        assert "expired" in r.text
        assert await ready(users) == 503
        assert (await certs(users))["expired"] is True
    assert [h.path for h in users_app.hits] == ["/valid"]


# ---------------------------------------------------------------------------
# CA rotation
# ---------------------------------------------------------------------------


async def test_ca_rotation_new_and_old_identities_talk(cp_mesh: Mesh) -> None:
    """After `POST /v1/ca/rotate` the sidecars trust both roots (bundle from the
    watch): a workload joining later (new root) and the earlier ones (old root)
    call each other both ways."""
    mesh = cp_mesh
    users = await mesh.sidecar("users", await mesh.app("users"))
    orders = await mesh.sidecar("orders", await mesh.app("orders"))
    await mesh.sees(orders, "users")
    assert mesh.admin is not None
    await mesh.admin.request("POST", "/v1/ca/rotate", {"overlap_s": 3600})

    def issuer_key(car: Sidecar) -> bytes | None:
        cert = x509.load_pem_x509_certificate(Path(car.identity.cert_file).read_bytes())
        return cert.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        ).value.key_identifier

    def roots(car: Sidecar) -> int:
        return Path(car.identity.bundle_file).read_text().count("BEGIN CERTIFICATE")

    await eventually(lambda: roots(users) == 2 and roots(orders) == 2, "both roots trusted")
    cart = await mesh.sidecar("cart", await mesh.app("cart"))
    assert roots(cart) == 2
    assert issuer_key(users) != issuer_key(cart)  # users: the old root, cart: the new one
    for car in (users, orders):
        await mesh.sees(car, "cart")
    await mesh.sees(cart, "users")
    await mesh.sees(cart, "orders")
    for caller, callee in [(cart, "users"), (orders, "cart"), (users, "cart"), (cart, "orders")]:
        async with proxy_client(caller) as c:
            r = await c.get(f"http://{callee}/across-roots")
        assert r.status_code == 200, (caller.config.service, callee, r.text)
        assert body_of(r)["headers"]["x-source-service"] == caller.config.service


# ---------------------------------------------------------------------------
# Renewal while the control plane is away, and its return
# ---------------------------------------------------------------------------


async def test_renewal_fails_while_control_plane_is_away_then_recovers(mesh: Mesh) -> None:
    """60 s certificates; the control plane stops before half-life. The renewal
    fails (and says so on /certs) while traffic keeps flowing on the current
    certificate; the control plane comes back on the same port and store: the
    renewal succeeds and the watch resumes (a new policy arrives)."""
    cp = await mesh.start_control_plane(ca={"workload_ttl_s": 60})
    port = cp.port
    users = await mesh.sidecar("users", await mesh.app("users"), link={"cert_ttl_s": 60})
    orders = await mesh.sidecar("orders", await mesh.app("orders"), link={"cert_ttl_s": 60})
    await mesh.sees(orders, "users")
    first = await certs(users)
    await mesh.stop_control_plane()

    load = Load(orders, "http://users/away", workers=2, pause_s=0.1).start()
    try:
        await eventually(
            lambda: users.identity.last_error is not None, "a failed renewal", timeout_s=45
        )
    finally:
        await load.stop()
    assert load.failures == [] and load.ok > 0
    info = await certs(users)
    assert info["renewals"] == 0 and info["serial"] == first["serial"]
    assert info["last_error"] and info["expired"] is False
    assert await ready(users) == 200

    await mesh.start_control_plane(
        ca={"workload_ttl_s": 60}, listen={"host": "127.0.0.1", "port": port}
    )
    await eventually(
        lambda: users.identity.renewals >= 1 and users.identity.last_error is None,
        "the renewal to succeed once the control plane is back",
        timeout_s=40,
    )
    assert (await certs(users))["serial"] != first["serial"]
    await mesh.put_policy("authz", {"name": "users-from-cart", "to": "users", "from": ["cart"]})
    await mesh.has_policy(users, "users-from-cart")
    async with proxy_client(orders) as c:
        assert (await c.get("http://users/back")).status_code == 403  # the new policy


# ---------------------------------------------------------------------------
# Graceful stop
# ---------------------------------------------------------------------------


async def test_graceful_stop_deregisters_at_once(cp_mesh: Mesh) -> None:
    """A sidecar stopped normally deregisters: callers drop it long before its
    (60 s) lease would expire, and no request fails meanwhile."""
    mesh = cp_mesh
    app1, app2 = await mesh.app("users", "users-1"), await mesh.app("users", "users-2")
    await mesh.sidecar("users", app1, link={"instance_ttl_s": 60})
    leaving = await mesh.sidecar("users", app2, link={"instance_ttl_s": 60})
    orders = await mesh.sidecar("orders", await mesh.app("orders"))
    await mesh.sees(orders, "users", count=2)
    load = Load(orders, "http://users/leaving", workers=4).start()
    await eventually(lambda: load.ok >= 20, "load flowing before the stop")
    await mesh.stop_sidecar(leaving)
    stopped_at = len(load.instances)
    await mesh.sees(orders, "users", count=1)
    await load.run_until(lambda: len(load.instances) >= stopped_at + 40, "40 more", 15)
    assert load.failures == []
    assert set(load.instances[stopped_at + 8 :]) == {"users-1"}
    assert mesh.admin is not None
    registry = await mesh.admin.request("GET", "/v1/instances", params={"service": "users"})
    assert len(registry["instances"]) == 1


async def test_cli_sidecar_serves_and_sigterm_deregisters(
    cp_mesh: Mesh, processes: list[SidecarProcess]
) -> None:
    """`meshgate sidecar -c file` joins, registers and serves; SIGTERM drains,
    deregisters (callers drop it at once, its lease is 60 s) and exits 0."""
    mesh = cp_mesh
    app = await mesh.app("users", "users-cli")
    raw = mesh.sidecar_config("users", app)
    raw["control_plane"] = await mesh.control_plane_link("users", instance_ttl_s=60)
    proc = await SidecarProcess(raw, mesh.dir / "users-cli.yaml").start()
    processes.append(proc)
    orders = await mesh.sidecar("orders", await mesh.app("orders"))
    await mesh.sees(orders, "users")
    async with proxy_client(orders) as c:
        r = await c.get("http://users/cli")
    assert (r.status_code, body_of(r)["instance"]) == (200, "users-cli")
    async with httpx.AsyncClient() as c:
        r = await c.get(f"http://127.0.0.1:{proc.ports['admin']}/ready")
    assert r.status_code == 200
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        code = await proc.proc.wait()
    assert code == 0, "\n".join(proc.log[-20:])
    await eventually(
        lambda: orders.state.instance_list(_users()) == [], "orders to drop the stopped instance"
    )


async def test_restart_reuses_the_kept_identity(cp_mesh: Mesh) -> None:
    """A sidecar restarted with the same identity_dir reuses its valid certificate:
    no join token is needed the second time (the first one was revoked)."""
    mesh = cp_mesh
    app = await mesh.app("users")
    link = await mesh.control_plane_link("users")
    raw = mesh.sidecar_config("users", app)
    raw["control_plane"] = link
    first = await mesh.start_sidecar(raw)
    serial = (await certs(first))["serial"]
    await mesh.stop_sidecar(first)
    assert mesh.admin is not None
    for token in (await mesh.admin.request("GET", "/v1/tokens"))["tokens"]:
        await mesh.admin.request("DELETE", f"/v1/tokens/{token['id']}")
    second = await mesh.start_sidecar(raw)
    assert (await certs(second))["serial"] == serial
    orders = await mesh.sidecar("orders", await mesh.app("orders"))
    await mesh.sees(orders, "users")
    async with proxy_client(orders) as c:
        assert (await c.get("http://users/again")).status_code == 200
