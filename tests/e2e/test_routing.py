"""Routing and traffic management end to end: matchers, precedence, versioning recipes,
rewrites, redirects, header transforms with variables, and reload safety.

Every test goes through real sockets: a gateway started in-process in front of one or
two `TestUpstream` servers (``up1`` as upstream ``a``, ``up2`` as ``b``). Which route
took a request is read from ``x-route: ${route}``, a header every tagged route adds,
or from which upstream recorded it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from meshgate.config.loader import ConfigError, parse_config
from tests.e2e.conftest import (
    GatewayFactory,
    TestUpstream,
    assert_json_error,
    curl,
    eventually,
    make_config,
    parse_curl_i,
    raw_exchange,
    to_yaml,
    url,
)

HEX32 = re.compile(r"[0-9a-f]{32}")


def two_upstreams(up_a: TestUpstream, up_b: TestUpstream) -> list[dict[str, Any]]:
    return [
        {"name": "a", "instances": [{"host": "127.0.0.1", "port": up_a.port}]},
        {"name": "b", "instances": [{"host": "127.0.0.1", "port": up_b.port}]},
    ]


def config(
    up_a: TestUpstream, up_b: TestUpstream, routes: list[dict[str, Any]], **top: Any
) -> dict[str, Any]:
    return make_config(up_a.port, upstreams=two_upstreams(up_a, up_b), routes=routes, **top)


def tagged(name: str, **route: Any) -> dict[str, Any]:
    """A route named ``name`` that tells the upstream its name in ``x-route``."""
    route.setdefault("upstream", "a")
    return {"name": name, **route, "request_headers": {"set": {"x-route": "${route}"}}}


def taken_by(r: httpx.Response) -> str | None:
    """The route that forwarded ``r`` (from the upstream's JSON echo), None if none did."""
    if r.status_code != 200:
        return None
    for name, value in r.json()["headers"]:
        if name == "x-route":
            return str(value)
    return "untagged"


async def routes_taken(
    gw: Any, requests: list[tuple[str, str, dict[str, str]]]
) -> list[str | int | None]:
    """For each (method, path, headers): the route name, or the status when not 200."""
    out: list[str | int | None] = []
    async with httpx.AsyncClient() as client:
        for method, path, headers in requests:
            r = await client.request(method, url(gw, path), headers=headers)
            out.append(taken_by(r) if r.status_code == 200 else r.status_code)
    return out


def counts(*ups: TestUpstream) -> tuple[int, ...]:
    return tuple(len(u.requests) for u in ups)


# --------------------------------------------------------------------------- matchers


async def test_precedence_exact_then_param_then_prefix_then_regex(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    # Declared in the reverse of the documented precedence: declaration order must not
    # decide between kinds.
    routes = [
        tagged("regex", path_regex="/items/(?P<id>[0-9]+)(/.*)?"),
        tagged("prefix", path_prefix="/items"),
        tagged("param", path="/items/:id"),
        tagged("exact", path="/items/special"),
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    got = await routes_taken(
        gw,
        [
            ("GET", "/items/special", {}),
            ("GET", "/items/42", {}),  # param, prefix and regex all match: param wins
            ("GET", "/items/42/reviews", {}),  # prefix and regex match: prefix wins
            ("GET", "/items", {}),
            ("GET", "/items/special/x", {}),
        ],
    )
    assert got == ["exact", "param", "prefix", "prefix", "prefix"]


async def test_regex_route_takes_what_the_tree_leaves(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        tagged("regex", path_regex="/files/(?P<name>[a-z]+)\\.(?P<ext>png|jpg)"),
        tagged("param", path="/files/:name", methods=["POST"]),
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    got = await routes_taken(
        gw,
        [
            ("GET", "/files/cat.png", {}),  # the param route is POST only: regex takes it
            ("POST", "/files/cat.png", {}),  # both match: param beats regex
            ("GET", "/files/cat.gif", {}),  # regex is matched on the whole path
            ("GET", "/files/cat.png/x", {}),
        ],
    )
    assert got == ["regex", "param", 405, 404]


async def test_prefix_matches_on_segment_boundaries(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        tagged("api", path_prefix="/api"),
        tagged("docs", path_prefix="/docs/"),  # a trailing '/' changes nothing
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    got = await routes_taken(
        gw,
        [
            ("GET", "/api", {}),
            ("GET", "/api/", {}),
            ("GET", "/api/x/y?z=1", {}),
            ("GET", "/apix", {}),
            ("GET", "/api-v2/x", {}),
            ("GET", "/docs", {}),
            ("GET", "/docs/intro", {}),
            ("GET", "/docsx", {}),
        ],
    )
    assert got == ["api", "api", "api", 404, 404, "docs", "docs", 404]
    assert upstream.requests[2].target == "/api/x/y?z=1"  # no rewrite: path kept as sent


async def test_regex_named_groups_are_params(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        {
            "name": "posts",
            "path_regex": "/users/(?P<uid>[0-9]+)/posts/(?P<slug>[a-z-]+)(?:/(?P<page>[0-9]+))?",
            "upstream": "a",
            "request_headers": {
                "set": {
                    "x-uid": "${param.uid}",
                    "x-slug": "${param.slug}",
                    "x-both": "${param.uid}:${param.slug}",
                    "x-page": "[${param.page}]",  # an optional group that did not match: empty
                }
            },
        }
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    async with httpx.AsyncClient() as client:
        ok = await client.get(url(gw, "/users/7/posts/hello-world"))
        paged = await client.get(url(gw, "/users/7/posts/hello-world/3?x=1"))
        bad_id = await client.get(url(gw, "/users/x/posts/hello"))
        longer = await client.get(url(gw, "/users/7/posts/hello/comments"))
    assert ok.status_code == paged.status_code == 200
    rec, rec_paged = upstream.requests
    assert (rec.header("x-uid"), rec.header("x-slug")) == ("7", "hello-world")
    assert rec.header("x-both") == "7:hello-world"
    assert rec.header_all("x-page") == ["[]"]
    assert rec.target == "/users/7/posts/hello-world"
    assert rec_paged.header_all("x-page") == ["[3]"]
    assert rec_paged.target == "/users/7/posts/hello-world/3?x=1"
    assert_json_error(bad_id, 404)
    assert_json_error(longer, 404)


async def test_wildcard_rest_of_path_is_param_star(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    """docs/routing.md: `path: /static/*` captures the rest of the path as `${param.*}`."""
    routes = [
        {
            "path": "/static/*",
            "upstream": "a",
            "request_headers": {"set": {"x-rest": "[${param.*}]"}},
        }
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    async with httpx.AsyncClient() as client:
        assert (await client.get(url(gw, "/static/css/site.css"))).status_code == 200
        assert (await client.get(url(gw, "/static"))).status_code == 200
    assert [r.header("x-rest") for r in upstream.requests] == ["[css/site.css]", "[]"]


async def test_same_kind_routes_follow_declaration_order(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        tagged("first-regex", path_regex="/r/[a-z]+"),
        tagged("second-regex", path_regex="/r/.*"),
        tagged("first-prefix", path_prefix="/p"),
        tagged("second-prefix", path="/p/*"),  # the same tree pattern
        tagged("guarded", path="/g", headers=[{"name": "x-beta", "present": True}]),
        tagged("open", path="/g"),
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    got = await routes_taken(
        gw,
        [
            ("GET", "/r/abc", {}),
            ("GET", "/r/123", {}),  # only the second regex matches
            ("GET", "/p/x", {}),
            ("GET", "/g", {"x-beta": "1"}),
            ("GET", "/g", {}),
        ],
    )
    assert got == ["first-regex", "second-regex", "first-prefix", "guarded", "open"]


async def test_any_method_route_declared_first_wins_over_a_later_method_route(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    """Precedence is by path kind, then declaration order; `meshgate validate` reports
    the second route as never matching (see tests/config/test_routing_config.py)."""
    routes = [tagged("any", path="/orders"), tagged("get-only", path="/orders", methods=["GET"])]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    got = await routes_taken(gw, [("POST", "/orders", {}), ("GET", "/orders", {})])
    assert got == ["any", "any"]


async def test_header_matchers_exact_regex_present_absent(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        tagged("exact", path="/h", headers=[{"name": "X-Tier", "exact": "gold"}]),
        tagged("regex", path="/h", headers=[{"name": "x-tier", "regex": "silver|bronze"}]),
        tagged("present", path="/h", headers=[{"name": "x-debug", "present": True}]),
        tagged("absent", path="/h", headers=[{"name": "x-tier", "present": False}]),
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    got = await routes_taken(
        gw,
        [
            ("GET", "/h", {"x-tier": "gold"}),
            ("GET", "/h", {"X-TIER": "gold"}),  # header names are case-insensitive
            ("GET", "/h", {"x-tier": "Gold"}),  # values are not
            ("GET", "/h", {"x-tier": "bronze"}),
            ("GET", "/h", {"x-tier": "silver-plus"}),  # regex must match the whole value
            ("GET", "/h", {"x-tier": "gold-ish"}),
            ("GET", "/h", {"x-tier": "platinum", "x-debug": ""}),  # empty value is present
            ("GET", "/h", {}),
        ],
    )
    assert got == ["exact", "exact", 404, "regex", 404, 404, "present", "absent"]
    assert counts(upstream, upstream2) == (5, 0)


async def test_query_matchers_exact_regex_present(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        tagged("exact", path="/q", query=[{"name": "mode", "exact": "full"}]),
        tagged("regex", path="/q", query=[{"name": "page", "regex": "[0-9]+"}]),
        tagged("present", path="/q", query=[{"name": "debug", "present": True}]),
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    got = await routes_taken(
        gw,
        [
            ("GET", "/q?mode=full", {}),
            ("GET", "/q?mode=f%75ll", {}),  # values are compared decoded
            ("GET", "/q?mode=fuller", {}),
            ("GET", "/q?page=12", {}),
            ("GET", "/q?page=12a", {}),  # whole value
            ("GET", "/q?x=1&page=3", {}),
            ("GET", "/q?debug", {}),  # no '=' still counts as present
            ("GET", "/q?debug=0", {}),
            ("GET", "/q", {}),
            ("GET", "/q?Mode=full", {}),  # names are case-sensitive
        ],
    )
    assert got == ["exact", "exact", 404, "regex", 404, "regex", "present", "present", 404, 404]
    assert upstream.requests[1].target == "/q?mode=f%75ll"


async def test_hosts_exact_and_wildcard(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        tagged("api", path="/*", hosts=["api.example.com"]),
        tagged("tenants", path="/*", hosts=["*.example.com"]),
        tagged("no-host", path="/only-without-host"),
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    got = await routes_taken(
        gw,
        [
            ("GET", "/x", {"host": "api.example.com"}),
            ("GET", "/x", {"host": "API.Example.com:8080"}),  # case and port ignored
            ("GET", "/x", {"host": "acme.example.com"}),
            ("GET", "/x", {"host": "a.b.example.com"}),  # one or more labels
            ("GET", "/x", {"host": "example.com"}),
            ("GET", "/x", {"host": "notexample.com"}),
            ("GET", "/only-without-host", {"host": "acme.example.com"}),  # host tree first
            ("GET", "/only-without-host", {"host": "other.test"}),
        ],
    )
    assert got == ["api", "api", "tenants", "tenants", 404, 404, "tenants", "no-host"]


async def test_host_route_declared_after_an_any_host_catch_all_still_takes_its_host(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    """Host trees are searched before the any-host tree (router docstring)."""
    routes = [
        tagged("catch-all", path="/*"),
        tagged("api-host", path="/*", hosts=["api.example.com"], upstream="b"),
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    got = await routes_taken(
        gw, [("GET", "/x", {"host": "api.example.com"}), ("GET", "/x", {"host": "www.test"})]
    )
    assert got == ["api-host", "catch-all"]
    assert counts(upstream, upstream2) == (1, 1)


async def test_regex_route_for_a_host_is_tried_before_an_any_host_catch_all(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    """Regex routes come after the tree routes *of the same host group* (docs/routing.md)."""
    routes = [
        tagged("catch-all", path="/*"),
        tagged("versioned", path_regex="/v(?P<ver>[0-9]+)/.*", hosts=["api.example.com"]),
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    got = await routes_taken(
        gw,
        [
            ("GET", "/v2/users", {"host": "api.example.com"}),
            ("GET", "/v2/users", {"host": "x.test"}),
        ],
    )
    assert got == ["versioned", "catch-all"]


async def test_all_conditions_are_anded_and_a_failed_guard_is_404_not_405(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        tagged(
            "strict",
            path="/orders/:id",
            methods=["POST", "PUT"],
            hosts=["api.example.com"],
            headers=[{"name": "x-api-version", "exact": "2"}, {"name": "x-token", "present": True}],
            query=[{"name": "dry_run", "regex": "true|false"}],
        )
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    good = {"host": "api.example.com", "x-api-version": "2", "x-token": "t"}
    path = "/orders/9?dry_run=true"
    got = await routes_taken(
        gw,
        [
            ("POST", path, good),
            ("PUT", path, good),
            ("POST", path, {**good, "host": "www.example.com"}),
            ("POST", path, {**good, "x-api-version": "1"}),
            ("POST", path, {k: v for k, v in good.items() if k != "x-token"}),
            ("POST", "/orders/9?dry_run=maybe", good),
            ("POST", "/orders/9", good),
            ("POST", "/orders/9/x?dry_run=true", good),
        ],
    )
    assert got == ["strict", "strict", 404, 404, 404, 404, 404, 404]
    async with httpx.AsyncClient() as client:
        wrong_method = await client.get(url(gw, path), headers=good)
        guard_fails = await client.post(url(gw, "/orders/9"), headers=good)
    assert_json_error(wrong_method, 405)  # the method is the only thing that failed
    assert {m.strip() for m in wrong_method.headers["allow"].split(",")} == {"POST", "PUT"}
    assert_json_error(guard_fails, 404)
    assert "allow" not in guard_fails.headers
    assert len(upstream.requests) == 2


# --------------------------------------------------------------------------- versioning


async def test_versioning_by_url_path(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        {"name": "users-v1", "path": "/api/v1/*", "upstream": "a"},
        {"name": "users-v2", "path": "/api/v2/*", "upstream": "b"},
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    async with httpx.AsyncClient() as client:
        v1 = await client.get(url(gw, "/api/v1/users/1"))
        v2 = await client.get(url(gw, "/api/v2/users/1?x=1"))
        v3 = await client.get(url(gw, "/api/v3/users/1"))
    assert (v1.json()["upstream"], v2.json()["upstream"]) == ("up1", "up2")
    assert_json_error(v3, 404)
    assert upstream.paths() == ["/api/v1/users/1"]
    assert [r.target for r in upstream2.requests] == ["/api/v2/users/1?x=1"]


async def test_versioning_by_header(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        {
            "name": "v2",
            "path_prefix": "/api",
            "headers": [{"name": "x-api-version", "exact": "2"}],
            "upstream": "b",
        },
        {"name": "v1", "path_prefix": "/api", "upstream": "a"},
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    async with httpx.AsyncClient() as client:
        for version in ("2", "1", None, "2", "20", "v2"):
            headers = {} if version is None else {"x-api-version": version}
            r = await client.get(url(gw, "/api/users"), headers=headers)
            assert r.status_code == 200
    assert counts(upstream, upstream2) == (4, 2)
    code, out, err = await curl("-i", "-H", "x-api-version: 2", url(gw, "/api/users"))
    assert code == 0, err
    status, _headers, body = parse_curl_i(out)
    assert status == 200
    assert json.loads(body)["upstream"] == "up2"
    assert counts(upstream, upstream2) == (4, 3)


async def test_versioning_by_header_or_accept_media_type_as_documented(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        {
            "path": "/api/users/:id",
            "headers": [{"name": "x-api-version", "exact": "2"}],
            "upstream": "b",
        },
        {
            "path": "/api/users/:id",
            "headers": [{"name": "accept", "regex": "application/vnd\\.api\\.v2\\+json"}],
            "upstream": "b",
        },
        {"path": "/api/users/:id", "upstream": "a"},
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    sent = [
        {"accept": "application/vnd.api.v2+json"},
        {"accept": "application/vnd.api.v1+json"},
        {"accept": "application/json"},
        {"accept": "application/vndXapiXv2json"},  # '.' and '+' are escaped: not v2
        {"x-api-version": "2", "accept": "application/json"},
        {},
    ]
    async with httpx.AsyncClient() as client:
        got = [
            (await client.get(url(gw, "/api/users/7"), headers=h)).json()["upstream"] for h in sent
        ]
    assert got == ["up2", "up1", "up1", "up1", "up2", "up1"]
    assert counts(upstream, upstream2) == (4, 2)


async def test_versioning_by_query_parameter(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        {
            "name": "v2",
            "path": "/api/*",
            "query": [{"name": "version", "exact": "2"}],
            "upstream": "b",
        },
        {"name": "v1", "path": "/api/*", "upstream": "a"},
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    async with httpx.AsyncClient() as client:
        for q in ("?version=2", "?a=1&version=2", "?version=1", "", "?version=20", "?versions=2"):
            r = await client.get(url(gw, "/api/items" + q))
            assert r.status_code == 200
    assert [r.target for r in upstream2.requests] == [
        "/api/items?version=2",
        "/api/items?a=1&version=2",
    ]
    assert len(upstream.requests) == 4


# --------------------------------------------------------------------------- rewrites


async def test_rewrite_strip_prefix(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [{"path_prefix": "/svc", "upstream": "a", "rewrite": {"strip_prefix": "/svc"}}]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    async with httpx.AsyncClient() as client:
        for path in ("/svc/users/1?x=1&y=2", "/svc", "/svc/"):
            assert (await client.get(url(gw, path))).status_code == 200
    assert [r.target for r in upstream.requests] == ["/users/1?x=1&y=2", "/", "/"]


async def test_rewrite_replace_prefix(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        {
            "path_prefix": "/v1",
            "upstream": "a",
            "rewrite": {"replace_prefix": {"from": "/v1", "to": "/api/v1"}},
        }
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    async with httpx.AsyncClient() as client:
        for path in ("/v1/items?page=2", "/v1"):
            assert (await client.get(url(gw, path))).status_code == 200
    assert [r.target for r in upstream.requests] == ["/api/v1/items?page=2", "/api/v1"]


async def test_rewrite_regex_with_capture_groups(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        {
            "path_prefix": "/users",
            "upstream": "a",
            "rewrite": {
                "regex": {
                    "pattern": "/users/(?P<id>[0-9]+)/(profile|avatar)",
                    "replacement": "/\\2s/\\g<id>",
                }
            },
        },
        {
            "path_prefix": "/shop",
            "upstream": "b",
            "rewrite": {"regex": {"pattern": "/shop/(.*)/(.*)", "replacement": "/\\2/\\1"}},
        },
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    async with httpx.AsyncClient() as client:
        for path in ("/users/42/profile?v=1", "/users/7/avatar", "/users/list", "/shop/a/b"):
            assert (await client.get(url(gw, path))).status_code == 200
    assert [r.target for r in upstream.requests] == [
        "/profiles/42?v=1",
        "/avatars/7",
        "/users/list",  # the pattern does not match: the path is forwarded unchanged
    ]
    assert [r.target for r in upstream2.requests] == ["/b/a"]


async def test_rewrite_host_keeps_client_host_in_x_forwarded_host(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        {"path": "/in/*", "upstream": "a", "rewrite": {"host": "internal.svc.local"}},
        {
            "path": "/off/*",
            "upstream": "a",
            "preserve_host": False,
            "rewrite": {"host": "other.svc.local:8080"},
        },
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    async with httpx.AsyncClient() as client:
        r1 = await client.get(url(gw, "/in/x"), headers={"host": "shop.example.com"})
        r2 = await client.get(url(gw, "/off/x"), headers={"host": "shop.example.com"})
    assert r1.status_code == r2.status_code == 200
    first, second = upstream.requests
    assert first.header_all("host") == ["internal.svc.local"]
    assert first.header_all("x-forwarded-host") == ["shop.example.com"]
    assert second.header_all("host") == ["other.svc.local:8080"]  # rewrite beats preserve_host
    assert second.header_all("x-forwarded-host") == ["shop.example.com"]


async def test_rewrite_query_set_and_remove(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        {
            "path_prefix": "/q",
            "upstream": "a",
            "rewrite": {
                "strip_prefix": "/q",
                "query": {"set": {"a": "1", "tag": "x y&z"}, "remove": ["debug"]},
            },
        }
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    async with httpx.AsyncClient() as client:
        for path in (
            "/q/items?debug=1&b=2&a=9",
            "/q/items",
            "/q/items?de%62ug=1&keep=%20",  # an encoded name is still removed
            "/q/items?debug&debug=2&b=1",
        ):
            assert (await client.get(url(gw, path))).status_code == 200
    assert [r.target for r in upstream.requests] == [
        "/items?b=2&a=1&tag=x%20y%26z",
        "/items?a=1&tag=x%20y%26z",
        "/items?keep=%20&a=1&tag=x%20y%26z",
        "/items?b=1&a=1&tag=x%20y%26z",
    ]


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_status_and_scheme_change_never_contacts_upstream(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream, status: int
):
    routes = [{"path": "/*", "redirect": {"status": status, "scheme": "https"}}]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    async with httpx.AsyncClient() as client:
        r = await client.get(
            url(gw, "/cart/items?id=3&x=a%20b"), headers={"host": "shop.example.com"}
        )
        post = await client.post(
            url(gw, "/checkout"), content=b"card=1", headers={"host": "shop.example.com:80"}
        )
        after = await client.get(url(gw, "/again"), headers={"host": "shop.example.com"})
    assert r.status_code == status
    assert r.headers["location"] == "https://shop.example.com/cart/items?id=3&x=a%20b"
    assert HEX32.fullmatch(r.headers["x-request-id"])
    assert r.content == b""
    assert post.status_code == status
    assert post.headers["location"] == "https://shop.example.com/checkout"  # :80 was http's
    assert after.status_code == status  # the connection is still usable after a body
    assert counts(upstream, upstream2) == (0, 0)
    assert upstream.connections == upstream2.connections == 0


async def test_redirect_host_port_path_and_strip_query(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        {"path": "/host/*", "redirect": {"host": "new.example.com"}},
        {"path": "/port/*", "redirect": {"scheme": "https", "port": 8443}},
        {"path": "/path/*", "redirect": {"status": 301, "path": "/welcome"}},
        {"path": "/strip/*", "redirect": {"status": 308, "path": "/home", "strip_query": True}},
        {"path": "/keepport/*", "redirect": {"path": "/k"}},
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    h = {"host": "old.example.com:8080"}
    async with httpx.AsyncClient() as client:
        host = await client.get(url(gw, "/host/a/b?q=1"), headers=h)
        port = await client.get(url(gw, "/port/a?q=1"), headers=h)
        path = await client.get(url(gw, "/path/a?q=1"), headers=h)
        strip = await client.get(url(gw, "/strip/a?q=1"), headers=h)
        keep = await client.get(url(gw, "/keepport/a"), headers=h)
    assert (host.status_code, host.headers["location"]) == (
        302,
        "http://new.example.com/host/a/b?q=1",
    )
    assert (port.status_code, port.headers["location"]) == (
        302,
        "https://old.example.com:8443/port/a?q=1",
    )
    assert (path.status_code, path.headers["location"]) == (
        301,
        "http://old.example.com:8080/welcome?q=1",
    )
    assert (strip.status_code, strip.headers["location"]) == (
        308,
        "http://old.example.com:8080/home",
    )
    assert keep.headers["location"] == "http://old.example.com:8080/k"
    assert counts(upstream, upstream2) == (0, 0)


async def test_redirect_with_curl(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [{"path_prefix": "/old", "redirect": {"status": 308, "scheme": "https"}}]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    code, out, err = await curl("-i", "-H", "Host: www.example.com", url(gw, "/old/page?lang=en"))
    assert code == 0, err
    status, headers, _body = parse_curl_i(out)
    assert status == 308
    assert headers["location"] == ["https://www.example.com/old/page?lang=en"]
    assert upstream.connections == upstream2.connections == 0


async def test_redirect_with_a_malformed_host_is_400_not_a_bad_location(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [{"path": "/*", "redirect": {"scheme": "https"}}]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    responses, _ = await raw_exchange(
        gw.port, b"GET /x HTTP/1.1\r\nHost: evil.test/@other\r\nConnection: close\r\n\r\n"
    )
    assert [r.status for r in responses] == [400]
    assert responses[0].header("location") is None
    assert counts(upstream, upstream2) == (0, 0)


# --------------------------------------------------------------------------- header transforms


async def test_request_header_set_add_remove_reach_the_upstream(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        {
            "path": "/*",
            "upstream": "a",
            "request_headers": {
                "set": {"x-env": "prod", "X-New": "n"},
                "add": {"x-tag": "two", "x-added": "a"},
                "remove": ["x-secret", "Cookie"],
            },
        }
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    async with httpx.AsyncClient() as client:
        r = await client.get(
            url(gw, "/headers"),
            headers={"x-env": "dev", "x-tag": "one", "x-secret": "s", "cookie": "c=1", "x-o": "1"},
        )
    assert r.status_code == 200
    rec = upstream.requests[0]
    assert rec.header_all("x-env") == ["prod"]
    assert rec.header_all("x-new") == ["n"]
    assert rec.header_all("x-tag") == ["one", "two"]
    assert rec.header_all("x-added") == ["a"]
    assert rec.header("x-secret") is None
    assert rec.header("cookie") is None
    assert rec.header("x-o") == "1"
    assert "x-env" not in r.headers  # request edits stay on the request


class TraceUpstream:
    """A one-route upstream that answers every request with an internal trace header."""

    def __init__(self) -> None:
        self.requests = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> TraceUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")  # GET requests only: no body
                self.requests += 1
                body = b"traced"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nX-Internal-Trace: span=abc;secret\r\n"
                    b"X-Internal-Trace: second\r\nServer: tiny\r\nX-Cache: miss\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


@pytest.fixture
async def trace_upstream() -> AsyncIterator[TraceUpstream]:
    srv = await TraceUpstream().start()
    yield srv
    await srv.stop()


async def test_response_header_set_add_remove_reach_the_client(
    gateway_factory: GatewayFactory, upstream: TestUpstream, trace_upstream: TraceUpstream
):
    cfg = make_config(
        upstream.port,
        upstreams=[
            {"name": "traced", "instances": [{"host": "127.0.0.1", "port": trace_upstream.port}]},
            {"name": "main", "instances": [{"host": "127.0.0.1", "port": upstream.port}]},
        ],
        routes=[
            {
                "path": "/traced/*",
                "upstream": "traced",
                "response_headers": {
                    "remove": ["x-internal-trace"],
                    "set": {"server": "meshgate", "x-cache": "hit"},
                    "add": {"x-served-by": "edge-1", "x-cache": "edge"},
                },
            },
            {"path": "/plain/*", "upstream": "traced"},
        ],
    )
    gw = await gateway_factory(cfg)
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/traced/x"))
        plain = await client.get(url(gw, "/plain/x"))
    assert (r.status_code, r.content) == (200, b"traced")
    assert "x-internal-trace" not in r.headers
    assert r.headers.get_list("server") == ["meshgate"]
    assert r.headers.get_list("x-cache") == ["hit", "edge"]
    assert r.headers.get_list("x-served-by") == ["edge-1"]
    assert plain.headers.get_list("x-internal-trace") == ["span=abc;secret", "second"]
    assert trace_upstream.requests == 2


async def test_response_headers_also_apply_to_redirects(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        {
            "name": "to-https",
            "path": "/*",
            "redirect": {"scheme": "https"},
            "response_headers": {
                "set": {"strict-transport-security": "max-age=60", "x-route": "${route}"}
            },
        }
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/x"), headers={"host": "h.test"})
    assert r.status_code == 302
    assert r.headers["strict-transport-security"] == "max-age=60"
    assert r.headers["x-route"] == "to-https"


async def test_header_variables_render_per_request(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    variables = {
        "x-rid": "${request_id}",
        "x-remote": "${remote_addr}",
        "x-route-name": "${route}",
        "x-id": "${param.id}",
        "x-user-copy": "user=${header.X-User}",
        "x-q": "${query.q}",
        "x-method": "${method}",
        "x-path": "${path}",
        "x-missing": "[${header.x-nope}][${query.nope}][${jwt.sub}]",
        "x-dollars": "$$5 and $x",
    }
    routes = [
        {
            "name": "orders-by-id",
            "path": "/orders/:id",
            "upstream": "a",
            "request_headers": {"set": variables},
            "response_headers": {
                "set": {"x-echo-rid": "${request_id}", "x-echo-id": "${param.id}"}
            },
        }
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    async with httpx.AsyncClient() as client:
        r = await client.post(
            url(gw, "/orders/o-17?q=a%20b&q=second"), headers={"x-user": "alice"}, content=b""
        )
        r2 = await client.get(url(gw, "/orders/o-18"), headers={"x-request-id": "given-id-1"})
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    assert HEX32.fullmatch(rid)
    rec = upstream.requests[0]
    assert rec.header_all("x-rid") == [rid]
    assert rec.header_all("x-remote") == ["127.0.0.1"]
    assert rec.header_all("x-route-name") == ["orders-by-id"]
    assert rec.header_all("x-id") == ["o-17"]
    assert rec.header_all("x-user-copy") == ["user=alice"]
    assert rec.header_all("x-q") == ["a b"]  # decoded, first value
    assert rec.header_all("x-method") == ["POST"]
    assert rec.header_all("x-path") == ["/orders/o-17"]
    assert rec.header_all("x-missing") == ["[][][]"]
    assert rec.header_all("x-dollars") == ["$5 and $x"]
    assert r.headers["x-echo-rid"] == rid
    assert r.headers["x-echo-id"] == "o-17"
    assert r2.headers["x-echo-rid"] == "given-id-1"
    assert upstream.requests[1].header_all("x-rid") == ["given-id-1"]
    assert upstream.requests[1].header_all("x-user-copy") == ["user="]


async def test_variables_cannot_inject_line_breaks(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    routes = [
        {
            "path": "/u/:id",
            "upstream": "a",
            "request_headers": {
                "set": {
                    "x-id": "<${param.id}>",
                    "x-q": "<${query.q}>",
                    "x-user": "<${header.x-user}>",
                }
            },
            "response_headers": {"set": {"x-echo": "<${query.q}>"}},
        }
    ]
    gw = await gateway_factory(config(upstream, upstream2, routes))
    # Percent-encoded CR LF decode into params and query values.
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/u/a%0D%0AX-Injected:%201?q=b%0d%0aX-Injected2:%202%00"))
    assert r.status_code == 200
    rec = upstream.requests[0]
    assert rec.header("x-injected") is None and rec.header("x-injected2") is None
    assert rec.header_all("x-id") == ["<aX-Injected: 1>"]
    assert rec.header_all("x-q") == ["<bX-Injected2: 2>"]
    assert "x-injected2" not in r.headers
    assert r.headers["x-echo"] == "<bX-Injected2: 2>"
    # A client header cannot carry a line break; a bare CR or obs-fold is refused or
    # flattened, never turned into a header of its own.
    for raw_value in (
        b"alice\rX-Injected: 1",
        b"alice\nX-Injected: 1",
        b"alice\r\n X-Injected: 1",
        b"alice\0X-Injected: 1",
    ):
        before = len(upstream.requests)
        responses, _ = await raw_exchange(
            gw.port,
            b"GET /u/1 HTTP/1.1\r\nHost: h\r\nX-User: "
            + raw_value
            + b"\r\nConnection: close\r\n\r\n",
        )
        assert len(responses) == 1, raw_value
        if responses[0].status == 200:
            forwarded = upstream.requests[before]
            assert forwarded.header("x-injected") is None, raw_value
            for value in forwarded.header_all("x-user"):
                assert "\r" not in value and "\n" not in value, raw_value
        else:
            assert responses[0].status == 400, raw_value
            assert len(upstream.requests) == before


# --------------------------------------------------------------------------- reload


async def test_invalid_reload_keeps_the_previous_routes(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    old = [{"name": "users", "path": "/users/:id", "upstream": "a"}]
    gw = await gateway_factory(config(upstream, upstream2, old))
    runtime = gw.runtime
    # Valid per key, refused when the route table is built: two names for one parameter.
    bad = config(
        upstream,
        upstream2,
        [
            {"name": "users", "path": "/users/:id", "upstream": "b"},
            {"name": "user-posts", "path": "/users/:uid/posts", "upstream": "b"},
        ],
    )
    bad_yaml = to_yaml(bad)
    line = next(i for i, t in enumerate(bad_yaml.splitlines(), 1) if "/users/:uid/posts" in t)
    bad_config, bad_doc = parse_config(bad_yaml, "reload.yaml")
    with pytest.raises(ConfigError) as info:
        await gw.reload(bad_config, bad_doc)
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 1, problems
    assert problems[0] == (
        f"reload.yaml:{line}: routes[1].path: path pattern '/users/:uid/posts': parameter ':uid' "
        "conflicts with ':id' already registered at the same position"
    )
    assert gw.runtime is runtime
    # A plugin that does not resolve is refused the same way.
    bad_plugin = config(
        upstream,
        upstream2,
        [{"path": "/*", "upstream": "b", "middleware": ["tests.e2e.no_such_module:nope"]}],
    )
    with pytest.raises(ConfigError):
        await gw.reload(*parse_config(to_yaml(bad_plugin), "reload.yaml"))
    assert gw.runtime is runtime
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/users/5"))
        gone = await client.get(url(gw, "/users/5/posts"))
    assert r.json()["upstream"] == "up1"
    assert_json_error(gone, 404)
    assert counts(upstream, upstream2) == (1, 0)
    # a valid reload is then taken
    good = config(upstream, upstream2, [{"path": "/users/*", "upstream": "b"}])
    await gw.reload(*parse_config(to_yaml(good), "reload.yaml"))
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/users/5/posts"))
    assert r.json()["upstream"] == "up2"


async def test_sighup_reload_with_bad_routing_keeps_routing_and_logs_file_line(
    gateway_process, upstream: TestUpstream, upstream2: TestUpstream, tmp_path
):
    cfg = config(upstream, upstream2, [{"name": "v1", "path": "/api/*", "upstream": "a"}])
    gp = await gateway_process(cfg, workers=1)
    cfg_path = tmp_path / "gateway0.yaml"
    bad = config(
        upstream, upstream2, [{"name": "v2", "path_regex": "/api/(?P<rest>.*", "upstream": "b"}]
    )
    cfg_path.write_text(to_yaml(bad))
    gp.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: "reload refused" in gp.log(), wait_s=5)
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gp.port, "/api/users"))
    assert r.json()["upstream"] == "up1"
    assert counts(upstream, upstream2) == (1, 0)
    assert re.search(r"gateway0\.yaml:\d+: routes\[0\]\.path_regex: invalid regex", gp.log())
    assert await gp.stop() == 0
