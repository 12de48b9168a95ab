"""Request mirroring (shadowing) through real sockets (issue 3, item 4).

The shadow is either a `TestUpstream` (records what it receives) or a
`ShadowServer` written here that holds every request for a while, or until
released, so a slow mirror and the concurrency bound can be observed.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    GatewayFactory,
    RawConn,
    TestUpstream,
    eventually,
    free_port,
    make_config,
    url,
)
from tests.e2e.test_traffic import get, post, run_requests, share


class ShadowServer:
    """Reads each request, then waits ``delay`` seconds (or, with ``delay=None``, until
    `release` is set) before answering 200; counts requests and those waiting."""

    def __init__(self, delay: float | None = None) -> None:
        self.delay = delay
        self.release = asyncio.Event()
        self.received = 0
        self.waiting = 0  # requests received and not answered yet
        self.max_waiting = 0
        self.answered = 0
        self.hung_up = 0  # connections the gateway closed while a request waited
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> ShadowServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    async def _wait(self, reader: asyncio.StreamReader) -> bool:
        """Wait before answering; False when the peer hung up meanwhile."""
        eof = asyncio.ensure_future(reader.read(1))
        if self.delay is not None:
            gate: asyncio.Future[Any] = asyncio.ensure_future(asyncio.sleep(self.delay))
        else:
            gate = asyncio.ensure_future(self.release.wait())
        try:
            done, _ = await asyncio.wait({eof, gate}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (eof, gate):
                f.cancel()
        return gate in done and eof not in done

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.received += 1
                self.waiting += 1
                self.max_waiting = max(self.max_waiting, self.waiting)
                try:
                    ok = await self._wait(reader)
                finally:
                    self.waiting -= 1
                if not ok:
                    self.hung_up += 1
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nshadow")
                await writer.drain()
                self.answered += 1
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            self._tasks.discard(task)


ShadowFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
async def shadows() -> AsyncIterator[ShadowFactory]:
    """``await make("test")`` -> a started TestUpstream named 'shadow';
    ``await make(delay=2)`` / ``await make(delay=None)`` -> a started ShadowServer."""
    started: list[Any] = []

    async def make(kind: str = "hold", delay: float | None = None) -> Any:
        srv: Any = TestUpstream("shadow") if kind == "test" else ShadowServer(delay)
        await srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        if isinstance(srv, ShadowServer):
            srv.release.set()
        await srv.stop()


def mirror_config(main_port: int, shadow_port: int, **mirror: Any) -> dict[str, Any]:
    """Routes: ``/m/*`` to main mirrored to shadow, ``/echo`` likewise, and ``/plain/*``
    to main without a mirror."""
    mirror = {"upstream": "shadow", **mirror}
    return make_config(
        main_port,
        upstreams=[
            {"name": "main", "instances": [{"host": "127.0.0.1", "port": main_port}]},
            {
                "name": "shadow",
                "connect_timeout_s": 1,
                "instances": [{"host": "127.0.0.1", "port": shadow_port}],
            },
        ],
        routes=[
            {"path": "/plain/*", "upstream": "main"},
            {"path": "/m/*", "upstream": "main", "mirror": mirror},
            {"path": "/echo", "upstream": "main", "mirror": mirror},
        ],
    )


async def settled(count: Callable[[], int], quiet_s: float = 0.3, wait_s: float = 10.0) -> int:
    """``count()`` once it has not changed for ``quiet_s``."""
    deadline = time.monotonic() + wait_s
    last, since = count(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "count kept changing"
        await asyncio.sleep(0.02)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
    return last


# --------------------------------------------------------------------------


async def test_mirror_copies_method_path_body_and_shadow_host(
    gateway_factory: GatewayFactory, upstream: TestUpstream, shadows: ShadowFactory
):
    shadow = await shadows("test")
    gw = await gateway_factory(mirror_config(upstream.port, shadow.port), rng=random.Random(1))
    async with httpx.AsyncClient() as client:
        r = await client.post(
            url(gw, "/echo?x=1"),
            content=b"mirror me",
            headers={"content-type": "text/x-mirror", "x-custom": "abc"},
        )
        assert (r.status_code, r.content) == (200, b"mirror me")
        await eventually(lambda: len(shadow.requests) == 1)
        copy = shadow.requests[0]
        assert (copy.method, copy.target, copy.body) == ("POST", "/echo?x=1", b"mirror me")
        assert copy.body_complete and copy.header("content-length") == "9"
        assert copy.header("host") == f"127.0.0.1-shadow:{gw.port}"
        assert copy.header("x-custom") == "abc"
        assert copy.header("content-type") == "text/x-mirror"
        # the main upstream got the request unchanged, once
        assert len(upstream.requests) == 1
        main = upstream.requests[0]
        assert (main.method, main.target, main.body) == ("POST", "/echo?x=1", b"mirror me")
        assert main.header("host") == f"127.0.0.1:{gw.port}"
        # the copy can be matched with the real request
        assert copy.header("x-request-id") == main.header("x-request-id") is not None

        # the client's answer is the main upstream's, not the shadow's
        r = await client.get(url(gw, "/m/who?q=2"))
        assert r.status_code == 200 and r.json()["upstream"] == "up1"
        await eventually(lambda: len(shadow.requests) == 2)
        assert (shadow.requests[1].method, shadow.requests[1].target) == ("GET", "/m/who?q=2")
        assert shadow.requests[1].header("host") == f"127.0.0.1-shadow:{gw.port}"

        # routes without a mirror are not copied
        r = await client.get(url(gw, "/plain/x"))
        assert r.status_code == 200
    assert await settled(lambda: len(shadow.requests)) == 2


async def test_mirror_shadow_host_when_host_not_preserved(
    gateway_factory: GatewayFactory, upstream: TestUpstream, shadows: ShadowFactory
):
    """With ``preserve_host: false`` the upstreams get their instance's host:port as Host;
    the copy must still be marked with ``-shadow`` so the shadow can tell it from real
    traffic."""
    shadow = await shadows("test")
    cfg = mirror_config(upstream.port, shadow.port)
    cfg["routes"][1]["preserve_host"] = False
    gw = await gateway_factory(cfg, rng=random.Random(13))
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/m/x"))
    assert r.status_code == 200 and r.json()["upstream"] == "up1"
    assert upstream.requests[0].header("host") == f"127.0.0.1:{upstream.port}"
    await eventually(lambda: len(shadow.requests) == 1)
    host = shadow.requests[0].header("host") or ""
    assert host.rpartition(":")[0].endswith("-shadow"), host


async def test_mirror_large_body_copied_whole(
    gateway_factory: GatewayFactory, upstream: TestUpstream, shadows: ShadowFactory
):
    shadow = await shadows("test")
    gw = await gateway_factory(mirror_config(upstream.port, shadow.port), rng=random.Random(2))
    body = random.Random(3).randbytes(60_000)  # under the default cap of 64 KiB
    async with httpx.AsyncClient() as client:
        r = await client.post(url(gw, "/echo"), content=body)
    assert r.status_code == 200 and r.content == body
    await eventually(lambda: len(shadow.requests) == 1 and shadow.requests[0].body_complete)
    assert shadow.requests[0].body == body


async def test_mirror_body_over_cap_or_unknown_length_not_copied(
    gateway_factory: GatewayFactory, upstream: TestUpstream, shadows: ShadowFactory
):
    shadow = await shadows("test")
    gw = await gateway_factory(
        mirror_config(upstream.port, shadow.port, max_body_bytes=100), rng=random.Random(4)
    )
    bodies = {n: bytes([65 + i]) * n for i, n in enumerate([0, 50, 100, 101, 5000])}
    chunked_body = b"chunked-" * 10
    reqs = [post("/echo", body, {"x-n": str(n)}) for n, body in bodies.items()]
    reqs.append(
        b"POST /echo HTTP/1.1\r\nHost: h\r\nx-n: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%b\r\n0\r\n\r\n" % (len(chunked_body), chunked_body)
    )
    responses = await run_requests(gw.port, reqs, conns=1)
    # the main requests got their whole bodies, mirrored or not
    expected = [*bodies.values(), chunked_body]
    assert [(r.status, r.body) for r in responses] == [(200, b) for b in expected]
    assert [r.body for r in upstream.requests] == expected
    # only bodies up to max_body_bytes (known length) were copied, whole
    await settled(lambda: len(shadow.requests))
    copied = sorted((r.header("x-n"), r.body) for r in shadow.requests)
    assert copied == [("0", b""), ("100", bodies[100]), ("50", bodies[50])]


async def test_mirror_expect_continue(
    gateway_factory: GatewayFactory, upstream: TestUpstream, shadows: ShadowFactory
):
    """A client waiting for 100 Continue before sending its body is not stuck behind the
    mirror (which reads the body to copy it)."""
    shadow = await shadows("test")
    gw = await gateway_factory(mirror_config(upstream.port, shadow.port), rng=random.Random(5))
    conn = await RawConn.open(gw.port)
    try:
        await conn.send(
            b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await conn.read_response(wait_s=3)
        assert interim.status == 100
        await conn.send(b"hello")
        resp = await conn.read_response()
        assert (resp.status, resp.body) == (200, b"hello")
    finally:
        await conn.close()
    await eventually(lambda: len(shadow.requests) == 1)
    assert shadow.requests[0].body == b"hello"


async def test_mirror_dead_shadow_never_fails_main(
    gateway_factory: GatewayFactory, upstream: TestUpstream
):
    gw = await gateway_factory(mirror_config(upstream.port, free_port()), rng=random.Random(6))
    reqs = []
    for i in range(300):
        reqs.append(get(f"/m/{i}") if i % 2 else post("/echo", b"body %d" % i))
    responses = await run_requests(gw.port, reqs, conns=4)
    for i, resp in enumerate(responses):
        assert resp.status == 200, (i, resp.status, resp.body)
        if not i % 2:
            assert resp.body == b"body %d" % i
    assert len(upstream.requests) == 300


@pytest.mark.parametrize("shadow_kind", ["slow", "dead"])
async def test_mirror_does_not_slow_main_requests(
    gateway_factory: GatewayFactory,
    upstream: TestUpstream,
    shadows: ShadowFactory,
    shadow_kind: str,
):
    """Main latency with a mirror that takes 2 s to answer (or is not there), compared
    with the same gateway's latency without a mirror, measured interleaved."""
    if shadow_kind == "slow":
        shadow = await shadows(delay=2.0)
        shadow_port = shadow.port
    else:
        shadow, shadow_port = None, free_port()
    gw = await gateway_factory(mirror_config(upstream.port, shadow_port), rng=random.Random(7))
    n = 20
    plain: list[float] = []
    mirrored: list[float] = []
    async with httpx.AsyncClient() as client:
        for path in ("/plain/warm", "/m/warm"):
            assert (await client.get(url(gw, path))).status_code == 200
        for i in range(n):
            for path, times in ((f"/plain/{i}", plain), (f"/m/{i}", mirrored)):
                t0 = time.monotonic()
                r = await client.get(url(gw, path))
                times.append(time.monotonic() - t0)
                assert r.status_code == 200 and r.json()["upstream"] == "up1"
    if shadow is not None:
        # the copies did reach the slow shadow and were still waiting there
        await eventually(lambda: shadow.received == n + 1)
        assert shadow.answered == 0
    ratio = statistics.median(mirrored) / statistics.median(plain)
    slack = 0.01 / statistics.median(plain)  # 10 ms of scheduling noise
    assert ratio < 3 + slack, (ratio, sorted(plain), sorted(mirrored))
    assert sum(mirrored) < 3 * sum(plain) + 0.5, (sum(plain), sum(mirrored))


async def test_mirror_percent_zero_and_fifty(
    gateway_factory: GatewayFactory,
    upstream: TestUpstream,
    upstream2: TestUpstream,
):
    shadow = upstream2  # a TestUpstream that counts what it gets
    cfg = make_config(
        upstream.port,
        upstreams=[
            {"name": "main", "instances": [{"host": "127.0.0.1", "port": upstream.port}]},
            {"name": "shadow", "instances": [{"host": "127.0.0.1", "port": shadow.port}]},
        ],
        routes=[
            {
                "path": "/none/*",
                "upstream": "main",
                "mirror": {"upstream": "shadow", "percent": 0},
            },
            {
                "path": "/half/*",
                "upstream": "main",
                # no skipping for concurrency here: only the percentage decides
                "mirror": {"upstream": "shadow", "percent": 50, "max_concurrent": 100_000},
            },
        ],
    )
    gw = await gateway_factory(cfg, rng=random.Random(8))
    responses = await run_requests(gw.port, [get(f"/none/{i}") for i in range(500)])
    assert {r.status for r in responses} == {200}
    assert await settled(lambda: len(shadow.requests)) == 0

    total = 2000
    responses = await run_requests(gw.port, [get(f"/half/{i}") for i in range(total)])
    assert {r.status for r in responses} == {200}
    assert len(upstream.requests) == 500 + total
    copies = await settled(lambda: len(shadow.requests))
    assert abs(share(copies, total) - 50) <= 3, copies
    # each copy is of a distinct request that the main upstream also got
    targets = [r.target for r in shadow.requests]
    assert len(set(targets)) == len(targets)
    assert set(targets) <= {r.target for r in upstream.requests}


async def test_mirror_concurrency_bound(
    gateway_factory: GatewayFactory, upstream: TestUpstream, shadows: ShadowFactory
):
    shadow = await shadows(delay=None)  # holds every request until released
    gw = await gateway_factory(
        mirror_config(upstream.port, shadow.port, max_concurrent=4, timeout_s=30),
        rng=random.Random(9),
    )
    responses = await run_requests(gw.port, [get(f"/m/{i}") for i in range(20)], conns=4)
    assert [r.status for r in responses] == [200] * 20
    await eventually(lambda: shadow.received == 4)
    await asyncio.sleep(0.3)
    assert (shadow.received, shadow.waiting, shadow.max_waiting) == (4, 4, 4)

    # sequential requests while the four copies are still held: none copied
    async with httpx.AsyncClient() as client:
        for i in range(5):
            assert (await client.get(url(gw, f"/m/more{i}"))).status_code == 200
    await asyncio.sleep(0.2)
    assert shadow.received == 4

    # once the shadow answers, copies flow again
    shadow.release.set()
    await eventually(lambda: shadow.answered == 4)
    await asyncio.sleep(0.1)  # the gateway reads and drops the shadow's answers
    responses = await run_requests(gw.port, [get(f"/m/after{i}") for i in range(3)], conns=1)
    assert [r.status for r in responses] == [200] * 3
    await eventually(lambda: shadow.received == 7)
    assert shadow.max_waiting <= 4


async def test_mirror_timeout_cuts_copies_and_frees_slots(
    gateway_factory: GatewayFactory, upstream: TestUpstream, shadows: ShadowFactory
):
    shadow = await shadows(delay=None)  # never answers on its own
    gw = await gateway_factory(
        mirror_config(upstream.port, shadow.port, max_concurrent=2, timeout_s=0.3),
        rng=random.Random(10),
    )
    async with httpx.AsyncClient() as client:
        for i in range(5):
            assert (await client.get(url(gw, f"/m/{i}"))).status_code == 200
        await eventually(lambda: shadow.received == 2)
        # after timeout_s the gateway gives up on both copies (hangs up)
        await eventually(lambda: shadow.hung_up == 2, wait_s=3)
        assert shadow.received == 2
        for i in range(2):
            assert (await client.get(url(gw, f"/m/again{i}"))).status_code == 200
        await eventually(lambda: shadow.received == 4)


async def test_mirror_not_sent_for_fault_aborted_requests(
    gateway_factory: GatewayFactory, upstream: TestUpstream, shadows: ShadowFactory
):
    shadow = await shadows("test")
    cfg = mirror_config(upstream.port, shadow.port)
    cfg["routes"][1]["fault"] = {"abort": {"percent": 100, "status": 503}}
    gw = await gateway_factory(cfg, rng=random.Random(11))
    responses = await run_requests(gw.port, [get(f"/m/{i}") for i in range(20)], conns=2)
    assert {r.status for r in responses} == {503}
    assert await settled(lambda: len(shadow.requests)) == 0
    assert upstream.requests == []


async def test_mirror_copies_in_flight_do_not_block_gateway_stop(
    gateway_factory: GatewayFactory, upstream: TestUpstream, shadows: ShadowFactory
):
    shadow = await shadows(delay=None)
    gw = await gateway_factory(
        mirror_config(upstream.port, shadow.port, timeout_s=30), rng=random.Random(12)
    )
    responses = await run_requests(gw.port, [get(f"/m/{i}") for i in range(3)], conns=1)
    assert [r.status for r in responses] == [200] * 3
    await eventually(lambda: shadow.received == 3)
    t0 = time.monotonic()
    await gw.stop(drain_timeout_s=1)
    assert time.monotonic() - t0 < 1.5
    # the held copies were abandoned: the shadow sees its connections closed
    await eventually(lambda: shadow.hung_up == 3)
