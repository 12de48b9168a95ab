"""The mesh certificate authority (no I/O): SPIFFE identities, CSR checks, workload
certificates, the trust bundle and root rotation with an overlap period.

Time comes from an injected clock (``() -> float``, Unix seconds), so tests move it
by hand. The CA's state (`CAState`) is plain data that the control plane keeps in
its store, so every control-plane process sharing one store signs with the same key.

Signers: each is a certificate plus its key that may sign workload certificates, the
chain between it and its trust anchor (empty for a self-signed root) and the anchor
itself (the certificate workloads trust). The newest signer issues; older ones stay
in the trust bundle until their ``retire_at`` passes (rotation overlap), then go.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_WORKLOAD_TTL_S = 24 * 3600.0
DEFAULT_BACKDATE_S = 300.0
DEFAULT_ROOT_VALIDITY_S = 10 * 365 * 24 * 3600.0
MAX_WORKLOAD_TTL_S = 7 * 24 * 3600.0

# RFC 1123 label-ish names for namespaces and services; trust domains are DNS-like.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?$")

Clock = Callable[[], float]


class CAError(ValueError):
    """The CA's own material is unusable (bad files, wrong key, not a CA)."""


class CSRRejected(ValueError):
    """A certificate signing request is refused; the message says why."""


class IdentityRejected(CSRRejected):
    """The CSR asks for an identity the caller is not entitled to."""


def check_name(value: str, what: str) -> str:
    """``value`` when it is a valid namespace or service name; else ValueError."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{what} {value!r} must be 1-63 lower-case letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def check_trust_domain(value: str) -> str:
    if not isinstance(value, str) or not _TRUST_DOMAIN.match(value) or ".." in value:
        raise ValueError(
            f"trust domain {value!r} must be a lower-case DNS-like name (e.g. mesh.local)"
        )
    return value


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """``spiffe://<trust_domain>/ns/<namespace>/sa/<service>``."""

    trust_domain: str
    namespace: str
    service: str

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        check_name(self.namespace, "namespace")
        check_name(self.service, "service")

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """The ID in ``uri``; ValueError saying what is wrong otherwise."""
        prefix = "spiffe://"
        if not uri.startswith(prefix):
            raise ValueError(f"{uri!r} is not a SPIFFE ID (must start with spiffe://)")
        domain, sep, path = uri[len(prefix) :].partition("/")
        parts = path.split("/")
        if not sep or len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
            raise ValueError(
                f"{uri!r} is not a workload SPIFFE ID: expected "
                "spiffe://<trust-domain>/ns/<namespace>/sa/<service>"
            )
        return cls(domain, parts[1], parts[3])


