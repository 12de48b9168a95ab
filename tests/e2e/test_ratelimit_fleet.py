"""Fleet-wide rate limiting: two `meshgate gateway` processes share one real redis-server.

2 x 300 concurrent requests against a 100 per 10 s limit keyed by client IP admit
100 ± 2 in total, every response carries the x-ratelimit-* headers (the same reset,
from the Redis clock, on both gateways). Then Redis is killed while traffic flows:
both gateways fail open (and log one warning), and once Redis is back on the same
port the limit applies again on both.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx

from tests.e2e.conftest import GatewayProcess, make_config, url
from tests.redis_server import RedisServer, redis_server_fixture

redis_server = redis_server_fixture()

LIMIT = 100
WINDOW_S = 10
PER_GATEWAY = 300
CONCURRENCY = 16  # connections per gateway
BURST_BUDGET_S = 3.0  # the burst must end inside the window it started in


def fleet_config(upstream_port: int, server: RedisServer) -> dict[str, Any]:
    return make_config(
        upstream_port,
        listener={"idle_timeout_s": 30},  # port 0: each its own
        routes=[
            {"path": "/warm/*", "upstream": "main"},  # no limit: connection warm-up
            {
                "name": "api",
                "path": "/*",
                "upstream": "main",
                "rate_limits": [
                    {
                        "name": "fleet",
                        "limit": LIMIT,
                        "window_s": WINDOW_S,
                        "key": ["ip"],
                        "backend": "redis",
                    }
                ],
            },
        ],
        rate_limit={
            "redis": {"url": server.url, "timeout_s": 0.5, "connect_timeout_s": 0.5},
        },
    )


async def burst(client: httpx.AsyncClient, port: int, n: int) -> list[httpx.Response]:
    """``n`` requests, at most CONCURRENCY in flight (the client's pool)."""
    return await asyncio.gather(*(client.get(url(port, f"/r{i}")) for i in range(n)))


def clients() -> list[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    return [httpx.AsyncClient(timeout=10, limits=limits) for _ in range(2)]


async def test_two_gateways_share_one_redis_limit_and_fail_open_without_it(
    gateway_process, upstream, redis_server: RedisServer
):
    cfgs = [fleet_config(upstream.port, redis_server) for _ in range(2)]
    # one after the other: the fixture names its config and log files by start order
    gps: list[GatewayProcess] = [await gateway_process(c) for c in cfgs]
    ports = [gp.port for gp in gps]
    assert len(set(ports)) == 2
    a, b = clients()
    async with a, b:
        # open the pooled connections first (the burst then measures the limit, not setup)
        await asyncio.gather(
            *(
                c.get(url(port, f"/warm/{i}"))
                for c, port in ((a, ports[0]), (b, ports[1]))
                for i in range(CONCURRENCY)
            )
        )
        # start right after a window boundary when the current window is too short
        left = WINDOW_S - time.time() % WINDOW_S
        if left < BURST_BUDGET_S + 0.5:
            await asyncio.sleep(left + 0.05)
        start = time.time()
        first, second = await asyncio.gather(
            burst(a, ports[0], PER_GATEWAY), burst(b, ports[1], PER_GATEWAY)
        )
        took = time.time() - start
        assert math.floor(start / WINDOW_S) == math.floor(time.time() / WINDOW_S), (
            f"the burst took {took:.1f} s and crossed a window boundary: too slow a machine"
        )
        responses = first + second
        statuses = [r.status_code for r in responses]
        admitted = statuses.count(200)
        assert LIMIT - 2 <= admitted <= LIMIT + 2, (admitted, took)
        assert statuses.count(429) == len(responses) - admitted, sorted(set(statuses))
        # both gateways admitted some: the limit is shared, not per gateway
        assert [r.status_code for r in first].count(200) > 0
        assert [r.status_code for r in second].count(200) > 0
        end = (math.floor(start / WINDOW_S) + 1) * WINDOW_S
        remaining_admitted = []
        for r in responses:
            assert r.headers["x-ratelimit-limit"] == str(LIMIT), r.headers
            assert int(r.headers["x-ratelimit-reset"]) == end, (r.headers, start)
            remaining = int(r.headers["x-ratelimit-remaining"])
            if r.status_code == 200:
                remaining_admitted.append(remaining)
            else:
                assert remaining == 0
                assert 1 <= int(r.headers["retry-after"]) <= WINDOW_S
                assert r.json()["error"] == "rate limit exceeded"
        # one atomic count: every admission saw a different remaining value
        assert sorted(remaining_admitted) == list(range(LIMIT - admitted, LIMIT))
        assert upstream.paths().count("/warm/0") == 2
        assert len(upstream.requests) == 2 * CONCURRENCY + admitted

        # Redis dies while traffic flows: both gateways let requests through
        redis_server.kill()
        down = await asyncio.gather(burst(a, ports[0], 20), burst(b, ports[1], 20))
        for got in down:
            assert [r.status_code for r in got] == [200] * 20
            assert all("x-ratelimit-limit" not in r.headers for r in got)  # no decision
        for gp in gps:
            log = gp.log()
            assert log.count("redis unavailable") == 1, log[-3000:]  # one per 10 s at most
            assert "letting requests through" in log

        # Redis back on the same port (empty): the limit applies again on both gateways
        redis_server.restart()
        deadline = time.monotonic() + 10
        limited = [False, False]
        while not all(limited) and time.monotonic() < deadline:
            for i, (c, port) in enumerate(((a, ports[0]), (b, ports[1]))):
                got = await burst(c, port, 40)
                limited[i] = limited[i] or any(r.status_code == 429 for r in got)
        assert limited == [True, True]
