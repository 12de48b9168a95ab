"""Upstreams end to end (docs/upstreams.md): active health checks (HTTP and TCP),
panic mode and the 503 when no instance is healthy, file discovery edited live,
and the balancers as a client sees them, through an in-process gateway and real
upstream servers on 127.0.0.1.

Health transitions are observed in `Cluster.snapshot()`; traffic is then counted
per server over a window of requests sent afterwards. Health probes are told
from traffic by their path (traffic uses /api/...).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import assert_json_error, eventually, make_config, url
from tests.e2e.resilience_helpers import ControlledUpstream, Reply, Seen

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


class Server(ControlledUpstream):
    """A ControlledUpstream whose health path answers ``health_status`` and that can
    stop listening (``pause``: the listening socket closed and every connection
    aborted, as a crashed process) and listen again on the same port (``resume``)."""

    __test__ = False

    def __init__(self, name: str, health_path: str = "/health") -> None:
        super().__init__(name)
        self.health_path = health_path
        self.health_status = 200

    def reply_for(self, seen: Seen, n: int) -> Reply:
        if seen.path == self.health_path:
            return Reply(self.health_status)
        return super().reply_for(seen, n)

    def probes(self) -> list[Seen]:
        return [r for r in self.requests if r.path == self.health_path]

    def traffic(self) -> list[Seen]:
        return [r for r in self.requests if r.path != self.health_path]

    async def pause(self) -> None:
        await self.stop()
        assert self._server is not None
        await self._server.wait_closed()

    async def resume(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def servers() -> AsyncIterator[ServerFactory]:
    """``await servers(name, health_path="/health")`` starts a `Server`."""
    started: list[Server] = []

    async def make(name: str, health_path: str = "/health") -> Server:
        srv = await Server(name, health_path).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        await srv.stop()


def inst(srv: Server, weight: int = 1) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": srv.port, "weight": weight}


def upstream(name: str = "main", *members: Server, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"name": name, "connect_timeout_s": 1}
    if members:
        cfg["instances"] = [inst(s) for s in members]
    cfg.update(extra)
    return cfg


def health(**kw: Any) -> dict[str, Any]:
    """Fast checks: every 0.1 s (± 10 %), 2 failures out, 2 successes back."""
    hc: dict[str, Any] = {
        "interval_s": 0.1,
        "timeout_s": 0.5,
        "unhealthy_threshold": 2,
        "healthy_threshold": 2,
    }
    hc.update(kw)
    return hc


def config(*ups: dict[str, Any], routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return make_config(
        0, upstreams=list(ups), routes=routes or [{"path": "/*", "upstream": "main"}]
    )


def client(n: int = 8) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=n + 4))


def snap(gw: Any, name: str = "main") -> dict[str, Any]:
    return gw.runtime.clusters[name].snapshot()


def host_healthy(gw: Any, srv: Server, name: str = "main") -> bool | None:
    for h in snap(gw, name)["hosts"]:
        if h["key"] == srv.key:
            return h["healthy"]
    return None


def host_keys(gw: Any, name: str = "main") -> list[str]:
    return [h["key"] for h in snap(gw, name)["hosts"]]


def health_state(gw: Any, srv: Server, name: str = "main") -> dict[str, Any]:
    return snap(gw, name)["health"]["hosts"][srv.key]


async def send(c: httpx.AsyncClient, gw: Any, n: int, path: str = "/api/x") -> list[httpx.Response]:
    return [await c.get(url(gw, f"{path}?i={i}")) for i in range(n)]


def counts(*srvs: Server) -> list[int]:
    return [len(s.traffic()) for s in srvs]


async def window(
    c: httpx.AsyncClient, gw: Any, n: int, *srvs: Server
) -> tuple[list[int], list[httpx.Response]]:
    """Send ``n`` requests; return how many each server received meanwhile."""
    before = counts(*srvs)
    rs = await send(c, gw, n)
    return [after - b for after, b in zip(counts(*srvs), before, strict=True)], rs


def write_instances(path: Path, items: Any, *, raw: str | None = None) -> None:
    """Replace the discovery file as editors do: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".swp")
    tmp.write_text(raw if raw is not None else yaml.safe_dump(items))
    os.replace(tmp, path)


# ==========================================================================
# Active health checks
# ==========================================================================


