"""Routes targeting part of an upstream by instance metadata (subset)."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import GatewayFactory, TestUpstream, make_config, url


async def test_subset_routes_only_to_matching_instances(
    upstream: TestUpstream, upstream2: TestUpstream, gateway_factory: GatewayFactory
) -> None:
    cfg = make_config(
        upstream.port,
        upstreams=[
            {
                "name": "users",
                "instances": [
                    {"host": "127.0.0.1", "port": upstream.port, "metadata": {"version": "v1"}},
                    {"host": "127.0.0.1", "port": upstream2.port, "metadata": {"version": "v2"}},
                ],
            }
        ],
        routes=[
            {
                "path": "/users/*",
                "upstream": "users",
                "headers": [{"name": "x-api-version", "exact": "2"}],
                "subset": {"version": "v2"},
            },
            {"path": "/users/*", "upstream": "users", "subset": {"version": "v1"}},
            {"path": "/nobody/*", "upstream": "users", "subset": {"version": "v9"}},
        ],
    )
    gw = await gateway_factory(cfg)
    async with httpx.AsyncClient() as client:
        v2 = {"x-api-version": "2"}
        for _ in range(6):
            assert (await client.get(url(gw, "/users/1"), headers=v2)).is_success
        for _ in range(4):
            assert (await client.get(url(gw, "/users/1"))).is_success
        none = await client.get(url(gw, "/nobody/1"))
    assert len(upstream2.requests) == 6
    assert len(upstream.requests) == 4
    assert none.status_code == 503
    assert none.json()["error"] == "No healthy upstream instances"
