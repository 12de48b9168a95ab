"""The control plane in process (SQLite, real TLS on 127.0.0.1) through the client."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshgate.config.loader import ConfigError
from meshgate.control.client import ControlPlaneClient, ControlPlaneError
from meshgate.control.config import ControlPlaneConfig, parse_control_config
from meshgate.control.csr import key_pem, make_csr, new_key
from meshgate.control.server import ControlPlaneServer
from meshgate.control.service import token_hash
from meshgate.testing import FakeClock

ADMIN = "admin-secret-token"
ADMIN_HASH = "sha256:" + token_hash(ADMIN)


def _read(path: str) -> str:
    return Path(path).read_text()


def _mode(path: str) -> int:
    return Path(path).stat().st_mode


def make_config(tmp_path: Path, **extra: object) -> ControlPlaneConfig:
    data: dict[str, object] = {
        "trust_domain": "mesh.test",
        "listen": {"port": 0},
        "admin_token_hash": ADMIN_HASH,
        "storage": {"type": "sqlite", "path": str(tmp_path / "cp.db")},
        "bundle_file": str(tmp_path / "bundle.pem"),
        "registry": {"default_ttl_s": 30},
    }
    data.update(extra)
    return ControlPlaneConfig.model_validate(data)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ControlPlaneServer]:
    srv = ControlPlaneServer(make_config(tmp_path))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


def url(server: ControlPlaneServer) -> str:
    return f"https://127.0.0.1:{server.port}"


def admin(server: ControlPlaneServer, tmp_path: Path) -> ControlPlaneClient:
    return ControlPlaneClient(url(server), (tmp_path / "bundle.pem").read_text(), admin_token=ADMIN)


async def workload(
    server: ControlPlaneServer, tmp_path: Path, service: str, name: str | None = None
) -> ControlPlaneClient:
    adm = admin(server, tmp_path)
    token = (await adm.request("POST", "/v1/tokens", {"service": service}))["token"]
    await adm.aclose()
    client = ControlPlaneClient(
        url(server), (tmp_path / "bundle.pem").read_text(),
        identity_dir=str(tmp_path / (name or service)),
    )  # fmt: skip
    await client.join(token, service=service)
    return client


async def test_join_renew_register_watch(server: ControlPlaneServer, tmp_path: Path) -> None:
    orders = await workload(server, tmp_path, "orders")
    try:
        assert orders.identity is not None
        assert orders.identity.spiffe_id.uri == "spiffe://mesh.test/ns/default/sa/orders"
        assert orders.identity.not_after - orders.identity.not_before == 24 * 3600 + 300
        assert (_mode(orders.identity.key_file) & 0o777) == 0o600
        first = orders.identity
        renewed = await orders.renew()  # authenticated by the current certificate
        assert renewed.spiffe_id == first.spiffe_id
        assert _read(renewed.cert_file).startswith("-----BEGIN CERTIFICATE-----")
        snap = await orders.watch()
        assert snap.snapshot
        reg = await orders.register("127.0.0.1", 8080, weight=3, metadata={"zone": "a"})
        result = await orders.watch(snap.revision, timeout_s=5)
        assert not result.snapshot
        [event] = result.events
        assert event["type"] == "put" and event["key"] == "instances/default/orders/127.0.0.1-8080"
        assert event["value"]["weight"] == 3 and event["value"]["metadata"] == {"zone": "a"}
        assert event["value"]["spiffe_id"] == "spiffe://mesh.test/ns/default/sa/orders"
        await orders.heartbeat(reg)
        # a long-poll waiting for the next change is woken by the deregistration
        waiter = asyncio.create_task(orders.watch(result.revision, timeout_s=10))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        await orders.deregister(reg)
        got = await asyncio.wait_for(waiter, 5)
        assert [e["type"] for e in got.events] == ["delete"]
        with pytest.raises(ControlPlaneError, match="not registered") as exc:
            await orders.heartbeat(reg)
        assert exc.value.status == 404
        # nothing new: the long-poll ends empty at its timeout
        empty = await orders.watch(got.revision, timeout_s=0.3)
        assert empty.events == [] and empty.revision == got.revision
    finally:
        await orders.aclose()


async def test_token_for_a_cannot_get_identity_of_b(
    server: ControlPlaneServer, tmp_path: Path
) -> None:
    adm = admin(server, tmp_path)
    token = (await adm.request("POST", "/v1/tokens", {"service": "orders"}))["token"]
    client = ControlPlaneClient(
        url(server), (tmp_path / "bundle.pem").read_text(), identity_dir=str(tmp_path / "b")
    )
    try:
        with pytest.raises(
            ControlPlaneError, match=r"entitled to spiffe://mesh\.test/ns/default/sa/orders"
        ) as exc:
            await client.join(token, service="payments")
        assert exc.value.status == 403
        with pytest.raises(ControlPlaneError, match="entitled to"):
            await client.join(token, service="orders", namespace="prod")
        with pytest.raises(ControlPlaneError, match="join token unknown") as exc:
            await client.join("mgjt_not-a-real-token", service="orders")
        assert exc.value.status == 401
        # a workload certificate of orders cannot renew into payments
        await client.join(token, service="orders")
        http = httpx.AsyncClient(verify=client.ssl_context())
        csr = make_csr(new_key(), "spiffe://mesh.test/ns/default/sa/payments")
        resp = await http.post(f"{url(server)}/v1/renew", json={"csr": csr})
        assert resp.status_code == 403 and "entitled to" in resp.json()["error"]
        await http.aclose()
        # tokens are stored hashed: the listing never shows them
        listed = await adm.request("GET", "/v1/tokens")
        assert token not in str(listed) and listed["tokens"][0]["service"] == "orders"
    finally:
        await client.aclose()
        await adm.aclose()


async def test_expired_token_and_auth_errors(server: ControlPlaneServer, tmp_path: Path) -> None:
    adm = admin(server, tmp_path)
    anon = ControlPlaneClient(url(server), _read(str(tmp_path / "bundle.pem")))
    joiner = ControlPlaneClient(
        url(server), _read(str(tmp_path / "bundle.pem")), identity_dir=str(tmp_path / "x")
    )
    raw = httpx.AsyncClient(verify=adm.ssl_context())
    try:
        with pytest.raises(ControlPlaneError, match="admin token") as exc:
            await anon.request("POST", "/v1/tokens", {"service": "orders"})
        assert exc.value.status == 401
        with pytest.raises(ControlPlaneError, match="workload certificate"):
            await adm.request("POST", "/v1/instances", {"address": "127.0.0.1", "port": 1})
        with pytest.raises(ControlPlaneError, match="service 'Bad_Name'"):
            await adm.request("POST", "/v1/tokens", {"service": "Bad_Name"})
        resp = await raw.post(
            f"{url(server)}/v1/tokens",
            content=b"{nope",
            headers={"authorization": f"Bearer {ADMIN}"},
        )
        assert resp.status_code == 400 and "body is not JSON" in resp.json()["error"]
        # a token past its expiry is refused: the control plane's clock moves 2 h on
        clock = FakeClock(server.cp.clock())
        server.cp.clock = clock
        token = await adm.request("POST", "/v1/tokens", {"service": "orders", "ttl_s": 3600})
        clock.advance(7200)
        with pytest.raises(ControlPlaneError, match=f"join token {token['id']} expired") as exc:
            await joiner.join(token["token"], service="orders")
        assert exc.value.status == 401
        assert (await adm.request("GET", "/v1/tokens"))["tokens"][0]["expired"] is True
    finally:
        await raw.aclose()
        await joiner.aclose()
        await anon.aclose()
        await adm.aclose()


async def test_lease_expires_without_heartbeat(tmp_path: Path) -> None:
    srv = ControlPlaneServer(make_config(tmp_path))
    await srv.start()
    client = await workload(srv, tmp_path, "orders")
    try:
        start = (await client.watch()).revision
        await client.register("127.0.0.1", 9000, ttl_s=1)
        seen: list[str] = []
        rev = start
        async with asyncio.timeout(6):
            while "delete" not in seen:
                res = await client.watch(rev, timeout_s=3)
                seen += [e["type"] for e in res.events]
                rev = res.revision
        assert seen == ["put", "delete"]
        assert (await client.request("GET", "/v1/instances"))["instances"] == []
    finally:
        await client.aclose()
        await srv.close()


async def test_policies_versioned_and_validated(server: ControlPlaneServer, tmp_path: Path) -> None:
    adm = admin(server, tmp_path)
    try:
        rev0 = (await adm.watch()).revision
        r1 = await adm.request(
            "PUT",
            "/v1/policies/authz",
            {"name": "orders-admin", "to": "orders", "from": ["payments"],
             "paths": ["/admin/*"], "methods": ["get"], "action": "allow"},
        )  # fmt: skip
        r2 = await adm.request(
            "PUT", "/v1/policies/defaults", {"service": "orders", "default_action": "deny"}
        )
        assert rev0 < r1["revision"] < r2["revision"]
        with pytest.raises(ControlPlaneError, match=r"paths: path 'admin' must start with '/'"):
            await adm.request(
                "PUT", "/v1/policies/authz", {"name": "x", "to": "orders", "from": ["*"],
                                              "paths": ["admin"]},
            )  # fmt: skip
        res = await adm.watch(rev0, timeout_s=1, prefixes=("policies/",))
        assert [e["key"] for e in res.events] == [
            "policies/authz/orders-admin",
            "policies/defaults/orders",
        ]
        assert res.events[0]["value"]["methods"] == ["GET"]
        await adm.request("DELETE", "/v1/policies/authz/orders-admin")
        listed = await adm.request("GET", "/v1/policies")
        assert [p["key"] for p in listed["policies"]] == ["policies/defaults/orders"]
    finally:
        await adm.aclose()


async def test_rotation_keeps_old_workloads_until_overlap_ends(
    server: ControlPlaneServer, tmp_path: Path
) -> None:
    orders = await workload(server, tmp_path, "orders")
    adm = admin(server, tmp_path)
    try:
        old_bundle = (await adm.request("GET", "/v1/bundle"))["roots"]
        info = await adm.request("POST", "/v1/ca/rotate", {"overlap_s": 3600})
        assert [s["issuing"] for s in info["signers"]] == [False, True]
        roots = (await adm.request("GET", "/v1/bundle"))["roots"]
        assert len(roots) == 2 and old_bundle[0] in roots
        # the old certificate still authenticates a renewal; the new one is from the new root
        renewed = await orders.renew()
        assert renewed.not_after > 0
        new_leaf = ssl.PEM_cert_to_DER_cert(_read(renewed.cert_file))
        assert server.cp.authority.verify_peer(new_leaf) == renewed.spiffe_id
        assert orders.bundle_pem == "".join(roots)  # the renewal brought the new bundle
        # the bundle file follows
        assert _read(str(tmp_path / "bundle.pem")) == "".join(roots)
        # a watcher that saw the bundle change trusts both roots from then on
        adm_roots = (await adm.watch(prefixes=("bundle",))).events  # snapshot
        await adm.set_bundle(adm_roots[0]["value"]["roots"])
        assert adm.bundle_pem == "".join(roots)
        assert (await adm.request("GET", "/v1/ca"))["trust_domain"] == "mesh.test"
        # after the overlap the old root leaves the bundle
        real = server.cp.clock
        server.cp.clock = lambda: real() + 3601
        server.cp.authority.clock = server.cp.clock
        assert await server.cp.prune_roots()
        assert len((await adm.request("GET", "/v1/bundle"))["roots"]) == 1
    finally:
        await orders.aclose()
        await adm.aclose()


def test_config_errors_are_located() -> None:
    text = "trust_domain: mesh.test\nadmin_token_hash: sha256:abc\nstorage:\n  type: mysql\n"
    with pytest.raises(ConfigError) as exc:
        parse_control_config(text, "cp.yaml")
    problems = [str(p) for p in exc.value.problems]
    assert any(
        p.startswith("cp.yaml:2: admin_token_hash: admin_token_hash must be") for p in problems
    )
    assert any(p.startswith("cp.yaml:4: storage.type:") for p in problems)


async def test_bad_requests_get_clear_errors(server: ControlPlaneServer, tmp_path: Path) -> None:
    orders = await workload(server, tmp_path, "orders")
    adm = admin(server, tmp_path)
    try:
        cases = [
            (orders, "GET", "/v1/watch", None, {"since": "nan"}, 400, "since must be a number"),
            (orders, "GET", "/v1/watch", None, {"since": "x"}, 400, "since must be a number"),
            (orders, "POST", "/v1/instances", {"address": "127.0.0.1", "port": "80"}, None,
             400, "port must be an integer"),
            (orders, "POST", "/v1/instances", {"address": "127.0.0.1", "port": 80, "id": "a/b"},
             None, 400, "id must be"),
            (orders, "POST", "/v1/instances", {"address": "127.0.0.1", "port": 80, "ttl_s": 0},
             None, 400, "ttl_s must be"),
            (orders, "POST", "/v1/renew", {"csr": 5}, None, 400, "csr (PEM text) is required"),
            (orders, "POST", "/v1/renew", {"csr": "x"}, None, 400, "not a PEM certificate"),
            (adm, "PUT", "/v1/policies/routes", {}, None, 404, "unknown policy kind 'routes'"),
            (adm, "POST", "/v1/ca/rotate", {"overlap_s": "1h"}, None, 400, "overlap_s must be"),
            (adm, "DELETE", "/v1/tokens/nope", None, None, 404, "no token with id"),
            (adm, "GET", "/v1/nothing", None, None, 404, "no such endpoint"),
            (adm, "PATCH", "/v1/tokens", None, None, 405, "method PATCH not allowed"),
        ]  # fmt: skip
        for client, method, path, body, params, status, error in cases:
            with pytest.raises(ControlPlaneError) as exc:
                await client.request(method, path, body, params=params)
            assert (exc.value.status, error in exc.value.message) == (status, True), (
                path,
                exc.value,
            )
        # the server is still fine
        assert (await adm.request("GET", "/healthz"))["status"] == "ok"
    finally:
        await orders.aclose()
        await adm.aclose()


def _external_intermediate() -> tuple[str, str, str]:
    """A corporate root and an intermediate it signed, valid now (PEM cert, key, root)."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corp root")])
    root = (
        x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
        .public_key(root_key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .sign(root_key, hashes.SHA256())
    )  # fmt: skip
    key = new_key()
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mesh intermediate")]))
        .issuer_name(root_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    return inter.public_bytes(pem).decode(), key_pem(key), root.public_bytes(pem).decode()


def _openssl_verify_chain(tmp_path: Path, bundle: str, chain_file: str) -> str:
    chain = _read(chain_file)
    end = "-----END CERTIFICATE-----\n"
    leaf, rest = chain[: chain.index(end) + len(end)], chain[chain.index(end) + len(end) :]
    for name, text in (("b.pem", bundle), ("leaf.pem", leaf), ("rest.pem", rest)):
        (tmp_path / name).write_text(text)
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", "b.pem", "-untrusted", "rest.pem", "leaf.pem"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return out.stdout + out.stderr


async def test_rotation_to_an_external_intermediate(
    server: ControlPlaneServer, tmp_path: Path
) -> None:
    orders = await workload(server, tmp_path, "orders")
    adm = admin(server, tmp_path)
    try:
        inter, key, root = _external_intermediate()
        with pytest.raises(ControlPlaneError, match="does not match") as exc:
            await adm.request(
                "POST", "/v1/ca/rotate",
                {"cert_pem": inter, "key_pem": key_pem(new_key()), "chain_pem": root},
            )  # fmt: skip
        assert exc.value.status == 400
        await adm.request(
            "POST", "/v1/ca/rotate", {"cert_pem": inter, "key_pem": key, "chain_pem": root}
        )
        bundle = (await adm.request("GET", "/v1/bundle"))["roots"]
        assert bundle[0] == root and len(bundle) == 2
        renewed = await orders.renew()  # old root's certificate, mTLS; new one from the corp CA
        assert "OK" in _openssl_verify_chain(tmp_path, root, renewed.cert_file)
        again = await orders.renew()  # the intermediate-issued certificate authenticates too
        assert again.spiffe_id == renewed.spiffe_id
    finally:
        await orders.aclose()
        await adm.aclose()


async def test_watcher_too_far_behind_gets_a_snapshot(tmp_path: Path) -> None:
    srv = ControlPlaneServer(make_config(tmp_path, watch={"history": 2}))
    await srv.start()
    adm = admin(srv, tmp_path)
    try:
        start = (await adm.watch()).revision
        for name in ("a", "b", "c"):
            await adm.request("PUT", "/v1/policies/defaults", {"service": name})
        behind = await adm.watch(start, timeout_s=1)  # 3 changes, 2 kept
        assert behind.snapshot and behind.revision == start + 3
        keys = [i["key"] for i in behind.events]
        assert [k for k in keys if k.startswith("policies/")] == [
            "policies/defaults/a",
            "policies/defaults/b",
            "policies/defaults/c",
        ]
        recent = await adm.watch(start + 1, timeout_s=1)  # within the history: changes only
        assert not recent.snapshot
        assert [e["key"] for e in recent.events] == ["policies/defaults/b", "policies/defaults/c"]
        future = await adm.watch(start + 1000, timeout_s=1)  # a revision this store never had
        assert future.snapshot and future.revision == start + 3
    finally:
        await adm.aclose()
        await srv.close()
