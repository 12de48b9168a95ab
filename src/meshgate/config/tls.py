"""Config models of TLS (``listener.tls``, ``upstreams[].tls``) and WebSocket
(``routes[].websocket``), and the checks of the certificate files they name.

The files are read at load time (and so by ``meshgate validate``): a missing
file, one that holds no PEM certificate or key, or a key that does not belong
to its certificate is an error located at the key that names it.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from meshgate.config.common import Model as _Model

if TYPE_CHECKING:  # cryptography (about 9 MB) loads only when a TLS file is checked
    from cryptography import x509

PositiveSeconds = Annotated[float, Field(gt=0)]
TlsVersion = Literal["TLSv1.2", "TLSv1.3"]

# Mozilla "intermediate" (server side TLS guidelines 5.7) cipher list for TLS 1.2;
# TLS 1.3 suites are OpenSSL's defaults (all of them are fine).
INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)


class CertificateConfig(_Model):
    """A certificate (chain) and its private key, both PEM, the key unencrypted."""

    cert_file: str = Field(
        min_length=1, description="PEM certificate, then any intermediates (leaf first)."
    )
    key_file: str = Field(min_length=1, description="PEM private key of the certificate.")


class ListenerTlsConfig(_Model):
    """TLS termination on the listener (see docs/tls.md)."""

    certificates: list[CertificateConfig] = Field(
        min_length=1,
        description=(
            "Chosen by the client's SNI against each certificate's DNS names (exact, then "
            "wildcard); the first one is the default (no SNI, or an unknown name)."
        ),
    )
    min_version: TlsVersion = Field("TLSv1.2", description="Oldest TLS version accepted.")
    ciphers: str = Field(
        INTERMEDIATE_CIPHERS,
        min_length=1,
        description="OpenSSL cipher list for TLS 1.2 (default: Mozilla intermediate).",
    )
    client_ca_file: str | None = Field(
        None, description="PEM CA bundle: ask clients for a certificate signed by it."
    )
    client_auth: Literal["require", "optional"] = Field(
        "require",
        description="With client_ca_file: refuse clients without a certificate, or not.",
    )
    handshake_timeout_s: PositiveSeconds = Field(
        10.0, description="A client must complete the TLS handshake within this."
    )
    reload_check_s: PositiveSeconds = Field(
        5.0,
        description=(
            "How often the certificate and key files are checked for changes (mtime); "
            "a changed pair serves new handshakes, a bad one is refused and logged."
        ),
    )

    def files(self) -> list[str]:
        """Every file the listener's TLS reads (reload watches them)."""
        out = [p for c in self.certificates for p in (c.cert_file, c.key_file)]
        if self.client_ca_file is not None:
            out.append(self.client_ca_file)
        return out


class UpstreamTlsConfig(_Model):
    """TLS to an upstream's instances (see docs/tls.md)."""

    enabled: bool = Field(True, description="Connect with TLS.")
    ca_file: str | None = Field(
        None, description="PEM CA bundle to verify the upstream; default: the system store."
    )
    server_name: str | None = Field(
        None,
        min_length=1,
        description="SNI and the name verified; default: the instance's host.",
    )
    verify: bool = Field(
        True, description="Verify the upstream's certificate and name (false: tests only)."
    )
    cert_file: str | None = Field(None, description="Client certificate (PEM) to present.")
    key_file: str | None = Field(None, description="Its private key (PEM, unencrypted).")
    min_version: TlsVersion = Field("TLSv1.2", description="Oldest TLS version offered.")
    spiffe_id: str | None = Field(
        None,
        description=(
            "Verify that the upstream's certificate carries this SPIFFE ID as a URI SAN "
            "(spiffe://<trust-domain>/...), instead of a DNS name (mesh mTLS)."
        ),
    )
    reload_check_s: PositiveSeconds = Field(
        5.0,
        description=(
            "How often (at most, on new connections) the ca/cert/key files are checked for "
            "changes; changed files serve the next connections (rotated certificates)."
        ),
    )

    @model_validator(mode="after")
    def _pair(self) -> UpstreamTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        if self.spiffe_id is not None:
            if not self.spiffe_id.startswith("spiffe://") or len(self.spiffe_id) <= 9:
                raise ValueError(f"spiffe_id {self.spiffe_id!r} must start with spiffe://")
            if not self.verify:
                raise ValueError("spiffe_id needs verify: true (it is checked on a verified chain)")
        return self

    def files(self) -> list[str]:
        """Every file the upstream's TLS reads (checked for changes)."""
        return [p for p in (self.ca_file, self.cert_file, self.key_file) if p is not None]


