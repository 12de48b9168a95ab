"""GatewayApp without sockets: routes whose chains answer before the proxy."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from textwrap import dedent
from typing import Any

import pytest

from meshgate.config.loader import parse_config
from meshgate.http.messages import Body, BytesBody, Headers, Request, Response
from meshgate.pipeline.app import GatewayApp, choose_request_id
from meshgate.pipeline.runtime import Runtime, build_runtime
from tests.pipeline import sample_plugins

MOD = sample_plugins.MODULE
HEX_ID = re.compile(r"[0-9a-f]{32}")

CONFIG = dedent(
    f"""\
    timeout_s: 9
    upstreams:
      - name: svc
        instances:
          # never contacted: every chain below answers before the proxy
          - {{host: 127.0.0.1, port: 9}}
    routes:
      - path: /hello/:name
        methods: [GET]
        upstream: svc
        middleware: [request_id, response_time, {MOD}:short_circuit]
      - path: /hello/:name
        methods: [DELETE]
        upstream: svc
        timeout_s: 1.5
        middleware: [{MOD}:short_circuit]
      - path: /host-only
        hosts: [api.example.com]
        upstream: svc
        middleware: [{MOD}:short_circuit]
      - path: /boom
        upstream: svc
        middleware: [request_id, {MOD}:boom]
      - path: /boom-after-response
        upstream: svc
        middleware: [{MOD}:boom_after_response]
      - path: /silent
        upstream: svc
        middleware: [request_id, {MOD}:no_response]
      - path: /upload
        methods: [POST]
        upstream: svc
        middleware: [{MOD}:read_body_limited]
    """
)


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    config, doc = parse_config(CONFIG, "gw.yaml")
    rt = build_runtime(config, doc)
    yield rt
    rt.close()


@pytest.fixture
def app(runtime: Runtime) -> GatewayApp:
    return GatewayApp(runtime)


def request(
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: Body | None = None,
) -> Request:
    hdrs = Headers({"host": "gateway.test", **(headers or {})})
    return Request(method, target, hdrs, body or BytesBody())


async def json_body(resp: Response) -> Any:
    assert resp.headers.get("content-type") == "application/json"
    return json.loads(await resp.body.read_all())


# --------------------------------------------------------------------------- 404 / 405


async def test_404_json(app: GatewayApp) -> None:
    resp = await app(request("GET", "/nope?x=1"))
    assert resp.status == 404
    data = await json_body(resp)
    assert data["error"] == "no route matches"
    assert HEX_ID.fullmatch(data["request_id"])
    assert resp.headers.get("x-request-id") == data["request_id"]


async def test_404_for_host_specific_route_on_other_host(app: GatewayApp) -> None:
    resp = await app(request("GET", "/host-only", {"host": "other.example.com"}))
    assert resp.status == 404


async def test_405_json_with_allow(app: GatewayApp) -> None:
    resp = await app(request("POST", "/hello/bob", {"x-request-id": "client-1"}))
    assert resp.status == 405
    assert resp.headers.get("allow") == "DELETE, GET, HEAD"
    assert await json_body(resp) == {"error": "method not allowed", "request_id": "client-1"}
    assert resp.headers.get("x-request-id") == "client-1"


# --------------------------------------------------------------------------- routed requests


async def test_short_circuit_route_answers_without_upstream(
    app: GatewayApp, runtime: Runtime
) -> None:
    resp = await app(request("GET", "/hello/caf%C3%A9?q=1"))
    assert resp.status == 200
    data = await json_body(resp)
    assert data["params"] == {"name": "café"}
    assert data["route"] == "/hello/:name"
    assert HEX_ID.fullmatch(data["request_id"])
    # built-ins ran around it
    assert data["x_request_id_sent_upstream"] == data["request_id"]
    assert resp.headers.get("x-request-id") == data["request_id"]
    assert re.fullmatch(r"\d+\.\d{2}ms", resp.headers.get("x-response-time") or "")
    # budget = the route's timeout, defaulting to the top-level timeout_s
    assert data["budget_s"] == 9
    # the proxy never ran: no upstream connection was opened
    assert all(h.pool.connects == 0 for h in runtime.clusters["svc"].hosts)


async def test_route_timeout_overrides_default(app: GatewayApp) -> None:
    data = await json_body(await app(request("DELETE", "/hello/x")))
    assert data["budget_s"] == 1.5


async def test_head_uses_get_route(app: GatewayApp) -> None:
    resp = await app(request("HEAD", "/hello/x"))
    assert resp.status == 200


async def test_host_routing(app: GatewayApp) -> None:
    resp = await app(request("GET", "/host-only", {"host": "API.example.com:8080"}))
    assert resp.status == 200


async def test_runtime_swap_takes_effect(app: GatewayApp) -> None:
    config, doc = parse_config(
        dedent(
            f"""\
            upstreams:
              - {{name: svc, instances: [{{host: 127.0.0.1, port: 9}}]}}
            routes:
              - {{path: /new, upstream: svc, middleware: [{MOD}:short_circuit]}}
            """
        ),
        "gw2.yaml",
    )
    new = build_runtime(config, doc)
    old = app.runtime
    try:
        app.runtime = new
        assert (await app(request("GET", "/new"))).status == 200
        assert (await app(request("GET", "/hello/x"))).status == 404
    finally:
        app.runtime = old
        new.close()


# --------------------------------------------------------------------------- request ids


@pytest.mark.parametrize(
    "given",
    ["abc", "A-b_c.d:e", "0" * 128, "f47ac10b-58cc-4372-a567-0e02b2c3d479"],
)
async def test_valid_client_request_id_kept(app: GatewayApp, given: str) -> None:
    resp = await app(request("GET", "/hello/x", {"x-request-id": given}))
    data = await json_body(resp)
    assert data["request_id"] == given
    assert resp.headers.get("x-request-id") == given


@pytest.mark.parametrize(
    "given",
    ["", "has space", "0" * 129, "semi;colon", "new\nline", "ünïcode", "a/b", "<script>"],
)
async def test_invalid_client_request_id_replaced(app: GatewayApp, given: str) -> None:
    resp = await app(request("GET", "/hello/x", {"x-request-id": given}))
    data = await json_body(resp)
    assert data["request_id"] != given
    assert HEX_ID.fullmatch(data["request_id"])
    assert resp.headers.get("x-request-id") == data["request_id"]


async def test_invalid_request_id_replaced_on_404(app: GatewayApp) -> None:
    data = await json_body(await app(request("GET", "/nope", {"x-request-id": "bad id"})))
    assert HEX_ID.fullmatch(data["request_id"])


def test_choose_request_id_is_random_when_missing() -> None:
    ids = {choose_request_id(request("GET", "/")) for _ in range(20)}
    assert len(ids) == 20
    assert all(HEX_ID.fullmatch(i) for i in ids)


# --------------------------------------------------------------------------- failures


async def test_raising_middleware_gives_500_with_request_id(
    app: GatewayApp, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="meshgate.gateway"):
        resp = await app(request("GET", "/boom", {"x-request-id": "trace-42"}))
    assert resp.status == 500
    assert await json_body(resp) == {"error": "internal error", "request_id": "trace-42"}
    assert resp.headers.get("x-request-id") == "trace-42"
    (record,) = [r for r in caplog.records if r.name == "meshgate.gateway"]
    assert "trace-42" in record.getMessage()
    assert record.exc_info is not None
    assert "plugin exploded" in str(record.exc_info[1])


async def test_raising_middleware_500_has_generated_request_id(app: GatewayApp) -> None:
    data = await json_body(await app(request("GET", "/boom")))
    assert data["error"] == "internal error"
    assert HEX_ID.fullmatch(data["request_id"])


async def test_raise_after_response_set_gives_500_and_closes_body(
    app: GatewayApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[bytes] = []
    monkeypatch.setattr(sample_plugins, "closed_bodies", closed)
    resp = await app(request("GET", "/boom-after-response"))
    assert resp.status == 500
    assert closed == [b"partial"]
    assert (await json_body(resp))["error"] == "internal error"


async def test_chain_without_response_gives_500(
    app: GatewayApp, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="meshgate.gateway"):
        resp = await app(request("GET", "/silent", {"x-request-id": "rid-silent"}))
    assert resp.status == 500
    assert await json_body(resp) == {"error": "no response produced", "request_id": "rid-silent"}
    assert any("produced no response" in r.getMessage() for r in caplog.records)


async def test_body_within_limit_read_by_middleware(app: GatewayApp) -> None:
    resp = await app(request("POST", "/upload", body=BytesBody(b"abcd")))
    assert resp.status == 200
    assert await resp.body.read_all() == b"abcd"


async def test_http_error_from_middleware_keeps_its_status(app: GatewayApp) -> None:
    resp = await app(request("POST", "/upload", {"x-request-id": "r1"}, BytesBody(b"too long")))
    assert resp.status == 413
    data = await json_body(resp)
    assert data["request_id"] == "r1"
