"""DNS discovery end to end: an in-process gateway whose upstream's instances come
from a local DNS server the test runs (tests/upstream/test_dns_discovery.py's
`FakeDns`, dnslib on 127.0.0.1), routing to real test upstreams.

On Linux the whole 127.0.0.0/8 is loopback, so a second upstream listens on
127.0.0.2 with the same port as the first on 127.0.0.1: an A record change moves
traffic from one address to the other.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import GatewayFactory, TestUpstream, eventually, make_config, url
from tests.upstream.test_dns_discovery import FakeDns

NAME = "users.e2e.test"


class UpstreamAt(TestUpstream):
    """The test upstream on a chosen address and port."""

    def __init__(self, name: str, host: str, port: int) -> None:
        super().__init__(name)
        self.host = host
        self.port = port

    async def start(self) -> UpstreamAt:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=1 << 20)
        return self


@pytest.fixture
async def dns_server() -> AsyncIterator[FakeDns]:
    server = await FakeDns().start()
    yield server
    server.stop()


def dns_upstream(discovery: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"name": "main", "connect_timeout_s": 1, "discovery": discovery, **kw}


async def load(
    gw: Any, stop: asyncio.Event, results: list[tuple[float, int, str]], workers: int = 4
) -> None:
    """Requests back to back from ``workers`` keep-alive clients until ``stop``:
    (time answered, status or -1 for a transport error, upstream name)."""

    async def worker() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            while not stop.is_set():
                try:
                    r = await client.get(url(gw, "/who"))
                    who = r.json()["upstream"] if r.status_code == 200 else ""
                    results.append((time.monotonic(), r.status_code, who))
                except httpx.HTTPError:
                    results.append((time.monotonic(), -1, ""))

    await asyncio.gather(*(worker() for _ in range(workers)))


async def test_a_record_change_moves_traffic_with_zero_failed_requests(
    gateway_factory: GatewayFactory, upstream: TestUpstream, dns_server: FakeDns
) -> None:
    other = await UpstreamAt("up2", "127.0.0.2", upstream.port).start()
    try:
        dns_server.set(NAME, "A", ["127.0.0.1"], ttl=1)
        discovery = {
            "type": "dns",
            "name": NAME,
            "port": upstream.port,
            "record": "A",
            "nameservers": [dns_server.nameserver],
        }  # interval_s 30 and min_interval_s 1 (defaults): the 1 s TTL paces it
        gw = await gateway_factory(make_config(0, upstreams=[dns_upstream(discovery)]))
        cluster = gw.runtime.clusters["main"]
        assert [h.key for h in cluster.hosts] == [f"127.0.0.1:{upstream.port}"]

        stop = asyncio.Event()
        results: list[tuple[float, int, str]] = []
        task = asyncio.create_task(load(gw, stop, results))
        try:
            await eventually(lambda: len(upstream.requests) >= 20)
            switched_at = time.monotonic()
            dns_server.set(NAME, "A", ["127.0.0.2"], ttl=1)
            await eventually(lambda: len(other.requests) >= 30, 4)
            moved_after = time.monotonic() - switched_at
            up1_done = len(upstream.requests)
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await task
    finally:
        await other.stop()

    bad = Counter(status for _, status, _ in results if status != 200)
    assert not bad, f"failed requests during the switch: {dict(bad)} of {len(results)}"
    assert moved_after <= 2.5  # within the record's 1 s TTL (plus the resolution)
    assert len(upstream.requests) == up1_done, "127.0.0.1 still took traffic after the change"
    assert [h.key for h in cluster.hosts] == [f"127.0.0.2:{upstream.port}"]
    whos = [who for _, _, who in results]
    assert whos[0] == "up1" and whos[-1] == "up2"
    assert Counter(whos).keys() == {"up1", "up2"}


async def test_srv_records_give_ports_and_weights(
    gateway_factory: GatewayFactory,
    upstream: TestUpstream,
    upstream2: TestUpstream,
    dns_server: FakeDns,
) -> None:
    dns_server.set(
        NAME,
        "SRV",
        [(10, 3, upstream.port, "a.e2e.test"), (10, 1, upstream2.port, "b.e2e.test")],
        ttl=0,
    )
    dns_server.set("a.e2e.test", "A", ["127.0.0.1"], ttl=0)
    dns_server.set("b.e2e.test", "A", ["127.0.0.1"], ttl=0)
    discovery = {
        "type": "dns",
        "name": NAME,
        "record": "SRV",
        "nameservers": [dns_server.nameserver],
        "min_interval_s": 0.1,
    }
    ups = [dns_upstream(discovery, load_balancer="weighted_round_robin")]
    gw = await gateway_factory(make_config(0, upstreams=ups))
    async with httpx.AsyncClient(timeout=5) as client:
        whos = [(await client.get(url(gw, "/who"))).json()["upstream"] for _ in range(40)]
        assert Counter(whos) == {"up1": 30, "up2": 10}  # SRV weights 3:1
        # a lower priority value for b only: a's record is no longer used
        dns_server.set(
            NAME,
            "SRV",
            [(20, 3, upstream.port, "a.e2e.test"), (5, 1, upstream2.port, "b.e2e.test")],
            ttl=0,
        )
        cluster = gw.runtime.clusters["main"]
        await eventually(lambda: [h.port for h in cluster.hosts] == [upstream2.port])
        whos = [(await client.get(url(gw, "/who"))).json()["upstream"] for _ in range(5)]
        assert whos == ["up2"] * 5
