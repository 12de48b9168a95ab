"""The Redis cache store end to end: two `meshgate gateway` processes share one real
redis-server (an entry filled through one is a HIT on the other, a purge through either
admin API empties both), and a Redis that is down or hangs turns into BYPASS, never an
error; once it is back the cache works again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from meshgate.config.loader import parse_config
from meshgate.gateway import Gateway
from tests.e2e.cache_helpers import Origin, cache_config
from tests.e2e.conftest import free_port, to_yaml, url
from tests.redis_server import RedisServer, redis_server_fixture

redis_server = redis_server_fixture()

HOST = {"host": "api.example.com"}  # the same key through both gateways (ports differ)


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    srv = Origin()
    await srv.start()
    yield srv
    await srv.stop()


def redis_cache_config(origin: Origin, server: RedisServer, **redis: Any) -> dict[str, Any]:
    cfg = cache_config(origin.port)
    cfg["cache"] = {"store": "redis", "redis": {"url": server.url, **redis}}
    return cfg


async def test_two_gateways_share_entries_and_purges(
    gateway_process, origin: Origin, redis_server: RedisServer
):
    admin_ports = [free_port(), free_port()]
    gps = []
    for port in admin_ports:
        cfg = redis_cache_config(origin, redis_server, timeout_s=2)
        cfg["admin"] = {"host": "127.0.0.1", "port": port}
        gps.append(await gateway_process(cfg))
    a, b = (gp.port for gp in gps)
    async with httpx.AsyncClient(timeout=10) as client:
        first = await client.get(url(a, "/shared"), headers=HOST)
        second = await client.get(url(b, "/shared"), headers=HOST)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert first.text == second.text == "/shared #1"
        assert origin.count_of("/shared") == 1
        # variants travel too
        vary = "/lang?vary=Accept-Language"
        steps = ((a, "en", "MISS", 1), (b, "en", "HIT", 1), (b, "fr", "MISS", 2))
        for port, lang, expected, n in steps:
            r = await client.get(url(port, vary), headers={**HOST, "accept-language": lang})
            assert r.headers["x-cache"] == expected
            assert r.text == f"/lang #{n} Accept-Language={lang}"
        # a client conditional request on the other gateway: 304 from the shared entry
        tagged = "/tagged?etag=%22t%22"
        await client.get(url(a, tagged), headers=HOST)
        r304 = await client.get(url(b, tagged), headers={**HOST, "if-none-match": '"t"'})
        assert (r304.status_code, r304.headers["x-cache"]) == (304, "HIT")
        # a purge through b's admin API empties the entry a would answer with
        purge = await client.post(
            f"http://127.0.0.1:{admin_ports[1]}/cache/purge",
            json={"prefix": "api.example.com/"},
        )
        # /shared, /tagged, and /lang's index with its 2 variants
        assert (purge.status_code, purge.json()) == (200, {"purged": 5})
        again = await client.get(url(a, "/shared"), headers=HOST)
        assert (again.headers["x-cache"], again.text) == ("MISS", "/shared #2")
        key = await client.post(
            f"http://127.0.0.1:{admin_ports[0]}/cache/purge",
            json={"key": "api.example.com/shared"},
        )
        assert key.json() == {"purged": 1}
        assert (await client.get(url(b, "/shared"), headers=HOST)).headers["x-cache"] == "MISS"
    for gp in gps:
        assert await gp.stop() == 0


@pytest.fixture
async def gateway(origin: Origin, redis_server: RedisServer) -> AsyncIterator[Gateway]:
    cfg = redis_cache_config(origin, redis_server, timeout_s=0.3, connect_timeout_s=0.3)
    cfg["admin"] = {"host": "127.0.0.1", "port": 0}
    config, doc = parse_config(to_yaml(cfg), "e2e.yaml")
    gw = Gateway(config, doc, admin=True)
    await gw.start()
    yield gw
    await gw.stop(drain_timeout_s=1)


async def test_redis_down_or_hanging_means_bypass_not_errors(
    gateway: Gateway, origin: Origin, redis_server: RedisServer
):
    stage = gateway.runtime.routes[0].cache
    assert stage is not None
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(url(gateway, "/r"))).headers["x-cache"] == "MISS"
        assert (await client.get(url(gateway, "/r"))).headers["x-cache"] == "HIT"
        redis_server.kill()
        for _ in range(3):
            r = await client.get(url(gateway, "/r"))
            assert (r.status_code, r.headers["x-cache"]) == (200, "BYPASS")
        purge = await client.post(
            f"http://127.0.0.1:{gateway.admin_port}/cache/purge", json={"prefix": "x"}
        )
        assert purge.status_code == 503
        assert purge.json()["error"].startswith("cache store unavailable")
        redis_server.restart()
        with redis_server.paused():
            start = time.monotonic()
            r = await client.get(url(gateway, "/r"))
            assert (r.status_code, r.headers["x-cache"]) == (200, "BYPASS")
            assert time.monotonic() - start < 2  # the 0.3 s store deadline, not a hang
        # back: an empty Redis (no persistence) fills again
        r = await client.get(url(gateway, "/r"))
        assert (r.headers["x-cache"], r.text) == ("MISS", f"/r #{origin.count_of('/r')}")
        assert (await client.get(url(gateway, "/r"))).headers["x-cache"] == "HIT"
        metrics = (await client.get(f"http://127.0.0.1:{gateway.admin_port}/metrics")).text
    assert stage.stats.store_errors >= 4
    assert 'meshgate_cache_requests_total{result="bypass",route="cached"} 4.0' in metrics
    assert f'meshgate_cache_store_errors_total{{route="cached"}} {stage.stats.store_errors}.0' in (
        metrics
    )
    assert origin.count_of("/r") == 6  # MISS, 3 + 1 BYPASS, MISS


async def test_stale_entries_and_revalidation_through_redis(gateway: Gateway, origin: Origin):
    async with httpx.AsyncClient(timeout=10) as client:
        path = "/rv?cc=max-age%3D1&etag=%22e%22"
        await client.get(url(gateway, path))
        await asyncio.sleep(1.1)
        r = await client.get(url(gateway, path))
        assert (r.headers["x-cache"], r.text) == ("REVALIDATED", "/rv #1")
        assert (await client.get(url(gateway, path))).headers["x-cache"] == "HIT"
    assert origin.count_of("/rv") == 2


async def test_concurrent_misses_cause_one_upstream_request_with_redis(
    gateway: Gateway, origin: Origin
):
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=50)) as client:
        responses = await asyncio.gather(
            *(client.get(url(gateway, "/sf?delay=1")) for _ in range(50))
        )
    assert {(r.status_code, r.text) for r in responses} == {(200, "/sf #1")}
    assert sorted(r.headers["x-cache"] for r in responses) == ["HIT"] * 49 + ["MISS"]
    assert origin.count_of("/sf") == 1
