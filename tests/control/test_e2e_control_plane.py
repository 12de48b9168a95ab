"""End to end: ``meshgate control-plane`` processes, ``meshgate ctl``, real TLS.

SQLite mode (restart keeps state) and etcd mode (two control planes on one etcd:
a registration through one reaches a watcher of the other; one killed, the other
serves). Issued certificates are checked with ``openssl verify`` and a real mTLS
handshake between two workloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import meshgate
from meshgate.control.client import ControlPlaneClient, ControlPlaneError
from meshgate.control.service import token_hash
from tests.etcd_server import (  # noqa: F401 (fixtures)
    EtcdCluster,
    EtcdServer,
    etcd_cluster,
    etcd_server,
)

ADMIN = "e2e-admin-token"
START_TIMEOUT_S = 20.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # where the tests' meshgate comes from (src/, or build/compiled in the compiled run)
    src = str(Path(meshgate.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        [src, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    env["MESHGATE_ADMIN_TOKEN"] = ADMIN
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ControlPlaneProcess:
    def __init__(self, tmp_path: Path, name: str, storage: dict[str, Any]) -> None:
        self.dir = tmp_path / name
        self.dir.mkdir(exist_ok=True)
        self.port = _free_port()
        self.bundle_file = self.dir / "bundle.pem"
        self.config = self.dir / "cp.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "trust_domain": "mesh.test",
                    "listen": {"host": "127.0.0.1", "port": self.port},
                    "admin_token_hash": "sha256:" + token_hash(ADMIN),
                    "bundle_file": str(self.bundle_file),
                    "storage": storage,
                }
            )
        )
        self.log = self.dir / "cp.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> ControlPlaneProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshgate", "control-plane", "-c", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=self.dir,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.bundle_file.exists():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"control plane did not start; log:\n{self.log.read_text()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshgate", "ctl", "--server", self.url,
             "--ca-bundle", str(self.bundle_file), *args],
            capture_output=True, text=True, env=_env(), timeout=30, check=False,
        )  # fmt: skip

    def client(self, identity: str | None = None) -> ControlPlaneClient:
        return ControlPlaneClient(
            self.url,
            self.bundle_file.read_text(),
            identity_dir=str(self.dir.parent / identity) if identity else None,
        )


@pytest.fixture
def processes() -> Iterator[list[ControlPlaneProcess]]:
    procs: list[ControlPlaneProcess] = []
    yield procs
    for p in procs:
        p.stop(signal.SIGKILL)


def _token(cp: ControlPlaneProcess, service: str) -> str:
    out = cp.ctl("token", "create", "--service", service, "--ttl", "10m")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token.startswith("mgjt_") and "expires" in out.stderr
    return token


def _openssl_verify(bundle: Path, cert_file: str) -> None:
    out = subprocess.run(
        ["openssl", "verify", "-purpose", "sslserver", "-CAfile", str(bundle), cert_file],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stdout + out.stderr


async def _mtls_handshake(server: ControlPlaneClient, client: ControlPlaneClient) -> str:
    """Serve TLS with ``server``'s workload certificate, requiring a client certificate;
    connect with ``client``'s. Return the SPIFFE ID the server saw."""
    assert server.identity is not None and client.identity is not None
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(server.identity.cert_file, server.identity.key_file)
    sctx.load_verify_locations(cadata=server.bundle_pem)
    sctx.verify_mode = ssl.CERT_REQUIRED
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = writer.get_extra_info("peercert")
        uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
        seen.set_result(uris[0])
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
    port = srv.sockets[0].getsockname()[1]
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(cadata=client.bundle_pem)
    cctx.check_hostname = False  # mesh peers are named by SPIFFE ID, checked below
    cctx.load_cert_chain(client.identity.cert_file, client.identity.key_file)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx)
    peer = writer.get_extra_info("peercert")
    assert ("URI", str(server.identity.spiffe_id)) in peer["subjectAltName"]
    assert await asyncio.wait_for(reader.read(), 5) == b"hello"
    writer.close()
    srv.close()
    await srv.wait_closed()
    return await asyncio.wait_for(seen, 5)