class WebSocketConfig(_Model):
    """WebSocket upgrades on a route (see docs/websocket.md); without this key an
    ``Upgrade: websocket`` request is forwarded as a plain request."""

    idle_timeout_s: PositiveSeconds = Field(
        300.0, description="Close a tunnel when no byte moved either way for this long."
    )


# --------------------------------------------------------------------------
# Certificate files
# --------------------------------------------------------------------------

Problems = list[tuple[tuple[str | int, ...], str]]


@dataclass(frozen=True, slots=True)
class LoadedPair:
    """A certificate/key pair that loads, with the DNS names it serves."""

    names: tuple[str, ...]


def _read(path: str) -> bytes | str:
    """The file's bytes, or a problem text."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    """DNS names of the certificate's subjectAltName (its CN when it has none), lower-case."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(n.lower() for n in names)


def check_pair(cert_file: str, key_file: str) -> LoadedPair | list[tuple[str, str]]:
    """Load a certificate/key pair: the names it serves, or (field, problem) pairs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    problems: list[tuple[str, str]] = []
    cert: x509.Certificate | None = None
    key = None
    data = _read(cert_file)
    if isinstance(data, str):
        problems.append(("cert_file", data))
    else:
        try:
            cert = x509.load_pem_x509_certificates(data)[0]
        except ValueError:
            problems.append(("cert_file", f"{cert_file} holds no PEM certificate"))
    data = _read(key_file)
    if isinstance(data, str):
        problems.append(("key_file", data))
    else:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            problems.append(("key_file", f"{key_file} holds no unencrypted PEM private key"))
    if cert is None or key is None:
        return problems
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        return [("key_file", f"{key_file} is not the key of the certificate in {cert_file}")]
    try:  # what the listener will do with them
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        return [("cert_file", f"{cert_file}: {exc.reason or exc}")]
    return LoadedPair(certificate_names(cert))


def check_ca(path: str) -> str | None:
    """A problem with a PEM CA bundle, or None."""
    from cryptography import x509

    data = _read(path)
    if isinstance(data, str):
        return data
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        return f"{path} holds no PEM certificate"
    return None


def listener_tls_errors(tls: ListenerTlsConfig, loc: tuple[str | int, ...]) -> Problems:
    errors: Problems = []
    for i, pair in enumerate(tls.certificates):
        result = check_pair(pair.cert_file, pair.key_file)
        if isinstance(result, list):
            errors += [((*loc, "certificates", i, field), msg) for field, msg in result]
    if tls.client_ca_file is not None:
        problem = check_ca(tls.client_ca_file)
        if problem is not None:
            errors.append(((*loc, "client_ca_file"), problem))
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(tls.ciphers)
    except ssl.SSLError:
        errors.append(((*loc, "ciphers"), f"OpenSSL knows none of the ciphers {tls.ciphers!r}"))
    return errors


def upstream_tls_errors(tls: UpstreamTlsConfig, loc: tuple[str | int, ...]) -> Problems:
    errors: Problems = []
    if not tls.enabled:
        return errors
    if tls.ca_file is not None:
        problem = check_ca(tls.ca_file)
        if problem is not None:
            errors.append(((*loc, "ca_file"), problem))
    if tls.cert_file is not None and tls.key_file is not None:
        result = check_pair(tls.cert_file, tls.key_file)
        if isinstance(result, list):
            errors += [((*loc, field), msg) for field, msg in result]
    return errors


def tls_errors(
    listener: ListenerTlsConfig | None,
    upstreams: Sequence[tuple[int, UpstreamTlsConfig | None]],
) -> Problems:
    """File problems of every TLS section, each at the key naming the file."""
    errors: Problems = []
    if listener is not None:
        errors += listener_tls_errors(listener, ("listener", "tls"))
    for i, tls in upstreams:
        if tls is not None:
            errors += upstream_tls_errors(tls, ("upstreams", i, "tls"))
    return errors
