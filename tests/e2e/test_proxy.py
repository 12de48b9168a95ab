"""Basic proxying: bodies and headers, request ids, routing, 404/405, forwarding headers."""

from __future__ import annotations

import asyncio
import re

import httpx

from tests.e2e.conftest import (
    GatewayFactory,
    RawConn,
    TestUpstream,
    assert_json_error,
    curl,
    eventually,
    make_config,
    parse_curl_i,
    raw_exchange,
    url,
)

HEX32 = re.compile(r"[0-9a-f]{32}")
RESPONSE_TIME = re.compile(r"\d+(\.\d+)?ms")


async def test_httpx_post_passes_status_body_and_headers(gateway, upstream: TestUpstream):
    async with httpx.AsyncClient() as client:
        r = await client.post(
            url(gateway, "/echo?x=1"),
            content=b"hello world",
            headers={"content-type": "text/x-test", "x-custom": "abc"},
        )
    assert r.status_code == 200
    assert r.content == b"hello world"
    assert r.headers["content-type"] == "text/x-test"
    assert r.headers["content-length"] == "11"
    assert len(upstream.requests) == 1
    rec = upstream.requests[0]
    assert (rec.method, rec.target, rec.body) == ("POST", "/echo?x=1", b"hello world")
    assert rec.header("x-custom") == "abc"
    assert rec.header("content-length") == "11"


async def test_upstream_status_and_response_headers_pass_through(gateway, upstream):
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gateway, "/status/418"))
    assert r.status_code == 418
    assert r.text == "status 418"
    assert r.headers["x-status"] == "418"
    assert r.headers["etag"] == '"v1"'


async def test_curl_get_and_post(gateway, upstream):
    code, out, err = await curl("-i", "-H", "X-Hello: curl", url(gateway, "/headers?q=a%20b"))
    assert code == 0, err
    status, headers, body = parse_curl_i(out)
    assert status == 200
    assert headers["content-type"] == ["application/json"]
    assert HEX32.fullmatch(headers["x-request-id"][0])
    assert RESPONSE_TIME.fullmatch(headers["x-response-time"][0])
    assert '"target": "/headers?q=a%20b"' in body
    rec = upstream.requests[-1]
    assert rec.header("x-hello") == "curl"
    assert (rec.header("user-agent") or "").startswith("curl/")

    code, out, err = await curl("-i", "--data-binary", "posted-by-curl", url(gateway, "/echo"))
    assert code == 0, err
    status, headers, body = parse_curl_i(out)
    assert status == 200
    assert body == "posted-by-curl"
    assert upstream.requests[-1].method == "POST"
    assert upstream.requests[-1].body == b"posted-by-curl"


async def test_request_id_generated_when_absent(gateway, upstream):
    async with httpx.AsyncClient() as client:
        r1 = await client.get(url(gateway, "/headers"))
        r2 = await client.get(url(gateway, "/headers"))
    rid = r1.headers["x-request-id"]
    assert HEX32.fullmatch(rid)
    assert r2.headers["x-request-id"] != rid
    assert upstream.requests[0].header_all("x-request-id") == [rid]
    assert RESPONSE_TIME.fullmatch(r1.headers["x-response-time"])


async def test_valid_client_request_id_is_kept(gateway, upstream):
    rid = "client-id_1.2:3"
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gateway, "/headers"), headers={"x-request-id": rid})
    assert r.headers["x-request-id"] == rid
    assert upstream.requests[0].header_all("x-request-id") == [rid]


async def test_invalid_client_request_id_is_replaced(gateway, upstream):
    bad_ids = ["has spaces in it", "a" * 300, "semi;colon", "x" * 129]
    async with httpx.AsyncClient() as client:
        for bad in bad_ids:
            r = await client.get(url(gateway, "/headers"), headers={"x-request-id": bad})
            assert r.status_code == 200
            rid = r.headers["x-request-id"]
            assert HEX32.fullmatch(rid), (bad, rid)
            assert upstream.requests[-1].header_all("x-request-id") == [rid]


async def test_request_id_max_length_128_is_kept(gateway, upstream):
    rid = "b" * 128
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gateway, "/headers"), headers={"x-request-id": rid})
    assert r.headers["x-request-id"] == rid