async def test_sqlite_control_plane_end_to_end(
    tmp_path: Path, processes: list[ControlPlaneProcess]
) -> None:
    cp = ControlPlaneProcess(tmp_path, "cp", {"type": "sqlite", "path": str(tmp_path / "cp.db")})
    processes.append(cp.start())
    orders, payments = cp.client("orders"), cp.client("payments")
    try:
        await orders.join(_token(cp, "orders"), service="orders")
        await payments.join(_token(cp, "payments"), service="payments")
        assert orders.identity is not None
        _openssl_verify(cp.bundle_file, orders.identity.cert_file)
        assert (
            await _mtls_handshake(orders, payments) == "spiffe://mesh.test/ns/default/sa/payments"
        )
        reg = await orders.register("127.0.0.1", 8080, metadata={"version": "v1"})
        out = cp.ctl("instances")
        assert out.returncode == 0, out.stderr
        assert "default/orders  127.0.0.1-8080  127.0.0.1:8080  weight=1  version=v1" in out.stdout
        out = cp.ctl("cert", "show", orders.identity.cert_file)
        assert "spiffe://mesh.test/ns/default/sa/orders" in out.stdout
        assert "expires in  24.0 h" in out.stdout or "expires in  23.9 h" in out.stdout
        policy = tmp_path / "policy.yaml"
        policy.write_text(
            "- kind: authz\n  name: orders-from-payments\n  to: orders\n  from: [payments]\n"
            "- kind: authz\n  name: bad\n  to: orders\n  from: [payments]\n  methods: [g3t]\n"
        )
        out = cp.ctl("policy", "apply", "-f", str(policy))
        assert (
            out.returncode == 1
            and f"{policy}:9: [1].methods: method 'G3T' is not an HTTP method" in out.stderr
        )
        before = (await orders.watch()).revision
        cp.stop()  # SIGTERM: graceful
        processes.remove(cp)
        processes.append(cp.start())  # same file: state kept
        await orders.aclose()
        out = cp.ctl("instances")
        assert "default/orders  127.0.0.1-8080" in out.stdout
        await orders.heartbeat(reg)  # the lease survived the restart
        renewed = await orders.renew()  # the CA survived: the old certificate still works
        assert renewed.spiffe_id == orders.identity.spiffe_id
        after = await orders.watch(before, timeout_s=0.2)
        assert after.events == [] and after.revision >= before
        out = cp.ctl("ca", "rotate", "--overlap", "1h")
        assert out.returncode == 0 and "issuing" in out.stdout and "trusted until" in out.stdout
        res = await orders.watch(after.revision, timeout_s=5, prefixes=("bundle",))
        assert len(res.events[0]["value"]["roots"]) == 2
        out = cp.ctl("token", "list")
        assert "default/orders" in out.stdout and "mgjt_" not in out.stdout
    finally:
        await orders.aclose()
        await payments.aclose()


async def _eventually_registered(client: ControlPlaneClient, since: int, key: str) -> int:
    rev = since
    async with asyncio.timeout(10):
        while True:
            res = await client.watch(rev, timeout_s=5)
            if any(e["key"] == key and e["type"] == "put" for e in res.events):
                return res.revision
            rev = res.revision


async def test_two_control_planes_share_etcd(
    tmp_path: Path,
    processes: list[ControlPlaneProcess],
    etcd_server: EtcdServer,  # noqa: F811
) -> None:
    storage = {"type": "etcd", "endpoints": [etcd_server.endpoint], "prefix": "/mg-e2e/"}
    a = ControlPlaneProcess(tmp_path, "a", storage)
    b = ControlPlaneProcess(tmp_path, "b", storage)
    processes.append(a.start())
    processes.append(b.start())
    assert a.bundle_file.read_text() == b.bundle_file.read_text()  # one CA for both
    via_a, via_b = a.client("orders"), b.client("watcher")
    admin_b = ControlPlaneClient(b.url, b.bundle_file.read_text(), admin_token=ADMIN)
    try:
        await via_a.join(_token(a, "orders"), service="orders")
        start = (await admin_b.watch()).revision
        reg = await via_a.register("127.0.0.1", 7001, ttl_s=5)
        await _eventually_registered(admin_b, start, "instances/default/orders/127.0.0.1-7001")
        # a certificate issued through A is accepted by B (renewal over mTLS)
        via_b_orders = ControlPlaneClient(b.url, b.bundle_file.read_text(),
                                          identity_dir=str(tmp_path / "orders"))  # fmt: skip
        await via_b_orders.heartbeat(reg)
        a.stop(signal.SIGKILL)  # A gone: B keeps serving
        await via_b_orders.renew()
        reg2 = await via_b_orders.register("127.0.0.1", 7002, ttl_s=5)
        listed = await admin_b.request("GET", "/v1/instances", params={"service": "orders"})
        assert {i["id"] for i in listed["instances"]} >= {reg.id, reg2.id}

        # leases are etcd leases: without heartbeats the instance goes, whoever granted it;
        # with heartbeats (through B) it stays
        async def beat() -> None:
            while True:
                await via_b_orders.heartbeat(reg2)
                await asyncio.sleep(1)

        beating = asyncio.create_task(beat())
        rev = (await admin_b.watch()).revision
        deleted: set[str] = set()
        try:
            async with asyncio.timeout(15):
                while "instances/default/orders/127.0.0.1-7001" not in deleted:
                    res = await admin_b.watch(rev, timeout_s=5)
                    deleted |= {e["key"] for e in res.events if e["type"] == "delete"}
                    rev = res.revision
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating  # a failed heartbeat surfaces here
        assert "instances/default/orders/127.0.0.1-7002" not in deleted
        with pytest.raises(ControlPlaneError, match="not registered"):
            await via_b_orders.heartbeat(reg)
        await via_b_orders.aclose()
    finally:
        await via_a.aclose()
        await via_b.aclose()
        await admin_b.aclose()


