"""The response cache end to end: a real gateway in front of an origin that counts
its requests (tests/e2e/cache_helpers.py), real httpx clients, the memory store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshgate.config.loader import load_config
from meshgate.gateway import Gateway
from tests.e2e.cache_helpers import Origin, cache_config
from tests.e2e.conftest import TestUpstream, eventually, make_config, to_yaml, url

CachedGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    srv = Origin()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def cached(origin: Origin, tmp_path: Path) -> AsyncIterator[CachedGateway]:
    """``await make(cache={...}, **route_keys)`` (or ``make(cfg=...)``): a gateway
    started from ``tmp_path/gateway.yaml`` with its admin listener on a free port."""
    started: list[Gateway] = []

    async def make(cfg: dict[str, Any] | None = None, **kwargs: Any) -> Gateway:
        if cfg is None:
            cfg = cache_config(origin.port, **kwargs)
        cfg.setdefault("admin", {"host": "127.0.0.1", "port": 0})
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


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=10, limits=limits) as c:
        yield c


def write_config(gw: Gateway, cfg: dict[str, Any]) -> None:
    assert gw.config_path is not None
    gw.config_path.write_text(to_yaml(cfg))


def admin_url(gw: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gw.admin_port}{path}"


async def get(client: httpx.AsyncClient, gw: Gateway, path: str, **kw: Any) -> httpx.Response:
    return await client.get(url(gw, path), **kw)


# --------------------------------------------------------------------------- hit, miss, expiry


async def test_hit_after_miss_without_asking_the_origin_again(cached, origin, client):
    gw = await cached()
    first = await get(client, gw, "/a")
    second = await get(client, gw, "/a")
    assert (first.status_code, first.text, first.headers["x-cache"]) == (200, "/a #1", "MISS")
    assert (second.status_code, second.text, second.headers["x-cache"]) == (200, "/a #1", "HIT")
    assert second.headers["age"] == "0"
    assert second.headers["content-type"] == "text/plain"
    assert "age" not in first.headers
    # per-request fields still come from this request's own chain
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert origin.count_of("/a") == 1
    # another path, another query: other entries
    assert (await get(client, gw, "/a?x=1")).headers["x-cache"] == "MISS"
    assert (await get(client, gw, "/b")).text == "/b #1"
    assert origin.count == 3


@pytest.mark.parametrize(
    ("query", "lifetime_s"),
    [
        pytest.param("", 1.0, id="route-ttl"),
        pytest.param("?cc=max-age%3D1", 1.0, id="max-age"),
        pytest.param("?cc=max-age%3D100%2C%20s-maxage%3D1", 1.0, id="s-maxage-wins"),
        pytest.param("?expires_in=2", 2.0, id="expires"),
    ],
)
async def test_entries_expire_after_their_lifetime(cached, origin, client, query, lifetime_s):
    gw = await cached(cache={"ttl_s": 1 if not query else 300})
    path = "/exp" + query
    assert (await get(client, gw, path)).headers["x-cache"] == "MISS"
    hit = await get(client, gw, path)
    assert (hit.headers["x-cache"], hit.text) == ("HIT", "/exp #1")
    await asyncio.sleep(lifetime_s + 0.1)
    again = await get(client, gw, path)
    assert (again.headers["x-cache"], again.text) == ("MISS", "/exp #2")
    assert origin.count_of("/exp") == 2


async def test_upstream_age_counts_against_the_lifetime(cached, origin, client):
    gw = await cached()
    # max-age 1 s with a Date 10 s in the past: already stale when received
    past = formatdate(time.time() - 10, usegmt=True)
    origin.behave = _with_header(origin, ("Date", past))
    await get(client, gw, "/aged?cc=max-age%3D1")
    again = await get(client, gw, "/aged?cc=max-age%3D1")
    assert again.headers["x-cache"] == "MISS"
    assert origin.count_of("/aged") == 2


def _with_header(origin: Origin, field: tuple[str, str]) -> Any:
    answer = origin._answer

    def behave(seen: Any, n: int) -> Any:
        reply = answer(seen, n)
        return type(reply)(reply.status, reply.delay_s, (*reply.headers, field), reply.body)

    return behave


# --------------------------------------------------------------------------- not stored


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("?cc=no-store", id="no-store"),
        pytest.param("?cc=private", id="private"),
        pytest.param("?cc=private%3D%22set-cookie%22", id="private-fields"),
        pytest.param("?cookie=session%3D1", id="set-cookie"),
        pytest.param("?vary=*", id="vary-star"),
        pytest.param("?status=500", id="status-500"),
        pytest.param("?status=302", id="status-302"),
    ],
)
async def test_responses_not_stored(cached, origin, client, query):
    gw = await cached()
    for n in (1, 2):
        r = await get(client, gw, "/ns" + query)
        assert r.headers["x-cache"] == "MISS"
        if r.status_code == 200:
            assert r.text.startswith(f"/ns #{n}")
    assert origin.count_of("/ns") == 2


async def test_404_and_301_are_stored(cached, origin, client):
    gw = await cached()
    for status in (404, 301):
        path = f"/st{status}?status={status}"
        for _ in range(2):
            r = await get(client, gw, path)
            assert r.status_code == status
        assert r.headers["x-cache"] == "HIT"
    assert origin.count == 2


async def test_set_cookie_stored_when_the_route_says_so(cached, origin, client):
    gw = await cached(cache={"cache_set_cookie": True})
    await get(client, gw, "/c?cookie=a%3D1")
    hit = await get(client, gw, "/c?cookie=a%3D1")
    assert (hit.headers["x-cache"], hit.headers["set-cookie"]) == ("HIT", "a=1")
    assert origin.count == 1


async def test_authorization_bypasses_unless_public(cached, origin, client):
    gw = await cached()
    auth = {"authorization": "Bearer t"}
    for _ in range(2):
        r = await get(client, gw, "/auth", headers=auth)
        assert r.headers["x-cache"] == "BYPASS"
    assert origin.count_of("/auth") == 2
    # requests without credentials are not answered with what a credentialed one got
    assert (await get(client, gw, "/auth")).headers["x-cache"] == "MISS"
    assert origin.count_of("/auth") == 3

    public = await cached(cache={"public": True})
    await get(client, public, "/pub", headers=auth)
    hit = await get(client, public, "/pub", headers=auth)
    assert hit.headers["x-cache"] == "HIT"
    assert origin.count_of("/pub") == 1


async def test_methods_other_than_get_and_head_bypass(cached, origin, client):
    gw = await cached()
    for _ in range(2):
        r = await client.post(url(gw, "/post"), content=b"x")
        assert r.headers["x-cache"] == "BYPASS"
    assert origin.count_of("/post") == 2


async def test_request_no_store_bypasses(cached, origin, client):
    gw = await cached()
    await get(client, gw, "/rns")
    r = await get(client, gw, "/rns", headers={"cache-control": "no-store"})
    assert (r.headers["x-cache"], r.text) == ("BYPASS", "/rns #2")


# --------------------------------------------------------------------------- keys and variants


async def test_vary_keeps_one_variant_per_request_header_value(cached, origin, client):
    gw = await cached()
    path = "/v?vary=Accept-Language"
    answers = []
    for lang in ("en", "fr", "en", "fr", None):
        headers = {"accept-language": lang} if lang else {}
        r = await get(client, gw, path, headers=headers)
        answers.append((r.headers["x-cache"], r.text))
    assert answers == [
        ("MISS", "/v #1 Accept-Language=en"),
        ("MISS", "/v #2 Accept-Language=fr"),
        ("HIT", "/v #1 Accept-Language=en"),
        ("HIT", "/v #2 Accept-Language=fr"),
        ("MISS", "/v #3 Accept-Language=None"),
    ]
    assert origin.count_of("/v") == 3


async def test_key_query_params_and_headers(cached, origin, client):
    gw = await cached(cache={"key_query": ["id"], "key_headers": ["x-tenant"]})
    await get(client, gw, "/k?id=1&utm=a", headers={"x-tenant": "t1"})
    same = await get(client, gw, "/k?utm=b&id=1", headers={"x-tenant": "t1"})
    other_tenant = await get(client, gw, "/k?id=1", headers={"x-tenant": "t2"})
    other_id = await get(client, gw, "/k?id=2", headers={"x-tenant": "t1"})
    assert [r.headers["x-cache"] for r in (same, other_tenant, other_id)] == ["HIT", "MISS", "MISS"]
    assert origin.count_of("/k") == 3


async def test_head_is_answered_from_the_get_entry(cached, origin, client):
    gw = await cached()
    body = (await get(client, gw, "/h")).content
    head = await client.head(url(gw, "/h"))
    assert (head.status_code, head.headers["x-cache"]) == (200, "HIT")
    assert head.headers["content-length"] == str(len(body))
    assert head.content == b""
    assert origin.count_of("/h") == 1
    # a HEAD miss goes upstream as a HEAD and stores nothing
    miss = await client.head(url(gw, "/h2"))
    assert (miss.headers["x-cache"], origin.seen("/h2")[0].method) == ("MISS", "HEAD")
    assert (await get(client, gw, "/h2")).headers["x-cache"] == "MISS"


# --------------------------------------------------------------------------- conditional requests


async def test_client_conditional_requests_get_304_from_the_cache(cached, origin, client):
    gw = await cached()
    lm = formatdate(time.time() - 3600, usegmt=True)
    path = f"/cond?etag=%22v1%22&lm={lm.replace(' ', '%20').replace(',', '%2C')}"
    first = await get(client, gw, path, headers={"if-none-match": '"v1"'})
    # a miss is filled with an unconditional request: the client gets the whole body
    assert (first.status_code, first.text) == (200, "/cond #1")
    assert "if-none-match" not in origin.seen("/cond")[0].headers
    r304 = await get(client, gw, path, headers={"if-none-match": 'W/"v0", "v1"'})
    assert (r304.status_code, r304.headers["x-cache"], r304.content) == (304, "HIT", b"")
    assert r304.headers["etag"] == '"v1"'
    assert "content-length" not in r304.headers
    since = await get(client, gw, path, headers={"if-modified-since": lm})
    assert since.status_code == 304
    changed = await get(client, gw, path, headers={"if-none-match": '"v2"'})
    assert (changed.status_code, changed.text) == (200, "/cond #1")
    assert origin.count_of("/cond") == 1


async def test_stale_entries_are_revalidated_with_conditional_requests(cached, origin, client):
    gw = await cached()
    path = "/rv?cc=max-age%3D1&etag=%22e1%22"
    assert (await get(client, gw, path)).headers["x-cache"] == "MISS"
    await asyncio.sleep(1.1)
    r = await get(client, gw, path)
    # the origin answered 304 to our If-None-Match: the stored body, refreshed
    assert (r.status_code, r.text, r.headers["x-cache"]) == (200, "/rv #1", "REVALIDATED")
    assert origin.seen("/rv")[1].headers["if-none-match"] == '"e1"'
    hit = await get(client, gw, path)
    assert (hit.headers["x-cache"], hit.text) == ("HIT", "/rv #1")
    assert origin.count_of("/rv") == 2


async def test_no_cache_responses_are_revalidated_on_every_use(cached, origin, client):
    gw = await cached()
    path = "/nc?cc=no-cache&etag=%22n1%22"
    await get(client, gw, path)
    results = [(await get(client, gw, path)).headers["x-cache"] for _ in range(3)]
    assert results == ["REVALIDATED"] * 3
    assert origin.count_of("/nc") == 4
    # a client's own conditional request is then answered 304 after the revalidation
    r = await get(client, gw, path, headers={"if-none-match": '"n1"'})
    assert (r.status_code, r.headers["x-cache"]) == (304, "REVALIDATED")


async def test_request_no_cache_revalidates_a_fresh_entry(cached, origin, client):
    gw = await cached()
    await get(client, gw, "/rq?etag=%22q%22")
    r = await get(client, gw, "/rq?etag=%22q%22", headers={"cache-control": "no-cache"})
    assert (r.headers["x-cache"], r.text) == ("REVALIDATED", "/rq #1")
    assert origin.seen("/rq")[1].headers["if-none-match"] == '"q"'
    # without a validator the entry is fetched again
    await get(client, gw, "/rq2")
    r = await get(client, gw, "/rq2", headers={"pragma": "no-cache"})
    assert (r.headers["x-cache"], r.text) == ("MISS", "/rq2 #2")


# --------------------------------------------------------------------------- single flight


async def test_concurrent_misses_cause_one_upstream_request(cached, origin, client):
    gw = await cached()
    responses = await asyncio.gather(*(get(client, gw, "/sf?delay=1") for _ in range(50)))
    assert origin.count_of("/sf") == 1
    assert {(r.status_code, r.text) for r in responses} == {(200, "/sf #1")}
    results = sorted(r.headers["x-cache"] for r in responses)
    assert results == ["HIT"] * 49 + ["MISS"]


async def test_waiters_are_bounded(cached, origin, client):
    gw = await cached(cache={"max_waiters": 5})
    responses = await asyncio.gather(*(get(client, gw, "/bw?delay=1") for _ in range(20)))
    assert all(r.status_code == 200 for r in responses)
    # the leader, 5 waiters answered from its entry, 14 asking the origin themselves
    assert origin.count_of("/bw") == 15
    assert sorted(r.headers["x-cache"] for r in responses).count("HIT") == 5


async def test_waiters_give_up_after_the_lock_timeout(cached, origin, client):
    gw = await cached(cache={"lock_timeout_s": 0.2})
    slow = asyncio.ensure_future(get(client, gw, "/lt?delay=1.5"))
    await eventually(lambda: origin.count_of("/lt") == 1)
    start = time.monotonic()
    r = await get(client, gw, "/lt?delay=0")  # another key: not waiting
    assert r.headers["x-cache"] == "MISS"
    second = await get(client, gw, "/lt?delay=1.5")
    assert time.monotonic() - start < 3  # waited 0.2 s, then its own 1.5 s request
    assert second.headers["x-cache"] == "MISS"
    assert (await slow).headers["x-cache"] == "MISS"
    assert origin.count_of("/lt") == 3


async def test_an_upstream_error_is_not_cached_and_releases_the_waiters(cached, origin, client):
    gw = await cached()
    responses = await asyncio.gather(
        *(get(client, gw, "/err?status=503&delay=0.5") for _ in range(10))
    )
    assert [r.status_code for r in responses] == [503] * 10
    assert {r.headers["x-cache"] for r in responses} == {"MISS"}
    # the leader's error released the 9 waiters, each then asked the origin itself
    assert origin.count_of("/err") == 10
    # nothing was stored
    assert (await get(client, gw, "/err?status=503")).headers["x-cache"] == "MISS"


# --------------------------------------------------------------------------- stale serving


async def test_stale_if_error_when_the_upstream_is_down(cached, origin, client):
    gw = await cached(cache={"ttl_s": 1, "stale_if_error_s": 60})
    assert (await get(client, gw, "/sie")).text == "/sie #1"
    await origin.stop()
    await asyncio.sleep(1.1)
    r = await get(client, gw, "/sie")
    assert (r.status_code, r.text, r.headers["x-cache"]) == (200, "/sie #1", "STALE")
    assert int(r.headers["age"]) >= 1
    # without a stale-if-error window the failure is the answer
    plain = await cached(cache={"ttl_s": 300})
    down = await get(client, plain, "/never-stored")
    assert (down.status_code, down.headers["x-cache"]) == (503, "MISS")


async def test_stale_if_error_from_the_response_and_on_5xx(cached, origin, client):
    gw = await cached()
    path = "/sie5?cc=max-age%3D1%2C%20stale-if-error%3D60"
    await get(client, gw, path)
    await asyncio.sleep(1.1)
    origin.behave = _failing(origin)  # the origin answers 500 from now on
    r = await get(client, gw, path)
    assert (r.status_code, r.text, r.headers["x-cache"]) == (200, "/sie5 #1", "STALE")
    assert origin.count_of("/sie5") == 2


def _failing(origin: Origin) -> Any:
    answer = origin._answer

    def behave(seen: Any, n: int) -> Any:
        reply = answer(seen, n)
        return type(reply)(500, 0.0, (), b"broken")

    return behave


async def test_stale_while_revalidate_answers_at_once_and_refreshes(cached, origin, client):
    gw = await cached()
    path = "/swr?cc=max-age%3D1%2C%20stale-while-revalidate%3D30"
    await get(client, gw, path)
    await asyncio.sleep(1.1)
    origin.behave = _slow(origin, 2)
    start = time.monotonic()
    r = await get(client, gw, path)
    assert (r.text, r.headers["x-cache"]) == ("/swr #1", "STALE")
    assert time.monotonic() - start < 1.5  # not waiting for the refresh
    await eventually(lambda: origin.count_of("/swr") == 2)
    await eventually(lambda: not gw.runtime.routes[0].cache.tasks, wait_s=6)
    fresh = await get(client, gw, path)
    assert (fresh.text, fresh.headers["x-cache"]) == ("/swr #2", "HIT")
    assert origin.count_of("/swr") == 2


def _slow(origin: Origin, delay_s: float) -> Any:
    answer = origin._answer

    def behave(seen: Any, n: int) -> Any:
        reply = answer(seen, n)
        return type(reply)(reply.status, delay_s, reply.headers, reply.body)

    return behave


async def test_background_refresh_is_cancelled_on_close(cached, origin, client):
    gw = await cached(cache={"ttl_s": 1, "stale_while_revalidate_s": 30})
    await get(client, gw, "/bg")
    await asyncio.sleep(1.1)
    origin.behave = _slow(origin, 5)
    assert (await get(client, gw, "/bg")).headers["x-cache"] == "STALE"
    stage = gw.runtime.routes[0].cache
    await eventually(lambda: origin.count_of("/bg") == 2)
    assert len(stage.tasks) == 1
    await gw.stop(drain_timeout_s=1)
    await eventually(lambda: not stage.tasks)
    await eventually(lambda: origin.seen("/bg")[1].abandoned)


# --------------------------------------------------------------------------- size


async def test_bodies_over_max_object_bytes_are_streamed_not_stored(cached, origin, client):
    gw = await cached(cache={"max_object_bytes": 1000})
    for _ in range(2):
        r = await get(client, gw, "/big?size=2000")
        assert (len(r.content), r.headers["x-cache"]) == (2000, "MISS")
    small = [await get(client, gw, "/small?size=1000") for _ in range(2)]
    assert [r.headers["x-cache"] for r in small] == ["MISS", "HIT"]
    assert len(small[1].content) == 1000
    assert origin.count == 3


async def test_streamed_bodies_of_unknown_length(gateway_factory, upstream: TestUpstream, client):
    """Chunked bodies: passed on while buffered, stored when complete within the limit."""
    route = {"path": "/*", "upstream": "main", "cache": {"max_object_bytes": 400_000}}
    gw = await gateway_factory(make_config(upstream.port, routes=[route]))
    for n, expected in ((300_000, ["MISS", "HIT"]), (1_000_000, ["MISS", "MISS"])):
        got = []
        for _ in range(2):
            r = await get(client, gw, f"/big?n={n}&mode=chunked")
            assert len(r.content) == n
            got.append(r.headers["x-cache"])
        assert got == expected
    assert upstream.paths().count("/big") == 3


# --------------------------------------------------------------------------- chain, reload


async def test_response_header_edits_apply_to_cached_answers(cached, origin, client):
    gw = await cached(response_headers={"set": {"x-served-for": "${request_id}"}})
    await get(client, gw, "/rh")
    hit = await get(client, gw, "/rh", headers={"x-request-id": "second"})
    assert (hit.headers["x-cache"], hit.headers["x-served-for"]) == ("HIT", "second")


async def test_entries_survive_a_reload_of_unchanged_routes(cached, origin, client):
    cfg = cache_config(origin.port)
    cfg["routes"].append({"name": "other", "path": "/other/*", "upstream": "origin", "cache": {}})
    gw = await cached(cfg)
    await get(client, gw, "/kept")
    await get(client, gw, "/other/x")
    await gw.reload_from_file()
    assert (await get(client, gw, "/kept")).headers["x-cache"] == "HIT"
    # a changed route starts empty; the unchanged one keeps its entries
    cfg["routes"][1]["cache"] = {"ttl_s": 10}
    write_config(gw, cfg)
    await gw.reload_from_file()
    assert (await get(client, gw, "/other/x")).headers["x-cache"] == "MISS"
    assert (await get(client, gw, "/kept")).headers["x-cache"] == "HIT"


# --------------------------------------------------------------------------- admin: purge, metrics


async def test_purge_by_key_and_prefix(cached, origin, client):
    gw = await cached()
    host = f"127.0.0.1:{gw.port}"
    for path in ("/p/1", "/p/2", "/p/2?x=1", "/q"):
        await get(client, gw, path)
    r = await client.post(admin_url(gw, "/cache/purge"), json={"key": f"{host}/p/2"})
    assert (r.status_code, r.json()) == (200, {"purged": 1})
    assert (await get(client, gw, "/p/2")).headers["x-cache"] == "MISS"
    assert (await get(client, gw, "/p/2?x=1")).headers["x-cache"] == "HIT"
    r = await client.post(admin_url(gw, "/cache/purge"), json={"prefix": f"{host}/p/"})
    assert (r.status_code, r.json()) == (200, {"purged": 3})
    answers = [(await get(client, gw, p)).headers["x-cache"] for p in ("/p/1", "/p/2?x=1", "/q")]
    assert answers == ["MISS", "MISS", "HIT"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "body must be JSON"),
        (b'{"key": "a", "prefix": "b"}', 'give one of "key" or "prefix"'),
        (b"{}", 'give one of "key" or "prefix"'),
        (b'{"prefix": ""}', '"prefix" must be a non-empty string'),
        (b'{"key": 5}', '"key" must be a non-empty string'),
        (b"[1]", "body must be a JSON object"),
    ],
)
async def test_purge_refuses_bad_requests(cached, client, body, message):
    gw = await cached()
    r = await client.post(admin_url(gw, "/cache/purge"), content=body)
    assert r.status_code == 400
    assert message in r.json()["error"]


async def test_purge_without_a_cached_route(cached, origin, client):
    cfg = cache_config(origin.port)
    del cfg["routes"][0]["cache"]
    gw = await cached(cfg)
    r = await client.post(admin_url(gw, "/cache/purge"), json={"prefix": "a"})
    assert r.status_code == 409


async def test_cache_metrics(cached, origin, client):
    gw = await cached(cache={"max_object_bytes": 2000}, **{})
    gw_cfg = gw.config
    assert gw_cfg.cache.max_bytes == 64 * 1024 * 1024
    await get(client, gw, "/m")
    await get(client, gw, "/m")
    await client.post(url(gw, "/m"))
    text = (await client.get(admin_url(gw, "/metrics"))).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    req = "meshgate_cache_requests_total"
    assert samples[(req, (("result", "hit"), ("route", "cached")))] == 1
    assert samples[(req, (("result", "miss"), ("route", "cached")))] == 1
    assert samples[(req, (("result", "bypass"), ("route", "cached")))] == 1
    assert samples[("meshgate_cache_stored_total", (("route", "cached"),))] == 1
    assert samples[("meshgate_cache_entries", ())] == 1
    assert samples[("meshgate_cache_bytes", ())] > len("/m #1")
    assert samples[("meshgate_cache_evictions_total", ())] == 0


async def test_memory_store_evicts_within_max_bytes(cached, origin, client):
    cfg = cache_config(origin.port)
    cfg["cache"] = {"max_bytes": 20_000}
    gw = await cached(cfg)
    for i in range(10):
        await get(client, gw, f"/e{i}?size=5000")
    store = gw.runtime.cache_store
    assert store.lru.bytes_used <= 20_000
    assert store.lru.evictions == 10 - len(store.lru)
    # the most recent entries are the ones kept
    assert (await get(client, gw, "/e9?size=5000")).headers["x-cache"] == "HIT"
    assert (await get(client, gw, "/e0?size=5000")).headers["x-cache"] == "MISS"


async def test_compressed_variants_are_cached_separately(cached, origin, client):
    # compress runs inside the cache: each coding is stored as its own variant
    gw = await cached(compress={})
    path = "/big?size=5000"

    async def fetch(coding: str) -> httpx.Response:
        return await get(client, gw, path, headers={"accept-encoding": coding})

    answers = [await fetch(c) for c in ("gzip", "gzip", "br", "br", "identity", "identity")]
    seen = [(r.headers["x-cache"], r.headers.get("content-encoding")) for r in answers]
    assert seen == [
        ("MISS", "gzip"),
        ("HIT", "gzip"),
        ("MISS", "br"),
        ("HIT", "br"),
        ("MISS", None),
        ("HIT", None),
    ]
    assert origin.count_of("/big") == 3
    assert {r.content for r in answers} == {answers[-1].content}  # decoded: the same bytes
    assert len(answers[-1].content) == 5000
    assert all("accept-encoding" in r.headers["vary"].lower() for r in answers)
