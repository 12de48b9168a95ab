"""A gateway upstream whose instances come from the control plane (discovery type
control_plane): registrations and deregistrations reach the gateway via the watch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from meshgate.control.client import ControlPlaneClient
from meshgate.control.config import ControlPlaneConfig
from meshgate.control.server import ControlPlaneServer
from meshgate.control.service import token_hash
from tests.e2e.conftest import GatewayFactory, TestUpstream, eventually, make_config, url

ADMIN = "discovery-admin-token"


@pytest.fixture
async def control_plane(tmp_path: Path) -> AsyncIterator[ControlPlaneServer]:
    config = ControlPlaneConfig.model_validate(
        {
            "trust_domain": "mesh.test",
            "listen": {"port": 0},
            "admin_token_hash": "sha256:" + token_hash(ADMIN),
            "storage": {"type": "sqlite", "path": str(tmp_path / "cp.db")},
            "bundle_file": str(tmp_path / "bundle.pem"),
        }
    )
    server = ControlPlaneServer(config)
    await server.start()
    yield server
    await server.close()


async def test_gateway_follows_control_plane_registrations(
    tmp_path: Path,
    control_plane: ControlPlaneServer,
    gateway_factory: GatewayFactory,
    upstream: TestUpstream,
    upstream2: TestUpstream,
) -> None:
    cp_url = f"https://127.0.0.1:{control_plane.port}"
    bundle = tmp_path / "bundle.pem"
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    admin = ControlPlaneClient(cp_url, bundle.read_text(), admin_token=ADMIN)
    token = (await admin.request("POST", "/v1/tokens", {"service": "orders"}))["token"]
    orders = ControlPlaneClient(cp_url, bundle.read_text(), identity_dir=str(tmp_path / "id"))
    await orders.join(token, service="orders")
    first = await orders.register("127.0.0.1", upstream.port, metadata={"version": "v1"})
    cfg = make_config(upstream2.port)  # the static instance: only a fallback now
    cfg["upstreams"][0]["discovery"] = {
        "type": "control_plane",
        "url": cp_url,
        "ca_bundle_file": str(bundle),
        "admin_token_file": str(tmp_path / "admin.token"),
        "service": "orders",
    }
    gw = await gateway_factory(cfg)
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(4):
                assert (await http.get(url(gw, "/a"))).status_code == 200
            assert len(upstream.requests) == 4 and upstream2.requests == []
            await orders.register("127.0.0.1", upstream2.port)
            await orders.deregister(first)

            async def only_second() -> bool:
                before, before2 = len(upstream.requests), len(upstream2.requests)
                codes = [(await http.get(url(gw, "/b"))).status_code for _ in range(4)]
                return (
                    codes == [200] * 4
                    and len(upstream.requests) == before
                    and len(upstream2.requests) == before2 + 4
                )

            await eventually(only_second, 5)
    finally:
        await orders.aclose()
        await admin.aclose()


def test_control_plane_discovery_config_errors() -> None:
    from meshgate.config.loader import ConfigError, parse_config
    from tests.e2e.conftest import to_yaml

    cfg = make_config(1)
    cfg["upstreams"][0]["discovery"] = {"type": "control_plane", "url": "http://cp:15012",
                                        "service": "orders", "ca_bundle_file": "b.pem",
                                        "admin_token_file": "t", "record": "SRV"}  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        parse_config(to_yaml(cfg), "gw.yaml")
    text = str(exc.value)
    assert "record is for type: dns (this discovery is type: control_plane)" in text
    cfg["upstreams"][0]["discovery"].pop("record")
    with pytest.raises(ConfigError, match="must start with https://"):
        parse_config(to_yaml(cfg), "gw.yaml")