async def test_routing_params_and_wildcards_pick_the_right_upstream(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    cfg = make_config(
        upstream.port,
        upstreams=[
            {"name": "users", "instances": [{"host": "127.0.0.1", "port": upstream.port}]},
            {"name": "files", "instances": [{"host": "127.0.0.1", "port": upstream2.port}]},
        ],
        routes=[
            {"path": "/api/users/:id", "methods": ["GET"], "upstream": "users"},
            {"path": "/api/users/me", "methods": ["GET"], "upstream": "files"},
            {"path": "/static/*", "upstream": "files"},
        ],
    )
    gw = await gateway_factory(cfg)
    async with httpx.AsyncClient() as client:
        r1 = await client.get(url(gw, "/api/users/42?full=1"))
        r2 = await client.get(url(gw, "/static/css/site.css"))
        r3 = await client.get(url(gw, "/api/users/me"))
        r4 = await client.get(url(gw, "/static"))
    assert [r.status_code for r in (r1, r2, r3, r4)] == [200] * 4
    assert r1.json()["upstream"] == "up1"
    assert r1.json()["target"] == "/api/users/42?full=1"
    assert r2.json()["upstream"] == "up2"
    assert r2.json()["target"] == "/static/css/site.css"
    assert r3.json()["upstream"] == "up2"  # static segment beats :id
    assert r4.json()["upstream"] == "up2"  # '*' matches zero segments
    assert upstream.paths() == ["/api/users/42"]
    assert upstream2.paths() == ["/static/css/site.css", "/api/users/me", "/static"]


async def test_404_json_with_request_id(gateway_factory, upstream):
    gw = await gateway_factory(routes=[{"path": "/api/*", "upstream": "main"}])
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/nope"))
        r2 = await client.get(url(gw, "/nope"), headers={"x-request-id": "given-1"})
    data = assert_json_error(r, 404)
    assert r.headers["content-type"] == "application/json"
    assert HEX32.fullmatch(data["request_id"])
    assert r.headers["x-request-id"] == data["request_id"]
    assert r2.json()["request_id"] == "given-1"
    assert upstream.requests == []


async def test_405_lists_allowed_methods(gateway_factory, upstream):
    gw = await gateway_factory(
        routes=[
            {"path": "/orders", "methods": ["GET", "POST"], "upstream": "main"},
            {"path": "/orders", "methods": ["PUT"], "upstream": "main"},
        ]
    )
    async with httpx.AsyncClient() as client:
        r = await client.delete(url(gw, "/orders"))
        ok = await client.put(url(gw, "/orders"), content=b"x")
    assert_json_error(r, 405)
    allowed = {m.strip() for m in r.headers["allow"].split(",")}
    assert allowed == {"GET", "HEAD", "POST", "PUT"}
    assert ok.status_code == 200
    assert upstream.paths() == ["/orders"]
    assert upstream.requests[0].method == "PUT"


async def test_forwarding_headers(gateway, upstream):
    async with httpx.AsyncClient() as client:
        r = await client.get(
            url(gateway, "/headers"),
            headers={"x-forwarded-for": "1.2.3.4", "host": "api.example.test:8443"},
        )
    assert r.status_code == 200
    rec = upstream.requests[0]
    assert rec.header_all("x-forwarded-for") == ["1.2.3.4, 127.0.0.1"]
    assert rec.header_all("x-forwarded-proto") == ["http"]
    assert rec.header_all("x-forwarded-host") == ["api.example.test:8443"]
    assert rec.header_all("host") == ["api.example.test:8443"]  # preserve_host default


async def test_forwarded_for_without_existing_value(gateway, upstream):
    async with httpx.AsyncClient() as client:
        await client.get(url(gateway, "/headers"))
    rec = upstream.requests[0]
    assert rec.header_all("x-forwarded-for") == ["127.0.0.1"]
    assert rec.header_all("x-forwarded-host") == [f"127.0.0.1:{gateway.port}"]


async def test_forwarded_for_multiple_fields_are_joined(gateway, upstream):
    raw = (
        b"GET /headers HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\n"
        b"X-Forwarded-For: 2.2.2.2, 3.3.3.3\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: spoofed\r\nConnection: close\r\n\r\n"
    )
    responses, _ = await raw_exchange(gateway.port, raw)
    assert [r.status for r in responses] == [200]
    rec = upstream.requests[0]
    assert rec.header_all("x-forwarded-for") == ["1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"]
    assert rec.header_all("x-forwarded-proto") == ["http"]
    assert rec.header_all("x-forwarded-host") == ["h"]


async def test_hop_by_hop_request_headers_are_removed(gateway, upstream):
    raw = (
        b"GET /headers HTTP/1.1\r\n"
        b"Host: example.test\r\n"
        b"Connection: keep-alive, X-Foo, x-bar\r\n"
        b"X-Foo: secret\r\n"
        b"X-Bar: secret2\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Trailer: x-checksum\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Proxy-Foo: 1\r\n"
        b"X-Keep: yes\r\n"
        b"\r\n"
    )
    conn = await RawConn.open(gateway.port)
    try:
        await conn.send(raw)
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 200
    rec = upstream.requests[0]
    names = {n for n, _ in rec.headers}
    for hop in (
        "connection",
        "x-foo",
        "x-bar",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "proxy-foo",
        "upgrade",
    ):
        assert hop not in names, (hop, rec.headers)
    assert rec.header("x-keep") == "yes"
    assert rec.header("host") == "example.test"


async def test_upgrade_request_is_answered_without_upgrade_and_closed(gateway, upstream):
    raw = (
        b"GET /headers HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    responses, closed = await raw_exchange(gateway.port, raw, wait_s=3)
    assert [r.status for r in responses] == [200]
    assert responses[0].header("connection") == "close"
    assert closed
    rec = upstream.requests[0]
    assert rec.header("upgrade") is None
    assert rec.header("connection") is None


async def test_hop_by_hop_response_headers_are_removed(gateway, upstream):
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gateway, "/hop"))
    assert r.status_code == 200
    assert r.content == b"hop"
    for hop in (
        "x-foo",
        "x-bar",
        "keep-alive",
        "proxy-foo",
        "proxy-authenticate",
        "trailer",
        "te",
        "upgrade",
    ):
        assert hop not in r.headers, (hop, r.headers)
    assert "connection" not in r.headers or r.headers["connection"].lower() in ("keep-alive",)
    assert r.headers["x-keep"] == "yes"


