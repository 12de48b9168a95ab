"""HTTP/2 end to end: in-process gateways serving h2 over TLS (ALPN) and h2c with
prior knowledge, reached by httpx (``http2=True``), curl (nghttp2) and a
frame-level client (h2_helpers.RawH2), proxying to the HTTP/1.1 test upstream.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from meshgate.gateway import Gateway
from tests.e2e.conftest import (
    BLOCK,
    GatewayFactory,
    GatewayProcess,
    TestUpstream,
    curl,
    eventually,
    make_config,
    parse_curl_i,
)
from tests.e2e.h2_helpers import PREFACE, CountingUpstream, RawH2, SourceUpstream
from tests.e2e.otlp_receiver import SERVER, OtlpReceiver
from tests.e2e.test_tls import Pki, client_ssl, handshake, tls_listener

H2C = {"http2": True}


def big(n: int) -> bytes:
    """What the test upstream's ``/big?n=N`` sends."""
    return (BLOCK * (n // len(BLOCK) + 1))[:n]


def h2_client(pki: Pki | None = None, **kw: Any) -> httpx.AsyncClient:
    """HTTP/2 only: over TLS by ALPN, or h2c with prior knowledge for http:// URLs."""
    verify: ssl.SSLContext | bool = client_ssl(pki) if pki is not None else False
    return httpx.AsyncClient(http1=False, http2=True, verify=verify, timeout=10, **kw)


def https(gw: Gateway, path: str) -> str:
    return f"https://127.0.0.1:{gw.port}{path}"


def http(gw: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gw.port}{path}"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


async def test_h2_over_tls_get_and_post_through_to_the_http11_upstream(
    gateway_factory: GatewayFactory, upstream: TestUpstream, pki: Pki
) -> None:
    gw = await gateway_factory(listener=tls_listener(pki))  # http2 unset: on with TLS
    async with h2_client(pki) as client:
        resp = await client.get(https(gw, "/headers?q=1"), headers={"x-request-id": "h2-req-1"})
        assert resp.http_version == "HTTP/2"
        assert resp.status_code == 200
        assert resp.headers["x-request-id"] == "h2-req-1"
        seen = upstream.requests[-1]
        assert (seen.method, seen.target, seen.version) == ("GET", "/headers?q=1", "HTTP/1.1")
        assert seen.header("host") == f"127.0.0.1:{gw.port}"  # from :authority
        assert seen.header("x-forwarded-proto") == "https"
        payload = b"h2 body " * 5000  # 40 kB: several DATA frames
        resp = await client.post(https(gw, "/echo"), content=payload)
        assert (resp.status_code, resp.content) == (200, payload)
        assert upstream.requests[-1].body == payload
        resp = await client.head(https(gw, "/big?n=5000"))
        assert (resp.status_code, resp.headers["content-length"], resp.content) == (
            200,
            "5000",
            b"",
        )
    assert gw.client_connections() <= 1


async def test_alpn_offers_h2_only_when_the_listener_serves_it(
    gateway_factory: GatewayFactory, pki: Pki
) -> None:
    on = await gateway_factory(listener=tls_listener(pki))
    off = await gateway_factory(listener={**tls_listener(pki), "http2": False})
    _, alpn, _ = await handshake(on, pki, "api.example.com", alpn=["h2", "http/1.1"])
    assert alpn == "h2"
    _, alpn, _ = await handshake(off, pki, "api.example.com", alpn=["h2", "http/1.1"])
    assert alpn == "http/1.1"
    async with httpx.AsyncClient(http2=True, verify=client_ssl(pki)) as client:
        resp = await client.get(https(off, "/"))
        assert (resp.http_version, resp.status_code) == ("HTTP/1.1", 200)


async def test_h2c_prior_knowledge_with_curl_and_http11_on_the_same_port(
    gateway_factory: GatewayFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    gw = await gateway_factory(listener=H2C)
    code, out, err = await curl("-i", "--http2-prior-knowledge", http(gw, "/headers"))
    assert code == 0, err
    status, headers, body = parse_curl_i(out)
    assert out.startswith("HTTP/2 200"), out
    assert json.loads(body)["target"] == "/headers"
    assert "x-request-id" in headers
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"u" * 30000)
    code, out, err = await curl(
        "-i", "--http2-prior-knowledge", "--data-binary", f"@{upload}", http(gw, "/echo")
    )
    assert code == 0, err
    status, _, body = parse_curl_i(out)
    assert (status, len(body)) == (200, 30000)
    # HTTP/1.1 still served on the same listener.
    code, out, err = await curl("-i", "--http1.1", http(gw, "/headers"))
    assert code == 0, err
    assert out.startswith("HTTP/1.1 200"), out
    # curl --http2 on http:// asks for "Upgrade: h2c": refused (h2c smuggling), 400.
    code, out, err = await curl("-i", "--http2", http(gw, "/headers"))
    assert code == 0, err
    assert parse_curl_i(out)[0] == 400
    assert "h2c" in parse_curl_i(out)[2]


async def test_curl_http2_over_tls(
    gateway_factory: GatewayFactory, upstream: TestUpstream, pki: Pki
) -> None:
    gw = await gateway_factory(listener=tls_listener(pki))
    code, out, err = await curl(
        "-i", "--http2", "--cacert", pki.ca.cert_file, https(gw, "/big?n=200000")
    )
    assert code == 0, err
    assert out.startswith("HTTP/2 200"), out[:200]
    assert parse_curl_i(out)[2].encode() == big(200000)


async def test_h2c_off_by_default_on_plaintext(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(PREFACE)
    answer = await reader.read()  # an HTTP/1.1 error, then the close
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer


async def test_many_concurrent_streams_on_one_connection(
    gateway_factory: GatewayFactory, upstream: TestUpstream
) -> None:
    gw = await gateway_factory(listener=H2C)
    async with h2_client() as client:
        paths = [f"/big?n={1000 * i + 1}&mode=chunked" for i in range(60)]
        resps = await asyncio.gather(*(client.get(http(gw, p)) for p in paths))
        assert [r.status_code for r in resps] == [200] * 60
        assert [r.content for r in resps] == [big(1000 * i + 1) for i in range(60)]
        assert gw.client_connections() == 1
    assert len(upstream.requests) == 60


async def test_large_streamed_response_arrives_intact(
    gateway_factory: GatewayFactory, upstream: TestUpstream, pki: Pki
) -> None:
    gw = await gateway_factory(listener=tls_listener(pki))
    n = 8 * 1024 * 1024 + 7
    async with h2_client(pki) as client:
        for mode in ("chunked", "length"):
            async with client.stream("GET", https(gw, f"/big?n={n}&mode={mode}")) as resp:
                assert resp.http_version == "HTTP/2"
                data = b"".join([chunk async for chunk in resp.aiter_raw()])
            assert len(data) == n
            assert data == big(n)


async def test_flow_control_with_a_slow_reader(
    gateway_factory: GatewayFactory, upstream: TestUpstream
) -> None:
    """The client grants a 16 KiB stream window and nothing more for a while: the
    gateway sends exactly that much in frames of at most 16 KiB, then waits; each
    grant lets the same amount through, and the whole body arrives intact."""
    gw = await gateway_factory(listener=H2C)
    window = 16384
    n = 2 * 1024 * 1024
    client = await RawH2(auto_window=False).connect(
        gw.port, {SettingCodes.INITIAL_WINDOW_SIZE: window}
    )
    try:
        client.request(1, f"/big?n={n}&mode=chunked")
        await client.until(lambda: 1 in client.answers and len(client.answers[1].body) >= window)
        client.ping()  # answered after whatever the gateway had ready to send
        await client.until(lambda: client.pings == 1)
        answer = client.answers[1]
        assert len(answer.body) == window
        for _ in range(3):  # a slow reader granting a little at a time
            client.grant(1, window)
            got = len(answer.body) + window
            await client.until(lambda got=got: len(answer.body) >= got)
            client.ping()
            pings = client.pings + 1
            await client.until(lambda pings=pings: client.pings == pings)
            assert len(answer.body) == got
        client.grant(1, n)
        answer = await client.answer(1)
        assert answer.status == 200
        assert answer.body == big(n)
        assert max(answer.frame_sizes) <= 16384  # SETTINGS_MAX_FRAME_SIZE default
    finally:
        await client.close()


async def test_a_reader_granting_nothing_holds_back_the_upstream(
    gateway_factory: GatewayFactory,
) -> None:
    """While the client keeps its window shut, the gateway stops reading the
    upstream: the upstream's socket takes a few buffers' worth, not the body."""
    size = 256 * 1024 * 1024
    source = await SourceUpstream(size).start()
    try:
        gw = await gateway_factory(make_config(source.port, listener=H2C))
        client = await RawH2(auto_window=False).connect(gw.port)
        client.request(1, "/download")
        await client.until(lambda: 1 in client.answers and len(client.answers[1].body) >= 65535)
        await asyncio.sleep(0.5)  # time enough to move far more than the bound below
        assert len(client.answers[1].body) == 65535
        assert source.written < 64 * 1024 * 1024
        await client.close()
    finally:
        await source.stop()


async def test_large_upload_with_flow_control(
    gateway_factory: GatewayFactory, upstream: TestUpstream
) -> None:
    gw = await gateway_factory(listener=H2C, max_request_body_bytes=8 * 1024 * 1024)
    payload = bytes(range(256)) * 12000  # 3 MB, far past the 64 KiB stream window
    async with h2_client() as client:
        resp = await client.post(http(gw, "/echo-discard"), content=payload)
        assert resp.json() == {"received": len(payload)}
        resp = await client.post(http(gw, "/echo"), content=payload)
        assert resp.content == payload


async def test_max_concurrent_streams_is_advertised_and_enforced(
    gateway_factory: GatewayFactory,
) -> None:
    counting = await CountingUpstream(hold_s=0.05).start()
    try:
        gw = await gateway_factory(
            make_config(counting.port, listener={**H2C, "http2_max_concurrent_streams": 3})
        )
        raw = await RawH2().connect(gw.port)
        await raw.until(lambda: SettingCodes.MAX_CONCURRENT_STREAMS in raw.server_settings)
        assert raw.server_settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 3
        await raw.close()
        async with h2_client() as client:
            resps = await asyncio.gather(*(client.get(http(gw, f"/n{i}")) for i in range(12)))
        assert [r.status_code for r in resps] == [200] * 12
        assert counting.served == 12
        assert counting.max_in_flight <= 3
        # A client opening a fourth stream anyway breaks the protocol: GOAWAY.
        raw = await RawH2().connect(gw.port)
        for sid in (1, 3, 5, 7):
            raw.request(sid, "/held", method="POST", end=False)
        await raw.until(lambda: raw.goaway is not None)
        assert raw.goaway is not None
        assert raw.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
        await raw.close()
    finally:
        await counting.stop()


async def test_a_stream_reset_by_the_client_leaves_the_others_alone(
    gateway_factory: GatewayFactory, upstream: TestUpstream
) -> None:
    gw = await gateway_factory(listener=H2C)
    raw = await RawH2().connect(gw.port)
    try:
        raw.request(1, "/slow?s=5")
        raw.request(3, "/big?n=300000&mode=chunked")
        await eventually(lambda: "/slow" in upstream.paths())
        raw.reset(1)
        answer = await raw.answer(3)
        assert (answer.status, answer.body) == (200, big(300000))
        # The slow request was given up toward the upstream too.
        [slow] = [r for r in upstream.requests if r.path == "/slow"]
        await eventually(lambda: slow.abandoned)
        raw.request(5, "/headers")
        answer = await raw.answer(5)
        assert answer.status == 200
        assert 1 not in raw.ended
    finally:
        await raw.close()


async def test_errors_stay_on_their_stream(
    gateway_factory: GatewayFactory, upstream: TestUpstream
) -> None:
    """Requests the gateway refuses get their error on their stream; a response that
    breaks after its head is reset (RST_STREAM); the connection serves on."""
    gw = await gateway_factory(listener=H2C, max_request_body_bytes=1000)
    raw = await RawH2().connect(gw.port)
    try:
        raw.request(1, "/x", extra=[("x-big", "v" * 40000)])  # over max_header_bytes
        raw.request(3, "/x", authority=None, extra=[("host", "h.test")])  # Host, no :authority
        raw.request(5, "/x", "CONNECT")
        raw.request(7, "relative")
        raw.request(9, "/echo", "POST", extra=[("content-length", "5000")], end=False)
        raw.request(11, "/echo", "POST", end=False)  # no length: stopped at the limit
        raw.data(11, b"z" * 1500, end=True)
        raw.request(13, "/reset?when=partial&how=rst")
        raw.request(15, "/headers")
        statuses = {sid: (await raw.answer(sid)).status for sid in (1, 3, 5, 7, 9, 11)}
        assert statuses == {1: 431, 3: 200, 5: 405, 7: 400, 9: 413, 11: 413}
        assert json.loads(raw.answers[3].body)["headers"][0] == ["host", "h.test"]
        assert raw.answers[9].reset == ErrorCodes.NO_ERROR  # answered early: no more body
        broken = await raw.answer(13)
        assert broken.status == 200
        assert broken.reset == ErrorCodes.INTERNAL_ERROR
        assert (await raw.answer(15)).status == 200
        assert raw.answers[9].reset == ErrorCodes.NO_ERROR  # answered early: body not wanted
        assert raw.goaway is None
        raw.request(17, "/headers")
        assert (await raw.answer(17)).status == 200
    finally:
        await raw.close()


async def test_connection_specific_fields_are_not_sent(
    gateway_factory: GatewayFactory, upstream: TestUpstream
) -> None:
    gw = await gateway_factory(
        listener=H2C,
        routes=[
            {
                "path": "/*",
                "upstream": "main",
                "middleware": ["tests.e2e.h2_helpers:connection_fields"],
            }
        ],
    )
    raw = await RawH2().connect(gw.port)
    try:
        raw.request(1, "/headers")
        answer = await raw.answer(1)
        assert answer.status == 200
        names = {n for n, _ in answer.headers}
        assert not names & {
            "connection",
            "keep-alive",
            "transfer-encoding",
            "upgrade",
            "proxy-connection",
        }
        assert answer.header("content-length") == str(len(answer.body))
    finally:
        await raw.close()
    async with h2_client() as client:  # httpx's h2 would refuse such a response
        assert (await client.get(http(gw, "/headers"))).status_code == 200


async def test_graceful_shutdown_sends_goaway_and_finishes_streams_in_flight(
    gateway_factory: GatewayFactory, upstream: TestUpstream
) -> None:
    gw = await gateway_factory(listener=H2C)
    raw = await RawH2().connect(gw.port)
    try:
        raw.request(1, "/slow?s=1")  # still running when stream 5 comes
        raw.request(3, "/big?n=100000&mode=chunked")
        await eventually(lambda: "/slow" in upstream.paths())
        await raw.answer(3)
        stopping = asyncio.create_task(gw.stop(drain_timeout_s=5))
        await raw.until(lambda: raw.goaway is not None)
        assert raw.goaway is not None
        assert (raw.goaway.last_stream_id, raw.goaway.error_code) == (3, 0)
        raw.request(5, "/headers")  # after the GOAWAY: refused, not answered
        answer = await raw.answer(5)
        assert answer.reset == ErrorCodes.REFUSED_STREAM
        answer = await raw.answer(1)
        assert (answer.status, answer.body, answer.reset) == (200, b"slow done", None)
        while await raw.frame() is not None:  # then the gateway closes the connection
            pass
    finally:
        await raw.close()
    await stopping
    assert not [r for r in upstream.requests if r.abandoned]


async def test_curl_stream_in_flight_completes_during_drain(
    gateway_factory: GatewayFactory, upstream: TestUpstream
) -> None:
    gw = await gateway_factory(listener=H2C)
    fetch = asyncio.create_task(
        curl(
            "-s",
            "-o",
            "-",
            "-w",
            "%{http_version} %{http_code}",
            "--http2-prior-knowledge",
            http(gw, "/slow?s=0.5"),
        )
    )
    await eventually(lambda: "/slow" in upstream.paths())
    await gw.stop(drain_timeout_s=5)
    code, out, err = await fetch
    assert code == 0, err
    assert out == "slow done2 200"


async def test_the_cli_gateway_on_uvloop_serves_h2_and_drains_it(
    gateway_process: Callable[..., Awaitable[GatewayProcess]],
    upstream: TestUpstream,
    pki: Pki,
) -> None:
    """``meshgate gateway`` as deployed (a worker process on uvloop): h2 by ALPN on
    a TLS listener, h2c on a plaintext one, and SIGTERM letting a stream finish."""
    tls = await gateway_process(make_config(upstream.port, listener=tls_listener(pki)))
    assert "(https + h2, 1 routes)" in tls.log()
    code, out, err = await curl(
        "-s",
        "-w",
        " %{http_version}",
        "--http2",
        "--cacert",
        pki.ca.cert_file,
        f"https://127.0.0.1:{tls.port}/big?n=100000",
    )
    assert code == 0, err
    assert out == big(100000).decode() + " 2"
    plain = await gateway_process(make_config(upstream.port, listener=H2C))
    assert "(http + h2c, 1 routes)" in plain.log()
    fetch = asyncio.create_task(
        curl(
            "-s",
            "-w",
            " %{http_version} %{http_code}",
            "--http2-prior-knowledge",
            f"http://127.0.0.1:{plain.port}/slow?s=0.5",
        )
    )
    await eventually(lambda: "/slow" in upstream.paths(), wait_s=10)
    assert await plain.stop() == 0  # SIGTERM: drain
    code, out, err = await fetch
    assert code == 0, err
    assert out == "slow done 2 200"
    assert await tls.stop() == 0


async def test_access_log_request_id_and_metrics_for_http2(
    gateway_factory: GatewayFactory, upstream: TestUpstream, pki: Pki, tmp_path: Path
) -> None:
    log_path = tmp_path / "access.log"
    gw = await gateway_factory(
        listener=tls_listener(pki), access_log={"enabled": True, "path": str(log_path)}
    )
    async with h2_client(pki) as client:
        resp = await client.get(https(gw, "/api/h2"))
        assert resp.status_code == 200
        h2_id = resp.headers["x-request-id"]
    async with httpx.AsyncClient(verify=client_ssl(pki)) as client:
        resp = await client.get(https(gw, "/api/h1"))
        h1_id = resp.headers["x-request-id"]
    app = gw.app
    assert app is not None
    await gw.stop(drain_timeout_s=1)
    lines = {
        line["request_id"]: line for line in map(json.loads, log_path.read_text().splitlines())
    }
    assert lines[h2_id]["protocol"] == "HTTP/2"
    assert (lines[h2_id]["path"], lines[h2_id]["status"]) == ("/api/h2", 200)
    assert lines[h2_id]["upstream"] == f"127.0.0.1:{upstream.port}"
    assert lines[h1_id]["protocol"] == "HTTP/1.1"
    counted = {key: n for key, n in app.stats.counts.items() if key[1:] == ("GET", 200)}
    assert sum(counted.values()) == 2  # the same request metrics for both protocols


async def test_tracing_spans_for_an_http2_request(
    gateway_factory: GatewayFactory, upstream: TestUpstream
) -> None:
    receiver = await OtlpReceiver().start()
    try:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        gw = await gateway_factory(
            listener=H2C,
            tracing={
                "enabled": True,
                "endpoint": receiver.endpoint,
                "sample_rate": 1.0,
                "schedule_delay_s": 0.05,
            },
        )
        async with h2_client() as client:
            resp = await client.get(
                http(gw, "/traced"), headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
            )
            assert resp.status_code == 200
        await eventually(lambda: len(receiver.of_trace(trace_id)) == 2, 5)
        [server] = [s for s in receiver.of_trace(trace_id) if s.kind == SERVER]
        assert server.attributes["network.protocol.version"] == "2"
        assert server.attributes["http.response.status_code"] == 200
        [attempt] = receiver.children_of(server)
        sent = upstream.requests[-1].header("traceparent")
        assert sent == f"00-{trace_id}-{attempt.span_id}-01"  # propagated to the upstream
        await gw.stop(drain_timeout_s=1)
    finally:
        await receiver.stop()


async def test_compressed_streamed_response_over_h2(
    gateway_factory: GatewayFactory, upstream: TestUpstream
) -> None:
    """A route's compression (a body of unknown length) goes out as DATA frames
    without content-length; the client decodes the original."""
    gw = await gateway_factory(
        listener=H2C,
        max_request_body_bytes=1 << 20,
        routes=[{"path": "/*", "upstream": "main", "compress": True}],
    )
    text = b"".join(b"line %d of a compressible text body\n" % i for i in range(20000))
    async with h2_client() as client:
        resp = await client.post(
            http(gw, "/echo"),
            content=text,
            headers={"content-type": "text/plain", "accept-encoding": "gzip"},
        )
    assert resp.http_version == "HTTP/2"
    assert resp.headers["content-encoding"] == "gzip"
    assert "content-length" not in resp.headers
    assert resp.content == text


async def _h2load(*args: str) -> str:
    """Run h2load (Debian nghttp2-client) to completion, bounded; its report."""
    proc = await asyncio.create_subprocess_exec(
        "h2load", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2"])
async def test_h2load_bounded_run_has_no_failures(
    gateway_factory: GatewayFactory, upstream: TestUpstream, pki: Pki, tls: bool
) -> None:
    """2,000 requests on 4 connections, 16 streams each: every one succeeds."""
    gw = await gateway_factory(listener=tls_listener(pki) if tls else H2C)
    target = https(gw, "/headers") if tls else http(gw, "/headers")
    out = await _h2load("-n", "2000", "-c", "4", "-m", "16", target)
    assert "requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed" in out, out
    assert "status codes: 2000 2xx" in out, out
    assert ("TLS Protocol: TLSv1.3" in out) == tls
    assert len(upstream.requests) == 2000
