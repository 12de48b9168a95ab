"""A small client of the control plane, for sidecars, gateways and `meshgate ctl`.

Workload flow::

    client = ControlPlaneClient("https://cp:15012", bundle_pem, identity_dir="/var/run/mg")
    await client.join(token, namespace="default", service="orders")  # key made here
    reg = await client.register("10.0.0.5", 8080, weight=1, metadata={"zone": "a"})
    await client.heartbeat(reg)            # every ttl_s / 3
    if client.needs_renewal():             # at 50 % of the lifetime
        await client.renew()               # authenticated by the current certificate
    result = await client.watch(since)     # long-poll: events or a snapshot
    await client.set_bundle(roots)         # on a ``bundle`` event (root rotation)
    await client.deregister(reg)

The private key never leaves the workload: it is written (mode 0600) next to the
certificate in ``identity_dir`` because Python's ssl loads certificates from files.
Operators use the same class with ``admin_token``.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from meshgate.control.ca import SpiffeId
from meshgate.control.csr import key_pem, make_csr, new_key

RENEW_AT_FRACTION = 0.5


class ControlPlaneError(Exception):
    """The control plane refused a request (``status``) or could not be reached (0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Identity:
    spiffe_id: SpiffeId
    cert_file: str
    key_file: str
    not_before: float
    not_after: float

    def renew_at(self) -> float:
        return self.not_before + (self.not_after - self.not_before) * RENEW_AT_FRACTION


@dataclass(frozen=True, slots=True)
class Registration:
    id: str
    ttl_s: float
    revision: int


@dataclass(frozen=True, slots=True)
class WatchResult:
    revision: int
    snapshot: bool
    events: list[dict[str, Any]]  # snapshot: items {key, revision, value}


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What a workload certificate says: its SPIFFE ID, validity and serial."""

    spiffe_id: SpiffeId
    not_before: float
    not_after: float
    serial: int


def read_cert(path: Path) -> CertInfo:
    """The leaf certificate in ``path`` (PEM, leaf first): OSError when unreadable,
    ValueError saying what is wrong when it is no certificate or has no SPIFFE ID
    (first URI SAN)."""
    try:
        cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    except ValueError as exc:
        raise ValueError(f"no PEM certificate ({exc})") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sid = SpiffeId.parse(san.get_values_for_type(x509.UniformResourceIdentifier)[0])
    except (x509.ExtensionNotFound, IndexError, ValueError) as exc:
        raise ValueError(f"no SPIFFE ID in the certificate ({exc})") from None
    return CertInfo(
        sid,
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
        cert.serial_number,
    )


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ControlPlaneClient:
    def __init__(
        self,
        url: str,
        bundle_pem: str,
        *,
        identity_dir: str | None = None,
        admin_token: str | None = None,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url.rstrip("/")
        self.bundle_pem = bundle_pem
        self.identity_dir = Path(identity_dir) if identity_dir else None
        self.admin_token = admin_token
        self.timeout_s = timeout_s
        self.clock = clock
        self.identity: Identity | None = None
        self._http: httpx.AsyncClient | None = None
        if self.identity_dir is not None:
            self.identity = self._load_identity()

    # -- identity files ----------------------------------------------------------------
    def _paths(self) -> tuple[Path, Path]:
        assert self.identity_dir is not None
        return self.identity_dir / "cert.pem", self.identity_dir / "key.pem"

    def _load_identity(self) -> Identity | None:
        cert_path, key_path = self._paths()
        if not cert_path.exists() or not key_path.exists():
            return None
        info = read_cert(cert_path)
        return Identity(
            info.spiffe_id, str(cert_path), str(key_path), info.not_before, info.not_after
        )

    async def set_bundle(self, roots: list[str]) -> None:
        """Trust these roots from now on (a ``bundle`` watch event after a rotation)."""
        self.bundle_pem = "".join(roots)
        if self.identity_dir is not None and self.identity_dir.exists():
            _write_private(self.identity_dir / "bundle.pem", self.bundle_pem)
        await self._reset()

    def needs_renewal(self) -> bool:
        return self.identity is None or self.clock() >= self.identity.renew_at()

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the mesh bundle; presents the workload certificate when there is one."""
        ctx = ssl.create_default_context(cadata=self.bundle_pem)
        if self.identity is not None:
            ctx.load_cert_chain(self.identity.cert_file, self.identity.key_file)
        return ctx

    async def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            headers = {}
            if self.admin_token:
                headers["authorization"] = f"Bearer {self.admin_token}"
            self._http = httpx.AsyncClient(
                base_url=self.url,
                verify=self.ssl_context(),
                timeout=self.timeout_s,
                headers=headers,
            )
        return self._http

    async def _reset(self) -> None:
        """Drop the connection pool (a new certificate takes effect)."""
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def aclose(self) -> None:
        await self._reset()

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        http = await self._client()
        try:
            resp = await http.request(
                method,
                path,
                json=body,
                params=params,
                timeout=self.timeout_s if timeout_s is None else timeout_s,
            )
        except httpx.HTTPError as exc:
            raise ControlPlaneError(0, f"{method} {self.url}{path}: {exc!r}") from None
        try:
            data = resp.json()
        except ValueError:
            data = {"error": resp.text[:200]}
        if resp.status_code >= 400:
            raise ControlPlaneError(resp.status_code, str(data.get("error", data)))
        return data

    # -- workload API ------------------------------------------------------------------
    async def _store_identity(self, data: dict[str, Any], key_text: str) -> Identity:
        if self.identity_dir is None:
            raise ControlPlaneError(0, "identity_dir is needed to keep the certificate")
        self.identity_dir.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = self._paths()
        _write_private(key_path, key_text)
        _write_private(cert_path, data["chain"])
        self.bundle_pem = "".join(data["bundle"])
        _write_private(self.identity_dir / "bundle.pem", self.bundle_pem)
        self.identity = Identity(
            SpiffeId.parse(data["spiffe_id"]),
            str(cert_path),
            str(key_path),
            float(data["not_before"]),
            float(data["not_after"]),
        )
        await self._reset()
        return self.identity

    async def join(
        self, token: str, *, service: str, namespace: str = "default", ttl_s: float | None = None
    ) -> Identity:
        """First certificate: a fresh key, a CSR for this service's SPIFFE ID, the token."""
        info = await self.request("GET", "/v1/bundle")
        sid = SpiffeId(info["trust_domain"], namespace, service)
        key = new_key()
        body: dict[str, Any] = {"token": token, "csr": make_csr(key, sid.uri)}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        data = await self.request("POST", "/v1/join", body)
        return await self._store_identity(data, key_pem(key))

    async def renew(self, ttl_s: float | None = None) -> Identity:
        """A new key and certificate, authenticated by the current certificate."""
        if self.identity is None:
            raise ControlPlaneError(0, "no certificate yet: join first")
        key = new_key()
        body: dict[str, Any] = {"csr": make_csr(key, self.identity.spiffe_id.uri)}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        data = await self.request("POST", "/v1/renew", body)
        return await self._store_identity(data, key_pem(key))

    async def register(
        self,
        address: str,
        port: int,
        *,
        weight: int = 1,
        metadata: dict[str, str] | None = None,
        ttl_s: float | None = None,
        instance_id: str | None = None,
    ) -> Registration:
        body: dict[str, Any] = {"address": address, "port": port, "weight": weight}
        if metadata:
            body["metadata"] = metadata
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        if instance_id is not None:
            body["id"] = instance_id
        data = await self.request("POST", "/v1/instances", body)
        inst = data["instance"]
        return Registration(inst["id"], float(inst["ttl_s"]), int(data["revision"]))

    async def heartbeat(self, reg: Registration) -> None:
        await self.request("POST", f"/v1/instances/{reg.id}/heartbeat")

    async def deregister(self, reg: Registration) -> None:
        await self.request("DELETE", f"/v1/instances/{reg.id}")

    async def watch(
        self, since: int | None = None, *, timeout_s: float = 30.0, prefixes: tuple[str, ...] = ()
    ) -> WatchResult:
        """Changes after ``since`` (long-poll up to ``timeout_s``), or a snapshot."""
        params: dict[str, Any] = {"timeout_s": timeout_s}
        if since is not None:
            params["since"] = since
        if prefixes:
            params["prefix"] = ",".join(prefixes)
        data = await self.request(
            "GET", "/v1/watch", params=params, timeout_s=timeout_s + self.timeout_s
        )
        if data.get("snapshot"):
            return WatchResult(int(data["revision"]), True, data["items"])
        return WatchResult(int(data["revision"]), False, data["events"])
