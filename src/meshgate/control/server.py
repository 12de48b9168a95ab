"""Run the control plane: store, CA, the TLS listener and its serving certificate.

The serving certificate is issued by the mesh CA to
``spiffe://<td>/ns/meshgate-system/sa/meshgate-control-plane`` plus the configured
``server_names``; it is renewed at half its lifetime and whenever the CA changes.
Clients verify it with the trust bundle. The TLS context asks for (does not require)
a client certificate: workloads present theirs, operators and joining workloads
do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
import time

from meshgate.config.models import ListenerConfig
from meshgate.control.api import ControlPlaneApp
from meshgate.control.config import ControlPlaneConfig
from meshgate.control.csr import key_pem, new_key
from meshgate.control.etcd_store import EtcdStore
from meshgate.control.service import ControlPlane
from meshgate.control.store import SQLiteStore, Store
from meshgate.io.server import HttpServer

log = logging.getLogger("meshgate.control")

SERVING_CERT_CHECK_S = 60.0
DRAIN_TIMEOUT_S = 5.0


def make_store(config: ControlPlaneConfig) -> Store:
    s = config.storage
    if s.type == "etcd":
        return EtcdStore(
            s.endpoint_pairs(), s.prefix, timeout_s=s.timeout_s, history=config.watch.history
        )
    return SQLiteStore(s.path, history=config.watch.history)


class ControlPlaneServer:
    def __init__(self, config: ControlPlaneConfig, store: Store | None = None) -> None:
        self.config = config
        self.cp = ControlPlane(config, store or make_store(config))
        self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ssl.verify_mode = ssl.CERT_OPTIONAL
        self._server: HttpServer | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._renew_at = 0.0
        self._ca_changed = asyncio.Event()

    @property
    def port(self) -> int:
        return self._server.port if self._server is not None else 0

    def _load_tls(self) -> None:
        """A new serving certificate and the current trust bundle into the context."""
        key = new_key()
        chain, not_before, not_after = self.cp.issue_server_cert(key.public_key())
        # load_cert_chain reads files: write both to a private temporary directory.
        with tempfile.TemporaryDirectory(prefix="meshgate-cp-") as d:
            cert_path, key_path = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key_pem(key))
            with open(cert_path, "w", encoding="ascii") as f:
                f.write(chain)
            self.ssl.load_cert_chain(cert_path, key_path)
        self.ssl.load_verify_locations(cadata="".join(self.cp.bundle()["roots"]))
        self._renew_at = not_before + (not_after - not_before) / 2

    async def start(self) -> None:
        await self.cp.start()
        self._load_tls()
        self.cp.on_ca_change.append(self._ca_changed.set)
        listener = ListenerConfig(host=self.config.listen.host, port=self.config.listen.port)
        self._server = HttpServer(
            ControlPlaneApp(self.cp), listener, 64 * 1024, ssl_context=self.ssl
        )
        await self._server.start()
        self._renewer = asyncio.create_task(self._renew_loop(), name="cp-serving-cert")
        log.info(
            "control plane listening on https://%s:%d (trust domain %s, storage %s)",
            self.config.listen.host,
            self.port,
            self.config.trust_domain,
            self.config.storage.type,
        )

    async def _renew_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SERVING_CERT_CHECK_S):
                    await self._ca_changed.wait()
            if self._ca_changed.is_set() or time.time() >= self._renew_at:
                self._ca_changed.clear()
                try:
                    self._load_tls()
                except (ssl.SSLError, ValueError, OSError) as exc:
                    log.error("could not renew the serving certificate: %s", exc)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self._server is not None:
            self.cp.store.end_watches()  # then the listener closes (no await between)
            await self._server.shutdown(DRAIN_TIMEOUT_S)
            self._server = None
        await self.cp.close()
