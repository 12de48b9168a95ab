"""The sidecar's workload identity: its SPIFFE certificate, key and trust bundle.

With a control plane: on start the certificate kept in ``identity_dir`` is reused
while valid (and for this service); otherwise a new key is made and a CSR sent
with the join token. The certificate is renewed at half of its remaining life
counted from when it was received (the CA backdates ``not_before``), retried with
a backoff while the control plane is unreachable (the current certificate keeps
serving). Static: the operator's files, re-read when they change.

The listeners read the files (`cert_file`, `key_file`, `bundle_file`): the
inbound listener reloads them when `on_change` fires, outbound connections when
their `ClientTls` notices the change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from meshgate.control.ca import SpiffeId
from meshgate.control.client import CertInfo, ControlPlaneClient, ControlPlaneError
from meshgate.control.client import read_cert as read_workload_cert
from meshgate.io.tls import file_stamps
from meshgate.mesh.config import ControlPlaneLink, SidecarConfig, StaticMesh

log = logging.getLogger("meshgate.mesh.identity")

RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0
STATIC_CHECK_S = 5.0
TOKEN_ENV = "MESHGATE_JOIN_TOKEN"


class IdentityError(Exception):
    """No usable identity (says why: no token, refused, unreadable files...)."""


def read_cert(path: str) -> CertInfo:
    """The SPIFFE ID and validity of the leaf certificate in ``path`` (IdentityError)."""
    try:
        return read_workload_cert(Path(path))
    except OSError as exc:
        raise IdentityError(f"{path}: no PEM certificate ({exc})") from None
    except ValueError as exc:
        raise IdentityError(f"{path}: {exc}") from None


class IdentityManager:
    def __init__(
        self,
        config: SidecarConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.client: ControlPlaneClient | None = None
        self.cert: CertInfo | None = None
        self.received_at = 0.0  # when this certificate arrived (or its file changed)
        self.renewals = 0
        self.last_error: str | None = None
        # Called after a new certificate or bundle is on disk.
        self.on_change: Callable[[], Awaitable[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        link, static = config.control_plane, config.static
        if link is not None:
            directory = Path(link.identity_dir)
            self.cert_file = str(directory / "cert.pem")
            self.key_file = str(directory / "key.pem")
            self.bundle_file = str(directory / "bundle.pem")
        else:
            assert static is not None
            self.cert_file, self.key_file = static.cert_file, static.key_file
            self.bundle_file = static.bundle_file

    @property
    def spiffe_id(self) -> SpiffeId:
        assert self.cert is not None, "identity not loaded"
        return self.cert.spiffe_id

    def expired(self) -> bool:
        return self.cert is None or self.clock() >= self.cert.not_after

    def renew_at(self) -> float:
        """Half of the life left when the certificate was received."""
        assert self.cert is not None
        start = max(self.received_at, self.cert.not_before)
        return start + (self.cert.not_after - start) / 2

    # -- start ---------------------------------------------------------------------
    async def start(self) -> None:
        """Have a valid certificate (reused, or joined for), then keep it current."""
        if self.config.control_plane is not None:
            await self._start_control_plane(self.config.control_plane)
        else:
            assert self.config.static is not None
            self._load_static(self.config.static)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mesh-identity")

    def _wanted(self) -> tuple[str, str]:
        return self.config.namespace, self.config.service

    async def _start_control_plane(self, link: ControlPlaneLink) -> None:
        self.client = client = self._client(link)
        if self._reuse(client):
            log.info("reusing the certificate in %s (%s)", link.identity_dir, self.spiffe_id)
            return
        token = self._token(link)
        namespace, service = self._wanted()
        try:
            await client.join(token, service=service, namespace=namespace, ttl_s=link.cert_ttl_s)
        except ControlPlaneError as exc:
            raise IdentityError(f"joining the mesh at {link.url} failed: {exc}") from None
        self._loaded(self.clock())
        log.info("joined the mesh as %s", self.spiffe_id)

    def _client(self, link: ControlPlaneLink) -> ControlPlaneClient:
        try:
            bundle = Path(link.ca_bundle_file).read_text(encoding="ascii")
        except OSError as exc:
            raise IdentityError(
                f"control_plane.ca_bundle_file {link.ca_bundle_file}: {exc.strerror or exc}"
            ) from None
        return ControlPlaneClient(
            link.url, bundle, identity_dir=link.identity_dir, timeout_s=link.timeout_s
        )

    def _reuse(self, client: ControlPlaneClient) -> bool:
        """Keep the certificate already in identity_dir: valid, for this service."""
        current = client.identity
        if current is None or self.clock() >= current.not_after:
            return False
        sid = current.spiffe_id
        if (sid.namespace, sid.service) != self._wanted() or not Path(self.bundle_file).exists():
            return False
        self._loaded(os.stat(self.cert_file).st_mtime)
        return True

    def _token(self, link: ControlPlaneLink) -> str:
        if link.token_file is not None:
            try:
                token = Path(link.token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise IdentityError(
                    f"control_plane.token_file {link.token_file}: {exc.strerror or exc}"
                ) from None
        else:
            token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise IdentityError(
                f"no certificate in {link.identity_dir} and no join token "
                f"(control_plane.token_file or ${TOKEN_ENV})"
            )
        return token

    def _load_static(self, static: StaticMesh) -> None:
        info = read_cert(static.cert_file)
        for path in (static.key_file, static.bundle_file):
            if not Path(path).is_file():
                raise IdentityError(f"static: {path} is not a readable file")
        sid = info.spiffe_id
        if (sid.namespace, sid.service) != self._wanted():
            raise IdentityError(
                f"static.cert_file {static.cert_file} is for {sid}, not "
                f"namespace {self.config.namespace} service {self.config.service}"
            )
        self.cert = info
        self.received_at = self.clock()

    def _loaded(self, received_at: float) -> None:
        self.cert = read_cert(self.cert_file)
        self.received_at = received_at

    # -- keeping it current -------------------------------------------------------
    async def _run(self) -> None:
        if self.client is None:
            await self._watch_static()
            return
        delay = RETRY_MIN_S
        while True:
            wait = self.renew_at() - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self.renew()
            except ControlPlaneError as exc:
                self.last_error = str(exc)
                left = self.cert.not_after - self.clock() if self.cert is not None else 0
                # Never wait out a large share of what is left (short-lived certificates).
                delay = min(delay, max(RETRY_MIN_S, left / 4))
                log.warning(
                    "certificate renewal failed (%s); the current one has %.0f s left; "
                    "retrying in %.0f s",
                    exc,
                    left,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_MIN_S

    async def renew(self) -> None:
        """A new key and certificate now (authenticated by the current one)."""
        assert self.client is not None and self.config.control_plane is not None
        await self.client.renew(self.config.control_plane.cert_ttl_s)
        self._loaded(self.clock())
        self.renewals += 1
        self.last_error = None
        log.info(
            "certificate renewed: %s until %s",
            self.spiffe_id,
            time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.cert.not_after if self.cert else 0)
            ),
        )
        await self._changed()

    async def set_bundle(self, roots: list[str]) -> None:
        """Trust these roots (a ``bundle`` change: a CA rotation)."""
        if self.client is None:
            return
        await self.client.set_bundle(roots)
        log.info("trust bundle updated (%d roots)", len(roots))
        await self._changed()

    async def _watch_static(self) -> None:
        stamp = file_stamps([self.cert_file])
        while True:
            await asyncio.sleep(STATIC_CHECK_S)
            now = file_stamps([self.cert_file])
            if now == stamp:
                continue
            stamp = now
            try:
                self.cert = read_cert(self.cert_file)
                self.received_at = self.clock()
            except IdentityError as exc:
                log.error("%s; keeping the previous certificate", exc)
                continue
            await self._changed()

    async def _changed(self) -> None:
        if self.on_change is not None:
            try:
                await self.on_change()
            except Exception:
                log.exception("applying the new certificate failed")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()
