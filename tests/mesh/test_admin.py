"""The sidecar's admin port and the `meshgate sidecar` command."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

import meshgate
from tests.mesh.conftest import TRUST_DOMAIN, Mesh, admin_url, body_of, proxy_client

# Where the tests' meshgate comes from (src/, or build/compiled in the compiled run):
# the subprocesses run the same build.
PACKAGE_ROOT = Path(meshgate.__file__).resolve().parent.parent


def samples(text: str, name: str) -> list[dict[str, str]]:
    """Label sets (with the value under "value") of every sample called ``name``."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out.append({**s.labels, "value": str(s.value)})
    return out


async def test_admin_endpoints(cp_mesh: Mesh) -> None:
    mesh = cp_mesh
    users = await mesh.sidecar("users", await mesh.app("users"))
    orders = await mesh.sidecar("orders", await mesh.app("orders"))
    await mesh.sees(orders, "users")
    async with proxy_client(orders) as c:
        for _ in range(3):
            assert (await c.get("http://users/m")).status_code == 200
        assert (await c.get("http://nobody/m")).status_code == 404

    async with httpx.AsyncClient() as c:
        for car in (users, orders):
            r = await c.get(admin_url(car, "/ready"))
            assert (r.status_code, body_of(r)["status"]) == (200, "ready")
            assert (await c.get(admin_url(car, "/healthz"))).status_code == 200
        assert (await c.get(admin_url(orders, "/nope"))).status_code == 404
        assert (await c.post(admin_url(orders, "/ready"))).status_code == 405

        # /metrics: mesh families by source and destination, gateway families by direction.
        out_text = (await c.get(admin_url(orders, "/metrics"))).text
        in_text = (await c.get(admin_url(users, "/metrics"))).text
        out_mesh = samples(out_text, "meshgate_mesh_requests_total")
        assert {
            "direction": "outbound",
            "source": "orders.default",
            "destination": "users.default",
            "status_class": "2xx",
            "value": "3.0",
        } in out_mesh
        in_mesh = samples(in_text, "meshgate_mesh_requests_total")
        assert {
            "direction": "inbound",
            "source": "orders.default",
            "destination": "users.default",
            "status_class": "2xx",
            "value": "3.0",
        } in in_mesh
        assert samples(out_text, "meshgate_mesh_request_duration_seconds_count")
        gateway = samples(out_text, "meshgate_requests_total")
        assert {s["direction"] for s in gateway} >= {"outbound"}
        assert any(
            s["direction"] == "outbound" and s.get("route") == "users.default" for s in gateway
        )
        assert any(s["direction"] == "inbound" for s in samples(in_text, "meshgate_requests_total"))
        expiry = samples(in_text, "meshgate_mesh_certificate_expiry_timestamp_seconds")
        assert len(expiry) == 1

        # /certs: who this sidecar is and until when.
        info = body_of(await c.get(admin_url(users, "/certs")))
        assert info["identity"] == f"spiffe://{TRUST_DOMAIN}/ns/default/sa/users"
        assert info["expired"] is False and info["control_plane"] is True
        assert info["expires_in_s"] > 3600
        assert info["renew_at"] < info["not_after"]
        assert float(expiry[0]["value"]) == info["not_after"]

        # /clusters: the destinations and their instances (users' inbound port).
        clusters = body_of(await c.get(admin_url(orders, "/clusters")))
        by_name = {cl["name"]: cl for cl in clusters["clusters"]}
        hosts = by_name["users.default"]["hosts"]
        assert [h["key"] for h in hosts] == [f"127.0.0.1:{users.inbound_port}"]
        assert hosts[0]["metadata"]["spiffe_id"] == info["identity"]
        assert clusters["revision"] is not None and clusters["last_sync"] is not None


async def run_cli(*args: str, timeout_s: float = 30) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshgate",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)},
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


async def test_cli_bad_config_says_where(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        "service: orders\n"
        "app: {port: 8080}\n"
        "inbound:\n"
        "  port: 70000\n"
        "static: {cert_file: c.pem, key_file: k.pem, bundle_file: b.pem}\n"
    )
    code, output = await run_cli("sidecar", "-c", str(path))
    assert code == 1
    assert f"{path}:4: inbound.port: " in output


async def test_cli_missing_identity_files_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        "service: orders\n"
        "app: {port: 8080}\n"
        "inbound: {host: 127.0.0.1, port: 0}\n"
        "outbound: {port: 0}\n"
        "admin: {port: 0}\n"
        f"static: {{cert_file: {tmp_path}/none.pem, key_file: k.pem, bundle_file: b.pem}}\n"
    )
    code, output = await run_cli("sidecar", "-c", str(path))
    assert code == 1
    assert "none.pem" in output
