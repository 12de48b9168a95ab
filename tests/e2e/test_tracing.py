"""Tracing end to end: W3C trace context in and out, spans exported over OTLP/HTTP.

A real gateway (in process), real upstream servers that record the request heads
they receive (tests/e2e/resilience_helpers.py) and a real OTLP/HTTP receiver that
decodes the protobuf export requests (tests/e2e/otlp_receiver.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshgate.config.loader import parse_config
from meshgate.gateway import Gateway
from tests.e2e.conftest import (
    GatewayProcess,
    RawConn,
    TestUpstream,
    eventually,
    free_port,
    make_config,
    to_yaml,
    url,
)
from tests.e2e.otlp_receiver import CLIENT, ERROR, SERVER, UNSET, OtlpReceiver, ReceivedSpan
from tests.e2e.resilience_helpers import (
    Behaviour,
    ControlledUpstream,
    always,
    fail_first,
    route_cfg,
    upstream_cfg,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
SAMPLED_PARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
UNSAMPLED_PARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-00"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")
FAST_RETRY = {"max_retries": 1, "backoff_base_s": 0.005, "backoff_max_s": 0.01}
WAIT_S = 5.0  # longest wait for an export (schedule_delay_s is 0.05 s)

Servers = Callable[..., Awaitable[ControlledUpstream]]
Gateways = Callable[[dict[str, Any]], Awaitable[Gateway]]


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    srv = await OtlpReceiver().start()
    yield srv
    await srv.stop()


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    """``await servers(name, behave=None)`` starts an upstream that records requests."""
    started: list[ControlledUpstream] = []

    async def make(name: str, behave: Behaviour | None = None) -> ControlledUpstream:
        srv = await ControlledUpstream(name, behave).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        await srv.stop()


@pytest.fixture
async def gateways(receiver: OtlpReceiver) -> AsyncIterator[Gateways]:
    """``await gateways(cfg)`` starts an in-process gateway; stopped at the end unless
    the test stopped it, before the receiver stops (its last spans reach it)."""
    started: list[Gateway] = []

    async def make(cfg: dict[str, Any]) -> Gateway:
        config, doc = parse_config(to_yaml(cfg), "e2e.yaml")
        gw = Gateway(config, doc)
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        if gw.started:
            await gw.stop(drain_timeout_s=1)


def tracing(endpoint: str, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "enabled": True,
        "endpoint": endpoint,
        "service_name": "edge-gw",
        "sample_rate": 1.0,
        "schedule_delay_s": 0.05,
        "export_timeout_s": 2,
    }
    cfg.update(extra)
    return cfg


def config(up: list[int], routes: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return make_config(0, upstreams=[upstream_cfg(*up)], routes=routes, **top)


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=10)


def sent_traceparent(up: ControlledUpstream, i: int = -1) -> tuple[str, str, str]:
    """(trace id, parent id, flags) of the traceparent upstream request ``i`` carried."""
    value = up.requests[i].headers.get("traceparent")
    assert value is not None, up.requests[i].headers
    m = TRACEPARENT.fullmatch(value)
    assert m is not None, value
    return m.group(1), m.group(2), m.group(3)


async def trace_of(receiver: OtlpReceiver, trace_id: str, spans: int) -> list[ReceivedSpan]:
    await eventually(lambda: len(receiver.of_trace(trace_id)) >= spans, WAIT_S)
    found = receiver.of_trace(trace_id)
    assert len(found) == spans, found
    return found


def server_span(spans: list[ReceivedSpan]) -> ReceivedSpan:
    [server] = [s for s in spans if s.kind == SERVER]
    return server


# ==========================================================================
# (a) an incoming sampled parent
# ==========================================================================


async def test_sampled_parent_continues_its_trace(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    up = await servers("users")
    log_path = tmp_path / "access.log"
    gw = await gateways(
        config(
            [up.port],
            [route_cfg("/users/:id", name="users")],
            tracing=tracing(receiver.endpoint),
            access_log={"enabled": True, "path": str(log_path)},
        )
    )
    async with client() as c:
        r = await c.get(
            url(gw, "/users/42?page=2"),
            headers={"traceparent": SAMPLED_PARENT, "x-request-id": "req-a", "user-agent": "t/1"},
        )
    assert r.status_code == 200
    assert "traceparent" not in r.headers  # nothing added to the client's answer

    spans = await trace_of(receiver, TRACE_ID, 2)
    server = server_span(spans)
    assert server.parent_id == PARENT_SPAN  # child of the caller's span
    assert server.name == "GET /users/:id"
    assert server.status == UNSET
    assert server.resource["service.name"] == "edge-gw"
    assert server.attributes == {
        "http.request.method": "GET",
        "url.path": "/users/42",
        "url.scheme": "http",
        "client.address": "127.0.0.1",
        "network.protocol.version": "1.1",
        "user_agent.original": "t/1",
        "http.route": "/users/:id",
        "meshgate.route": "users",
        "meshgate.request_id": "req-a",
        "http.response.status_code": 200,
    }
    [attempt] = receiver.children_of(server)
    assert attempt.kind == CLIENT and attempt.name == "GET"
    assert attempt.status == UNSET
    assert attempt.attributes == {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": up.port,
        "url.full": f"http://127.0.0.1:{up.port}/users/42",
        "meshgate.upstream": "main",
        "meshgate.attempt": 1,
        "http.response.status_code": 200,
    }
    assert server.start_ns <= attempt.start_ns <= attempt.end_ns <= server.end_ns

    # the upstream saw the trace continued with the attempt span as its parent
    assert up.requests[0].headers["traceparent"] == f"00-{TRACE_ID}-{attempt.span_id}-01"
    assert "tracestate" not in up.requests[0].headers

    await gw.stop(drain_timeout_s=1)
    [line] = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert (line["request_id"], line["trace_id"]) == ("req-a", TRACE_ID)


# ==========================================================================
# (b) retries: one attempt span each, siblings under the server span
# ==========================================================================


async def test_retried_status_gives_two_attempt_spans(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver
) -> None:
    up = await servers("flaky", fail_first(1, 503))
    gw = await gateways(
        config([up.port], [route_cfg(retry=FAST_RETRY)], tracing=tracing(receiver.endpoint))
    )
    async with client() as c:
        r = await c.get(url(gw, "/orders"), headers={"traceparent": SAMPLED_PARENT})
    assert (r.status_code, r.headers["x-meshgate-attempts"]) == (200, "2")

    spans = await trace_of(receiver, TRACE_ID, 3)
    server = server_span(spans)
    assert server.status == UNSET and server.attributes["http.response.status_code"] == 200
    first, second = receiver.children_of(server)
    assert (first.kind, second.kind) == (CLIENT, CLIENT)
    assert first.attributes["meshgate.attempt"] == 1
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["error.type"] == "503"
    assert first.status == ERROR
    assert second.attributes["meshgate.attempt"] == 2
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["http.response.status_code"] == 200
    assert "error.type" not in second.attributes and second.status == UNSET
    assert first.end_ns <= second.start_ns

    # each attempt carried its own span id as the parent-id
    assert [s.headers["traceparent"] for s in up.requests] == [
        f"00-{TRACE_ID}-{first.span_id}-01",
        f"00-{TRACE_ID}-{second.span_id}-01",
    ]


async def test_connect_failure_attempt_has_an_error_type(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver
) -> None:
    good = await servers("good")
    dead = free_port()  # nothing listens there
    gw = await gateways(
        config([dead, good.port], [route_cfg(retry=FAST_RETRY)], tracing=tracing(receiver.endpoint))
    )
    async with client() as c:
        # round robin: at least one of the two requests meets the dead instance first
        rs = [await c.get(url(gw, f"/r{i}")) for i in range(2)]
    assert [r.status_code for r in rs] == [200, 200]
    retried = sum(1 for r in rs if r.headers.get("x-meshgate-attempts") == "2")
    assert retried >= 1

    await eventually(lambda: len(receiver.spans) >= 4 + retried, WAIT_S)
    assert len(receiver.spans) == 4 + retried  # a server and an attempt span each, + retries
    with_retry = [s for s in receiver.servers() if len(receiver.children_of(s)) == 2]
    assert len(with_retry) == retried
    sent = {sent_traceparent(good, i)[:2] for i in range(2)}
    for server in with_retry:
        failed, ok = receiver.children_of(server)
        assert failed.attributes["error.type"] == "connect-failure"
        assert failed.attributes["server.port"] == dead
        assert "http.response.status_code" not in failed.attributes
        assert failed.status == ERROR
        assert ok.attributes["server.port"] == good.port
        assert ok.attributes["http.response.status_code"] == 200
        assert server.status == UNSET
        # the good instance got the second attempt's span id as the parent
        assert (server.trace_id, ok.span_id) in sent


@pytest.mark.parametrize(
    ("path", "status", "error_type"),
    [("/slow?s=2", 504, "timeout"), ("/reset?when=before&how=rst", 502, "reset")],
)
async def test_timeout_and_reset_attempts_have_an_error_type(
    gateways: Gateways,
    upstream: TestUpstream,
    receiver: OtlpReceiver,
    path: str,
    status: int,
    error_type: str,
) -> None:
    no_retry = {"max_retries": 0, "per_try_timeout_s": 0.3}
    cfg = config([upstream.port], [route_cfg(retry=no_retry)], tracing=tracing(receiver.endpoint))
    gw = await gateways(cfg)
    async with client() as c:
        r = await c.get(url(gw, path), headers={"traceparent": SAMPLED_PARENT})
    assert r.status_code == status
    server = server_span(await trace_of(receiver, TRACE_ID, 2))
    [attempt] = receiver.children_of(server)
    assert attempt.attributes["error.type"] == error_type
    assert attempt.status == ERROR
    assert server.attributes["error.type"] == str(status)
    # the upstream got the attempt's traceparent even though it never answered
    assert upstream.requests[0].header("traceparent") == f"00-{TRACE_ID}-{attempt.span_id}-01"


async def test_failed_request_marks_the_server_span_as_error(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver
) -> None:
    up = await servers("down", always(503))
    gw = await gateways(
        config([up.port], [route_cfg(retry=FAST_RETRY)], tracing=tracing(receiver.endpoint))
    )
    async with client() as c:
        r = await c.get(url(gw, "/x"), headers={"traceparent": SAMPLED_PARENT})
    assert r.status_code == 503
    spans = await trace_of(receiver, TRACE_ID, 3)
    server = server_span(spans)
    assert server.status == ERROR
    assert server.attributes["http.response.status_code"] == 503
    assert server.attributes["error.type"] == "503"
    assert [s.status for s in receiver.children_of(server)] == [ERROR, ERROR]


async def test_client_gone_ends_the_spans_as_cancelled(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver
) -> None:
    up = await servers("slow")
    gw = await gateways(config([up.port], [route_cfg()], tracing=tracing(receiver.endpoint)))
    conn = await RawConn.open(gw.port)
    await conn.send(
        f"GET /x?delay=5 HTTP/1.1\r\nHost: t\r\ntraceparent: {SAMPLED_PARENT}\r\n\r\n".encode()
    )
    await eventually(lambda: up.count == 1)
    await conn.reset()
    spans = await trace_of(receiver, TRACE_ID, 2)
    server = server_span(spans)
    [attempt] = receiver.children_of(server)
    for span in (server, attempt):
        assert span.status == ERROR
        assert span.attributes["error.type"] == "CancelledError"
        assert "http.response.status_code" not in span.attributes
    # the gateway keeps serving traced requests
    async with client() as c:
        assert (await c.get(url(gw, "/after"))).status_code == 200


# ==========================================================================
# (c) no incoming header: a new trace
# ==========================================================================


async def test_request_without_traceparent_starts_a_trace(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver
) -> None:
    up = await servers("up")
    gw = await gateways(config([up.port], [route_cfg()], tracing=tracing(receiver.endpoint)))
    async with client() as c:
        r1 = await c.get(url(gw, "/a"))
        r2 = await c.get(url(gw, "/b"))
    assert (r1.status_code, r2.status_code) == (200, 200)
    (t1, p1, f1), (t2, p2, f2) = sent_traceparent(up, 0), sent_traceparent(up, 1)
    assert t1 != t2 and (f1, f2) == ("01", "01")  # sample_rate 1: recorded
    for trace_id, parent_id in ((t1, p1), (t2, p2)):
        spans = await trace_of(receiver, trace_id, 2)
        server = server_span(spans)
        assert server.parent_id == ""  # a root span
        assert server.name == "GET /*"
        [attempt] = receiver.children_of(server)
        assert attempt.span_id == parent_id


async def test_unmatched_request_has_a_server_span_named_by_method(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver
) -> None:
    up = await servers("up")
    gw = await gateways(config([up.port], [route_cfg("/only")], tracing=tracing(receiver.endpoint)))
    async with client() as c:
        r = await c.post(url(gw, "/nowhere"), headers={"traceparent": SAMPLED_PARENT})
    assert r.status_code == 404
    [server] = await trace_of(receiver, TRACE_ID, 1)
    assert server.name == "POST"
    assert "http.route" not in server.attributes
    assert server.attributes["http.response.status_code"] == 404
    assert server.status == UNSET  # a 4xx is the client's error, not the server's


# ==========================================================================
# (d) head sampling
# ==========================================================================


async def test_sample_rate_zero_records_nothing_but_propagates(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver
) -> None:
    up = await servers("up")
    gw = await gateways(
        config([up.port], [route_cfg()], tracing=tracing(receiver.endpoint, sample_rate=0))
    )
    async with client() as c:
        assert (await c.get(url(gw, "/new"))).status_code == 200
        unsampled = await c.get(url(gw, "/unsampled"), headers={"traceparent": UNSAMPLED_PARENT})
        assert unsampled.status_code == 200
        sampled = await c.get(url(gw, "/sampled"), headers={"traceparent": SAMPLED_PARENT})
        assert sampled.status_code == 200

    new_tid, new_parent, new_flags = sent_traceparent(up, 0)
    assert new_flags == "00" and new_tid != "0" * 32 and new_parent != "0" * 16
    # an unsampled caller: same trace, a new parent-id, still not sampled
    tid, parent, flags = sent_traceparent(up, 1)
    assert (tid, flags) == (TRACE_ID, "00") and parent != PARENT_SPAN
    # a sampled caller is honoured (parent-based) even at sample_rate 0
    tid, parent, flags = sent_traceparent(up, 2)
    assert (tid, flags) == (TRACE_ID, "01")

    await gw.stop(drain_timeout_s=1)  # exports everything still queued
    assert {s.trace_id for s in receiver.spans} == {TRACE_ID}
    assert len(receiver.spans) == 2  # only the sampled request's server + attempt
    server = server_span(receiver.spans)
    assert server.attributes["url.path"] == "/sampled"
    [attempt] = receiver.children_of(server)
    assert attempt.span_id == parent


async def test_ratio_sampling_keeps_about_the_share_asked(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver
) -> None:
    up = await servers("up")
    gw = await gateways(
        config([up.port], [route_cfg()], tracing=tracing(receiver.endpoint, sample_rate=0.5))
    )
    async with client() as c:
        for i in range(60):
            assert (await c.get(url(gw, f"/{i}"))).status_code == 200
    await gw.stop(drain_timeout_s=1)
    sampled = {sent_traceparent(up, i)[0] for i in range(60) if sent_traceparent(up, i)[2] == "01"}
    assert 10 <= len(sampled) <= 50  # trace id ratio 0.5 (bounds: p < 1e-6 to fail)
    assert {s.trace_id for s in receiver.spans} == sampled
    assert len(receiver.spans) == 2 * len(sampled)


# ==========================================================================
# (e) malformed traceparent, (f) tracestate
# ==========================================================================

MALFORMED = [
    SAMPLED_PARENT.upper(),
    f"00-{'0' * 32}-{PARENT_SPAN}-01",
    f"00-{TRACE_ID}-{'0' * 16}-01",
    f"ff-{TRACE_ID}-{PARENT_SPAN}-01",
    f"00-{TRACE_ID}-{PARENT_SPAN}-01-extra",
    f"00-{TRACE_ID[:-1]}-{PARENT_SPAN}-01",
    "garbage",
]


async def test_malformed_traceparent_is_ignored(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver
) -> None:
    up = await servers("up")
    gw = await gateways(config([up.port], [route_cfg()], tracing=tracing(receiver.endpoint)))
    async with client() as c:
        for value in MALFORMED:
            r = await c.get(url(gw, "/m"), headers={"traceparent": value, "tracestate": "rojo=1"})
            assert r.status_code == 200, value
        # two traceparent fields are invalid too
        r = await c.get(url(gw, "/m"), headers=[("traceparent", SAMPLED_PARENT)] * 2)
        assert r.status_code == 200
    assert len(up.requests) == len(MALFORMED) + 1
    trace_ids = set()
    for i, seen in enumerate(up.requests):
        tid, _, flags = sent_traceparent(up, i)
        assert tid != TRACE_ID and flags == "01"  # a new, sampled trace
        assert "tracestate" not in seen.headers  # dropped with its invalid traceparent
        trace_ids.add(tid)
    assert len(trace_ids) == len(up.requests)
    for tid in trace_ids:
        assert server_span(await trace_of(receiver, tid, 2)).parent_id == ""


async def test_tracestate_is_passed_on(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver
) -> None:
    up = await servers("up")
    gw = await gateways(config([up.port], [route_cfg()], tracing=tracing(receiver.endpoint)))
    state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    async with client() as c:
        await c.get(url(gw, "/one"), headers={"traceparent": SAMPLED_PARENT, "tracestate": state})
        await c.get(
            url(gw, "/two"),
            headers=[
                ("traceparent", SAMPLED_PARENT),
                ("tracestate", "rojo=00f067aa0ba902b7"),
                ("tracestate", "congo=t61rcWkgMzE"),
            ],
        )
        await c.get(
            url(gw, "/bad"),
            headers={"traceparent": SAMPLED_PARENT, "tracestate": "rojo=1,rojo=2"},
        )
    one, two, bad = up.requests
    assert one.headers["tracestate"] == state
    assert two.headers["tracestate"] == state  # several fields: one list, in order
    assert "tracestate" not in bad.headers  # invalid (duplicate key): dropped
    assert sent_traceparent(up, 2)[0] == TRACE_ID  # the traceparent still counts
    spans = await trace_of(receiver, TRACE_ID, 6)
    by_path = {s.attributes["url.path"]: s for s in spans if s.kind == SERVER}
    assert by_path["/one"].trace_state == state
    assert by_path["/two"].trace_state == state
    assert by_path["/bad"].trace_state == ""


async def test_client_trace_fields_are_replaced_not_duplicated(
    gateways: Gateways, upstream: TestUpstream, receiver: OtlpReceiver
) -> None:
    gw = await gateways(config([upstream.port], [route_cfg()], tracing=tracing(receiver.endpoint)))
    async with client() as c:
        r = await c.get(
            url(gw, "/headers"),
            headers=[
                ("traceparent", SAMPLED_PARENT),
                ("tracestate", "rojo=1"),
                ("tracestate", "congo=2"),
            ],
        )
    assert r.status_code == 200
    server = server_span(await trace_of(receiver, TRACE_ID, 2))
    [attempt] = receiver.children_of(server)
    seen = upstream.requests[0]
    assert seen.header_all("traceparent") == [f"00-{TRACE_ID}-{attempt.span_id}-01"]
    assert seen.header_all("tracestate") == ["rojo=1,congo=2"]


# ==========================================================================
# (g) receiver down, (h) flush on stop
# ==========================================================================


async def test_receiver_down_does_not_affect_requests(gateways: Gateways, servers: Servers) -> None:
    up = await servers("up")
    nowhere = f"http://127.0.0.1:{free_port()}/v1/traces"  # nothing listens there
    gw = await gateways(
        config([up.port], [route_cfg()], tracing=tracing(nowhere, export_timeout_s=1))
    )
    async with client() as c:
        for i in range(5):
            r = await c.get(url(gw, f"/{i}"), headers={"traceparent": SAMPLED_PARENT})
            assert r.status_code == 200
            await asyncio.sleep(0.06)  # let the exporter try (and fail) meanwhile
    assert [sent_traceparent(up, i)[0] for i in range(5)] == [TRACE_ID] * 5
    started = time.monotonic()
    await gw.stop(drain_timeout_s=1)
    assert time.monotonic() - started < 5  # bounded by export_timeout_s (1 s) + slack


async def test_full_span_queue_drops_spans_without_a_warning_per_span(
    gateways: Gateways, servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    up = await servers("up")
    stalled: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stalled.append(writer)  # a collector that accepts and never answers

    sink = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = sink.sockets[0].getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}/v1/traces"
    tiny = tracing(endpoint, max_queue_size=1, max_export_batch_size=1, export_timeout_s=1)
    try:
        gw = await gateways(config([up.port], [route_cfg()], tracing=tiny))
        with caplog.at_level(logging.WARNING):
            async with client() as c:
                for i in range(20):  # 40 spans while the first export waits for an answer
                    assert (await c.get(url(gw, f"/{i}"))).status_code == 200
            started = time.monotonic()
            await gw.stop(drain_timeout_s=1)
            assert time.monotonic() - started < 4  # export_timeout_s (1 s) bounds the wait
    finally:
        sink.close()
        for writer in stalled:
            writer.transport.abort()
    full = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Queue full")]
    # spans were dropped; the SDK logs that once per 20 s window, not once per span
    assert 1 <= len(full) <= 2, full


async def test_spans_are_flushed_on_stop(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver
) -> None:
    up = await servers("up")
    slow_batches = tracing(receiver.endpoint, schedule_delay_s=60)
    gw = await gateways(config([up.port], [route_cfg()], tracing=slow_batches))
    async with client() as c:
        for i in range(3):
            assert (await c.get(url(gw, f"/{i}"))).status_code == 200
    await asyncio.sleep(0.2)
    assert receiver.spans == []  # still queued: the next export is a minute away
    started = time.monotonic()
    await gw.stop(drain_timeout_s=1)
    assert time.monotonic() - started < 3
    assert len(receiver.spans) == 6  # all exported before stop() returned
    assert {s.trace_id for s in receiver.spans} == {sent_traceparent(up, i)[0] for i in range(3)}


# ==========================================================================
# Tracing off, and turned on by a reload
# ==========================================================================


async def test_tracing_off_passes_trace_headers_through(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    up = await servers("up")
    log_path = tmp_path / "access.log"
    cfg = config([up.port], [route_cfg()], access_log={"enabled": True, "path": str(log_path)})
    cfg["tracing"] = {"enabled": False, "endpoint": receiver.endpoint}
    gw = await gateways(cfg)
    assert gw.app is not None and gw.app.tracing is None
    async with client() as c:
        r = await c.get(
            url(gw, "/x"), headers={"traceparent": SAMPLED_PARENT, "tracestate": "rojo=1"}
        )
    assert r.status_code == 200
    seen = up.requests[0].headers
    assert (seen["traceparent"], seen["tracestate"]) == (SAMPLED_PARENT, "rojo=1")  # untouched
    await gw.stop(drain_timeout_s=1)
    assert receiver.exports == 0
    [line] = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert line["trace_id"] is None


async def test_reload_turns_tracing_on(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver
) -> None:
    up = await servers("up")
    cfg = config([up.port], [route_cfg()])
    gw = await gateways(cfg)
    async with client() as c:
        assert (await c.get(url(gw, "/before"))).status_code == 200
        assert "traceparent" not in up.requests[0].headers
        cfg["tracing"] = tracing(receiver.endpoint)
        config_on, doc = parse_config(to_yaml(cfg), "e2e.yaml")
        await gw.reload(config_on, doc)
        r = await c.get(url(gw, "/after"), headers={"traceparent": SAMPLED_PARENT})
        assert r.status_code == 200
    assert sent_traceparent(up, 1)[0] == TRACE_ID
    server = server_span(await trace_of(receiver, TRACE_ID, 2))
    assert server.attributes["url.path"] == "/after"


async def test_reload_with_a_new_endpoint_flushes_the_old_tracer(
    gateways: Gateways, servers: Servers, receiver: OtlpReceiver
) -> None:
    up = await servers("up")
    second = await OtlpReceiver().start()
    try:
        cfg = config(
            [up.port], [route_cfg()], tracing=tracing(receiver.endpoint, schedule_delay_s=60)
        )
        gw = await gateways(cfg)
        async with client() as c:
            assert (await c.get(url(gw, "/old"))).status_code == 200
            assert receiver.spans == []  # queued until the old tracer closes
            cfg["tracing"] = tracing(second.endpoint, schedule_delay_s=60)
            new_config, doc = parse_config(to_yaml(cfg), "e2e.yaml")
            await gw.reload(new_config, doc)
            await eventually(lambda: len(receiver.spans) == 2, WAIT_S)  # closed in the background
            assert (await c.get(url(gw, "/new"))).status_code == 200
        await gw.stop(drain_timeout_s=1)
        assert {s.attributes.get("url.path") for s in receiver.servers()} == {"/old"}
        assert {s.attributes.get("url.path") for s in second.servers()} == {"/new"}
        assert len(second.spans) == 2
    finally:
        await second.stop()


async def test_gateway_process_exports_its_spans_on_sigterm(
    gateway_process: Callable[..., Awaitable[GatewayProcess]],
    servers: Servers,
    receiver: OtlpReceiver,
) -> None:
    """``meshgate gateway`` (uvloop, signal handlers): spans queued at SIGTERM are
    exported before the process exits 0."""
    up = await servers("up")
    cfg = config([up.port], [route_cfg()], tracing=tracing(receiver.endpoint, schedule_delay_s=60))
    gp = await gateway_process(cfg, workers=1)
    async with client() as c:
        r = await c.get(url(gp.port, "/x"), headers={"traceparent": SAMPLED_PARENT})
    assert r.status_code == 200
    assert receiver.spans == []  # queued: the next scheduled export is a minute away
    assert await gp.stop(signal.SIGTERM) == 0
    server = server_span(receiver.of_trace(TRACE_ID))
    assert [s.kind for s in receiver.children_of(server)] == [CLIENT]
    assert server.resource["service.name"] == "edge-gw"
