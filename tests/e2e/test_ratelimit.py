"""Rate limiting end to end: in-process gateways on real sockets, the test upstream, httpx.

Sliding window and token bucket admissions and headers (seed, IETF, both, none), the
429 JSON error, every key part (with on_missing_key skip / fallback and trusted
proxies), global + route limits (all must pass, the most restrictive drives the
headers), concurrency slots released at body end and on client disconnect, Redis
fail-open / fail-closed against a real redis-server, and `meshgate explain`.

Sliding windows are aligned to multiples of window_s of Unix time: the tests use
one-hour windows and start away from an hour boundary, so a window never rolls
in the middle of a test.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import Any

import httpx
import pytest

from meshgate.config.loader import parse_config
from meshgate.explain import run_explain
from meshgate.gateway import Gateway
from meshgate.pipeline.ratelimit import LimitStats
from tests.e2e.conftest import (
    RawConn,
    assert_json_error,
    eventually,
    make_config,
    to_yaml,
    url,
)
from tests.redis_server import RedisServer, redis_server_fixture

redis_server = redis_server_fixture()

HOUR = 3600
AUTH = "tests.e2e.ratelimit_plugins:fake_auth"
SEED_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
IETF_HEADERS = ("ratelimit-policy", "ratelimit")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def window_end(t: float, window_s: float = HOUR) -> int:
    return int((math.floor(t / window_s) + 1) * window_s)


async def away_from_boundary(window_s: float = HOUR, margin_s: float = 20.0) -> None:
    """Wait for the next aligned window when the current one ends within ``margin_s``."""
    left = window_s - time.time() % window_s
    if left < margin_s:
        await asyncio.sleep(left + 0.05)


def limited_route(*limits: dict[str, Any], path: str = "/*", **extra: Any) -> dict[str, Any]:
    return {"path": path, "upstream": "main", "rate_limits": list(limits), **extra}


def window(name: str, limit: int, key: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "limit": limit, "window_s": HOUR, **extra}
    if key is not None:
        out["key"] = key
    return out


def stats(gw: Gateway, label: str, route: int = 0) -> LimitStats:
    stage = gw.runtime.routes[route].rate_limit
    assert stage is not None, "the route has no rate_limit stage"
    return stage.stats[label]


def counts(gw: Gateway, label: str, route: int = 0) -> tuple[int, int, int, int]:
    s = stats(gw, label, route)
    return s.allowed, s.limited, s.skipped, s.backend_errors


def assert_denied(r: httpx.Response) -> int:
    """The 429 of the foundation's JSON error format; returns Retry-After."""
    data = assert_json_error(r, 429)
    assert data == {"error": "rate limit exceeded", "request_id": r.headers["x-request-id"]}
    assert re.fullmatch(r"[1-9][0-9]*", r.headers["retry-after"]), r.headers
    return int(r.headers["retry-after"])


def seed(r: httpx.Response) -> tuple[int, int, int]:
    return (
        int(r.headers["x-ratelimit-limit"]),
        int(r.headers["x-ratelimit-remaining"]),
        int(r.headers["x-ratelimit-reset"]),
    )


# --------------------------------------------------------------------------
# algorithms, the 429, headers
# --------------------------------------------------------------------------


async def test_sliding_window_admits_limit_then_429_without_contacting_upstream(
    gateway_factory, upstream
):
    await away_from_boundary()
    gw = await gateway_factory(routes=[limited_route(window("per-ip", 5, ["ip"]))])
    t0 = time.time()
    end = window_end(t0)
    async with httpx.AsyncClient() as client:
        for i in range(5):
            r = await client.get(url(gw, f"/ok{i}"))
            assert r.status_code == 200, r.text
            assert seed(r) == (5, 4 - i, end), r.headers
        denied = await client.get(url(gw, "/denied"))
        retry = assert_denied(denied)
        assert seed(denied) == (5, 0, end)
        # Retry-After: the seconds to the end of the window (the seed's resetAt - now)
        assert end - time.time() - 2 <= retry <= end - t0 + 1
        assert end > time.time()
        again = await client.get(url(gw, "/denied"), headers={"x-request-id": "my-id-42"})
        assert assert_denied(again) >= 1
        assert again.json()["request_id"] == "my-id-42"
    assert upstream.paths() == [f"/ok{i}" for i in range(5)]
    assert counts(gw, "per-ip") == (5, 2, 0, 0)


