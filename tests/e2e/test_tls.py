"""TLS termination end to end: in-process gateways with an HTTPS listener, test
certificates made with `cryptography` (tls_helpers.py), Python ``ssl`` clients,
httpx and ``openssl s_client``.

SNI picks the certificate (exact name, wildcard one label deep, the first one
as default for no or unknown SNI); ALPN answers h2 or http/1.1; TLS 1.0 and 1.1 are
refused; client certificates required or optional, their subject and SANs
visible to middleware; certificate files reloaded without a restart (a bad new
pair refused and logged, the old one serving on); requests through the HTTPS
listener reach the upstream with ``x-forwarded-proto: https``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshgate.gateway import Gateway
from tests.e2e.conftest import (
    GatewayFactory,
    TestUpstream,
    eventually,
    make_config,
    run_cmd,
)
from tests.e2e.tls_helpers import CA, Pair, served_certificate


class Pki:
    def __init__(self, root: Path) -> None:
        self.ca = CA(root / "ca")
        self.default = self.ca.issue("default", ("default.test",), ips=("127.0.0.1",))
        self.api = self.ca.issue("api", ("api.example.com",))
        self.wild = self.ca.issue("wild", ("*.example.org", "example.org"))
        self.client_ca = CA(root / "client-ca", "Client CA")
        self.alice = self.client_ca.issue(
            "alice", cn="alice", uris=("spiffe://example.org/ns/default/sa/alice",), client=True
        )
        self.stranger = CA(root / "other-ca", "Other CA").issue("eve", cn="eve", client=True)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def tls_listener(pki: Pki, **tls: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "certificates": [pki.default.entry(), pki.api.entry(), pki.wild.entry()]
    }
    section.update(tls)
    return {"tls": section}


def https_config(upstream: TestUpstream, pki: Pki, **tls: Any) -> dict[str, Any]:
    return make_config(
        upstream.port,
        listener=tls_listener(pki, **tls),
        routes=[
            {
                "path": "/*",
                "upstream": "main",
                "middleware": ["tests.e2e.tls_plugins:client_identity"],
            }
        ],
    )


def client_ssl(pki: Pki, cert: Pair | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca.cert_file)
    if cert is not None:
        ctx.load_cert_chain(cert.cert_file, cert.key_file)
    return ctx


async def handshake(gw: Gateway, pki: Pki, name: str | None, **kw: Any) -> Any:
    return await asyncio.to_thread(served_certificate, gw.port, name, pki.ca.cert_file, **kw)


async def test_sni_selects_exact_wildcard_and_default_certificates(
    gateway_factory: GatewayFactory, upstream: TestUpstream, pki: Pki
) -> None:
    gw = await gateway_factory(https_config(upstream, pki))
    cases = [
        ("api.example.com", pki.api),
        ("API.Example.COM", pki.api),  # names are case-insensitive
        ("chat.example.org", pki.wild),  # wildcard
        ("example.org", pki.wild),  # its exact name
        ("a.b.example.org", pki.default),  # a wildcard covers one label only
        ("unknown.test", pki.default),
        (None, pki.default),  # no SNI
    ]
    for name, want in cases:
        cert, _, _ = await handshake(gw, pki, name)
        assert cert.serial_number == want.serial, name


async def test_alpn_versions_and_sni_with_python_ssl_and_openssl_s_client(
    gateway_factory: GatewayFactory, upstream: TestUpstream, pki: Pki
) -> None:
    gw = await gateway_factory(https_config(upstream, pki))
    _, alpn, version = await handshake(gw, pki, "api.example.com", alpn=["h2", "http/1.1"])
    assert alpn == "h2"  # served on TLS listeners by default (docs/http2.md)
    _, alpn, _ = await handshake(gw, pki, "api.example.com", alpn=["http/1.1"])
    assert alpn == "http/1.1"
    assert version == "TLSv1.3"
    _, alpn, _ = await handshake(gw, pki, "api.example.com")
    assert alpn is None  # no ALPN asked, none answered
    for flag, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        code, out, err = await s_client(
            gw.port, pki.ca.cert_file, flag, "-servername", "api.example.com"
        )
        assert code == 0, err
        assert f"New, {version}, Cipher is" in out, out
        assert "Verify return code: 0 (ok)" in out
        assert "ALPN protocol: http/1.1" in out
        assert "CN = api.example.com" in out
    for sni, subject in (
        (["-servername", "chat.example.org"], "CN = *.example.org"),
        (["-servername", "nobody.test"], "CN = default.test"),
        (["-noservername"], "CN = default.test"),
    ):
        code, out, err = await s_client(gw.port, pki.ca.cert_file, *sni)
        assert code == 0, err
        assert f"0 s:{subject}" in out, out


async def s_client(port: int, ca_file: str, *args: str) -> tuple[int, str, str]:
    """``openssl s_client`` handshake (stdin closed: it quits right after)."""
    return await run_cmd(
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-alpn",
        "http/1.1",
        "-CAfile",
        ca_file,
        *args,
        wait_s=15,
    )


async def test_tls_10_and_11_are_refused(
    gateway_factory: GatewayFactory, upstream: TestUpstream, pki: Pki
) -> None:
    gw = await gateway_factory(https_config(upstream, pki))
    for flag in ("-tls1", "-tls1_1"):
        # SECLEVEL=0: let this OpenSSL client offer the old versions at all
        code, out, _ = await s_client(
            gw.port, pki.ca.cert_file, flag, "-cipher", "DEFAULT@SECLEVEL=0"
        )
        assert code != 0, out
        assert "New, (NONE), Cipher is (NONE)" in out, out  # no session, no certificate
        assert "BEGIN CERTIFICATE" not in out

    def old_client() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_ciphers("DEFAULT@SECLEVEL=0")
        with warnings.catch_warnings():  # (deprecated: that is the point)
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        import socket

        with (
            socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw,
            ctx.wrap_socket(raw),
        ):
            pass

    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(old_client)
    # the gateway serves on after refused handshakes
    _, _, version = await handshake(gw, pki, "api.example.com")
    assert version == "TLSv1.3"


async def test_min_version_13_refuses_12(
    gateway_factory: GatewayFactory, upstream: TestUpstream, pki: Pki
) -> None:
    gw = await gateway_factory(https_config(upstream, pki, min_version="TLSv1.3"))
    code, _, _ = await s_client(gw.port, pki.ca.cert_file, "-tls1_2")
    assert code != 0
    code, _, err = await s_client(gw.port, pki.ca.cert_file, "-tls1_3")
    assert code == 0, err


async def test_https_requests_reach_the_upstream_as_https(
    gateway_factory: GatewayFactory, upstream: TestUpstream, pki: Pki
) -> None:
    gw = await gateway_factory(https_config(upstream, pki))
    async with httpx.AsyncClient(verify=client_ssl(pki)) as client:
        for _ in range(3):  # keep-alive over one TLS connection
            r = await client.get(f"https://127.0.0.1:{gw.port}/headers?x=1")
            assert r.status_code == 200
            assert r.headers["x-tls"] == "TLSv1.3 http/1.1"
            assert upstream.requests[-1].header("x-forwarded-proto") == "https"
        big = b"z" * 300_000
        r = await client.post(f"https://127.0.0.1:{gw.port}/echo", content=big[:60_000])
        assert r.content == big[:60_000]
        r = await client.get(f"https://127.0.0.1:{gw.port}/big?n=300000")
        assert len(r.content) == 300_000
    assert upstream.requests[0].header("x-forwarded-proto") == "https"
    assert "x-client-cn" not in r.headers  # no client certificate asked for


async def test_client_certificate_required(
    gateway_factory: GatewayFactory, upstream: TestUpstream, pki: Pki
) -> None:
    gw = await gateway_factory(https_config(upstream, pki, client_ca_file=pki.client_ca.cert_file))
    base = f"https://127.0.0.1:{gw.port}/headers"
    async with httpx.AsyncClient(verify=client_ssl(pki, pki.alice)) as client:
        r = await client.get(base)
    assert r.status_code == 200
    assert r.headers["x-client-cn"] == "alice"
    assert r.headers["x-client-uri"] == "spiffe://example.org/ns/default/sa/alice"
    for cert in (None, pki.stranger):  # none, or one from another CA
        with pytest.raises(httpx.HTTPError):
            async with httpx.AsyncClient(verify=client_ssl(pki, cert)) as client:
                await client.get(base)
    assert len(upstream.requests) == 1


async def test_client_certificate_optional(
    gateway_factory: GatewayFactory, upstream: TestUpstream, pki: Pki
) -> None:
    gw = await gateway_factory(
        https_config(upstream, pki, client_ca_file=pki.client_ca.cert_file, client_auth="optional")
    )
    base = f"https://127.0.0.1:{gw.port}/headers"
    async with httpx.AsyncClient(verify=client_ssl(pki)) as client:
        r = await client.get(base)
    assert r.status_code == 200 and "x-client-cn" not in r.headers
    async with httpx.AsyncClient(verify=client_ssl(pki, pki.alice)) as client:
        r = await client.get(base)
    assert r.headers["x-client-cn"] == "alice"
    with pytest.raises(httpx.HTTPError):  # a certificate sent is still verified
        async with httpx.AsyncClient(verify=client_ssl(pki, pki.stranger)) as client:
            await client.get(base)


async def test_plain_http_to_the_tls_port_does_not_hurt_the_gateway(
    gateway_factory: GatewayFactory, upstream: TestUpstream, pki: Pki
) -> None:
    gw = await gateway_factory(https_config(upstream, pki, handshake_timeout_s=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        rest = await reader.read()  # the handshake fails: closed, no HTTP answer
    assert not rest.startswith(b"HTTP/")
    writer.close()
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", gw.port)
    async with asyncio.timeout(5):  # no ClientHello at all: cut at handshake_timeout_s
        assert await silent_reader.read() == b""
    silent.close()
    _, _, version = await handshake(gw, pki, None)
    assert version == "TLSv1.3"


async def test_certificate_reload_without_restart(
    gateway_factory: GatewayFactory,
    upstream: TestUpstream,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await gateway_factory(https_config(upstream, pki, reload_check_s=0.1))
    async with httpx.AsyncClient(verify=client_ssl(pki)) as old_client:
        r = await old_client.get(f"https://127.0.0.1:{gw.port}/headers")
        assert r.status_code == 200
        # A new certificate for the same names replaces the files of `api`.
        renewed = pki.ca.issue("api-renewed", ("api.example.com",))
        shutil.copy(renewed.key_file, pki.api.key_file)
        shutil.copy(renewed.cert_file, pki.api.cert_file)

        async def serves(pair: Pair) -> bool:
            cert, _, _ = await handshake(gw, pki, "api.example.com")
            return cert.serial_number == pair.serial

        await eventually(lambda: serves(renewed), wait_s=5)
        # the connection opened before the reload serves on
        r = await old_client.get(f"https://127.0.0.1:{gw.port}/headers")
        assert r.status_code == 200

        # A bad new pair (the key of another certificate) is refused: the old serves on.
        caplog.set_level(logging.ERROR, logger="meshgate.tls")
        shutil.copy(pki.wild.key_file, pki.api.key_file)
        await eventually(lambda: "TLS reload refused" in caplog.text, wait_s=5)
        assert "e2e.yaml:" in caplog.text and "certificates[1].key_file" in caplog.text
        assert await serves(renewed)
        r = await old_client.get(f"https://127.0.0.1:{gw.port}/headers")
        assert r.status_code == 200


async def test_middlewares_work_unchanged_over_https(
    gateway_factory: GatewayFactory, upstream: TestUpstream, pki: Pki
) -> None:
    cfg = make_config(
        upstream.port,
        listener=tls_listener(pki),
        routes=[
            {"path": "/limited", "upstream": "main", "rate_limits": [{"limit": 1, "window_s": 60}]},
            {"path": "/old", "redirect": {"path": "/new"}},
            {"path": "/cached", "upstream": "main", "cache": {"ttl_s": 60}},
            {
                "path": "/*",
                "upstream": "main",
                "compress": {"min_size_bytes": 100},
                "cors": {"allow_origins": ["https://app.example"]},
                "ip_rules": {"deny": ["10.0.0.0/8"]},
                "response_headers": {"set": {"x-scheme": "${scheme}"}},
            },
        ],
    )
    gw = await gateway_factory(cfg)
    base = f"https://127.0.0.1:{gw.port}"
    async with httpx.AsyncClient(verify=client_ssl(pki)) as client:
        assert (await client.get(f"{base}/limited")).status_code == 200
        assert (await client.get(f"{base}/limited")).status_code == 429
        r = await client.get(f"{base}/old")
        assert r.status_code == 302
        assert r.headers["location"] == f"https://127.0.0.1:{gw.port}/new"
        first = await client.get(f"{base}/cached")
        again = await client.get(f"{base}/cached")
        assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")
        r = await client.get(
            f"{base}/headers?pad={'p' * 300}",
            headers={"accept-encoding": "gzip", "origin": "https://app.example"},
        )
        assert r.headers["content-encoding"] == "gzip" and r.json()["method"] == "GET"
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert r.headers["x-scheme"] == "https"
