"""Weighted traffic split, stickiness and fault injection through real sockets (issue 3).

Ratios are measured over thousands of requests pipelined on a few keep-alive
connections, with the gateway's random source seeded (``rng=random.Random(n)``),
so a run is reproducible and the bounds (±2 points over 10,000 requests) leave
several standard deviations of room.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from meshgate.config.loader import parse_config
from meshgate.gateway import Gateway
from tests.e2e.conftest import (
    GatewayFactory,
    RawConn,
    RawResponse,
    TestUpstream,
    assert_json_error,
    make_config,
    to_yaml,
    url,
)

# --------------------------------------------------------------------------
# helpers (also used by test_mirror.py)
# --------------------------------------------------------------------------


def get(path: str = "/x", headers: dict[str, str] | None = None, host: str = "h") -> bytes:
    """A raw keep-alive GET request."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A raw keep-alive POST with a Content-Length body."""
    lines = [f"POST {path} HTTP/1.1", "Host: h", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Clients:
    """Several raw keep-alive connections to the gateway; `run` pipelines requests over them."""

    def __init__(self, conns: list[RawConn]) -> None:
        self.conns = conns

    @classmethod
    async def open(cls, port: int, n: int = 8) -> Clients:
        return cls([await RawConn.open(port) for _ in range(n)])

    async def run(self, requests: Sequence[bytes], wait_s: float = 30.0) -> list[RawResponse]:
        """Send every request (round-robin over the connections, each one pipelined) and
        return the responses in request order. Every response must be complete."""
        out: list[RawResponse | None] = [None] * len(requests)
        n = len(self.conns)

        async def one(conn: RawConn, idx: range) -> None:
            async def send() -> None:
                for i in idx:
                    conn.writer.write(requests[i])
                    await conn.writer.drain()

            sender = asyncio.create_task(send())
            try:
                for i in idx:
                    resp = await conn.read_response(wait_s=wait_s)
                    assert resp.complete, (i, resp)
                    out[i] = resp
            finally:
                await sender

        await asyncio.gather(
            *(one(conn, range(k, len(requests), n)) for k, conn in enumerate(self.conns))
        )
        assert all(r is not None for r in out)
        return [r for r in out if r is not None]

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()


async def run_requests(port: int, requests: Sequence[bytes], conns: int = 8) -> list[RawResponse]:
    clients = await Clients.open(port, conns)
    try:
        return await clients.run(requests)
    finally:
        await clients.close()


def answered_by(resp: RawResponse) -> str:
    """Which TestUpstream answered (its catch-all JSON names itself)."""
    assert resp.status == 200, (resp.status, resp.body[:200])
    return str(json.loads(resp.body)["upstream"])


def two_upstreams(a: TestUpstream, b: TestUpstream) -> list[dict[str, Any]]:
    return [
        {"name": "a", "instances": [{"host": "127.0.0.1", "port": a.port}]},
        {"name": "b", "instances": [{"host": "127.0.0.1", "port": b.port}]},
    ]


def split_config(
    a: TestUpstream,
    b: TestUpstream,
    wa: float,
    wb: float,
    sticky: dict[str, str] | None = None,
) -> dict[str, Any]:
    route: dict[str, Any] = {
        "path": "/*",
        "split": [{"upstream": "a", "weight": wa}, {"upstream": "b", "weight": wb}],
    }
    if sticky is not None:
        route["sticky"] = sticky
    return make_config(a.port, upstreams=two_upstreams(a, b), routes=[route])


async def reload(gw: Gateway, cfg: dict[str, Any]) -> None:
    config, doc = parse_config(to_yaml(cfg), "reload.yaml")
    await gw.reload(config, doc)


def share(part: int, whole: int) -> float:
    """Percentage points."""
    return 100.0 * part / whole


# --------------------------------------------------------------------------
# weighted split
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wa", "wb", "total"),
    [(90, 10, 10_000), (50, 50, 10_000), (0, 100, 2_000), (100, 0, 2_000)],
)
async def test_split_ratio_over_keepalive_connections(
    gateway_factory: GatewayFactory,
    upstream: TestUpstream,
    upstream2: TestUpstream,
    wa: int,
    wb: int,
    total: int,
):
    gw = await gateway_factory(split_config(upstream, upstream2, wa, wb), rng=random.Random(1))
    responses = await run_requests(gw.port, [get(f"/x?i={i}") for i in range(total)])
    seen = Counter(answered_by(r) for r in responses)
    # what the clients saw is what the upstreams received
    assert seen["up1"] == len(upstream.requests)
    assert seen["up2"] == len(upstream2.requests)
    assert seen["up1"] + seen["up2"] == total
    got = share(seen["up1"], total)
    expected = 100.0 * wa / (wa + wb)
    if expected in (0.0, 100.0):
        assert got == expected, seen  # a weight of 0 takes nothing at all
    else:
        assert abs(got - expected) <= 2.0, (got, expected, seen)
    # each request reached exactly one upstream, once
    targets = sorted(r.target for r in upstream.requests + upstream2.requests)
    assert targets == sorted(f"/x?i={i}" for i in range(total))