async def test_sliding_window_rolls_with_the_aligned_window(gateway_factory, upstream):
    # 2 per 1 s window: start just after a window boundary; two windows later the
    # previous window's weight is zero and the full budget is back
    gw = await gateway_factory(
        routes=[limited_route({"name": "tiny", "limit": 2, "window_s": 1, "key": ["header:x-try"]})]
    )
    async with httpx.AsyncClient() as client:
        for attempt in range(3):  # bounded: a slow request may miss the window's end
            hdr = {"x-try": str(attempt)}  # a fresh bucket each time
            await asyncio.sleep(1 - time.time() % 1 + 0.01)
            start = math.floor(time.time())
            got = [(await client.get(url(gw, "/w"), headers=hdr)) for _ in range(3)]
            if math.floor(time.time()) == start:
                break
        assert [r.status_code for r in got] == [200, 200, 429]
        assert [seed(r) for r in got] == [(2, 1, start + 1), (2, 0, start + 1), (2, 0, start + 1)]
        assert got[2].headers["retry-after"] == "1"
        await asyncio.sleep(start + 2.02 - time.time())
        later = [(await client.get(url(gw, "/w"), headers=hdr)).status_code for _ in range(3)]
    assert later == [200, 200, 429]


async def test_token_bucket_burst_then_one_per_interval(gateway_factory, upstream):
    bucket = {"name": "bucket", "algorithm": "token_bucket", "rate_per_s": 2, "burst": 3}
    gw = await gateway_factory(routes=[limited_route(bucket)], rate_limit={"headers": "both"})
    async with httpx.AsyncClient() as client:
        burst = [await client.get(url(gw, "/tb")) for _ in range(3)]
        assert [r.status_code for r in burst] == [200, 200, 200]
        assert [seed(r)[:2] for r in burst] == [(3, 2), (3, 1), (3, 0)]
        for r in burst:  # the bucket is full again at most 1.5 s from now
            assert time.time() - 1 <= seed(r)[2] <= time.time() + 2.5
            assert r.headers["ratelimit-policy"] == '"bucket";q=3;w=2'
        assert re.fullmatch(r'"bucket";r=0;t=[12]', burst[2].headers["ratelimit"])
        fourth = await client.get(url(gw, "/tb"))
        assert assert_denied(fourth) == 1  # 0.5 s rounded up to whole seconds
        await asyncio.sleep(0.55)
        refilled = await client.get(url(gw, "/tb"))
        assert refilled.status_code == 200
        assert (await client.get(url(gw, "/tb"))).status_code == 429
    assert len(upstream.requests) == 4
    assert counts(gw, "bucket") == (4, 2, 0, 0)


@pytest.mark.parametrize("mode", ["seed", "ietf", "both", "none"])
async def test_header_modes(gateway_factory, upstream, mode):
    await away_from_boundary()
    gw = await gateway_factory(
        routes=[limited_route(window("per-ip", 2, ["ip"]))], rate_limit={"headers": mode}
    )
    async with httpx.AsyncClient() as client:
        ok = await client.get(url(gw, "/h"))
        assert ok.status_code == 200
        await client.get(url(gw, "/h"))
        denied = await client.get(url(gw, "/h"))
    assert_denied(denied)
    for r, remaining in ((ok, 1), (denied, 0)):
        has_seed = {h for h in SEED_HEADERS if h in r.headers}
        has_ietf = {h for h in IETF_HEADERS if h in r.headers}
        assert has_seed == (set(SEED_HEADERS) if mode in ("seed", "both") else set()), r.headers
        assert has_ietf == (set(IETF_HEADERS) if mode in ("ietf", "both") else set()), r.headers
        if has_ietf:
            assert r.headers["ratelimit-policy"] == '"per-ip";q=2;w=3600'
            m = re.fullmatch(r'"per-ip";r=(\d+);t=(\d+)', r.headers["ratelimit"])
            assert m is not None, r.headers["ratelimit"]
            assert int(m.group(1)) == remaining
            assert abs(int(m.group(2)) - (window_end(time.time()) - time.time())) <= 2
        if has_seed:
            assert seed(r)[:2] == (2, remaining)
    assert "retry-after" not in ok.headers