async def test_http_check_takes_instance_out_after_threshold_and_back(gateway_factory, servers):
    a, b, c = [await servers(n) for n in ("a", "b", "c")]
    gw = await gateway_factory(config(upstream("main", a, b, c, health_check=health())))
    async with client() as cl:
        # all healthy: round robin over the three
        await eventually(lambda: all(len(s.probes()) >= 2 for s in (a, b, c)))
        spread, rs = await window(cl, gw, 30, a, b, c)
        assert [r.status_code for r in rs] == [200] * 30
        assert spread == [10, 10, 10]

        # b fails its health path (it still answers traffic): out after 2 failed checks
        b.health_status = 500
        sick_at = time.monotonic()
        await eventually(lambda: host_healthy(gw, b) is False, 5)
        st = health_state(gw, b)
        assert st["healthy"] is False and st["consecutive_failures"] >= 2
        failed = [p for p in b.probes() if p.at >= sick_at and p.at <= st["last_transition"]]
        assert len(failed) >= 2, "out before unhealthy_threshold failed checks"
        # the threshold takes time: two checks about 0.1 s apart
        assert st["last_transition"] - failed[0].at >= 0.1 * 0.9 - 0.01
        assert host_healthy(gw, a) and host_healthy(gw, c)
        spread, rs = await window(cl, gw, 30, a, b, c)
        assert [r.status_code for r in rs] == [200] * 30
        assert spread == [15, 0, 15]
        assert {r.headers["x-upstream"] for r in rs} == {"a", "c"}

        # b recovers: back after 2 passed checks, and takes its share again
        b.health_status = 200
        well_at = time.monotonic()
        await eventually(lambda: host_healthy(gw, b) is True, 5)
        st = health_state(gw, b)
        passed = [p for p in b.probes() if p.at >= well_at and p.at <= st["last_transition"]]
        assert len(passed) >= 2, "back before healthy_threshold passed checks"
        spread, rs = await window(cl, gw, 30, a, b, c)
        assert [r.status_code for r in rs] == [200] * 30
        assert spread == [10, 10, 10]


async def test_tcp_check_server_that_stops_listening(gateway_factory, servers):
    a, b, c = [await servers(n) for n in ("a", "b", "c")]
    gw = await gateway_factory(config(upstream("main", a, b, c, health_check=health(type="tcp"))))
    async with client() as cl:
        await asyncio.sleep(0.3)  # a few rounds of checks
        assert all(host_healthy(gw, s) for s in (a, b, c))
        spread, _ = await window(cl, gw, 30, a, b, c)
        assert spread == [10, 10, 10]

        await c.pause()  # connections refused from now on
        await eventually(lambda: host_healthy(gw, c) is False, 5)
        assert health_state(gw, c)["consecutive_failures"] >= 2
        spread, rs = await window(cl, gw, 30, a, b, c)
        assert [r.status_code for r in rs] == [200] * 30  # nothing tried on c
        assert spread == [15, 15, 0]

        await c.resume()
        await eventually(lambda: host_healthy(gw, c) is True, 5)
        assert health_state(gw, c)["consecutive_successes"] >= 2
        spread, rs = await window(cl, gw, 30, a, b, c)
        assert [r.status_code for r in rs] == [200] * 30
        assert spread == [10, 10, 10]
        # a TCP check only connects (a new connection each time), sends nothing
        opened = a.connections
        await asyncio.sleep(0.35)
        assert a.connections >= opened + 2
    assert [len(s.probes()) for s in (a, b, c)] == [0, 0, 0]
    assert [len(s.requests) for s in (a, b, c)] == [35, 35, 20]  # traffic only