async def test_remove_request_headers_only_on_its_route(gateway_factory, upstream):
    gw = await gateway_factory(
        routes=[
            {"path": "/private/*", "upstream": "main", "remove_request_headers": ["Cookie"]},
            {"path": "/public/*", "upstream": "main"},
        ]
    )
    async with httpx.AsyncClient() as client:
        h = {"cookie": "session=abc", "x-other": "1"}
        r1 = await client.get(url(gw, "/private/a"), headers=h)
        r2 = await client.get(url(gw, "/public/a"), headers=h)
    assert r1.status_code == r2.status_code == 200
    private, public = upstream.requests
    assert private.path == "/private/a"
    assert private.header("cookie") is None
    assert private.header("x-other") == "1"
    assert public.header("cookie") == "session=abc"


async def test_preserve_host_false_sends_instance_host(gateway_factory, upstream):
    gw = await gateway_factory(
        routes=[
            {"path": "/rewrite/*", "upstream": "main", "preserve_host": False},
            {"path": "/keep/*", "upstream": "main"},
        ]
    )
    async with httpx.AsyncClient() as client:
        await client.get(url(gw, "/rewrite/x"), headers={"host": "client.example"})
        await client.get(url(gw, "/keep/x"), headers={"host": "client.example"})
    rewritten, kept = upstream.requests
    assert rewritten.header_all("host") == [f"127.0.0.1:{upstream.port}"]
    assert rewritten.header_all("x-forwarded-host") == ["client.example"]
    assert kept.header_all("host") == ["client.example"]