def _time(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def _ts(value: dt.datetime) -> float:
    return value.timestamp()


@dataclass(frozen=True, slots=True)
class Signer:
    """A CA certificate with its key, its chain up to (not including) the anchor, the
    anchor workloads trust, and when it leaves the bundle (None: not retiring)."""

    cert_pem: str
    key_pem: str
    chain_pem: tuple[str, ...] = ()
    anchor_pem: str = ""
    retire_at: float | None = None
    cert: x509.Certificate = field(init=False, repr=False, compare=False)
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        try:
            cert = x509.load_pem_x509_certificate(self.cert_pem.encode())
        except ValueError as exc:
            raise CAError(f"CA certificate is not a PEM certificate: {exc}") from None
        try:
            key = serialization.load_pem_private_key(self.key_pem.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise CAError(f"CA key is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CAError("CA key must be an EC or RSA private key")
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if key.public_key().public_bytes(der, pub) != cert.public_key().public_bytes(der, pub):
            raise CAError("CA key does not match the CA certificate")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CAError("CA certificate lacks BasicConstraints CA:true")
        object.__setattr__(self, "cert", cert)
        object.__setattr__(self, "key", key)
        if not self.anchor_pem:
            object.__setattr__(self, "anchor_pem", self.cert_pem)

    @property
    def not_after(self) -> float:
        return _ts(self.cert.not_valid_after_utc)

    def presented_chain(self) -> tuple[str, ...]:
        """What goes after a leaf it signs: itself when it is not the anchor (an
        intermediate), then the certificates between it and the anchor."""
        if self.cert_pem == self.anchor_pem:
            return ()
        return (self.cert_pem, *self.chain_pem)

    def to_json(self) -> dict[str, object]:
        return {
            "cert_pem": self.cert_pem,
            "key_pem": self.key_pem,
            "chain_pem": list(self.chain_pem),
            "anchor_pem": self.anchor_pem,
            "retire_at": self.retire_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Signer:
        chain = data.get("chain_pem") or []
        retire = data.get("retire_at")
        assert isinstance(chain, list)
        return cls(
            cert_pem=str(data["cert_pem"]),
            key_pem=str(data["key_pem"]),
            chain_pem=tuple(str(c) for c in chain),
            anchor_pem=str(data.get("anchor_pem") or ""),
            retire_at=float(retire) if isinstance(retire, int | float) else None,
        )


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def generate_root(
    trust_domain: str, now: float, validity_s: float = DEFAULT_ROOT_VALIDITY_S
) -> Signer:
    """A new self-signed ECDSA P-256 root for ``trust_domain`` (path length 0: it
    signs workload certificates only)."""
    check_trust_domain(trust_domain)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshgate"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshgate root {trust_domain} {int(now)}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_time(now - DEFAULT_BACKDATE_S))
        .not_valid_after(_time(now + validity_s))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return Signer(cert_pem=_pem(cert), key_pem=_key_pem(key))


def load_signer(cert_pem: str, key_pem: str, chain_pem: str = "") -> Signer:
    """A signer from files: a root (``cert_pem`` self-signed, no chain) or an
    intermediate whose ``chain_pem`` lists the certificates above it, the last being
    the external root that goes into the trust bundle."""
    chain = (
        [_pem(c) for c in x509.load_pem_x509_certificates(chain_pem.encode())]
        if (chain_pem.strip())
        else []
    )
    signer = Signer(cert_pem=cert_pem, key_pem=key_pem)
    if not chain:
        if signer.cert.issuer != signer.cert.subject:
            raise CAError(
                "the CA certificate is not self-signed: give the chain up to its root "
                "(ca.chain_file)"
            )
        return signer
    certs = [signer.cert, *(x509.load_pem_x509_certificate(c.encode()) for c in chain)]
    for child, parent in itertools.pairwise(certs):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise CAError(
                f"chain broken: {child.subject.rfc4514_string()} is not signed by "
                f"{parent.subject.rfc4514_string()}"
            ) from None
    return replace(signer, chain_pem=tuple(chain[:-1]), anchor_pem=chain[-1])


@dataclass(frozen=True, slots=True)
class Issued:
    """A signed workload certificate: the leaf, the chain to send with it (leaf first,
    intermediates after, anchor excluded) and its validity."""

    spiffe_id: SpiffeId
    cert_pem: str
    chain_pem: str
    serial: int
    not_before: float
    not_after: float


@dataclass(frozen=True, slots=True)
class CAState:
    """Every signer, the newest last (the one that issues)."""

    trust_domain: str
    signers: tuple[Signer, ...]

    def to_json(self) -> dict[str, object]:
        return {"trust_domain": self.trust_domain, "signers": [s.to_json() for s in self.signers]}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> CAState:
        signers = data.get("signers")
        if not isinstance(signers, list) or not signers:
            raise CAError("stored CA state has no signers")
        return cls(str(data["trust_domain"]), tuple(Signer.from_json(s) for s in signers))


def check_public_key(key: object) -> None:
    """Workload keys must be ECDSA P-256 (CSRRejected otherwise)."""
    if isinstance(key, rsa.RSAPublicKey):
        raise CSRRejected(
            f"RSA-{key.key_size} keys are not accepted: workload keys must be ECDSA P-256"
        )
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CSRRejected(
            f"{type(key).__name__} keys are not accepted: workload keys must be ECDSA P-256"
        )
    if not isinstance(key.curve, ec.SECP256R1):
        raise CSRRejected(
            f"EC curve {key.curve.name} is not accepted: workload keys must be ECDSA P-256"
        )


def parse_csr(csr_pem: str | bytes) -> x509.CertificateSigningRequest:
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise CSRRejected(f"not a PEM certificate signing request: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError, NotImplementedError):
        valid = False
    if not valid:
        raise CSRRejected("CSR signature does not verify (tampered or corrupt request)")
    return csr


def check_csr(csr: x509.CertificateSigningRequest, entitled: SpiffeId) -> None:
    """The CSR asks for exactly ``entitled`` (CSRRejected saying what differs)."""
    check_public_key(csr.public_key())
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CSRRejected(f"CSR has no URI SAN: it must ask for {entitled.uri}") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    others = [n for n in san if not isinstance(n, x509.UniformResourceIdentifier)]
    if others:
        raise CSRRejected(f"CSR asks for non-URI SANs ({others[0].value!r}): only the SPIFFE ID")
    if len(uris) != 1:
        raise CSRRejected(f"CSR must ask for exactly one URI SAN ({entitled.uri}), got {uris}")
    try:
        asked = SpiffeId.parse(uris[0])
    except ValueError as exc:
        raise CSRRejected(str(exc)) from None
    if asked.trust_domain != entitled.trust_domain:
        raise IdentityRejected(
            f"CSR asks for trust domain {asked.trust_domain!r}; this CA serves "
            f"{entitled.trust_domain!r}"
        )
    if asked != entitled:
        raise IdentityRejected(
            f"CSR asks for {asked.uri}; the caller is entitled to {entitled.uri}"
        )


class CertificateAuthority:
    """Signs workload certificates with the newest signer of a `CAState`."""

    def __init__(
        self,
        state: CAState,
        clock: Clock,
        *,
        workload_ttl_s: float = DEFAULT_WORKLOAD_TTL_S,
        backdate_s: float = DEFAULT_BACKDATE_S,
    ) -> None:
        if not 60 <= workload_ttl_s <= MAX_WORKLOAD_TTL_S:
            raise ValueError(f"workload_ttl_s must be 60..{MAX_WORKLOAD_TTL_S:g}")
        if not 0 <= backdate_s <= 3600:
            raise ValueError("backdate_s must be 0..3600")
        self.state = state
        self.clock = clock
        self.workload_ttl_s = workload_ttl_s
        self.backdate_s = backdate_s

    @property
    def trust_domain(self) -> str:
        return self.state.trust_domain

    @property
    def active(self) -> Signer:
        return self.state.signers[-1]

    def bundle(self) -> list[str]:
        """The trust anchors (PEM) workloads must trust now: those of every signer not
        yet retired, without duplicates, the issuing one first."""
        now = self.clock()
        out: list[str] = []
        for signer in reversed(self.state.signers):
            if (signer.retire_at is None or signer.retire_at > now) and (
                signer.anchor_pem not in out
            ):
                out.append(signer.anchor_pem)
        return out

    def bundle_pem(self) -> str:
        return "".join(self.bundle())

    def sign_csr(
        self, csr_pem: str | bytes, entitled: SpiffeId, ttl_s: float | None = None
    ) -> Issued:
        """A workload certificate for ``entitled`` from ``csr_pem`` (CSRRejected when the
        CSR is tampered, asks for another identity or carries a weak key)."""
        csr = parse_csr(csr_pem)
        check_csr(csr, entitled)
        return self._issue(csr.public_key(), entitled, ttl_s)

    def _issue(
        self,
        public_key: object,
        sid: SpiffeId,
        ttl_s: float | None,
        signer: Signer | None = None,
        extra_names: Sequence[x509.GeneralName] = (),
    ) -> Issued:
        ttl = self.workload_ttl_s if ttl_s is None else min(ttl_s, self.workload_ttl_s)
        if ttl < 60:
            raise CSRRejected("certificate lifetime must be at least 60 s")
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        now = self.clock()
        signer = self.active if signer is None else signer
        not_before = now - self.backdate_s
        not_after = min(now + ttl, signer.not_after)
        if not_after <= now:
            raise CAError("the issuing CA certificate has expired: rotate the root")
        ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key())
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, sid.trust_domain),
                        x509.NameAttribute(NameOID.COMMON_NAME, sid.service),
                    ]
                )
            )
            .issuer_name(signer.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_time(not_before))
            .not_valid_after(_time(not_after))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(ski, critical=False)
            .add_extension(aki, critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(sid.uri), *extra_names]
                ),
                critical=True,
            )
        )
        cert = builder.sign(signer.key, hashes.SHA256())
        leaf = _pem(cert)
        return Issued(
            spiffe_id=sid,
            cert_pem=leaf,
            chain_pem=leaf + "".join(signer.presented_chain()),
            serial=cert.serial_number,
            not_before=_ts(cert.not_valid_before_utc),
            not_after=_ts(cert.not_valid_after_utc),
        )

    def issue_server(
        self,
        public_key: ec.EllipticCurvePublicKey,
        sid: SpiffeId,
        hosts: Sequence[str],
        ttl_s: float | None = None,
    ) -> Issued:
        """The control plane's own serving certificate: its SPIFFE ID plus the DNS names
        and IP addresses clients dial (``hosts``). Signed by the oldest signer still
        trusted, so that during a rotation overlap clients that only know the old root
        can still reach the control plane (and learn the new bundle)."""
        now = self.clock()
        signer = next(
            s
            for s in self.state.signers
            if s is self.active or not s.retire_at or s.retire_at > now
        )
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._issue(public_key, sid, ttl_s, signer, names)

    def verify_peer(self, cert_der: bytes) -> SpiffeId:
        """The SPIFFE ID of a client certificate that chains to a signer still trusted
        now and is within its validity (ValueError otherwise)."""
        try:
            cert = x509.load_der_x509_certificate(cert_der)
        except ValueError:
            raise ValueError("client certificate is not valid DER") from None
        now = self.clock()
        if not _ts(cert.not_valid_before_utc) <= now <= _ts(cert.not_valid_after_utc):
            raise ValueError("client certificate is outside its validity period")
        for signer in self.state.signers:
            if signer.retire_at is not None and signer.retire_at <= now:
                continue
            try:
                cert.verify_directly_issued_by(signer.cert)
            except (ValueError, TypeError, InvalidSignature):
                continue
            break
        else:
            raise ValueError("client certificate is not signed by a trusted mesh CA")
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
            sid = SpiffeId.parse(uris[0]) if len(uris) == 1 else None
        except (x509.ExtensionNotFound, ValueError):
            sid = None
        if sid is None or sid.trust_domain != self.trust_domain:
            raise ValueError("client certificate carries no SPIFFE ID of this trust domain")
        return sid


def rotate(state: CAState, new: Signer, now: float, overlap_s: float) -> CAState:
    """``new`` becomes the issuing signer; every other signer stays trusted for
    ``overlap_s`` more (set ``retire_at`` unless already sooner)."""
    if overlap_s < 0:
        raise ValueError("overlap_s must be >= 0")
    retire = now + overlap_s
    kept = tuple(
        replace(s, retire_at=retire if s.retire_at is None else min(s.retire_at, retire))
        for s in state.signers
    )
    return CAState(state.trust_domain, (*kept, new))


def prune(state: CAState, now: float) -> CAState:
    """``state`` without the signers whose overlap has ended (the issuing one stays)."""
    *older, active = state.signers
    kept = tuple(s for s in older if s.retire_at is None or s.retire_at > now)
    return CAState(state.trust_domain, (*kept, active))
