"""Start, reload, graceful drain and worker processes (in-process and `meshgate gateway`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import httpx
import psutil
import pytest

from meshgate.config.loader import ConfigError, parse_config
from meshgate.gateway import Gateway
from tests.e2e.conftest import (
    RawConn,
    eventually,
    free_port,
    make_config,
    to_yaml,
    url,
)


async def can_connect(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    except (OSError, TimeoutError):
        return False
    writer.transport.abort()
    return True


async def wait_refused(port: int, wait_s: float = 3.0) -> None:
    async def refused() -> bool:
        return not await can_connect(port)

    await eventually(refused, wait_s)


# --- in-process ------------------------------------------------------------------


async def test_async_with_gateway_serves_and_stops(upstream):
    config, doc = parse_config(to_yaml(make_config(upstream.port)))
    async with Gateway(config, doc) as gw:
        port = gw.port
        assert port > 0
        async with httpx.AsyncClient() as client:
            assert (await client.get(url(gw, "/headers"))).status_code == 200
    assert not await can_connect(port)


async def test_start_fails_cleanly_when_port_is_taken(upstream):
    config, _ = parse_config(to_yaml(make_config(upstream.port, listener={"port": upstream.port})))
    gw = Gateway(config)
    with pytest.raises(OSError):
        await gw.start()


async def test_stop_drains_in_flight_request(gateway, upstream):
    async with httpx.AsyncClient() as client:
        pending = asyncio.create_task(client.get(url(gateway, "/slow?s=0.5")))
        await eventually(lambda: len(upstream.requests) == 1)
        idle = await RawConn.open(gateway.port)  # an idle keep-alive client
        await asyncio.sleep(0.05)
        port = gateway.port
        stopping = asyncio.create_task(gateway.stop(drain_timeout_s=5))
        await wait_refused(port)
        assert not pending.done()  # still in flight while new connections are refused
        assert await idle.is_closed(wait_s=2)  # idle connections are closed at once
        r = await pending
        await stopping
    assert (r.status_code, r.text) == (200, "slow done")
    assert r.headers["connection"] == "close"


async def test_drain_timeout_aborts_requests_that_take_too_long(gateway, upstream):
    async with httpx.AsyncClient() as client:
        pending = asyncio.create_task(client.get(url(gateway, "/slow?s=10")))
        await eventually(lambda: len(upstream.requests) == 1)
        await gateway.stop(drain_timeout_s=0.3)
        with pytest.raises(httpx.HTTPError):
            await pending
    await eventually(lambda: upstream.requests[0].abandoned)


async def test_reload_swaps_routes_and_keeps_serving(gateway_factory, upstream, upstream2):
    gw = await gateway_factory(routes=[{"path": "/old/*", "upstream": "main"}])
    new_cfg = make_config(
        upstream.port,
        upstreams=[
            {"name": "main", "instances": [{"host": "127.0.0.1", "port": upstream.port}]},
            {"name": "second", "instances": [{"host": "127.0.0.1", "port": upstream2.port}]},
        ],
        routes=[{"path": "/new/*", "upstream": "second"}],
    )
    async with httpx.AsyncClient() as client:
        in_flight = asyncio.create_task(client.get(url(gw, "/old/slow?s=0.3")))
        await eventually(lambda: len(upstream.requests) == 1)
        config, doc = parse_config(to_yaml(new_cfg))
        await gw.reload(config, doc)
        assert (await in_flight).status_code == 200  # served by the old runtime
        assert (await client.get(url(gw, "/old/x"))).status_code == 404
        r = await client.get(url(gw, "/new/x"))
        assert r.status_code == 200
        assert r.json()["upstream"] == "up2"
        bad = make_config(upstream.port, middleware=["tests.e2e.nope:fn"])
        config, doc = parse_config(to_yaml(bad))
        with pytest.raises(ConfigError):
            await gw.reload(config, doc)
        assert (await client.get(url(gw, "/new/y"))).status_code == 200  # old config kept


# --- `meshgate gateway` subprocess --------------------------------------------------


async def test_sigterm_drains_in_flight_request_and_exits_0(gateway_process, upstream):
    gp = await gateway_process(make_config(upstream.port), workers=1)
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(url(gp.port, "/headers"))).status_code == 200
        pending = asyncio.create_task(client.get(url(gp.port, "/slow?s=1.5")))
        await eventually(lambda: upstream.paths().count("/slow") == 1)
        gp.send(signal.SIGTERM)
        await wait_refused(gp.port)
        assert not pending.done()
        r = await pending
    assert (r.status_code, r.text) == (200, "slow done")
    assert r.headers["connection"] == "close"
    assert await gp.stop() == 0
    assert not await can_connect(gp.port)
    assert "draining" in gp.log()


async def test_sigint_exits_0(gateway_process, upstream):
    gp = await gateway_process(make_config(upstream.port), workers=1)
    async with httpx.AsyncClient() as client:
        assert (await client.get(url(gp.port, "/headers"))).status_code == 200
    assert await gp.stop(signal.SIGINT) == 0


async def test_sigterm_drain_timeout_still_exits_0(gateway_process, upstream):
    gp = await gateway_process(make_config(upstream.port, drain_timeout_s=0.3), workers=1)
    async with httpx.AsyncClient(timeout=10) as client:
        pending = asyncio.create_task(client.get(url(gp.port, "/slow?s=10")))
        await eventually(lambda: len(upstream.requests) == 1)
        gp.send(signal.SIGTERM)
        with pytest.raises(httpx.HTTPError):
            await pending
    assert await gp.stop() == 0
    assert "drain timeout" in gp.log()


async def test_two_workers_both_serve_and_drain_on_sigterm(gateway_process, upstream):
    port = free_port()
    cfg = make_config(upstream.port, listener={"port": port})
    gp = await gateway_process(cfg, workers=2)
    assert gp.ports == [port, port]
    parent = psutil.Process(gp.proc.pid)
    workers = parent.children()
    assert len(workers) == 2
    # Fresh client connections are spread by the kernel (SO_REUSEPORT); each worker
    # that served keeps a pooled connection to the upstream.
    for i in range(40):
        async with httpx.AsyncClient() as client:
            r = await client.get(url(port, f"/headers?i={i}"))
            assert r.status_code == 200
    serving = set()
    for w in workers:
        for c in w.net_connections(kind="tcp"):
            if c.raddr and c.raddr.port == upstream.port and c.status == psutil.CONN_ESTABLISHED:
                serving.add(w.pid)
    assert serving == {w.pid for w in workers}
    async with httpx.AsyncClient(timeout=10) as client:
        pending = asyncio.create_task(client.get(url(port, "/slow?s=1")))
        await eventually(lambda: upstream.paths().count("/slow") == 1)
        gp.send(signal.SIGTERM)
        r = await pending
    assert (r.status_code, r.text) == (200, "slow done")
    assert await gp.stop() == 0
    for w in workers:
        assert not w.is_running() or w.status() == psutil.STATUS_ZOMBIE
    assert not await can_connect(port)


async def test_crashed_worker_is_restarted(gateway_process, upstream):
    port = free_port()
    gp = await gateway_process(make_config(upstream.port, listener={"port": port}), workers=2)
    parent = psutil.Process(gp.proc.pid)
    first = {w.pid for w in parent.children()}
    victim = sorted(first)[0]
    psutil.Process(victim).kill()

    def replaced() -> bool:
        pids = set()
        for w in parent.children():
            with contextlib.suppress(psutil.Error):
                if w.status() != psutil.STATUS_ZOMBIE:
                    pids.add(w.pid)
        return len(pids) == 2 and victim not in pids

    await eventually(replaced, wait_s=10)
    await gp.wait_listening(count=3)
    for _ in range(10):
        async with httpx.AsyncClient() as client:
            assert (await client.get(url(port, "/headers"))).status_code == 200
    assert await gp.stop() == 0
    assert "restarting" in gp.log()


async def test_workers_share_the_port_when_port_is_0(gateway_process, upstream):
    gp = await gateway_process(make_config(upstream.port), workers=2)
    assert len(set(gp.ports)) == 1, gp.ports


async def test_sighup_reloads_config_and_refuses_a_bad_one(gateway_process, upstream, tmp_path):
    cfg = make_config(upstream.port, routes=[{"path": "/v1/*", "upstream": "main"}])
    gp = await gateway_process(cfg, workers=1)
    cfg_path = tmp_path / "gateway0.yaml"
    assert cfg_path.exists()
    async with httpx.AsyncClient() as client:
        assert (await client.get(url(gp.port, "/v1/a"))).status_code == 200
        assert (await client.get(url(gp.port, "/v2/a"))).status_code == 404

        cfg["routes"] = [{"path": "/v2/*", "upstream": "main"}]
        cfg_path.write_text(to_yaml(cfg))
        gp.proc.send_signal(signal.SIGHUP)

        async def status(path: str) -> int:
            with contextlib.suppress(httpx.HTTPError):
                return (await client.get(url(gp.port, path))).status_code
            return 0

        async def reloaded() -> bool:
            return await status("/v2/a") == 200

        await eventually(reloaded, wait_s=5)
        assert await status("/v1/a") == 404

        cfg_path.write_text("routes:\n  - path: /v3/*\n    upstream: missing\n")
        gp.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: "reload refused" in gp.log(), wait_s=5)
        assert await status("/v2/a") == 200
        assert await status("/v3/a") == 404
    assert "routes[0].upstream" in gp.log()
    assert await gp.stop() == 0


async def test_watch_reloads_when_the_file_changes(gateway_process, upstream, tmp_path):
    cfg = make_config(upstream.port, routes=[{"path": "/v1/*", "upstream": "main"}])
    gp = await gateway_process(cfg, workers=1, extra=("--watch",))
    cfg_path = tmp_path / "gateway0.yaml"
    async with httpx.AsyncClient() as client:

        async def status(path: str) -> int:
            with contextlib.suppress(httpx.HTTPError):
                return (await client.get(url(gp.port, path))).status_code
            return 0

        assert await status("/v1/a") == 200
        cfg["routes"] = [{"path": "/v2/*", "upstream": "main"}]
        # Replace the file the way editors do: write aside, rename over it.
        aside = tmp_path / "gateway0.yaml.tmp"
        aside.write_text(to_yaml(cfg))
        aside.replace(cfg_path)

        async def v2_served() -> bool:
            return await status("/v2/a") == 200

        await eventually(v2_served, wait_s=10)
        assert await status("/v1/a") == 404

        cfg_path.write_text("routes: [{path: /v3/*, upstream: missing}]\n")  # invalid: refused
        await eventually(lambda: "reload refused" in gp.log(), wait_s=10)
        assert await status("/v2/a") == 200
    assert await gp.stop() == 0