async def test_expected_statuses_host_header_and_default_statuses(gateway_factory, servers):
    # upstream "custom": GET /healthz with Host users.internal, only 204 is healthy
    a, b = await servers("a", "/healthz"), await servers("b", "/healthz")
    a.health_status, b.health_status = 204, 200
    # upstream "plain": default Host (host:port) and default statuses 200-399
    c, d = await servers("c"), await servers("d")
    c.health_status, d.health_status = 302, 404
    custom = health(
        path="/healthz",
        host="users.internal",
        expected_statuses=[204],
        panic_threshold_percent=0,
    )
    gw = await gateway_factory(
        config(
            upstream("custom", a, b, health_check=custom),
            upstream("plain", c, d, health_check=health(panic_threshold_percent=0)),
            routes=[
                {"path": "/api/custom", "upstream": "custom"},
                {"path": "/*", "upstream": "plain"},
            ],
        )
    )
    await eventually(lambda: host_healthy(gw, b, "custom") is False, 5)
    await eventually(lambda: host_healthy(gw, d, "plain") is False, 5)
    assert host_healthy(gw, a, "custom") is True
    assert host_healthy(gw, c, "plain") is True
    async with client() as cl:
        rs = await send(cl, gw, 6, "/api/custom")
        assert [(r.status_code, r.headers["x-upstream"]) for r in rs] == [(200, "a")] * 6
        rs = await send(cl, gw, 6, "/api/plain")
        assert [(r.status_code, r.headers["x-upstream"]) for r in rs] == [(200, "c")] * 6
    # what the probes looked like
    for srv, path, host in (
        (a, "/healthz", "users.internal"),
        (b, "/healthz", "users.internal"),
        (c, "/health", f"127.0.0.1:{c.port}"),
        (d, "/health", f"127.0.0.1:{d.port}"),
    ):
        probes = srv.probes()
        assert len(probes) >= 2, srv.name
        assert {(p.method, p.target, p.headers.get("host")) for p in probes} == {
            ("GET", path, host)
        }, srv.name
    assert b.traffic() == [] and d.traffic() == []


async def test_checks_stop_for_a_removed_instance_and_start_for_a_new_one(
    gateway_factory, servers, tmp_path
):
    a, b, c, d = [await servers(n) for n in ("a", "b", "c", "d")]
    listing = tmp_path / "main.yaml"
    write_instances(listing, [inst(a), inst(b), inst(c)])
    gw = await gateway_factory(
        config(upstream("main", discovery={"path": str(listing)}, health_check=health()))
    )
    await eventually(lambda: all(len(s.probes()) >= 2 for s in (a, b, c)))
    assert d.probes() == []

    write_instances(listing, [inst(a), inst(b), inst(d)])
    await eventually(lambda: host_keys(gw) == [a.key, b.key, d.key], 5)
    assert c.key not in snap(gw)["health"]["hosts"]
    await eventually(lambda: len(d.probes()) >= 2)  # the new one is checked at once
    seen_c = len(c.probes())
    seen_a = len(a.probes())
    await asyncio.sleep(0.6)  # six intervals
    assert len(c.probes()) == seen_c, "checks went on after the instance was removed"
    assert len(a.probes()) >= seen_a + 3  # the others go on
    async with client() as cl:
        spread, rs = await window(cl, gw, 30, a, b, c, d)
    assert [r.status_code for r in rs] == [200] * 30
    assert spread == [10, 10, 0, 10]


# ==========================================================================
# Panic mode
# ==========================================================================


async def test_panic_mode_then_503_when_none_is_healthy(gateway_factory, servers):
    a, b, c = [await servers(n) for n in ("a", "b", "c")]
    gw = await gateway_factory(
        config(upstream("main", a, b, c, health_check=health(panic_threshold_percent=50)))
    )
    async with client() as cl:
        await eventually(lambda: all(len(s.probes()) >= 1 for s in (a, b, c)))
        # one of three out: 67 % healthy, no panic, a takes nothing
        a.health_status = 500
        await eventually(lambda: host_healthy(gw, a) is False, 5)
        spread, _ = await window(cl, gw, 30, a, b, c)
        assert spread == [0, 15, 15]

        # two of three out: 33 % < 50 %: panic, all three take traffic again
        b.health_status = 500
        await eventually(lambda: host_healthy(gw, b) is False, 5)
        assert host_healthy(gw, c) is True
        spread, rs = await window(cl, gw, 30, a, b, c)
        assert [r.status_code for r in rs] == [200] * 30
        assert spread == [10, 10, 10]

        # none healthy: 503 without contacting any instance
        c.health_status = 500
        await eventually(lambda: host_healthy(gw, c) is False, 5)
        before = counts(a, b, c)
        for _ in range(5):
            r = await cl.get(url(gw, "/api/x"))
            data = assert_json_error(r, 503)
            assert data["error"] == "No healthy upstream instances"
        assert counts(a, b, c) == before
        assert snap(gw)["health"]["healthy"] == 0

        # one back: still below the threshold, so panic again: all three
        c.health_status = 200
        await eventually(lambda: host_healthy(gw, c) is True, 5)
        spread, rs = await window(cl, gw, 30, a, b, c)
        assert [r.status_code for r in rs] == [200] * 30
        assert spread == [10, 10, 10]