async def test_absolute_form_target_is_forwarded_in_origin_form(gateway, upstream):
    responses, _ = await raw_exchange(
        gateway.port,
        b"GET http://api.example.test:81/headers?x=1 HTTP/1.1\r\nHost: other\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert [r.status for r in responses] == [200]
    rec = upstream.requests[0]
    assert rec.target == "/headers?x=1"
    assert rec.header_all("host") == ["api.example.test:81"]


async def test_round_robin_over_two_instances(gateway_factory, upstream, upstream2):
    cfg = make_config(
        upstream.port,
        upstreams=[
            {
                "name": "main",
                "load_balancer": "round_robin",
                "instances": [
                    {"host": "127.0.0.1", "port": upstream.port},
                    {"host": "127.0.0.1", "port": upstream2.port},
                ],
            }
        ],
    )
    gw = await gateway_factory(cfg)
    async with httpx.AsyncClient() as client:
        served = [(await client.get(url(gw, "/headers"))).json()["upstream"] for _ in range(6)]
    assert served in (["up1", "up2"] * 3, ["up2", "up1"] * 3)
    assert upstream.connections == upstream2.connections == 1


async def test_idle_pooled_connections_are_closed_after_pool_idle_timeout(
    gateway_factory, upstream
):
    cfg = make_config(
        upstream.port,
        upstreams=[
            {
                "name": "main",
                "pool": {"idle_timeout_s": 0.2},
                "instances": [{"host": "127.0.0.1", "port": upstream.port}],
            }
        ],
    )
    gw = await gateway_factory(cfg)
    async with httpx.AsyncClient() as client:
        assert (await client.get(url(gw, "/headers"))).status_code == 200
        assert upstream.open_connections == 1
        await eventually(lambda: upstream.open_connections == 0)  # closed by the gateway
        assert (await client.get(url(gw, "/headers"))).status_code == 200
    assert upstream.connections == 2


async def test_response_header_with_line_break_is_refused(gateway_factory, upstream):
    gw = await gateway_factory(
        middleware=["request_id", "tests.e2e.plugins_for_tests:bad_response_header"]
    )
    responses, _ = await raw_exchange(
        gw.port, b"GET /headers HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    assert [r.status for r in responses] == [500]
    assert_json_error(responses[0], 500)
    assert responses[0].header("set-cookie") is None
    assert responses[0].header("x-injected") is None


async def test_request_header_with_line_break_never_reaches_the_upstream(gateway_factory, upstream):
    gw = await gateway_factory(middleware=["tests.e2e.plugins_for_tests:bad_request_header"])
    responses, _ = await raw_exchange(
        gw.port, b"GET /headers HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    assert_json_error(responses[0], 500)
    assert upstream.requests == []
    assert upstream.connections == 0


async def test_connection_header_cannot_strip_headers_added_by_the_gateway(
    gateway_factory, upstream
):
    gw = await gateway_factory(
        middleware=[
            "request_id",
            {
                "name": "tests.e2e.plugins_for_tests:add_header",
                "config": {"name": "x-team", "value": "core", "upstream_too": True},
            },
        ]
    )
    raw = (
        b"GET /headers HTTP/1.1\r\nHost: h\r\nConnection: x-request-id, x-team\r\n"
        b"X-Team: spoofed\r\n\r\n"
    )
    conn = await RawConn.open(gw.port)
    try:
        await conn.send(raw)
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 200
    rec = upstream.requests[0]
    assert rec.header_all("x-request-id") == [resp.header("x-request-id")]
    assert rec.header_all("x-team") == ["core"]


async def test_connection_naming_host_still_sends_a_host(gateway, upstream):
    responses, _ = await raw_exchange(
        gateway.port,
        b"GET /headers HTTP/1.1\r\nHost: client.example\r\nConnection: host, close\r\n\r\n",
    )
    assert [r.status for r in responses] == [200]
    assert upstream.requests[0].header_all("host") == ["client.example"]


async def test_upstream_trailers_never_leak_into_another_response(gateway, upstream):
    async with httpx.AsyncClient() as alice, httpx.AsyncClient() as bob:
        r1 = await alice.get(url(gateway, "/trailers?v=alice-secret"))
        assert (r1.status_code, r1.content) == (200, b"body")
        r2 = await bob.get(url(gateway, "/headers"))
        assert r2.status_code == 200
    assert upstream.connections == 1  # the same pooled upstream connection served both
    assert "x-checksum" not in r2.headers, r2.headers


async def test_host_based_routing(gateway_factory, upstream, upstream2):
    cfg = make_config(
        upstream.port,
        upstreams=[
            {"name": "api", "instances": [{"host": "127.0.0.1", "port": upstream.port}]},
            {"name": "tenants", "instances": [{"host": "127.0.0.1", "port": upstream2.port}]},
        ],
        routes=[
            {"path": "/*", "hosts": ["api.example.com"], "upstream": "api"},
            {"path": "/*", "hosts": ["*.tenants.example.com"], "upstream": "tenants"},
        ],
    )
    gw = await gateway_factory(cfg)
    async with httpx.AsyncClient() as client:
        a = await client.get(url(gw, "/x"), headers={"host": "API.example.com:8443"})
        t = await client.get(url(gw, "/x"), headers={"host": "acme.tenants.example.com"})
        none = await client.get(url(gw, "/x"), headers={"host": "tenants.example.com"})
    assert a.json()["upstream"] == "up1"
    assert t.json()["upstream"] == "up2"
    assert_json_error(none, 404)


async def test_many_concurrent_clients(gateway, upstream):
    async def one(i: int) -> tuple[int, str]:
        conn = await RawConn.open(gateway.port)
        try:
            await conn.send(
                b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%d" % (len(str(i)), i)
            )
            resp = await conn.read_response(wait_s=10)
            return resp.status, resp.body.decode()
        finally:
            await conn.close()

    results = await asyncio.gather(*(one(i) for i in range(100)))
    assert results == [(200, str(i)) for i in range(100)]
    assert len(upstream.requests) == 100
    assert upstream.connections <= 100


async def test_remove_request_headers_can_drop_untrusted_forwarded_for(gateway_factory, upstream):
    gw = await gateway_factory(
        routes=[{"path": "/*", "upstream": "main", "remove_request_headers": ["x-forwarded-for"]}]
    )
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/headers"), headers={"x-forwarded-for": "6.6.6.6"})
    assert r.status_code == 200
    assert upstream.requests[0].header_all("x-forwarded-for") == ["127.0.0.1"]
