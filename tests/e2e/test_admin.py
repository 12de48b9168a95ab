"""The admin API on its own listener: health, readiness, metrics, config, operations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshgate.auth.apikeys import hash_key
from meshgate.config.loader import load_config
from meshgate.gateway import Gateway
from tests.e2e.conftest import TestUpstream, free_port, make_config, to_yaml, url

ADMIN = {"host": "127.0.0.1", "port": 0}
HOUR = 3600

AdminFactory = Callable[..., Awaitable[Gateway]]


def admin_config(upstream_port: int, **kwargs: Any) -> dict[str, Any]:
    admin = {**ADMIN, **kwargs.pop("admin", {})}
    return make_config(upstream_port, admin=admin, **kwargs)


@pytest.fixture
async def admin_gateway(upstream: TestUpstream, tmp_path: Path) -> AsyncIterator[AdminFactory]:
    """``await make(cfg=None, **make_config_kwargs)``: a gateway started from a file
    (``tmp_path/gateway.yaml``) with its admin listener on a free port."""
    started: list[Gateway] = []

    async def make(cfg: dict[str, Any] | None = None, **kwargs: Any) -> Gateway:
        if cfg is None:
            cfg = admin_config(upstream.port, **kwargs)
        path = tmp_path / "gateway.yaml"
        path.write_text(to_yaml(cfg))
        config, doc = load_config(path)
        gw = Gateway(config, doc, config_path=path, admin=True)
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.stop(drain_timeout_s=1)


def admin_url(gw: Gateway, path: str) -> str:
    assert gw.admin_port is not None
    return f"http://127.0.0.1:{gw.admin_port}{path}"


async def scrape(
    client: httpx.AsyncClient, gw: Gateway
) -> dict[tuple[str, tuple[Any, ...]], float]:
    """Every sample of /metrics, by name and sorted labels."""
    r = await client.get(admin_url(gw, "/metrics"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, tuple[Any, ...]], float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def sample(samples: dict[tuple[str, tuple[Any, ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_admin_is_off_by_default_and_not_on_the_data_port(
    gateway: Gateway, upstream: TestUpstream
) -> None:
    assert gateway.admin_port is None
    async with httpx.AsyncClient() as client:
        assert (await client.get(url(gateway, "/metrics"))).status_code == 200
    assert upstream.paths() == ["/metrics"]  # proxied like any path


async def test_healthz_ready_drain_and_unknown_paths(admin_gateway: AdminFactory) -> None:
    gw = await admin_gateway()
    assert gw.admin_port not in (None, gw.port)
    async with httpx.AsyncClient() as client:
        r = await client.get(admin_url(gw, "/healthz"))
        assert (r.status_code, r.json()) == (200, {"status": "ok"})
        r = await client.get(admin_url(gw, "/ready"))
        assert (r.status_code, r.json()) == (200, {"status": "ready"})
        r = await client.get(admin_url(gw, "/nope"))
        assert r.status_code == 404
        assert r.json()["error"] == "not found"
        r = await client.post(admin_url(gw, "/healthz"))
        assert r.status_code == 405
        assert r.headers["allow"] == "GET"
        r = await client.get(admin_url(gw, "/drain"))
        assert r.status_code == 405
        r = await client.post(admin_url(gw, "/drain"))
        assert (r.status_code, r.json()) == (200, {"status": "draining"})
        r = await client.get(admin_url(gw, "/ready"))
        assert (r.status_code, r.json()) == (503, {"status": "draining"})
        assert (await client.get(admin_url(gw, "/healthz"))).status_code == 200
        # draining also closes the data listener (tests/e2e/test_reload_under_load.py)
        with pytest.raises(httpx.ConnectError):
            await client.get(url(gw, "/x"))


async def test_token_required_when_configured(admin_gateway: AdminFactory) -> None:
    gw = await admin_gateway(admin={"token": "s3cret-token"})
    async with httpx.AsyncClient() as client:
        for path in ("/healthz", "/metrics", "/config", "/nope"):
            r = await client.get(admin_url(gw, path))
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == "Bearer"
        bad = {"authorization": "Bearer wrong"}
        assert (await client.get(admin_url(gw, "/healthz"), headers=bad)).status_code == 401
        assert (await client.post(admin_url(gw, "/drain"), headers=bad)).status_code == 401
        assert not gw.draining
        good = {"authorization": "Bearer s3cret-token"}
        assert (await client.get(admin_url(gw, "/healthz"), headers=good)).status_code == 200
        r = await client.get(admin_url(gw, "/config"), headers=good)
        assert r.status_code == 200
        assert r.json()["admin"]["token"] == "[redacted]"


async def test_metrics_count_requests_exactly(
    admin_gateway: AdminFactory, upstream: TestUpstream
) -> None:
    routes = [
        {"name": "a", "path_prefix": "/a", "upstream": "main", "methods": ["GET", "POST"]},
        {"name": "b", "path_prefix": "/status", "upstream": "main"},
    ]
    gw = await admin_gateway(routes=routes)
    async with httpx.AsyncClient() as client:
        before = await scrape(client, gw)
        assert (
            sample(before, "meshgate_requests_total", route="a", method="GET", status_class="2xx")
            == 0
        )
        for _ in range(5):
            assert (await client.get(url(gw, "/a/x"))).status_code == 200
        for _ in range(2):
            assert (await client.post(url(gw, "/a/y"), content=b"hi")).status_code == 200
        assert (await client.get(url(gw, "/status/503"))).status_code == 503
        assert (await client.get(url(gw, "/nowhere"))).status_code == 404
        assert (await client.delete(url(gw, "/a/x"))).status_code == 405
        s = await scrape(client, gw)
        assert sample(s, "meshgate_client_connections") >= 1
    total = "meshgate_requests_total"
    assert sample(s, total, route="a", method="GET", status_class="2xx") == 5
    assert sample(s, total, route="a", method="POST", status_class="2xx") == 2
    assert sample(s, total, route="b", method="GET", status_class="5xx") == 1
    assert sample(s, total, route="(none)", method="GET", status_class="4xx") == 1
    assert sample(s, total, route="(none)", method="DELETE", status_class="4xx") == 1
    assert sum(v for (name, _), v in s.items() if name == total) == 10
    hist = "meshgate_request_duration_seconds"
    assert sample(s, f"{hist}_count", route="a") == 7
    assert sample(s, f"{hist}_bucket", route="a", le="+Inf") == 7
    assert sample(s, f"{hist}_count", route="b") == 1
    assert 0 < sample(s, f"{hist}_sum", route="a") < 7 * 5
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in s.items()
        if name == f"{hist}_bucket" and dict(labels)["route"] == "a"
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)  # cumulative
    host = f"127.0.0.1:{upstream.port}"
    assert sample(s, "meshgate_upstream_hosts_healthy", upstream="main", host=host) == 1
    assert sample(s, "meshgate_upstream_active_requests", upstream="main", host=host) == 0
    assert ("meshgate_retry_budget_exhausted_total", (("upstream", "main"),)) in s
    assert sample(s, "meshgate_overflow_total", upstream="main", kind="requests") == 0


async def test_ratelimits_metrics_and_endpoint(admin_gateway: AdminFactory) -> None:
    limit = {"name": "per-ip", "limit": 3, "window_s": HOUR, "key": ["ip"]}
    routes = [{"name": "r", "path": "/*", "upstream": "main", "rate_limits": [limit]}]
    gw = await admin_gateway(routes=routes)
    async with httpx.AsyncClient() as client:
        statuses = [(await client.get(url(gw, "/x"))).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        r = await client.get(admin_url(gw, "/ratelimits"))
        s = await scrape(client, gw)
    assert r.status_code == 200
    assert r.json() == {
        "routes": [
            {
                "route": "r",
                "limits": [
                    {
                        "label": "per-ip",
                        "allowed": 3,
                        "limited": 2,
                        "skipped": 0,
                        "backend_errors": 0,
                    }
                ],
            }
        ]
    }
    name = "meshgate_ratelimit_decisions_total"
    assert sample(s, name, route="r", limit="per-ip", decision="allowed") == 3
    assert sample(s, name, route="r", limit="per-ip", decision="limited") == 2
    assert sample(s, name, route="r", limit="per-ip", decision="skipped") == 0
    assert sample(s, "meshgate_requests_total", route="r", method="GET", status_class="4xx") == 2


async def test_upstream_attempt_metrics_errors_retries_and_pool(
    admin_gateway: AdminFactory, upstream: TestUpstream
) -> None:
    live = {"host": "127.0.0.1", "port": upstream.port}
    dead = {"host": "127.0.0.1", "port": free_port()}
    upstreams = [
        {"name": "main", "connect_timeout_s": 1, "instances": [live]},
        {"name": "mixed", "connect_timeout_s": 1, "instances": [dead, live]},
    ]
    retry = {"max_retries": 1, "backoff_base_s": 0.001, "backoff_max_s": 0.002}
    routes = [
        {"name": "a", "path_prefix": "/a", "upstream": "main"},
        {"name": "st", "path_prefix": "/status", "upstream": "main", "retry": {"max_retries": 0}},
        {"name": "re", "path_prefix": "/retry", "upstream": "mixed", "retry": retry},
    ]
    gw = await admin_gateway(routes=routes, upstreams=upstreams)
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            assert (await client.get(url(gw, "/a/x"))).status_code == 200
        assert (await client.get(url(gw, "/status/503"))).status_code == 503
        for _ in range(2):  # dead instance first (round robin), then the live one
            r = await client.get(url(gw, "/retry/x"))
            assert r.status_code == 200
        s = await scrape(client, gw)
    hist = "meshgate_upstream_request_duration_seconds"
    assert sample(s, f"{hist}_count", upstream="main") == 4
    assert sample(s, f"{hist}_bucket", upstream="main", le="+Inf") == 4
    assert 0 < sample(s, f"{hist}_sum", upstream="main") < 4
    assert sample(s, f"{hist}_count", upstream="mixed") == 4  # 2 failed + 2 answered
    errors = "meshgate_upstream_errors_total"
    assert sample(s, errors, upstream="main", kind="5xx") == 1
    assert sample(s, errors, upstream="mixed", kind="connect-failure") == 2
    assert sum(v for (name, _), v in s.items() if name == errors) == 3
    assert sample(s, "meshgate_upstream_retries_total", upstream="mixed") == 2
    assert sample(s, "meshgate_upstream_retries_total", upstream="main") == 0
    pool = "meshgate_upstream_pool_connections"
    assert sample(s, pool, upstream="main", state="active") == 0
    assert sample(s, pool, upstream="main", state="idle") >= 1


async def test_routes_upstreams_and_breakers(
    admin_gateway: AdminFactory, upstream: TestUpstream
) -> None:
    upstreams = [
        {
            "name": "main",
            "connect_timeout_s": 1,
            "instances": [{"host": "127.0.0.1", "port": upstream.port}],
            "circuit_breaker": {"failure_threshold": 3, "reset_timeout_s": 5},
        },
        {"name": "other", "instances": [{"host": "127.0.0.1", "port": upstream.port}]},
    ]
    routes = [
        {
            "name": "api",
            "path_prefix": "/api",
            "methods": ["GET"],
            "hosts": ["example.com"],
            "upstream": "main",
        },
        {
            "name": "canary",
            "path": "/c",
            "split": [{"upstream": "main", "weight": 90}, {"upstream": "other", "weight": 10}],
        },
    ]
    gw = await admin_gateway(routes=routes, upstreams=upstreams)
    async with httpx.AsyncClient() as client:
        r = await client.get(admin_url(gw, "/routes"))
        assert r.status_code == 200
        listed = r.json()["routes"]
        assert [x["name"] for x in listed] == ["api", "canary"]
        api = listed[0]
        assert api["match"] == {"path_prefix": "/api"}
        assert api["methods"] == ["GET"]
        assert api["hosts"] == ["example.com"]
        assert api["upstream"] == "main"
        assert api["split"] is None
        assert api["stages"][-1] == "proxy"
        assert "request_id" in api["stages"]
        assert listed[1]["split"] == [
            {"upstream": "main", "weight": 90},
            {"upstream": "other", "weight": 10},
        ]
        assert "split" in listed[1]["stages"]

        r = await client.get(admin_url(gw, "/upstreams"))
        assert r.status_code == 200
        ups = {u["name"]: u for u in r.json()["upstreams"]}
        assert set(ups) == {"main", "other"}
        host = ups["main"]["hosts"][0]
        assert host["key"] == f"127.0.0.1:{upstream.port}"
        assert host["active_requests"] == 0
        assert "retry_budget" in ups["main"] and "limits" in ups["main"]

        r = await client.get(admin_url(gw, "/breakers"))
        assert r.status_code == 200
        breakers = r.json()["breakers"]
        assert breakers["main"]["state"] == "closed"
        assert breakers["other"] is None
        s = await scrape(client, gw)
    assert sample(s, "meshgate_circuit_breaker_open", upstream="main") == 0
    assert sample(s, "meshgate_circuit_breaker_state", upstream="main", state="closed") == 1
    assert sample(s, "meshgate_circuit_breaker_state", upstream="main", state="open") == 0


async def test_config_redacts_secrets(admin_gateway: AdminFactory, upstream: TestUpstream) -> None:
    key_hash = hash_key("k" * 32)
    cfg = admin_config(
        upstream.port,
        auth={
            "jwt": [{"name": "hs", "algorithms": ["HS256"], "secret": "j" * 40}],
            "api_keys": {
                "key_from": [{"header": "x-api-key"}],
                "consumers": [{"name": "app", "keys": [key_hash]}],
            },
        },
        rate_limit={"redis": {"url": "redis://user:hunter2@redis.internal:6380/1"}},
    )
    gw = await admin_gateway(cfg)
    async with httpx.AsyncClient() as client:
        r = await client.get(admin_url(gw, "/config"))
    assert r.status_code == 200
    text = r.text
    for secret in ("j" * 40, key_hash, "hunter2"):
        assert secret not in text
    data = r.json()
    assert data["auth"]["jwt"][0]["secret"] == "[redacted]"
    assert data["auth"]["api_keys"]["consumers"][0]["keys"] == ["[redacted]"]
    assert data["rate_limit"]["redis"]["url"] == "redis://user:[redacted]@redis.internal:6380/1"
    assert data["listener"]["port"] == 0
    assert data["upstreams"][0]["name"] == "main"
    assert data["admin"]["token"] is None


async def test_reload_picks_up_a_new_route_and_refuses_an_invalid_file(
    admin_gateway: AdminFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    gw = await admin_gateway(routes=[{"name": "a", "path": "/a", "upstream": "main"}])
    assert gw.config_path is not None
    async with httpx.AsyncClient() as client:
        assert (await client.get(url(gw, "/a"))).status_code == 200
        assert (await client.get(url(gw, "/b"))).status_code == 404
        assert (await client.get(admin_url(gw, "/reload"))).status_code == 405

        routes = [
            {"name": "a", "path": "/a", "upstream": "main"},
            {"name": "b", "path": "/b", "upstream": "main"},
        ]
        gw.config_path.write_text(to_yaml(admin_config(upstream.port, routes=routes)))
        r = await client.post(admin_url(gw, "/reload"))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "reloaded"
        assert r.json()["routes"] == 2
        assert (await client.get(url(gw, "/b"))).status_code == 200
        names = [x["name"] for x in (await client.get(admin_url(gw, "/routes"))).json()["routes"]]
        assert names == ["a", "b"]

        bad = admin_config(upstream.port, routes=[{"name": "c", "path": "/c", "upstream": "nope"}])
        gw.config_path.write_text(to_yaml(bad))
        r = await client.post(admin_url(gw, "/reload"))
        assert r.status_code == 400
        body = r.json()
        assert body["error"] == "invalid config"
        assert body["problems"]
        assert any("nope" in p["message"] for p in body["problems"])
        assert all({"file", "line", "key", "message"} <= set(p) for p in body["problems"])
        # the old config keeps serving
        assert (await client.get(url(gw, "/b"))).status_code == 200
        assert (await client.get(url(gw, "/c"))).status_code == 404

        gw.config_path.write_text("routes: [\n")
        r = await client.post(admin_url(gw, "/reload"))
        assert r.status_code == 400
        assert (await client.get(url(gw, "/a"))).status_code == 200
        # counters kept across reloads
        s = await scrape(client, gw)
    assert sample(s, "meshgate_requests_total", route="a", method="GET", status_class="2xx") == 2
    assert sample(s, "meshgate_requests_total", route="b", method="GET", status_class="2xx") == 2


async def test_reload_without_a_config_file_is_409(upstream: TestUpstream) -> None:
    from meshgate.config.loader import parse_config

    config, doc = parse_config(to_yaml(admin_config(upstream.port)))
    gw = Gateway(config, doc, admin=True)
    await gw.start()
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(admin_url(gw, "/reload"))
        assert r.status_code == 409
        assert "error" in r.json()
    finally:
        await gw.stop(drain_timeout_s=1)
    assert gw.admin_port is None


async def test_admin_disabled_and_ready_turns_off_on_stop(
    admin_gateway: AdminFactory, upstream: TestUpstream
) -> None:
    gw = await admin_gateway(admin={"enabled": False})
    assert gw.admin_port is None
    gw2 = await admin_gateway()
    assert gw2.started and not gw2.draining
    await gw2.stop(drain_timeout_s=1)
    assert gw2.draining and not gw2.started
    assert gw2.admin_port is None
