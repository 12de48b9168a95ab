"""What a request's TLS connection says about the client (``request.tls``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """The client's certificate, verified against ``listener.tls.client_ca_file``.

    ``subject`` and ``issuer`` are (attribute, value) pairs as Python's ``ssl``
    names them (``("commonName", "alice")``, ``("organizationName", "Acme")``);
    ``san`` is the subjectAltName as (type, value) pairs (``("DNS", "a.example")``,
    ``("URI", "spiffe://example.org/ns/default/sa/web")``, ``("IP Address", ...)``).
    """

    subject: tuple[tuple[str, str], ...]
    issuer: tuple[tuple[str, str], ...]
    san: tuple[tuple[str, str], ...]
    serial_number: str
    not_after: str  # as OpenSSL prints it: "Jun  1 12:00:00 2030 GMT"
    der: bytes = b""  # the whole certificate (DER), e.g. for a SPIFFE identity check

    @property
    def common_name(self) -> str | None:
        for name, value in self.subject:
            if name == "commonName":
                return value
        return None

    @classmethod
    def from_peercert(cls, cert: dict[str, Any], der: bytes = b"") -> ClientCertificate:
        """From ``SSLObject.getpeercert()`` (a verified certificate) and its DER."""

        def flat(rdns: Any) -> tuple[tuple[str, str], ...]:
            return tuple((str(k), str(v)) for rdn in rdns for k, v in rdn)

        return cls(
            subject=flat(cert.get("subject", ())),
            issuer=flat(cert.get("issuer", ())),
            san=tuple((str(k), str(v)) for k, v in cert.get("subjectAltName", ())),
            serial_number=str(cert.get("serialNumber", "")),
            not_after=str(cert.get("notAfter", "")),
            der=der,
        )


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """The negotiated TLS session of the connection a request came on."""

    version: str  # "TLSv1.3"
    cipher: str  # OpenSSL name, e.g. "TLS_AES_256_GCM_SHA384"
    alpn: str | None  # "http/1.1", or None when the client offered no ALPN
    client_certificate: ClientCertificate | None  # None: none asked for, or none sent
