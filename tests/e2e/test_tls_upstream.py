"""HTTPS upstreams end to end: the test upstream behind a TLS port (`TlsFront`,
tls_helpers.py) with certificates from a test CA.

CA verification (ok; wrong CA or wrong name -> 502 and a log line saying why),
SNI sent (``server_name``, default the instance host), client certificates
presented, pooled TLS connections reused, the handshake inside
``connect_timeout_s``, health checks over TLS.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    GatewayFactory,
    TestUpstream,
    assert_json_error,
    eventually,
    make_config,
    url,
)
from tests.e2e.tls_helpers import CA, Pair, TlsFront


class UpstreamPki:
    def __init__(self, root: Path) -> None:
        self.ca = CA(root / "ca")
        self.server = self.ca.issue("upstream", ("upstream.test", "localhost"), ips=("127.0.0.1",))
        self.other_ca = CA(root / "other", "Other CA")
        self.client_ca = CA(root / "client-ca", "Client CA")
        self.gateway = self.client_ca.issue("gateway", cn="meshgate-gateway", client=True)


@pytest.fixture
def upki(tmp_path: Path) -> UpstreamPki:
    return UpstreamPki(tmp_path)


@pytest.fixture
async def front(upstream: TestUpstream, upki: UpstreamPki) -> AsyncIterator[TlsFront]:
    srv = await TlsFront(upki.server, upstream.port).start()
    yield srv
    await srv.stop()


def tls_upstream(port: int, tls: dict[str, Any], host: str = "127.0.0.1", **more: Any) -> Any:
    up = {
        "name": "main",
        "connect_timeout_s": 2,
        "instances": [{"host": host, "port": port}],
        "tls": tls,
    }
    up.update(more)
    return [up]


async def test_verified_tls_upstream_with_sni_and_pooled_connections(
    gateway_factory: GatewayFactory, upstream: TestUpstream, front: TlsFront, upki: UpstreamPki
) -> None:
    ups = tls_upstream(front.port, {"ca_file": upki.ca.cert_file, "server_name": "upstream.test"})
    gw = await gateway_factory(make_config(upstream.port, upstreams=ups))
    async with httpx.AsyncClient() as client:
        for i in range(3):
            r = await client.post(url(gw, "/echo"), content=b"x" * (i + 1) * 20_000)
            assert r.status_code == 200 and len(r.content) == (i + 1) * 20_000
        r = await client.get(url(gw, "/big?n=500000&mode=chunked"))
        assert len(r.content) == 500_000
    assert front.server_names == ["upstream.test"]  # SNI sent; one pooled connection
    assert front.handshakes == 1
    assert upstream.requests[0].header("x-forwarded-proto") == "http"


async def test_sni_defaults_to_the_instance_host(
    gateway_factory: GatewayFactory, upstream: TestUpstream, front: TlsFront, upki: UpstreamPki
) -> None:
    ups = tls_upstream(front.port, {"ca_file": upki.ca.cert_file}, host="localhost")
    gw = await gateway_factory(make_config(upstream.port, upstreams=ups))
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/headers"))
    assert r.status_code == 200
    assert front.server_names == ["localhost"]


async def test_wrong_ca_or_wrong_name_is_a_502_with_a_clear_log_line(
    gateway_factory: GatewayFactory,
    upstream: TestUpstream,
    front: TlsFront,
    upki: UpstreamPki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="meshgate.proxy")
    ups = tls_upstream(front.port, {"ca_file": upki.other_ca.cert_file})
    gw = await gateway_factory(make_config(upstream.port, upstreams=ups))
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/headers"))
    assert_json_error(r, 502)
    assert f"TLS handshake with 127.0.0.1:{front.port}" in caplog.text
    assert "certificate verify failed" in caplog.text or "unable to get" in caplog.text
    assert upstream.requests == []

    caplog.clear()
    ups = tls_upstream(
        front.port, {"ca_file": upki.ca.cert_file, "server_name": "someone-else.test"}
    )
    gw = await gateway_factory(make_config(upstream.port, upstreams=ups))
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/headers"))
    assert_json_error(r, 502)
    assert "someone-else.test" in caplog.text and "Hostname mismatch" in caplog.text

    # verify: false accepts any certificate (documented as tests only)
    ups = tls_upstream(front.port, {"verify": False})
    gw = await gateway_factory(make_config(upstream.port, upstreams=ups))
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/headers"))
    assert r.status_code == 200


async def test_client_certificate_is_presented(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upki: UpstreamPki
) -> None:
    mtls = await TlsFront(upki.server, upstream.port, client_ca=upki.client_ca.cert_file).start()
    try:
        with_cert = tls_upstream(
            mtls.port,
            {"ca_file": upki.ca.cert_file, **Pair.entry(upki.gateway)},
        )
        gw = await gateway_factory(make_config(upstream.port, upstreams=with_cert))
        async with httpx.AsyncClient() as client:
            r = await client.get(url(gw, "/headers"))
        assert r.status_code == 200
        assert any("commonName=meshgate-gateway" in s for s in mtls.client_subjects)

        without = tls_upstream(mtls.port, {"ca_file": upki.ca.cert_file})
        gw = await gateway_factory(make_config(upstream.port, upstreams=without))
        async with httpx.AsyncClient() as client:
            r = await client.get(url(gw, "/headers"))
        assert_json_error(r, 502)
    finally:
        await mtls.stop()


async def test_handshake_counts_in_connect_timeout(
    gateway_factory: GatewayFactory, upstream: TestUpstream, upki: UpstreamPki
) -> None:
    # A port that accepts TCP but never answers the ClientHello.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        ups = tls_upstream(
            silent.getsockname()[1], {"ca_file": upki.ca.cert_file}, connect_timeout_s=0.3
        )
        gw = await gateway_factory(make_config(upstream.port, upstreams=ups))
        async with httpx.AsyncClient() as client:
            started = asyncio.get_running_loop().time()
            r = await client.get(url(gw, "/headers"))
            took = asyncio.get_running_loop().time() - started
        body = assert_json_error(r, 503)
        assert "timed out after 0.3 s" in body["error"]
        assert took < 2.0
    finally:
        silent.close()


async def test_health_checks_run_over_tls(
    gateway_factory: GatewayFactory, upstream: TestUpstream, front: TlsFront, upki: UpstreamPki
) -> None:
    hc = {
        "path": "/status/200",
        "interval_s": 0.05,
        "timeout_s": 1,
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
    }
    good = tls_upstream(
        front.port, {"ca_file": upki.ca.cert_file, "server_name": "upstream.test"}, health_check=hc
    )
    gw = await gateway_factory(make_config(upstream.port, upstreams=good))
    await eventually(lambda: "/status/200" in upstream.paths())  # the probe went through TLS
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/headers"))
    assert r.status_code == 200
    assert "upstream.test" in front.server_names

    bad = tls_upstream(front.port, {"ca_file": upki.other_ca.cert_file}, health_check=hc)
    gw = await gateway_factory(make_config(upstream.port, upstreams=bad))
    cluster = gw.runtime.clusters["main"]

    def unhealthy() -> bool:
        snap = cluster.snapshot()
        return any(h["healthy"] is False for h in snap["hosts"])

    await eventually(unhealthy)  # the handshake fails: the check fails
    async with httpx.AsyncClient() as client:
        r = await client.get(url(gw, "/headers"))
    assert_json_error(r, 503)


async def test_auto_protocol_stays_on_http1_without_alpn_h2(
    gateway_factory: GatewayFactory, front: TlsFront, upki: UpstreamPki, upstream: TestUpstream
) -> None:
    """An HTTPS upstream that does not pick h2 by ALPN gets HTTP/1.1 (protocol: auto)."""
    ups = tls_upstream(
        front.port,
        {"ca_file": upki.ca.cert_file, "server_name": "upstream.test"},
        protocol="auto",
    )
    gw = await gateway_factory(make_config(0, upstreams=ups))
    async with httpx.AsyncClient() as c:
        rs = await asyncio.gather(*(c.get(url(gw, "/echo-headers")) for _ in range(5)))
    assert [r.status_code for r in rs] == [200] * 5
    assert {rec.version for rec in upstream.requests} == {"HTTP/1.1"}
    assert type(gw.runtime.clusters["main"].hosts[0].pool).__name__ == "Pool"
