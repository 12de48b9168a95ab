"""Plugin middleware loaded by dotted path from YAML, end to end."""

from __future__ import annotations

import httpx
import pytest

from meshgate.config.loader import ConfigError, parse_config
from meshgate.gateway import Gateway
from tests.e2e.conftest import (
    assert_json_error,
    eventually,
    make_config,
    to_yaml,
    url,
)

PLUGINS = "tests.e2e.plugins_for_tests"


async def test_raising_middleware_gives_500_and_the_next_request_works(gateway_factory, upstream):
    gw = await gateway_factory(middleware=["request_id", f"{PLUGINS}:boom", "response_time"])
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/boom"), headers={"x-request-id": "trace-boom-1"})
        data = assert_json_error(r, 500)
        assert data["request_id"] == "trace-boom-1"
        assert r.headers["x-request-id"] == "trace-boom-1"
        assert "plugin exploded" not in r.text  # no internals leak to the client
        r2 = await client.get(url(gw, "/boom"))
        data2 = assert_json_error(r2, 500)
        assert len(data2["request_id"]) == 32
        ok = await client.get(url(gw, "/fine"))
        assert ok.status_code == 200
        assert ok.json()["target"] == "/fine"
    assert upstream.paths() == ["/fine"]


async def test_middleware_raising_after_the_proxy_releases_the_upstream(gateway_factory, upstream):
    gw = await gateway_factory(
        routes=[
            {"path": "/big", "upstream": "main", "middleware": [f"{PLUGINS}:boom_after"]},
            {"path": "/*", "upstream": "main"},
        ]
    )
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/big?n=50000000"))
        assert_json_error(r, 500)
        # the upstream body that was never sent is abandoned: its connection closes
        await eventually(lambda: upstream.open_connections == 0)
        ok = await client.get(url(gw, "/headers"))
        assert ok.status_code == 200


async def test_next_called_twice_is_500(gateway_factory, upstream):
    gw = await gateway_factory(
        routes=[
            {"path": "/twice", "upstream": "main", "middleware": [f"{PLUGINS}:next_twice"]},
            {"path": "/*", "upstream": "main"},
        ]
    )
    async with httpx.AsyncClient() as client:
        assert_json_error(await client.get(url(gw, "/twice")), 500)
        assert (await client.get(url(gw, "/after"))).status_code == 200
    assert upstream.paths().count("/twice") == 1  # the proxy ran once only


async def test_plugin_receives_its_pydantic_config(gateway_factory, upstream):
    gw = await gateway_factory(
        middleware=[
            "request_id",
            {
                "name": f"{PLUGINS}:add_header",
                "config": {"name": "X-Team", "value": "payments", "upstream_too": True},
            },
        ]
    )
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/headers"))
    assert r.status_code == 200
    assert r.headers["x-team"] == "payments"
    assert upstream.requests[0].header("x-team") == "payments"
    assert len(r.headers["x-request-id"]) == 32
    assert "x-response-time" not in r.headers  # the chain was replaced, not extended


async def test_route_chain_replaces_the_top_level_chain(gateway_factory, upstream):
    gw = await gateway_factory(
        routes=[
            {"path": "/bare/*", "upstream": "main", "middleware": []},
            {
                "path": "/tagged/*",
                "upstream": "main",
                "middleware": [
                    {
                        "name": f"{PLUGINS}:add_header",
                        "config": {"name": "x-route", "value": "tagged"},
                    }
                ],
            },
            {"path": "/*", "upstream": "main"},
        ]
    )
    async with httpx.AsyncClient() as client:
        bare = await client.get(url(gw, "/bare/x"))
        tagged = await client.get(url(gw, "/tagged/x"))
        default = await client.get(url(gw, "/other"))
    assert "x-request-id" not in bare.headers
    assert "x-response-time" not in bare.headers
    assert upstream.requests[0].header("x-request-id") is None
    assert tagged.headers["x-route"] == "tagged"
    assert "x-request-id" not in tagged.headers
    assert upstream.requests[1].header("x-route") is None  # upstream_too defaults to false
    assert len(default.headers["x-request-id"]) == 32
    assert "x-response-time" in default.headers
    assert "x-route" not in default.headers


async def test_short_circuit_middleware_never_contacts_upstream(gateway_factory, upstream):
    gw = await gateway_factory(
        routes=[
            {"path": "/admin/*", "upstream": "main", "middleware": [f"{PLUGINS}:deny", "proxy"]},
            {"path": "/*", "upstream": "main"},
        ]
    )
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/admin/users"))
    assert r.status_code == 403
    assert r.json() == {"error": "forbidden", "path": "/admin/users"}
    assert upstream.connections == 0


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": f"{PLUGINS}:add_header", "config": {"value": "v"}}, "name"),
        ({"name": f"{PLUGINS}:boom", "config": {"x": 1}}, "takes no config"),
        (f"{PLUGINS}:no_such_function", "has no attribute"),
        ("tests.e2e.no_such_module:fn", "cannot import module"),
        ("not_a_dotted_path", "neither a built-in"),
        (f"{PLUGINS}:AddHeaderConfig", "not an 'async def'"),
    ],
)
async def test_bad_plugin_entries_fail_at_start_with_file_and_line(upstream, entry, message):
    cfg = make_config(upstream.port, middleware=["request_id", entry])
    config, doc = parse_config(to_yaml(cfg), "plugins.yaml")
    gw = Gateway(config, doc)
    with pytest.raises(ConfigError) as info:
        await gw.start()
    problems = info.value.problems
    assert len(problems) == 1
    text = str(problems[0])
    assert text.startswith("plugins.yaml:")
    assert problems[0].line > 1
    assert problems[0].key.startswith("middleware[1]")
    assert message in text
