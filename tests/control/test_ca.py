"""The mesh CA: CSR validation, workload certificate fields, bundle and root rotation."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshgate.control.ca import (
    CAError,
    CAState,
    CertificateAuthority,
    CSRRejected,
    SpiffeId,
    generate_root,
    load_signer,
    prune,
    rotate,
)
from meshgate.control.csr import key_pem, make_csr, new_key
from meshgate.testing import FakeClock

NOW = 1_800_000_000.0
TD = "mesh.test"
ORDERS = SpiffeId(TD, "default", "orders")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def ca(clock: FakeClock) -> CertificateAuthority:
    return CertificateAuthority(CAState(TD, (generate_root(TD, clock()),)), clock)


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_spiffe_id_parse_and_errors() -> None:
    sid = SpiffeId.parse("spiffe://mesh.test/ns/default/sa/orders")
    assert sid == ORDERS and sid.uri == "spiffe://mesh.test/ns/default/sa/orders"
    with pytest.raises(ValueError, match="must start with spiffe://"):
        SpiffeId.parse("https://mesh.test/ns/default/sa/orders")
    with pytest.raises(ValueError, match="/ns/<namespace>/sa/<service>"):
        SpiffeId.parse("spiffe://mesh.test/orders")
    with pytest.raises(ValueError, match="service 'Orders!'"):
        SpiffeId(TD, "default", "Orders!")


def test_workload_certificate_fields(ca: CertificateAuthority, clock: FakeClock) -> None:
    issued = ca.sign_csr(make_csr(new_key(), ORDERS.uri), ORDERS)
    cert = _cert(issued.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [ORDERS.uri]
    assert len(list(san.value)) == 1
    # 24 h default lifetime, backdated 5 min for clock skew
    assert cert.not_valid_before_utc.timestamp() == NOW - 300
    assert cert.not_valid_after_utc.timestamp() == NOW + 24 * 3600
    assert issued.not_after == NOW + 24 * 3600
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False and bc.value.path_length is None
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.key_encipherment
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    root = ca.active.cert
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    cert.verify_directly_issued_by(root)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    # the root signs leaves only
    root_bc = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert root_bc.ca and root_bc.path_length == 0
    assert ca.verify_peer(cert.public_bytes(serialization.Encoding.DER)) == ORDERS


def test_shorter_ttl_asked_is_honoured_never_longer(ca: CertificateAuthority) -> None:
    short = ca.sign_csr(make_csr(new_key(), ORDERS.uri), ORDERS, ttl_s=3600)
    assert short.not_after == NOW + 3600
    long = ca.sign_csr(make_csr(new_key(), ORDERS.uri), ORDERS, ttl_s=30 * 24 * 3600)
    assert long.not_after == NOW + 24 * 3600


@pytest.mark.parametrize(
    ("asked", "error"),
    [
        ("spiffe://mesh.test/ns/default/sa/payments", "entitled to spiffe://mesh.test/ns/default"),
        ("spiffe://mesh.test/ns/other/sa/orders", "entitled to"),
        ("spiffe://evil.test/ns/default/sa/orders", "trust domain 'evil.test'"),
        ("spiffe://mesh.test/orders", "not a workload SPIFFE ID"),
    ],
)
def test_csr_for_another_identity_is_rejected(
    ca: CertificateAuthority, asked: str, error: str
) -> None:
    with pytest.raises(CSRRejected, match=error):
        ca.sign_csr(make_csr(new_key(), asked), ORDERS)


def _csr_with_key(key: object, sid: str = ORDERS.uri) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    )
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(sid)]), critical=True
    )
    csr = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("key", "error"),
    [
        (rsa.generate_private_key(65537, 1024), "RSA-1024 keys are not accepted"),
        (rsa.generate_private_key(65537, 2048), "RSA-2048 keys are not accepted"),
        (ec.generate_private_key(ec.SECP384R1()), "curve secp384r1 is not accepted"),
    ],
)
def test_weak_or_wrong_keys_are_rejected(ca: CertificateAuthority, key: object, error: str) -> None:
    with pytest.raises(CSRRejected, match=error):
        ca.sign_csr(_csr_with_key(key), ORDERS)


def test_tampered_csr_is_rejected(ca: CertificateAuthority) -> None:
    """A CSR whose signed content was changed after signing (the SAN swapped)."""
    pem = make_csr(new_key(), "spiffe://mesh.test/ns/default/sa/orderz")
    der = x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)
    tampered = der.replace(b"orderz", b"orders")
    assert tampered != der
    tampered_pem = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + __import__("base64").encodebytes(tampered).decode()
        + "-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(CSRRejected, match="signature does not verify"):
        ca.sign_csr(tampered_pem, ORDERS)
    with pytest.raises(CSRRejected, match="not a PEM certificate signing request"):
        ca.sign_csr("hello", ORDERS)


def test_extra_sans_are_rejected(ca: CertificateAuthority) -> None:
    key = new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(ORDERS.uri), x509.DNSName("bank.example")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    with pytest.raises(CSRRejected, match="non-URI SANs"):
        ca.sign_csr(csr, ORDERS)


def test_root_rotation_with_overlap(ca: CertificateAuthority, clock: FakeClock) -> None:
    old_root = ca.active.cert_pem
    before = ca.sign_csr(make_csr(new_key(), ORDERS.uri), ORDERS)
    ca.state = rotate(ca.state, generate_root(TD, clock()), clock(), overlap_s=3600)
    new_root = ca.active.cert_pem
    assert ca.bundle() == [new_root, old_root]  # both trusted during the overlap
    after = ca.sign_csr(make_csr(new_key(), ORDERS.uri), ORDERS)
    _cert(after.cert_pem).verify_directly_issued_by(_cert(new_root))  # new issuance: new root
    der_before = _cert(before.cert_pem).public_bytes(serialization.Encoding.DER)
    assert ca.verify_peer(der_before) == ORDERS  # old certificates still accepted
    clock.advance(3600)
    assert ca.bundle() == [new_root]  # overlap over: the old root is gone
    with pytest.raises(ValueError, match="not signed by a trusted mesh CA"):
        ca.verify_peer(der_before)
    ca.state = prune(ca.state, clock())
    assert len(ca.state.signers) == 1
    restored = CAState.from_json(ca.state.to_json())
    assert restored.signers[0].cert_pem == new_root


def test_expired_peer_certificate_is_refused(ca: CertificateAuthority, clock: FakeClock) -> None:
    issued = ca.sign_csr(make_csr(new_key(), ORDERS.uri), ORDERS)
    clock.advance(24 * 3600 + 1)
    with pytest.raises(ValueError, match="outside its validity"):
        ca.verify_peer(_cert(issued.cert_pem).public_bytes(serialization.Encoding.DER))


def _external_root_and_intermediate() -> tuple[str, str, str]:
    root_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.fromtimestamp(NOW - 60, dt.UTC)
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corp root")])
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    key = new_key()
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mesh intermediate")]))
        .issuer_name(root_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return inter.public_bytes(pem).decode(), key_pem(key), root.public_bytes(pem).decode()


def test_intermediate_signed_by_external_root(clock: FakeClock, tmp_path: Path) -> None:
    inter_pem, inter_key, root_pem = _external_root_and_intermediate()
    signer = load_signer(inter_pem, inter_key, root_pem)
    ca = CertificateAuthority(CAState(TD, (signer,)), clock)
    assert ca.bundle() == [root_pem]
    issued = ca.sign_csr(make_csr(new_key(), ORDERS.uri), ORDERS)
    assert issued.chain_pem == issued.cert_pem + inter_pem  # the intermediate goes along
    # openssl agrees: leaf -> intermediate (from the chain sent) -> external root
    (tmp_path / "root.pem").write_text(root_pem)
    (tmp_path / "inter.pem").write_text(issued.chain_pem.removeprefix(issued.cert_pem))
    (tmp_path / "leaf.pem").write_text(issued.cert_pem)
    out = subprocess.run(
        [
            "openssl",
            "verify",
            "-attime",
            str(int(NOW)),
            "-CAfile",
            "root.pem",
            "-untrusted",
            "inter.pem",
            "leaf.pem",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    with pytest.raises(CAError, match="not self-signed"):
        load_signer(inter_pem, inter_key)
    with pytest.raises(CAError, match="does not match"):
        load_signer(inter_pem, key_pem(new_key()), root_pem)


def test_openssl_verifies_workload_certificate(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = ca.sign_csr(make_csr(new_key(), ORDERS.uri), ORDERS)
    (tmp_path / "bundle.pem").write_text(ca.bundle_pem())
    (tmp_path / "leaf.pem").write_text(issued.cert_pem)
    out = subprocess.run(
        [
            "openssl",
            "verify",
            "-attime",
            str(int(NOW)),
            "-purpose",
            "sslclient",
            "-CAfile",
            "bundle.pem",
            "leaf.pem",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