async def test_unlimited_route_has_no_rate_limit_headers_or_stage(gateway_factory, upstream):
    gw = await gateway_factory(
        routes=[
            limited_route(window("per-ip", 5), path="/limited/*"),
            {"path": "/free/*", "upstream": "main"},
        ]
    )
    assert gw.runtime.routes[1].rate_limit is None
    assert "rate_limit" not in gw.runtime.routes[1].stage_names
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/free/x"))
    assert r.status_code == 200
    assert not {h for h in (*SEED_HEADERS, *IETF_HEADERS) if h in r.headers}


# --------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------

Req = tuple[str, str, dict[str, str]]  # method, path, headers


def get(path: str, **headers: str) -> Req:
    return ("GET", path, {k.replace("_", "-"): v for k, v in headers.items()})


KEY_CASES = [
    # key, a request, another in the same bucket, one in a different bucket
    (["header:x-user"], get("/k/1", x_user="alice"), get("/k/2", x_user="alice"),
     get("/k/1", x_user="bob")),
    (["header:X-User"], get("/k/1", X_USER="alice"), get("/k/1", x_user="alice"),
     get("/k/1", x_user="Alice")),
    (["param:id"], get("/k/1"), get("/k/1?x=y"), get("/k/2")),
    (["query:k"], get("/k/1?k=a"), get("/k/2?k=a&k=b"), get("/k/1?k=b")),
    (["cookie:session"], get("/k/1", cookie="theme=dark; session=s1"),
     get("/k/1", cookie="session=s1"), get("/k/1", cookie="session=s2; theme=dark")),
    (["consumer"], get("/k/1", x_api_key="k1"), get("/k/2", x_api_key="k1"),
     get("/k/1", x_api_key="k2")),
    (["jwt:sub"], get("/k/1", x_jwt_sub="u1"), get("/k/1", x_jwt_sub="u1", x_jwt_tier="1"),
     get("/k/1", x_jwt_sub="u2")),
    (["jwt:tier"], get("/k/1", x_jwt_tier="1"), get("/k/1", x_jwt_sub="u2", x_jwt_tier="1"),
     get("/k/1", x_jwt_tier="2")),
    (["source"], get("/k/1", x_source="billing"), get("/k/2", x_source="billing"),
     get("/k/1", x_source="orders")),
    (["path"], get("/k/1"), get("/k/1?q=1"), get("/k/2")),
    (["method"], get("/k/1"), get("/k/2"), ("POST", "/k/1", {})),
    (["ip", "header:x-user"], get("/k/1", x_user="a"), get("/k/2", x_user="a"),
     get("/k/1", x_user="b")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("key", "first", "same", "other"), KEY_CASES, ids=["+".join(c[0]) for c in KEY_CASES]
)
async def test_key_parts_separate_buckets(gateway_factory, upstream, key, first, same, other):
    await away_from_boundary()
    route = limited_route(window("by-key", 1, key), path="/k/:id", middleware=["request_id", AUTH])
    gw = await gateway_factory(routes=[route])
    async with httpx.AsyncClient() as client:
        got = [
            await client.request(method, url(gw, path), headers=headers)
            for method, path, headers in (first, same, other)
        ]
    assert [r.status_code for r in got] == [200, 429, 200], [r.text for r in got]
    assert_denied(got[1])
    assert len(upstream.requests) == 2
    assert counts(gw, "by-key") == (2, 1, 0, 0)


async def test_missing_key_skip_never_limits(gateway_factory, upstream):
    await away_from_boundary()
    gw = await gateway_factory(
        routes=[limited_route(window("per-user", 1, ["header:x-user"], on_missing_key="skip"))]
    )
    async with httpx.AsyncClient() as client:
        anonymous = [await client.get(url(gw, "/anon")) for _ in range(5)]
        # an empty value is no value
        empty = await client.get(url(gw, "/anon"), headers={"x-user": ""})
        alice = [
            (await client.get(url(gw, "/u"), headers={"x-user": "alice"})).status_code
            for _ in range(2)
        ]
    assert [r.status_code for r in anonymous] == [200] * 5
    assert empty.status_code == 200
    for r in anonymous:  # no limit applied: no headers either
        assert not {h for h in SEED_HEADERS if h in r.headers}
    assert alice == [200, 429]
    assert counts(gw, "per-user") == (1, 1, 6, 0)


async def test_missing_key_fallback_shares_one_bucket(gateway_factory, upstream):
    await away_from_boundary()
    limit = window("per-user", 2, ["ip", "header:x-user"], on_missing_key="fallback")
    gw = await gateway_factory(routes=[limited_route(limit)])
    async with httpx.AsyncClient() as client:
        anonymous = [(await client.get(url(gw, "/anon"))).status_code for _ in range(3)]
        alice = [
            (await client.get(url(gw, "/u"), headers={"x-user": "alice"})).status_code
            for _ in range(3)
        ]
    assert anonymous == [200, 200, 429]
    assert alice == [200, 200, 429]  # its own bucket, not the fallback's
    assert counts(gw, "per-user") == (4, 2, 0, 0)


async def test_global_limit_keyed_by_ip_and_route_separates_routes(gateway_factory, upstream):
    await away_from_boundary()
    gw = await gateway_factory(
        routes=[
            {"name": "a", "path": "/a/*", "upstream": "main"},
            {"name": "b", "path": "/b/*", "upstream": "main"},
            {"name": "c", "path": "/c/*", "upstream": "main"},
        ],
        rate_limit={
            "limits": [window("per-ip-route", 2, ["ip", "route"]), window("per-ip", 6, ["ip"])]
        },
    )
    async with httpx.AsyncClient() as client:
        a = [(await client.get(url(gw, "/a/x"))).status_code for _ in range(3)]
        b = [(await client.get(url(gw, "/b/x"))).status_code for _ in range(3)]
        # per-ip is one budget for every route: 6 requests passed it (the 429s of
        # per-ip-route count too), so the first request on /c is denied by per-ip alone
        c = await client.get(url(gw, "/c/x"))
    assert a == [200, 200, 429]
    assert b == [200, 200, 429]
    assert_denied(c)
    assert seed(c)[:2] == (6, 0)
    assert counts(gw, "per-ip-route", 0) == (2, 1, 0, 0)
    assert counts(gw, "per-ip-route", 1) == (2, 1, 0, 0)
    assert counts(gw, "per-ip-route", 2) == (1, 0, 0, 0)
    assert counts(gw, "per-ip", 0) == (3, 0, 0, 0)
    assert counts(gw, "per-ip", 1) == (3, 0, 0, 0)
    assert counts(gw, "per-ip", 2) == (0, 1, 0, 0)


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
async def test_trusted_proxies_decide_whether_xff_is_believed(gateway_factory, upstream, trusted):
    await away_from_boundary()
    gw = await gateway_factory(
        trusted_proxies=["127.0.0.0/8"] if trusted else [],
        rate_limit={"limits": [window("per-ip", 1, ["ip"])]},
    )

    async def status(xff: str | None) -> int:
        headers = {"x-forwarded-for": xff} if xff is not None else {}
        async with httpx.AsyncClient() as client:
            return (await client.get(url(gw, "/x"), headers=headers)).status_code

    if trusted:
        assert await status("1.2.3.4") == 200
        assert await status("1.2.3.4") == 429
        # what the client wrote left of the last untrusted hop proves nothing
        assert await status("9.9.9.9, 1.2.3.4") == 429
        # trusted hops are skipped from the right
        assert await status("1.2.3.4, 127.0.0.9") == 429
        assert await status("5.6.7.8") == 200  # another client, its own budget
        assert await status(None) == 200  # the peer itself
        assert await status(None) == 429
    else:
        assert await status("1.2.3.4") == 200
        assert await status("5.6.7.8") == 429  # XFF ignored: the peer's one budget
        assert await status(None) == 429


async def test_global_and_route_limits_all_must_pass_most_restrictive_drives_headers(
    gateway_factory, upstream
):
    await away_from_boundary()
    gw = await gateway_factory(
        routes=[
            limited_route(window("route-a", 100, ["ip"]), path="/a/*"),
            limited_route(window("route-b", 3, ["ip"]), path="/b/*"),
        ],
        rate_limit={"limits": [window("global", 5, ["ip"])]},
    )
    async with httpx.AsyncClient() as client:
        # /b: route-b (2 left) is more restrictive than global (4 left)
        b1 = await client.get(url(gw, "/b/1"))
        assert (b1.status_code, seed(b1)[:2]) == (200, (3, 2))
        # /a: global (3, 2, 1 left) is more restrictive than route-a (99...)
        a = [await client.get(url(gw, "/a/x")) for _ in range(3)]
        assert [seed(r)[:2] for r in a] == [(5, 3), (5, 2), (5, 1)]
        # /b again: global has 0 left, route-b 1: global drives now
        b2 = await client.get(url(gw, "/b/2"))
        assert (b2.status_code, seed(b2)[:2]) == (200, (5, 0))
        # denied by global (route-b still admits it): the denying limit's headers
        b3 = await client.get(url(gw, "/b/3"))
        assert_denied(b3)
        assert seed(b3)[:2] == (5, 0)
        a4 = await client.get(url(gw, "/a/4"))
        assert_denied(a4)
        assert seed(a4)[:2] == (5, 0)
    assert upstream.paths() == ["/b/1", "/a/x", "/a/x", "/a/x", "/b/2"]
    assert counts(gw, "global", 0) == (3, 1, 0, 0)
    assert counts(gw, "route-a", 0) == (4, 0, 0, 0)
    assert counts(gw, "global", 1) == (2, 1, 0, 0)
    assert counts(gw, "route-b", 1) == (3, 0, 0, 0)


async def test_request_denied_by_route_limit_counts_against_global(gateway_factory, upstream):
    await away_from_boundary()
    gw = await gateway_factory(
        routes=[
            limited_route(window("route", 2, ["ip"]), path="/r/*"),
            {"path": "/other/*", "upstream": "main"},
        ],
        rate_limit={"limits": [window("global", 10, ["ip"])]},
    )
    async with httpx.AsyncClient() as client:
        got = [await client.get(url(gw, "/r/x")) for _ in range(4)]
        other = await client.get(url(gw, "/other/x"))
    assert [r.status_code for r in got] == [200, 200, 429, 429]
    assert_denied(got[2])
    assert seed(got[2])[:2] == (2, 0)  # the denying (route) limit's numbers
    assert counts(gw, "global", 0) == (4, 0, 0, 0)
    assert counts(gw, "route", 0) == (2, 2, 0, 0)
    # the two denied requests were counted by the global limit: 10 - 5
    assert other.status_code == 200
    assert seed(other)[:2] == (10, 5)
    assert counts(gw, "global", 1) == (1, 0, 0, 0)


async def test_local_counts_are_bounded_and_kept_across_an_unchanged_reload(
    gateway_factory, upstream
):
    await away_from_boundary()
    cfg = make_config(
        upstream.port,
        routes=[limited_route(window("per-user", 1, ["header:x-user"]))],
        rate_limit={"max_local_keys": 2},
    )
    gw = await gateway_factory(cfg)
    async with httpx.AsyncClient() as client:

        async def as_user(user: str) -> int:
            return (await client.get(url(gw, "/x"), headers={"x-user": user})).status_code

        assert [await as_user("a"), await as_user("a")] == [200, 429]
        assert [await as_user("b"), await as_user("c")] == [200, 200]
        # three keys in use, two kept: 'a' (least recently used) was forgotten
        assert await as_user("a") == 200
        assert await as_user("c") == 429
        config, doc = parse_config(to_yaml(cfg), "e2e.yaml")
        await gw.reload(config, doc)
        assert await as_user("c") == 429  # an unchanged limit keeps its counts
        cfg["rate_limit"]["max_local_keys"] = 3
        config, doc = parse_config(to_yaml(cfg), "e2e.yaml")
        await gw.reload(config, doc)
        assert await as_user("c") == 200  # its settings changed: it starts afresh
        assert await as_user("c") == 429


# --------------------------------------------------------------------------
# concurrency
# --------------------------------------------------------------------------


def in_flight(gw: Gateway, key: str = "127.0.0.1") -> int:
    stage = gw.runtime.routes[0].rate_limit
    assert stage is not None
    limiter = next(lim.concurrency for lim in stage.limits if lim.concurrency is not None)
    return limiter.in_flight(key)


async def concurrency_gateway(gateway_factory: Any) -> Gateway:
    limit = {"name": "in-flight", "algorithm": "concurrency", "limit": 2, "key": ["ip"]}
    return await gateway_factory(routes=[limited_route(limit)], listener={"idle_timeout_s": 10})


async def test_concurrency_limit_denies_third_in_flight_and_frees_at_body_end(
    gateway_factory, upstream
):
    gw = await concurrency_gateway(gateway_factory)
    async with httpx.AsyncClient(timeout=10) as client:
        slow = [asyncio.create_task(client.get(url(gw, "/slow?s=1"))) for _ in range(2)]
        await eventually(lambda: len(upstream.requests) == 2)
        t = time.monotonic()
        third = await client.get(url(gw, "/slow?s=1"))
        assert time.monotonic() - t < 0.5  # at once, not after a slot frees
        assert_denied(third)
        assert (third.headers["x-ratelimit-limit"], third.headers["x-ratelimit-remaining"]) == (
            "2",
            "0",
        )
        assert "x-ratelimit-reset" not in third.headers  # an in-flight count has no reset
        done = await asyncio.gather(*slow)
        assert [(r.status_code, r.text) for r in done] == [(200, "slow done")] * 2
        assert in_flight(gw) == 0
        again = await asyncio.gather(*(client.get(url(gw, "/slow?s=0.2")) for _ in range(2)))
        assert [r.status_code for r in again] == [200, 200]
        # failed exchanges (502) release their slot too
        for _ in range(3):
            assert (await client.get(url(gw, "/reset?when=before"))).status_code == 502
        assert in_flight(gw) == 0
        statuses = await asyncio.gather(*(client.get(url(gw, "/slow?s=0.2")) for _ in range(2)))
        assert [r.status_code for r in statuses] == [200, 200]
    assert upstream.paths().count("/slow") == 6  # never the denied one
    assert counts(gw, "in-flight") == (9, 1, 0, 0)


async def test_concurrency_slot_freed_when_client_disconnects_mid_body(gateway_factory, upstream):
    gw = await concurrency_gateway(gateway_factory)
    big = b"GET /big?n=67108864&mode=chunked HTTP/1.1\r\nHost: x\r\n\r\n"
    conns = [await RawConn.open(gw.port) for _ in range(2)]
    for conn in conns:
        await conn.send(big)
        head = await conn.read_response(head=True)
        assert head.status == 200
    assert in_flight(gw) == 2  # the bodies are still streaming
    async with httpx.AsyncClient(timeout=10) as client:
        assert_denied(await client.get(url(gw, "/x")))
        for conn in conns:
            await conn.reset()
        await eventually(lambda: in_flight(gw) == 0, 5)
        both = await asyncio.gather(*(client.get(url(gw, "/slow?s=0.2")) for _ in range(2)))
    assert [r.status_code for r in both] == [200, 200]


async def test_concurrency_slot_freed_on_timeout_and_when_client_leaves_early(
    gateway_factory, upstream
):
    limit = {"name": "in-flight", "algorithm": "concurrency", "limit": 1, "key": ["ip"]}
    gw = await gateway_factory(
        routes=[limited_route(limit, timeout_s=0.3)], listener={"idle_timeout_s": 10}
    )
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(url(gw, "/slow?s=2"))).status_code == 504
        assert in_flight(gw) == 0
    # the client goes away while the gateway waits for the upstream's answer
    conn = await RawConn.open(gw.port)
    await conn.send(b"GET /slow?s=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    await eventually(lambda: upstream.paths().count("/slow") == 2)
    assert in_flight(gw) == 1
    await conn.reset()
    await eventually(lambda: in_flight(gw) == 0)
    # ... or while it is still sending its request body
    conn = await RawConn.open(gw.port)
    await conn.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    await eventually(lambda: in_flight(gw) == 1)
    await conn.reset()
    await eventually(lambda: in_flight(gw) == 0)
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(url(gw, "/x"))).status_code == 200