async def test_split_weights_shift_by_reload_on_open_connections(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    gw = await gateway_factory(split_config(upstream, upstream2, 90, 10), rng=random.Random(2))
    clients = await Clients.open(gw.port, 4)  # kept open across both reloads
    try:
        seen = Counter(answered_by(r) for r in await clients.run([get()] * 3000))
        assert abs(share(seen["up2"], 3000) - 10) <= 3, seen

        await reload(gw, split_config(upstream, upstream2, 50, 50))
        seen = Counter(answered_by(r) for r in await clients.run([get()] * 3000))
        assert abs(share(seen["up2"], 3000) - 50) <= 3, seen

        await reload(gw, split_config(upstream, upstream2, 0, 100))
        before = len(upstream.requests)
        seen = Counter(answered_by(r) for r in await clients.run([get()] * 1000))
        assert seen == Counter({"up2": 1000})
        assert len(upstream.requests) == before  # the first upstream gets nothing any more
    finally:
        await clients.close()
    # new connections too
    responses = await run_requests(gw.port, [get()] * 200, conns=2)
    assert {answered_by(r) for r in responses} == {"up2"}


# --------------------------------------------------------------------------
# stickiness
# --------------------------------------------------------------------------


def sticky_requests(ids: list[str], rounds: int, make: Any, seed: int) -> list[tuple[str, bytes]]:
    """Every id ``rounds`` times, in a shuffled order."""
    reqs = [(uid, make(uid, r)) for r in range(rounds) for uid in ids]
    random.Random(seed).shuffle(reqs)
    return reqs


async def landings(port: int, reqs: list[tuple[str, bytes]]) -> dict[str, set[str]]:
    responses = await run_requests(port, [raw for _, raw in reqs])
    where: dict[str, set[str]] = {}
    for (uid, _), resp in zip(reqs, responses, strict=True):
        where.setdefault(uid, set()).add(answered_by(resp))
    return where


@pytest.mark.parametrize("kind", ["header", "cookie"])
async def test_sticky_users_stay_on_one_upstream(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream, kind: str
):
    sticky = {"header": "x-user"} if kind == "header" else {"cookie": "session"}
    gw = await gateway_factory(
        split_config(upstream, upstream2, 50, 50, sticky=sticky), rng=random.Random(3)
    )
    ids = [f"user-{i}" for i in range(400)]

    def make(uid: str, r: int) -> bytes:
        if kind == "header":
            return get(f"/r{r}", {"X-User": uid})
        # other cookies around the session one change from request to request
        return get(f"/r{r}", {"Cookie": f"theme=t{r}; session={uid}; lang=l{r}"})

    where = await landings(gw.port, sticky_requests(ids, 3, make, seed=4))
    assert len(where) == 400
    moved = {uid: ups for uid, ups in where.items() if len(ups) != 1}
    assert not moved, f"{len(moved)} users saw both upstreams, e.g. {list(moved.items())[:3]}"
    on_b = sum(1 for ups in where.values() if ups == {"up2"})
    assert abs(share(on_b, 400) - 50) <= 10, on_b

    # without the key (or with another cookie only), requests are split at random
    plain = get("/anon") if kind == "header" else get("/anon", {"Cookie": "othersession=u1"})
    seen = Counter(answered_by(r) for r in await run_requests(gw.port, [plain] * 400))
    assert abs(share(seen["up2"], 400) - 50) <= 10, seen


async def test_sticky_canary_users_stay_when_weights_grow(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upstream2: TestUpstream
):
    """90/10 -> 50/50 by reload: users already on the canary (b) stay there."""
    sticky = {"header": "x-user"}
    gw = await gateway_factory(
        split_config(upstream, upstream2, 90, 10, sticky=sticky), rng=random.Random(5)
    )
    ids = [f"u{i:04d}" for i in range(400)]

    def make(uid: str, r: int) -> bytes:
        return get("/", {"x-user": uid})

    before = await landings(gw.port, sticky_requests(ids, 2, make, seed=6))
    assert all(len(ups) == 1 for ups in before.values())
    canary = {uid for uid, ups in before.items() if ups == {"up2"}}
    assert abs(share(len(canary), 400) - 10) <= 5, len(canary)

    await reload(gw, split_config(upstream, upstream2, 50, 50, sticky=sticky))
    after = await landings(gw.port, sticky_requests(ids, 2, make, seed=7))
    assert all(len(ups) == 1 for ups in after.values())
    now_b = {uid for uid, ups in after.items() if ups == {"up2"}}
    assert canary <= now_b, sorted(canary - now_b)[:5]
    assert abs(share(len(now_b), 400) - 50) <= 10, len(now_b)


# --------------------------------------------------------------------------
# fault injection
# --------------------------------------------------------------------------


def fault_config(upstream: TestUpstream, fault: dict[str, Any]) -> dict[str, Any]:
    return make_config(upstream.port, routes=[{"path": "/*", "upstream": "main", "fault": fault}])


async def test_fault_abort_percentage_json_and_upstream_untouched(
    gateway_factory: GatewayFactory, upstream: TestUpstream
):
    gw = await gateway_factory(
        fault_config(upstream, {"abort": {"percent": 25, "status": 503}}), rng=random.Random(8)
    )
    total = 10_000
    reqs = [get(f"/f?i={i}", {"x-request-id": f"req-{i}"}) for i in range(total)]
    responses = await run_requests(gw.port, reqs)
    statuses = Counter(r.status for r in responses)
    assert set(statuses) == {200, 503}, statuses
    assert abs(share(statuses[503], total) - 25) <= 2, statuses
    aborted = set()
    for i, resp in enumerate(responses):
        if resp.status == 503:
            data = assert_json_error(resp, 503)
            assert data == {"error": "fault injected", "request_id": f"req-{i}"}
            assert "json" in (resp.header("content-type") or "")
            aborted.add(f"/f?i={i}")
    # aborted requests never reached the upstream; every other one did, once
    received = [r.target for r in upstream.requests]
    assert len(received) == statuses[200]
    assert not aborted & set(received)
    assert len(set(received)) == len(received)


async def test_fault_delay_percentage(gateway_factory: GatewayFactory, upstream: TestUpstream):
    delay = 0.05
    gw = await gateway_factory(
        fault_config(upstream, {"delay": {"percent": 10, "duration_s": delay}}),
        rng=random.Random(9),
    )
    total, conns = 1000, 8
    elapsed: list[float] = []
    statuses: Counter[int] = Counter()

    async def worker(n: int) -> None:
        conn = await RawConn.open(gw.port)
        try:
            for _ in range(n):  # one request at a time: each latency is its own
                t0 = time.monotonic()
                await conn.send(get("/d"))
                resp = await conn.read_response()
                elapsed.append(time.monotonic() - t0)
                statuses[resp.status] += 1
        finally:
            await conn.close()

    await asyncio.gather(*(worker(total // conns) for _ in range(conns)))
    assert statuses == Counter({200: total})  # a delay is only a delay
    assert len(upstream.requests) == total
    slow = sum(1 for e in elapsed if e >= delay)
    assert abs(share(slow, total) - 10) <= 3, (slow, sorted(elapsed)[-120:-90])


async def test_fault_header_trigger(gateway_factory: GatewayFactory, upstream: TestUpstream):
    fault = {
        "abort": {"percent": 100, "status": 503},
        "header_trigger": True,
        "max_delay_s": 0.3,
    }
    gw = await gateway_factory(fault_config(upstream, fault), rng=random.Random(10))
    async with httpx.AsyncClient() as client:

        async def timed(headers: dict[str, str]) -> tuple[httpx.Response, float]:
            t0 = time.monotonic()
            r = await client.get(url(gw, "/t"), headers=headers)
            return r, time.monotonic() - t0

        # without the header: no fault, even at 100%
        for _ in range(20):
            r, _ = await timed({})
            assert r.status_code == 200
        assert len(upstream.requests) == 20

        # abort asked by header: exactly that status, the upstream is not contacted
        r, _ = await timed({"x-meshgate-fault": "abort=418"})
        assert assert_json_error(r, 418)["error"] == "fault injected"
        assert len(upstream.requests) == 20

        # delay asked by header: delayed, then proxied (the configured abort does not apply)
        r, took = await timed({"x-meshgate-fault": "delay=0.2"})
        assert r.status_code == 200 and took >= 0.2
        assert len(upstream.requests) == 21

        # both at once
        r, took = await timed({"x-meshgate-fault": "delay=0.1, abort=500"})
        assert assert_json_error(r, 500)["error"] == "fault injected" and took >= 0.1
        assert len(upstream.requests) == 21

        # a delay above max_delay_s is capped
        r, took = await timed({"x-meshgate-fault": "delay=5"})
        assert r.status_code == 200 and 0.3 <= took < 2.0

        # unreadable values: no fault at all
        for bad in ["abort=abc", "explode", "abort=200", "abort=503;delay=1", "delay=-1"]:
            r, took = await timed({"x-meshgate-fault": bad})
            assert r.status_code == 200, (bad, r.status_code, r.text)
            assert took < 0.3, (bad, took)
        assert len(upstream.requests) == 27

        # an empty header asks for the configured faults (abort 503 at 100%)
        r, _ = await timed({"x-meshgate-fault": ""})
        assert assert_json_error(r, 503)["error"] == "fault injected"
        assert len(upstream.requests) == 27


async def test_fault_header_ignored_without_header_trigger(
    gateway_factory: GatewayFactory, upstream: TestUpstream
):
    cfg = make_config(
        upstream.port,
        routes=[
            {"path": "/plain/*", "upstream": "main"},
            {
                "path": "/faulty/*",
                "upstream": "main",
                "fault": {"abort": {"percent": 0.001, "status": 503}},
            },
        ],
    )
    gw = await gateway_factory(cfg, rng=random.Random(11))
    reqs = [
        get(f"/{where}/x", {"x-meshgate-fault": value})
        for where in ("plain", "faulty")
        for value in ("abort=418", "delay=2", "")
    ]
    t0 = time.monotonic()
    responses = await run_requests(gw.port, reqs * 5, conns=2)
    assert [r.status for r in responses] == [200] * len(reqs) * 5
    assert time.monotonic() - t0 < 1.5
    assert len(upstream.requests) == len(reqs) * 5


async def test_fault_abort_with_request_body_keeps_connection_usable(
    gateway_factory: GatewayFactory, upstream: TestUpstream
):
    cfg = make_config(
        upstream.port,
        routes=[
            {"path": "/echo", "upstream": "main"},
            {
                "path": "/abort",
                "upstream": "main",
                "fault": {"abort": {"percent": 100, "status": 503}},
            },
        ],
    )
    gw = await gateway_factory(cfg, rng=random.Random(12))
    conn = await RawConn.open(gw.port)
    try:
        await conn.send(post("/abort", b"a" * 5000) + post("/echo", b"after the abort"))
        first = await conn.read_response()
        assert_json_error(first, 503)
        # the aborted request's body was not taken for the next request
        second = await conn.read_response()
        assert (second.status, second.body) == (200, b"after the abort")
    finally:
        await conn.close()
    assert [r.path for r in upstream.requests] == ["/echo"]