# ==========================================================================
# File discovery
# ==========================================================================


async def test_discovery_file_used_at_start_instead_of_static_list(
    gateway_factory, servers, tmp_path
):
    fallback, a, b = [await servers(n) for n in ("fallback", "a", "b")]
    listing = tmp_path / "main.json"
    listing.write_text(json.dumps([inst(a), {**inst(b), "metadata": {"zone": "z1"}}]))
    gw = await gateway_factory(config(upstream("main", fallback, discovery={"path": str(listing)})))
    assert host_keys(gw) == [a.key, b.key]
    assert snap(gw)["hosts"][1]["metadata"] == {"zone": "z1"}
    async with client() as cl:
        spread, rs = await window(cl, gw, 10, fallback, a, b)
    assert [r.status_code for r in rs] == [200] * 10
    assert spread == [0, 5, 5]


async def test_discovery_missing_file_at_start_uses_static_instances(
    gateway_factory, servers, tmp_path
):
    fallback, a = await servers("fallback"), await servers("a")
    listing = tmp_path / "later.yaml"
    gw = await gateway_factory(config(upstream("main", fallback, discovery={"path": str(listing)})))
    async with client() as cl:
        spread, _ = await window(cl, gw, 4, fallback, a)
        assert spread == [4, 0]
        await asyncio.sleep(0.3)  # let the watcher settle
        write_instances(listing, [inst(a)])  # the file appears: it now decides
        await eventually(lambda: host_keys(gw) == [a.key], 5)
        spread, _ = await window(cl, gw, 4, fallback, a)
        assert spread == [0, 4]


async def _load(gw: Any, stop: asyncio.Event, statuses: list[int], workers: int = 4) -> None:
    """Requests sent back to back by ``workers`` clients until ``stop``; a retried
    one (``x-meshgate-attempts``) is recorded as -2, a transport error as -1."""

    async def worker(k: int) -> None:
        async with client(1) as cl:
            i = 0
            while not stop.is_set():
                try:
                    r = await cl.get(url(gw, f"/api/load?w={k}&i={i}"))
                    retried = "x-meshgate-attempts" in r.headers
                    statuses.append(-2 if retried and r.status_code == 200 else r.status_code)
                except httpx.HTTPError:
                    statuses.append(-1)
                i += 1

    await asyncio.gather(*(worker(k) for k in range(workers)))


async def test_discovery_edit_switches_traffic_with_zero_failed_requests(
    gateway_factory, servers, tmp_path
):
    a, b, c = [await servers(n) for n in ("a", "b", "c")]
    listing = tmp_path / "main.yaml"
    write_instances(listing, [inst(a)])
    gw = await gateway_factory(config(upstream("main", discovery={"path": str(listing)})))
    await asyncio.sleep(0.3)  # let the watcher settle
    stop = asyncio.Event()
    statuses: list[int] = []
    load = asyncio.create_task(_load(gw, stop, statuses))
    try:
        await eventually(lambda: a.count >= 20)
        write_instances(listing, [inst(b)])  # a -> b
        await eventually(lambda: b.count >= 20, 5)
        a_done = a.count
        write_instances(listing, [inst(b), inst(c)])  # c added next to b
        await eventually(lambda: c.count >= 20, 5)
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await load
    bad = Counter(s for s in statuses if s != 200)
    assert not bad, f"failed (or retried: -2) requests during the changes: {dict(bad)}"
    assert not any(s.abandoned for s in a.requests + b.requests + c.requests)
    assert a.count == a_done, "a still took traffic after it left the file"
    assert host_keys(gw) == [b.key, c.key]
    assert len(statuses) >= 60


