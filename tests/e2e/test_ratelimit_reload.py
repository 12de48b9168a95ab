"""A reload keeps the local counts of limits whose config did not change."""

from __future__ import annotations

import httpx
import yaml

from meshgate.config.loader import parse_config
from tests.e2e.conftest import GatewayFactory, TestUpstream, make_config, url


def limited(upstream: TestUpstream, limit: int, timeout_s: float) -> dict[str, object]:
    return make_config(
        upstream.port,
        routes=[
            {
                "path": "/*",
                "upstream": "main",
                "timeout_s": timeout_s,
                "rate_limits": [{"name": "w", "limit": limit, "window_s": 3600, "key": ["ip"]}],
            }
        ],
    )


async def test_reload_keeps_counts_of_unchanged_limits_and_resets_changed_ones(
    upstream: TestUpstream, gateway_factory: GatewayFactory
) -> None:
    gw = await gateway_factory(limited(upstream, 3, 5))

    async def statuses(n: int) -> list[int]:
        async with httpx.AsyncClient() as client:
            return [(await client.get(url(gw, "/x"))).status_code for _ in range(n)]

    async def reload(cfg: dict[str, object]) -> None:
        config, doc = parse_config(yaml.safe_dump(cfg), "gw.yaml")
        await gw.reload(config, doc)

    assert await statuses(2) == [200, 200]
    await reload(limited(upstream, 3, 6))  # another key of the route changed, not the limit
    assert await statuses(2) == [200, 429]
    await reload(limited(upstream, 4, 6))  # the limit changed: it starts afresh
    assert await statuses(5) == [200, 200, 200, 200, 429]
