"""Randomized pipelines through real sockets: what goes in comes out, in order.

A seeded RNG builds pipelines of GET, HEAD and POST requests (Content-Length or
chunked bodies of random sizes, 0-byte ones included), with at most two
requests parsed ahead (so reading pauses and resumes), sends
them in randomly split writes, and checks that every response echoes its own
request body, in order, and that the upstream saw each body exactly.
"""

from __future__ import annotations

import asyncio
import random

from tests.e2e.conftest import RawConn, TestUpstream

SEED = 20261127
CASES = 60


def build_request(rng: random.Random, i: int) -> tuple[bytes, bytes]:
    """One request and the body the echo upstream must return for it.

    ``/echo`` answers with Content-Length after reading the body; ``/echo-stream``
    answers chunked while it is still reading (both directions streaming at once).
    """
    path = rng.choice([b"/echo", b"/echo-stream"])
    if rng.random() < 0.3:
        method = rng.choice([b"GET", b"HEAD"])
        return b"%b %b?i=%d HTTP/1.1\r\nHost: r\r\n\r\n" % (method, path, i), b""
    body = rng.randbytes(rng.choice([0, 1, 17, 1000, 70_000, 300_000]))
    if rng.random() < 0.5:
        head = b"POST %b?i=%d HTTP/1.1\r\nHost: r\r\nContent-Length: %d\r\n\r\n" % (
            path,
            i,
            len(body),
        )
        return head + body, body
    chunks, rest = [], body
    while rest:
        n = rng.randint(1, max(1, len(rest)))
        chunks.append(b"%x\r\n%b\r\n" % (n, rest[:n]))
        rest = rest[n:]
    head = b"POST %b?i=%d HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n" % (path, i)
    return head + b"".join(chunks) + b"0\r\n\r\n", body


def split(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 6))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


async def test_random_pipelines_echo_in_order(gateway_factory, upstream: TestUpstream):
    gw = await gateway_factory(
        max_request_body_bytes=1_000_000, listener={"max_pipelined_requests": 2}
    )
    rng = random.Random(SEED)
    for case in range(CASES):
        upstream.requests.clear()
        requests = [build_request(rng, i) for i in range(rng.randint(1, 4))]
        conn = await RawConn.open(gw.port)
        for piece in split(rng, b"".join(r for r, _ in requests)):
            await conn.send(piece)
            if rng.random() < 0.3:
                await asyncio.sleep(0.001)
        for i, (raw, body) in enumerate(requests):
            resp = await conn.read_response(wait_s=10, head=raw.startswith(b"HEAD"))
            assert resp.status == 200, (case, i, resp.status, resp.body[:200])
            assert resp.body == body, (case, i, len(resp.body), len(body))
        assert [r.body for r in upstream.requests] == [b for _, b in requests], case
        methods = [raw.split(b" ")[0].decode() for raw, _ in requests]
        assert [r.method for r in upstream.requests] == methods, case
        conn.writer.close()