# --------------------------------------------------------------------------
# Redis backend: fail open / closed
# --------------------------------------------------------------------------


def redis_config(upstream_port: int, server: RedisServer, fail_open: bool) -> dict[str, Any]:
    return make_config(
        upstream_port,
        routes=[limited_route(window("fleet", 3, ["ip"], backend="redis"))],
        rate_limit={
            "redis": {
                "url": server.url,
                "timeout_s": 0.3,
                "connect_timeout_s": 0.3,
                "fail_open": fail_open,
            }
        },
    )


async def test_redis_limit_fails_open_and_recovers(
    gateway_factory, upstream, redis_server: RedisServer, caplog
):
    await away_from_boundary()
    gw = await gateway_factory(redis_config(upstream.port, redis_server, fail_open=True))
    async with httpx.AsyncClient(timeout=10) as client:
        got = [await client.get(url(gw, "/x")) for _ in range(4)]
        assert [r.status_code for r in got] == [200, 200, 200, 429]
        assert [seed(r)[1] for r in got] == [2, 1, 0, 0]
        assert_denied(got[3])
        assert counts(gw, "fleet") == (3, 1, 0, 0)

        redis_server.kill()
        down = [await client.get(url(gw, "/x")) for _ in range(5)]
        assert [r.status_code for r in down] == [200] * 5
        assert counts(gw, "fleet")[3] == 5
        assert "redis unavailable" in caplog.text
        assert caplog.text.count("redis unavailable") == 1  # at most one warning per 10 s

        redis_server.restart()  # same port, empty

        async def limited_again() -> bool:
            return (await client.get(url(gw, "/x"))).status_code == 429

        await eventually(limited_again, 10)
    errors = counts(gw, "fleet")[3]
    assert errors >= 5
    assert 5 + 3 <= len(upstream.requests) <= 5 + 3 + (errors - 5) + 3


