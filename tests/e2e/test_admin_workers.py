"""``meshgate gateway --workers 2``: one admin port answers for every worker process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    GatewayProcess,
    TestUpstream,
    eventually,
    free_port,
    make_config,
    to_yaml,
)

Start = Callable[..., Awaitable[GatewayProcess]]


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


async def fresh_gets(port: int, path: str, n: int) -> list[int]:
    """``n`` GETs, each on a new connection (so the kernel spreads them over workers)."""
    statuses = []
    for _ in range(n):
        async with httpx.AsyncClient(timeout=10) as c:
            statuses.append((await c.get(f"http://127.0.0.1:{port}{path}")).status_code)
    return statuses


async def test_one_admin_port_for_all_workers(
    gateway_process: Start, upstream: TestUpstream, tmp_path: Path
) -> None:
    admin_port = free_port()
    cfg: dict[str, Any] = make_config(
        upstream.port, admin={"host": "127.0.0.1", "port": admin_port}
    )
    gp = await gateway_process(cfg, workers=2)
    admin = f"http://127.0.0.1:{admin_port}"
    async with httpx.AsyncClient(timeout=10) as client:

        async def ready() -> bool:
            try:
                return (await client.get(f"{admin}/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ready, wait_s=15)
        r = await client.get(f"{admin}/ready")
        assert [w["status"] for w in r.json()["workers"]] == [200, 200]

        assert await fresh_gets(gp.port, "/x", 40) == [200] * 40
        r = await client.get(f"{admin}/metrics")
        assert r.status_code == 200
        got = samples(r.text)
        up = {labels["worker"]: v for name, labels, v in got if name == "meshgate_worker_up"}
        assert up == {"0": 1.0, "1": 1.0}
        total = [
            (labels["worker"], v) for name, labels, v in got if name == "meshgate_requests_total"
        ]
        assert sum(v for _, v in total) == 40  # every worker's requests, labelled by worker
        conns = {
            labels["worker"] for name, labels, _ in got if name == "meshgate_client_connections"
        }
        assert conns == {"0", "1"}

        r = await client.get(f"{admin}/upstreams")
        assert r.status_code == 200
        workers = r.json()["workers"]
        assert [w["worker"] for w in workers] == [0, 1]
        assert all(w["upstreams"][0]["name"] == "main" for w in workers)

        # a reload reaches every worker
        path = tmp_path / "gateway0.yaml"
        cfg["routes"] = [
            {"path": "/new/*", "upstream": "main", "response_headers": {"set": {"x-new": "1"}}},
            {"path": "/*", "upstream": "main"},
        ]
        path.write_text(to_yaml(cfg))
        r = await client.post(f"{admin}/reload")
        assert r.status_code == 200, r.text
        assert [w["status"] for w in r.json()["workers"]] == [200, 200]
        for _ in range(20):
            async with httpx.AsyncClient(timeout=10) as c:
                resp = await c.get(f"http://127.0.0.1:{gp.port}/new/a")
            assert (resp.status_code, resp.headers.get("x-new")) == (200, "1")

        # an invalid file is refused by every worker; the running config stays
        path.write_text("routes: [{path: /y, upstream: nowhere}]\n")
        r = await client.post(f"{admin}/reload")
        assert r.status_code == 400
        assert r.json()["problems"]
        assert await fresh_gets(gp.port, "/new/b", 10) == [200] * 10

        # drain: every worker stops, the process exits cleanly
        r = await client.post(f"{admin}/drain")
        assert r.status_code == 200
        assert [w["status"] for w in r.json()["workers"]] == [200]
    assert await gp.proc.wait() == 0