def _run_control_plane(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshgate", "control-plane", "-c", str(config)],
        capture_output=True, text=True, env=_env(), timeout=30, check=False,
    )  # fmt: skip


def test_bad_config_and_unusable_storage_fail_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trust_domain: Mesh_Test\nadmin_token_hash: sha256:00\nlisten: {port: 99999}\n")
    out = _run_control_plane(bad)
    assert out.returncode == 1
    assert f"{bad}:1: trust_domain: trust domain 'Mesh_Test' must be" in out.stderr
    assert f"{bad}:2: admin_token_hash: admin_token_hash must be sha256:" in out.stderr
    assert f"{bad}:3: listen.port:" in out.stderr
    assert "Traceback" not in out.stderr
    base = {"admin_token_hash": "sha256:" + token_hash(ADMIN), "listen": {"port": _free_port()}}
    no_etcd = tmp_path / "etcd.yaml"
    no_etcd.write_text(yaml.safe_dump({**base, "storage": {
        "type": "etcd", "endpoints": [f"127.0.0.1:{_free_port()}"], "timeout_s": 1}}))  # fmt: skip
    out = _run_control_plane(no_etcd)
    assert out.returncode == 1 and "no etcd endpoint answers" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    no_dir = tmp_path / "sqlite.yaml"
    (tmp_path / "file").write_text("")
    no_dir.write_text(
        yaml.safe_dump({**base, "storage": {"path": str(tmp_path / "file" / "x.db")}})
    )
    out = _run_control_plane(no_dir)
    assert out.returncode == 1 and "cannot start: sqlite" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    taken = tmp_path / "taken.yaml"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken.write_text(yaml.safe_dump({**base, "listen": {"port": port},
                                         "storage": {"path": str(tmp_path / "t.db")}}))  # fmt: skip
        out = _run_control_plane(taken)
    assert out.returncode == 1, out.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr


async def test_etcd_member_failover(
    tmp_path: Path,
    processes: list[ControlPlaneProcess],
    etcd_cluster: EtcdCluster,  # noqa: F811
) -> None:
    """The member the control plane talks to dies: it moves to the next endpoint;
    requests and watches go on."""
    storage = {"type": "etcd", "endpoints": etcd_cluster.endpoints, "timeout_s": 2}
    cp = ControlPlaneProcess(tmp_path, "cp", storage)
    processes.append(cp.start())
    orders = cp.client("orders")
    # The control plane answers within its storage timeouts (503 while it moves over);
    # on a loaded 2-core machine that can take longer than the client's default 10 s.
    orders.timeout_s = 30.0
    admin = ControlPlaneClient(cp.url, cp.bundle_file.read_text(), admin_token=ADMIN)
    try:
        await orders.join(_token(cp, "orders"), service="orders")
        start = (await admin.watch()).revision
        etcd_cluster.kill(0)  # the first endpoint: the one in use
        reg = None
        async with asyncio.timeout(60):
            while reg is None:
                try:
                    reg = await orders.register("127.0.0.1", 7100)
                except ControlPlaneError as exc:
                    assert exc.status == 503, exc  # storage unavailable while moving over
                    await asyncio.sleep(0.2)
        await _eventually_registered(admin, start, "instances/default/orders/127.0.0.1-7100")
        await orders.heartbeat(reg)
        assert "unreachable; trying the others" in cp.log.read_text()
    finally:
        await orders.aclose()
        await admin.aclose()
