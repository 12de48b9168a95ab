"""TLS, HTTP/2 and WebSocket config (docs/tls.md, docs/http2.md, docs/websocket.md)
checked where it is written: missing files, files without PEM, a key of another
certificate, bad versions and cipher lists are reported as ``file:line: key.path:
problem``, also by ``meshgate validate``; when the listener serves HTTP/2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshgate.config.loader import parse_config
from tests.config.located import problems_of as problems
from tests.e2e.conftest import subprocess_env
from tests.e2e.tls_helpers import CA, Pair


@pytest.fixture
def pairs(tmp_path: Path) -> tuple[CA, Pair, Pair]:
    ca = CA(tmp_path)
    return ca, ca.issue("a", ("a.test",)), ca.issue("b", ("b.test",))


def listener(cert: str, key: str, extra: str = "") -> str:
    return (
        "listener:\n"
        "  port: 0\n"
        "  tls:\n"
        "    certificates:\n"
        f"      - cert_file: {cert}\n"
        f"        key_file: {key}\n" + extra
    )


def test_a_good_pair_loads(pairs: tuple[CA, Pair, Pair]) -> None:
    _, a, _ = pairs
    config, _ = parse_config(listener(a.cert_file, a.key_file), "gw.yaml")
    tls = config.listener.tls
    assert tls is not None and tls.min_version == "TLSv1.2" and tls.client_ca_file is None
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" in tls.ciphers


def test_missing_files_are_located(pairs: tuple[CA, Pair, Pair], tmp_path: Path) -> None:
    _, a, _ = pairs
    missing = tmp_path / "nope.pem"
    assert problems(listener(str(missing), a.key_file)) == [
        f"gw.yaml:5: listener.tls.certificates[0].cert_file: cannot read {missing}: "
        "No such file or directory"
    ]
    assert problems(listener(a.cert_file, str(missing))) == [
        f"gw.yaml:6: listener.tls.certificates[0].key_file: cannot read {missing}: "
        "No such file or directory"
    ]


def test_key_of_another_certificate(pairs: tuple[CA, Pair, Pair]) -> None:
    _, a, b = pairs
    assert problems(listener(a.cert_file, b.key_file)) == [
        f"gw.yaml:6: listener.tls.certificates[0].key_file: {b.key_file} is not the key "
        f"of the certificate in {a.cert_file}"
    ]


def test_files_without_pem(pairs: tuple[CA, Pair, Pair], tmp_path: Path) -> None:
    _, a, _ = pairs
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert problems(listener(str(junk), str(junk))) == [
        f"gw.yaml:5: listener.tls.certificates[0].cert_file: {junk} holds no PEM certificate",
        f"gw.yaml:6: listener.tls.certificates[0].key_file: {junk} holds no unencrypted "
        "PEM private key",
    ]
    # the certificate given as the key and the key as the certificate
    swapped = problems(listener(a.key_file, a.cert_file))
    assert [p.split(": ")[1] for p in swapped] == [
        "listener.tls.certificates[0].cert_file",
        "listener.tls.certificates[0].key_file",
    ]


def test_bad_version_ciphers_client_ca_and_timeouts(pairs: tuple[CA, Pair, Pair]) -> None:
    _, a, _ = pairs
    base = listener(a.cert_file, a.key_file)
    out = problems(base + "    min_version: TLSv1.0\n")
    assert out == ["gw.yaml:7: listener.tls.min_version: Input should be 'TLSv1.2' or 'TLSv1.3'"]
    out = problems(base + "    ciphers: NOT-A-CIPHER\n")
    assert out == [
        "gw.yaml:7: listener.tls.ciphers: OpenSSL knows none of the ciphers 'NOT-A-CIPHER'"
    ]
    out = problems(base + f"    client_ca_file: {a.key_file}\n")
    assert out == [f"gw.yaml:7: listener.tls.client_ca_file: {a.key_file} holds no PEM certificate"]
    out = problems(base + "    handshake_timeout_s: 0\n")
    assert out[0].startswith("gw.yaml:7: listener.tls.handshake_timeout_s: Input should be greater")
    out = problems(base + "    client_auth: sometimes\n")
    assert out[0].startswith("gw.yaml:7: listener.tls.client_auth: Input should be 'require'")
    out = problems("listener:\n  tls:\n    certificates: []\n")
    assert out[0].startswith("gw.yaml:3: listener.tls.certificates: List should have at least 1")


def test_upstream_tls_errors(pairs: tuple[CA, Pair, Pair], tmp_path: Path) -> None:
    _, a, b = pairs
    head = "upstreams:\n  - name: u\n    instances: [{host: 127.0.0.1, port: 9}]\n    tls:\n"
    assert problems(head + f"      cert_file: {a.cert_file}\n") == [
        "gw.yaml:4: upstreams[0].tls: cert_file and key_file go together: give both or neither"
    ]
    assert problems(head + f"      cert_file: {a.cert_file}\n      key_file: {b.key_file}\n") == [
        f"gw.yaml:6: upstreams[0].tls.key_file: {b.key_file} is not the key of the "
        f"certificate in {a.cert_file}"
    ]
    missing = tmp_path / "ca.pem"
    assert problems(head + f"      ca_file: {missing}\n") == [
        f"gw.yaml:5: upstreams[0].tls.ca_file: cannot read {missing}: No such file or directory"
    ]
    # disabled: its files are not read
    parse_config(head + f"      enabled: false\n      ca_file: {missing}\n", "gw.yaml")


def test_websocket_key(tmp_path: Path) -> None:
    text = (
        "upstreams: [{name: u, instances: [{host: 127.0.0.1, port: 9}]}]\n"
        "routes:\n"
        "  - path: /ws\n"
        "    upstream: u\n"
        "    websocket: {}\n"
    )
    config, _ = parse_config(text, "gw.yaml")
    ws = config.routes[0].websocket
    assert ws is not None and ws.idle_timeout_s == 300.0
    assert problems(text.replace("{}", "{idle_timeout_s: -1}"))[0].startswith(
        "gw.yaml:5: routes[0].websocket.idle_timeout_s: Input should be greater than 0"
    )


def test_meshgate_validate_reports_the_mismatch(
    pairs: tuple[CA, Pair, Pair], tmp_path: Path
) -> None:
    _, a, b = pairs
    path = tmp_path / "gw.yaml"
    path.write_text(listener(a.cert_file, b.key_file))
    proc = subprocess.run(
        [sys.executable, "-m", "meshgate", "validate", str(path)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert proc.returncode == 1
    assert f"{path}:6: listener.tls.certificates[0].key_file: {b.key_file} is not the key" in (
        proc.stderr
    )


def test_websocket_routes_are_not_cached_or_redirects() -> None:
    head = "upstreams: [{name: u, instances: [{host: 127.0.0.1, port: 9}]}]\nroutes:\n"
    assert problems(head + "  - {path: /ws, upstream: u, websocket: {}, cache: {}}\n") == [
        "gw.yaml:3: routes[0]: a websocket route is not cached: remove cache (or split the route)"
    ]
    out = problems(head + "  - {path: /ws, redirect: {path: /x}, websocket: {}}\n")
    assert out == [
        "gw.yaml:3: routes[0]: a redirect route answers without forwarding: remove websocket"
    ]


def test_http2_is_on_with_tls_unless_turned_off(pairs: tuple[CA, Pair, Pair]) -> None:
    """listener.http2 (docs/http2.md): null means h2 on a TLS listener, nothing on a
    plaintext one; true adds h2c there; false turns both off."""
    _, a, _ = pairs
    with_tls = listener(a.cert_file, a.key_file)
    cases = [
        (with_tls, True),
        (with_tls + "  http2: false\n", False),
        ("listener:\n  port: 0\n", False),
        ("listener:\n  port: 0\n  http2: true\n", True),
    ]
    for text, serves in cases:
        config, _ = parse_config(text, "gw.yaml")
        assert config.listener.serves_http2 is serves, text
        assert config.listener.http2_max_concurrent_streams == 100
    assert problems("listener:\n  port: 0\n  http2_max_concurrent_streams: 0\n") == [
        "gw.yaml:3: listener.http2_max_concurrent_streams: Input should be greater than or "
        "equal to 1"
    ]
    assert problems("listener:\n  port: 0\n  http2: maybe\n") == [
        "gw.yaml:3: listener.http2: Input should be a valid boolean, unable to interpret input"
    ]