async def test_discovery_invalid_edits_keep_the_previous_list(
    gateway_factory, servers, tmp_path, caplog
):
    caplog.set_level(logging.ERROR, logger="meshgate.discovery")
    a, b = await servers("a"), await servers("b")
    listing = tmp_path / "main.yaml"
    write_instances(listing, [inst(a)])
    gw = await gateway_factory(config(upstream("main", discovery={"path": str(listing)})))
    await asyncio.sleep(0.3)  # let the watcher settle
    bad_edits = [
        ("bad yaml", "- {host: 127.0.0.1, port: [\n"),
        ("missing port", yaml.safe_dump([{"host": "127.0.0.1"}])),
        ("port out of range", yaml.safe_dump([{"host": "127.0.0.1", "port": 70000}])),
        ("not a list", yaml.safe_dump({"host": "127.0.0.1", "port": b.port})),
    ]
    async with client() as cl:
        for n, (what, text) in enumerate(bad_edits, 1):
            write_instances(listing, None, raw=text)
            await eventually(
                lambda n=n: (
                    sum("keeping the previous instances" in r.getMessage() for r in caplog.records)
                    >= n
                ),
                5,
            )
            assert host_keys(gw) == [a.key], what
            rs = await send(cl, gw, 3)
            assert [(r.status_code, r.headers["x-upstream"]) for r in rs] == [(200, "a")] * 3, what
        assert str(listing.resolve()) in caplog.records[0].getMessage()
        # the watcher survived: a good edit is still picked up
        write_instances(listing, [inst(b)])
        await eventually(lambda: host_keys(gw) == [b.key], 5)
        rs = await send(cl, gw, 3)
        assert [r.headers["x-upstream"] for r in rs] == ["b"] * 3


async def test_discovery_empty_file_keeps_the_previous_list(gateway_factory, servers, tmp_path):
    """A zero-byte file is what a reader sees in the middle of an in-place save
    (truncate, then write): it must not empty the upstream ("a bad edit never
    empties an upstream", upstream/discovery.py)."""
    a = await servers("a")
    listing = tmp_path / "main.yaml"
    write_instances(listing, [inst(a)])
    gw = await gateway_factory(config(upstream("main", discovery={"path": str(listing)})))
    await asyncio.sleep(0.3)  # let the watcher settle
    listing.write_text("")  # truncated in place
    await asyncio.sleep(0.6)  # well beyond the watcher's reaction time
    async with client() as cl:
        r = await cl.get(url(gw, "/api/x"))
    assert r.status_code == 200, r.text
    assert host_keys(gw) == [a.key]


async def test_discovery_removed_instance_is_drained(gateway_factory, servers, tmp_path):
    a, b = await servers("a"), await servers("b")
    listing = tmp_path / "main.yaml"
    write_instances(listing, [inst(a)])
    gw = await gateway_factory(config(upstream("main", discovery={"path": str(listing)})))
    await asyncio.sleep(0.3)  # let the watcher settle
    async with client() as cl:
        slow = asyncio.create_task(cl.get(url(gw, "/api/slow?delay=1.0")))
        await eventually(lambda: a.in_flight == 1)
        write_instances(listing, [inst(b)])
        await eventually(lambda: host_keys(gw) == [b.key], 5)
        assert not slow.done()
        rs = await send(cl, gw, 5)
        assert [(r.status_code, r.headers["x-upstream"]) for r in rs] == [(200, "b")] * 5
        r = await slow  # the request in flight to a finishes normally
        assert (r.status_code, r.text, r.headers["x-upstream"]) == (200, "a 200", "a")
        assert not a.requests[-1].abandoned
        assert a.count == 1
        await eventually(lambda: a.open_connections == 0)  # its connection closed after


