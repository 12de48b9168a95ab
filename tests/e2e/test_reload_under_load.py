"""Hot reload under load and graceful drain under load (issue 8, items 5 and 6).

* 20 concurrent clients while the config is reloaded 20 times: nothing fails, and
  the pooled connections of an unchanged upstream survive the reloads.
* SIGTERM to `meshgate gateway` under load: ``/ready`` turns 503 at once, every
  request the gateway accepted completes with 200, the process exits 0.
* ``POST /drain``: ``/ready`` 503, new connections refused, in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from meshgate.config.loader import parse_config
from meshgate.gateway import Gateway
from tests.e2e.conftest import (
    RawConn,
    TestUpstream,
    eventually,
    free_port,
    make_config,
    to_yaml,
    url,
)
from tests.e2e.test_lifecycle import can_connect, wait_refused

CLIENTS = 20


@pytest.fixture
async def upstream3() -> AsyncIterator[TestUpstream]:
    srv = await TestUpstream("up3").start()
    yield srv
    await srv.stop()


def _instance(port: int, weight: int = 1) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "weight": weight}


def _reload_config(i: int, stable: int, b: int, c: int) -> dict[str, Any]:
    """Version ``i``: 'stable' never changes; 'weighted' changes its weights every
    time; the 'extra' upstream and its route come and go; so does a '/gone' route."""
    upstreams: list[dict[str, Any]] = [
        {"name": "stable", "connect_timeout_s": 1, "instances": [_instance(stable)]},
        {
            "name": "weighted",
            "connect_timeout_s": 1,
            "instances": [_instance(b, 1 + i % 3), _instance(c, 3 - i % 3)],
        },
    ]
    routes: list[dict[str, Any]] = [
        {"path_prefix": "/stable", "upstream": "stable"},
        {"path_prefix": "/w", "upstream": "weighted"},
    ]
    if i % 2:
        upstreams.append({"name": "extra", "connect_timeout_s": 1, "instances": [_instance(c)]})
        routes.append({"path_prefix": "/extra", "upstream": "extra"})
    if i % 3 == 0:
        routes.append({"path_prefix": "/gone", "upstream": "stable"})
    return make_config(stable, upstreams=upstreams, routes=routes)


async def test_reload_under_load_fails_nothing_and_keeps_unchanged_pools(
    upstream: TestUpstream, upstream2: TestUpstream, upstream3: TestUpstream
) -> None:
    ports = (upstream.port, upstream2.port, upstream3.port)
    config, doc = parse_config(to_yaml(_reload_config(0, *ports)), "reload.yaml")
    gw = Gateway(config, doc)
    await gw.start()
    stable = gw.runtime.clusters["stable"]
    stop = asyncio.Event()
    ok = 0
    failures: list[str] = []

    async def client_loop(n: int) -> None:
        nonlocal ok
        paths = ("/stable/a", "/w/b", "/stable/c", "/extra/d")
        i = n
        async with httpx.AsyncClient(timeout=10) as client:
            while not stop.is_set():
                path = paths[i % len(paths)]
                i += 1
                try:
                    r = await client.get(url(gw, path))
                except httpx.HTTPError as exc:
                    failures.append(f"{path}: {type(exc).__name__}: {exc}")
                    continue
                allowed = (200, 404) if path.startswith("/extra") else (200,)
                if r.status_code in allowed:
                    ok += 1
                else:
                    failures.append(f"{path}: {r.status_code} {r.text[:200]}")

    try:
        clients = [asyncio.create_task(client_loop(n)) for n in range(CLIENTS)]
        await eventually(lambda: ok >= 2 * CLIENTS, 5.0)  # warmed up
        for i in range(1, 21):
            await gw.reload(*parse_config(to_yaml(_reload_config(i, *ports)), "reload.yaml"))
            await asyncio.sleep(0.35)
        stop.set()
        await asyncio.gather(*clients)
        assert failures == []
        assert ok > 200
        # the unchanged upstream kept its cluster and pool through 20 reloads
        assert gw.runtime.clusters["stable"] is stable
        # at most one request per client at a time: the pool never needs more than
        # CLIENTS connections (a new pool per reload would open about CLIENTS per reload)
        assert upstream.connections <= CLIENTS + 5, upstream.connections
        assert len(upstream2.requests) > 0 and len(upstream3.requests) > 0
    finally:
        stop.set()
        await gw.stop(drain_timeout_s=1)
    # stop closed the reused cluster too
    assert all(h.pool.closed for h in stable.hosts)


async def test_post_drain_readiness_off_listener_closed_in_flight_finish(
    upstream: TestUpstream,
) -> None:
    config, doc = parse_config(to_yaml(make_config(upstream.port, admin={"port": 0})))
    gw = Gateway(config, doc, admin=True)
    await gw.start()
    try:
        admin = f"http://127.0.0.1:{gw.admin_port}"
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(f"{admin}/ready")).status_code == 200
            pending = asyncio.create_task(client.get(url(gw, "/slow?s=0.8")))
            await eventually(lambda: upstream.paths().count("/slow") == 1)
            idle = await RawConn.open(gw.port)
            await asyncio.sleep(0.05)
            r = await client.post(f"{admin}/drain")
            assert (r.status_code, r.json()) == (200, {"status": "draining"})
            assert (await client.get(f"{admin}/ready")).status_code == 503
            await wait_refused(gw.port)
            assert await idle.is_closed(wait_s=2)
            assert not pending.done()
            done = await pending
            assert (done.status_code, done.text) == (200, "slow done")
            assert done.headers["connection"] == "close"
            assert (await client.get(f"{admin}/ready")).status_code == 503
    finally:
        await gw.stop()


def _req_id(target: str) -> str | None:
    return dict(parse_qsl(urlsplit(target).query)).get("id")


async def test_sigterm_during_load_completes_every_accepted_request(
    gateway_process: Any, upstream: TestUpstream
) -> None:
    admin_port = free_port()
    drain_s = 3.0
    gp = await gateway_process(
        make_config(upstream.port, drain_timeout_s=drain_s, admin={"port": admin_port}),
        workers=1,
    )
    ready_url = f"http://127.0.0.1:{admin_port}/ready"
    completed: set[str] = set()
    failures: list[str] = []
    lost: dict[str, str] = {}  # id -> error: must be requests the gateway never accepted
    stop = asyncio.Event()
    counter = 0

    async def client_loop(n: int) -> None:
        nonlocal counter
        await asyncio.sleep(0.05 * n)  # staggered: some request is always in flight
        # a new connection per request: a request is either refused at connect or
        # sent on a connection the gateway accepted
        async with httpx.AsyncClient(
            timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
        ) as client:
            while not stop.is_set():
                counter += 1
                rid = str(counter)
                try:
                    r = await client.get(url(gp.port, f"/slow?s=0.4&id={rid}"))
                except httpx.ConnectError:
                    await asyncio.sleep(0.02)  # refused: the listener is closed
                    continue
                except httpx.HTTPError as exc:
                    # e.g. reset while queued in the kernel's backlog when the listener closed
                    lost[rid] = f"{type(exc).__name__}: {exc}"
                    continue
                if r.status_code == 200:
                    completed.add(rid)
                else:
                    failures.append(f"{rid}: {r.status_code}")

    async with httpx.AsyncClient(timeout=5) as admin:
        # The admin listener starts just after the data port the fixture waited for.
        await eventually(lambda: can_connect(admin_port), 5.0)
        assert (await admin.get(ready_url)).status_code == 200
        clients = [asyncio.create_task(client_loop(n)) for n in range(10)]
        try:
            await asyncio.sleep(1.0)

            def in_flight() -> int:
                seen = {_req_id(r.target) for r in upstream.requests}
                return len(seen - completed)

            await eventually(lambda: in_flight() >= 3)
            gp.send(signal.SIGTERM)
            signalled = time.monotonic()
            statuses: list[int] = []

            async def not_ready() -> bool:
                try:
                    r = await admin.get(ready_url)
                except httpx.HTTPError:
                    return False
                statuses.append(r.status_code)
                return r.status_code == 503

            await eventually(not_ready, 1.0)
            code = await gp.stop(wait_s=drain_s + 5)
            elapsed = time.monotonic() - signalled
        finally:
            stop.set()
            await asyncio.gather(*clients)
    assert code == 0
    assert elapsed < drain_s + 3
    assert not await can_connect(gp.port)
    assert failures == [], failures[:5]
    accepted = {rid for r in upstream.requests if (rid := _req_id(r.target)) is not None}
    assert len(accepted) >= 10
    assert accepted == completed
    assert not accepted & set(lost), {rid: lost[rid] for rid in accepted & set(lost)}
    assert "drain timeout" not in gp.log()


async def test_post_drain_under_the_cli_exits_0(
    gateway_process: Any, upstream: TestUpstream
) -> None:
    admin_port = free_port()
    gp = await gateway_process(make_config(upstream.port, admin={"port": admin_port}), workers=1)
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(url(gp.port, "/headers"))).status_code == 200
        r = await client.post(f"http://127.0.0.1:{admin_port}/drain")
        assert (r.status_code, r.json()) == (200, {"status": "draining"})
    gp.signalled = True  # no signal: POST /drain stops the process
    assert await gp.stop(wait_s=10) == 0
    assert not await can_connect(gp.port)