async def test_redis_limit_fails_open_when_redis_hangs(
    gateway_factory, upstream, redis_server: RedisServer
):
    gw = await gateway_factory(redis_config(upstream.port, redis_server, fail_open=True))
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(url(gw, "/x"))).status_code == 200
        with redis_server.paused():
            t = time.monotonic()
            r = await client.get(url(gw, "/x"))
            elapsed = time.monotonic() - t
        assert r.status_code == 200
        assert elapsed < 2  # the check gives up after timeout_s (0.3 s)
    assert counts(gw, "fleet")[3] == 1


async def test_redis_limit_fail_closed_answers_503(
    gateway_factory, upstream, redis_server: RedisServer
):
    await away_from_boundary()
    gw = await gateway_factory(redis_config(upstream.port, redis_server, fail_open=False))
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(url(gw, "/x"))).status_code == 200
        redis_server.kill()
        r = await client.get(url(gw, "/x"))
        data = assert_json_error(r, 503)
        assert data == {
            "error": "rate limit backend unavailable",
            "request_id": r.headers["x-request-id"],
        }
        redis_server.restart()

        async def ok_again() -> bool:
            return (await client.get(url(gw, "/x"))).status_code == 200

        await eventually(ok_again, 10)
    assert len(upstream.requests) == 2
    assert counts(gw, "fleet")[3] >= 1