async def test_discovery_weight_change_keeps_in_flight_counts_right(
    gateway_factory, servers, tmp_path
):
    """A weight change keeps the instance (same pool); a request in flight across
    the change must still be counted out when it ends."""
    a, b = await servers("a"), await servers("b")
    listing = tmp_path / "main.yaml"
    write_instances(listing, [inst(a), inst(b)])
    gw = await gateway_factory(
        config(
            upstream("main", discovery={"path": str(listing)}, load_balancer="least_connections")
        )
    )
    await asyncio.sleep(0.3)  # let the watcher settle
    async with client() as cl:
        slow = asyncio.create_task(cl.get(url(gw, "/api/slow?delay=0.6")))
        await eventually(lambda: a.in_flight == 1 or b.in_flight == 1)
        slow_srv, other = (a, b) if a.in_flight else (b, a)
        write_instances(listing, [inst(a, 2), inst(b, 2)])
        await eventually(lambda: [h["weight"] for h in snap(gw)["hosts"]] == [2, 2], 5)
        r = await slow
        assert r.status_code == 200
        await asyncio.sleep(0.05)
        spread, rs = await window(cl, gw, 10, slow_srv, other)
        assert [r.status_code for r in rs] == [200] * 10
    active = {h["key"]: h["active_requests"] for h in snap(gw)["hosts"]}
    assert active == {a.key: 0, b.key: 0}, (
        f"requests in flight after all ended: {active}; then 10 requests went "
        f"{spread} to [{slow_srv.name} (had the slow request), {other.name}]"
    )
    assert spread == [5, 5], f"least_connections with nothing in flight: {spread}"


# ==========================================================================
# Balancers through the gateway
# ==========================================================================


async def test_weighted_round_robin_5_1_1_exact_order(gateway_factory, servers):
    a, b, c = [await servers(n) for n in ("a", "b", "c")]
    up = upstream("main", load_balancer="weighted_round_robin")
    up["instances"] = [inst(a, 5), inst(b, 1), inst(c, 1)]
    gw = await gateway_factory(config(up))
    async with client() as cl:
        rs = await send(cl, gw, 14)
    assert "".join(r.headers["x-upstream"] for r in rs) == "aabacaa" * 2
    assert counts(a, b, c) == [10, 2, 2]


async def test_consistent_hash_by_header(gateway_factory, servers, tmp_path):
    a, b, c = [await servers(n) for n in ("a", "b", "c")]
    listing = tmp_path / "main.yaml"
    write_instances(listing, [inst(a), inst(b), inst(c)])
    gw = await gateway_factory(
        config(
            upstream(
                "main",
                discovery={"path": str(listing)},
                load_balancer="consistent_hash",
                hash_key={"header": "X-User"},
            )
        )
    )
    users = [f"user-{i}" for i in range(60)]

    async def where(cl: httpx.AsyncClient, user: str) -> str:
        r = await cl.get(url(gw, "/api/x"), headers={"x-user": user})
        assert r.status_code == 200
        return r.headers["x-upstream"]

    async with client() as cl:
        home = {u: await where(cl, u) for u in users}
        # the same user always reaches the same server (50 requests, 5 users interleaved)
        for i in range(50):
            u = users[i % 5]
            assert await where(cl, u) == home[u], u
        # different users spread over the three
        per_server = Counter(home.values())
        assert set(per_server) == {"a", "b", "c"}
        assert min(per_server.values()) >= 8, per_server
        # requests without the header are spread at random
        rs = await send(cl, gw, 30)
        assert len({r.headers["x-upstream"] for r in rs}) >= 2

        await asyncio.sleep(0.3)  # let the watcher settle
        write_instances(listing, [inst(a), inst(b)])  # c leaves
        await eventually(lambda: host_keys(gw) == [a.key, b.key], 5)
        after = {u: await where(cl, u) for u in users}
    moved = {u for u in users if after[u] != home[u]}
    assert moved == {u for u in users if home[u] == "c"}, "only c's users may move"
    assert {after[u] for u in moved} == {"a", "b"}  # c's users spread over the rest


async def test_least_connections_slow_server_gets_fewer(gateway_factory, servers):
    slow, b, c = [await servers(n) for n in ("slow", "b", "c")]
    slow.behave = lambda seen, n: Reply(200, delay_s=0.2)
    gw = await gateway_factory(
        config(upstream("main", slow, b, c, load_balancer="least_connections"))
    )
    per_worker = 12

    async def worker(k: int) -> None:
        async with client(1) as cl:
            for i in range(per_worker):
                r = await cl.get(url(gw, f"/api/lc?w={k}&i={i}"))
                assert r.status_code == 200

    await asyncio.gather(*(worker(k) for k in range(6)))
    n_slow, n_b, n_c = counts(slow, b, c)
    assert n_slow + n_b + n_c == 6 * per_worker
    # round robin would give each a third (24); the slow one holds its requests
    assert n_slow <= 12 and n_slow < n_b and n_slow < n_c, (n_slow, n_b, n_c)
    assert slow.max_in_flight <= 3