# --------------------------------------------------------------------------
# meshgate explain
# --------------------------------------------------------------------------

EXPLAIN_CONFIG = """\
upstreams:
  - name: api
    instances: [{host: 127.0.0.1, port: 9001}]
trusted_proxies: [127.0.0.0/8]
rate_limit:
  limits:
    - name: per-ip
      limit: 100
      window_s: 10
routes:
  - name: users
    path: /users/:id
    upstream: api
    rate_limits:
      - name: per-user-burst
        algorithm: token_bucket
        rate_per_s: 5
        burst: 20
        key: [header:x-user-id, param:id]
      - name: per-user-route
        limit: 1000
        window_s: 3600
        key: [header:x-user-id, route]
        on_missing_key: fallback
      - name: uploads
        algorithm: concurrency
        limit: 4
        key: [query:upload]
"""


def explain_lines(headers: list[str], target: str = "http://gw/users/7?upload=u1") -> list[str]:
    config, doc = parse_config(EXPLAIN_CONFIG, "gw.yaml")
    lines = run_explain(config, doc, "GET", target, headers)
    return [line for line in lines if "rate_limit:" in line]


def test_explain_lists_each_limit_with_its_key():
    lines = explain_lines(["x-user-id: alice", "x-forwarded-for: 203.0.113.9"])
    assert lines == [
        "  rate_limit: per-ip [global, local]: 100 per 10s (sliding window) by ip; "
        "key '203.0.113.9'",
        "  rate_limit: per-user-burst [users, local]: 5/s, burst 20 (token bucket) by "
        "header:x-user-id+param:id; key 'alice|7'",
        "  rate_limit: per-user-route [users, local]: 1000 per 3600s (sliding window) by "
        "header:x-user-id+route; key 'alice|users'",
        "  rate_limit: uploads [users, local]: 4 in flight (concurrency) by query:upload; key 'u1'",
    ]


def test_explain_shows_skipped_and_fallback_keys():
    lines = explain_lines([], target="http://gw/users/7")
    assert len(lines) == 4
    assert lines[0].endswith("key '127.0.0.1'")
    assert lines[1].endswith("key skipped (no value)")
    # on_missing_key: fallback counts it in the shared bucket: explain should say so in
    # words, not show the internal sentinel key ('\x00missing')
    assert "per-user-route" in lines[2] and "skipped" not in lines[2]
    assert "\\x00" not in lines[2] and "fallback" in lines[2].rsplit("; key ", 1)[1], lines[2]
    assert lines[3].endswith("key skipped (no value)")
