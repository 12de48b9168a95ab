"""`Gateway`: a configured HTTP server plus its runtime, started and stopped as one."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from meshgate.config.loader import LocatedDocument, config_warnings, load_config
from meshgate.config.models import GatewayConfig, ListenerConfig
from meshgate.io.server import HttpServer
from meshgate.io.tls import ALPN, ALPN_H2, ServerTls
from meshgate.observability.metrics import TunnelStats
from meshgate.pipeline.app import GatewayApp
from meshgate.pipeline.context import Middleware
from meshgate.pipeline.runtime import Runtime, build_runtime

if TYPE_CHECKING:
    from meshgate.io.workers import Fleet

log = logging.getLogger("meshgate.gateway")


class Gateway:
    """Run a gateway inside the current event loop.

    >>> async with Gateway(config) as gw:   # doctest: +SKIP
    ...     print(gw.port)
    """

    def __init__(
        self,
        config: GatewayConfig,
        doc: LocatedDocument | None = None,
        *,
        reuse_port: bool = False,
        rng: random.Random | None = None,
        config_path: str | Path | None = None,
        admin: bool = False,
        fleet: Fleet | None = None,
        front: Sequence[tuple[str, Middleware]] = (),
    ) -> None:
        """``config_path``: the file ``config`` came from (``POST /reload`` re-reads it).
        ``admin``: also start the admin listener (``config.admin``, when enabled).
        ``fleet``: this gateway is one of several worker processes (see
        `meshgate.admin.fleet`): with the admin listener enabled it serves its own on a
        Unix socket, and worker 0 serves the public one for all of them.
        ``front``: stages put first in every route's chain (see `build_runtime`)."""
        self._front = tuple(front)
        self.config = config
        self.config_path = Path(config_path) if config_path is not None else None
        self._rng = rng or random.Random()  # splits, mirroring, fault odds
        self._doc = doc
        self._reuse_port = reuse_port
        self._runtime: Runtime | None = None
        self._app: GatewayApp | None = None
        self._server: HttpServer | None = None
        self._admin_wanted = admin
        self._admin: HttpServer | None = None
        self._worker_admin: HttpServer | None = None  # with a fleet: this worker's socket
        self.fleet = fleet
        self._reload_lock = asyncio.Lock()
        self._drain_task: asyncio.Task[None] | None = None
        self.started = False  # listeners up, config loaded
        self.draining = False  # POST /drain or stop(): /ready answers 503
        # Called once when a drain starts (the CLI sets it: the process then stops).
        self.on_drain: Callable[[], None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "gateway not started"
        return self._server.port

    @property
    def runtime(self) -> Runtime:
        assert self._runtime is not None, "gateway not started"
        return self._runtime

    @property
    def current_runtime(self) -> Runtime | None:
        return self._runtime

    @property
    def app(self) -> GatewayApp | None:
        return self._app

    @property
    def admin_port(self) -> int | None:
        """The admin listener's port, None when it does not run."""
        return self._admin.port if self._admin is not None else None

    def tunnel_stats(self) -> TunnelStats | None:
        """WebSocket tunnels of the data listener (None before it starts)."""
        return self._server.tunnels if self._server is not None else None

    async def reload_tls(self) -> bool:
        """Load the listener's certificate files now if they changed (rather than at
        the next ``reload_check_s``); True when new ones serve."""
        if self._server is None or self._server.tls is None:
            return False
        return await self._server.tls.check_reload()

    def client_connections(self) -> int:
        """Open client connections on the data listener."""
        return len(self._server.connections) if self._server is not None else 0

    def start_drain(self, drain_timeout_s: float | None = None) -> None:
        """Start draining (``POST /drain``, SIGTERM): ``/ready`` answers 503 from now on,
        the data listener stops accepting, keep-alive connections are closed after
        their next response and in-flight requests get up to ``drain_timeout_s``
        (default ``config.drain_timeout_s``); then their connections are aborted.
        The admin listener and the upstream pools stay until `stop` (which waits for
        this drain). `on_drain`, when set, is called once."""
        if self.draining:
            return
        log.info("draining: readiness turned off, listener closing")
        self.draining = True
        if self._server is not None and self._drain_task is None:
            timeout = self.config.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
            self._drain_task = asyncio.get_running_loop().create_task(
                self._server.shutdown(timeout)
            )
        if self.on_drain is not None:
            self.on_drain()

    async def start(self) -> None:
        """Build the runtime (raises `ConfigError`) and start listening."""
        self._runtime = build_runtime(self.config, self._doc, rng=self._rng, front=self._front)
        _log_warnings(self.config, self._doc)
        try:
            await self._runtime.start()
        except BaseException:
            await self._runtime.aclose()
            raise
        tls_config = self.config.listener.tls
        try:
            alpn = ALPN_H2 if self.config.listener.serves_http2 else ALPN
            tls = ServerTls(tls_config, self._doc, alpn=alpn) if tls_config is not None else None
        except BaseException:
            await self._runtime.aclose()
            raise
        self._app = GatewayApp(self._runtime)
        self._server = HttpServer(
            self._app,
            self.config.listener,
            self.config.max_request_body_bytes,
            reuse_port=self._reuse_port,
            tls=tls,
        )
        try:
            await self._server.start()
        except BaseException:
            await self._runtime.aclose()
            raise
        protocols = "https" if tls is not None else "http"
        if self.config.listener.serves_http2:
            protocols += " + h2" if tls is not None else " + h2c"
        log.info(
            "gateway listening on %s:%d (%s, %d routes)",
            self.config.listener.host,
            self.port,
            protocols,
            len(self.config.routes),
        )
        if self.fleet is not None and self.config.admin.enabled:
            from meshgate.admin.api import AdminApp

            own = str(self.fleet.socket(self.fleet.index))
            self._worker_admin = HttpServer(
                AdminApp(self), ListenerConfig(), 64 * 1024, unix_path=own
            )
            await self._worker_admin.start()
        first = self.fleet is None or self.fleet.index == 0
        if (self._admin_wanted or self.fleet is not None) and self.config.admin.enabled and first:
            await self._start_admin()
        self.started = True

    async def _start_admin(self) -> None:
        """Start the admin listener; a bind failure is logged and the gateway serves on."""
        from meshgate.admin.api import AdminApp
        from meshgate.admin.fleet import FleetAdminApp

        admin = self.config.admin
        listener = ListenerConfig(host=admin.host, port=admin.port)
        app = AdminApp(self) if self.fleet is None else FleetAdminApp(self, self.fleet)
        server = HttpServer(app, listener, 64 * 1024)
        try:
            await server.start()
        except OSError as exc:
            log.error(
                "admin listener not started: cannot listen on %s:%d: %s",
                admin.host,
                admin.port,
                exc.strerror or exc,
            )
            return
        self._admin = server
        log.info("admin listening on %s:%d", admin.host, server.port)

    async def reload_from_file(self) -> None:
        """Re-read `config_path` and `reload` it (raises `ConfigError`, keeping the old)."""
        assert self.config_path is not None, "the gateway has no config file"
        async with self._reload_lock:
            config, doc = load_config(self.config_path)
            await self._reload(config, doc)

    async def reload(self, config: GatewayConfig, doc: LocatedDocument | None = None) -> None:
        """Build a new runtime aside and swap it in; raise `ConfigError` and keep the old."""
        async with self._reload_lock:
            await self._reload(config, doc)

    async def _reload(self, config: GatewayConfig, doc: LocatedDocument | None) -> None:
        assert self._app is not None and self._runtime is not None
        new = build_runtime(config, doc, rng=self._rng, previous=self._runtime, front=self._front)
        _log_warnings(config, doc)
        try:
            await new.start()  # key sets fetched before the new table serves
        except BaseException:
            await new.aclose()
            raise
        if config.listener != self.config.listener:
            log.warning("listener settings changed: they take effect on restart only")
        if (config.admin.host, config.admin.port, config.admin.enabled) != (
            self.config.admin.host,
            self.config.admin.port,
            self.config.admin.enabled,
        ):
            log.warning("admin listener settings changed: they take effect on restart only")
        old, self._runtime = self._runtime, new
        new.take_over(old)  # unchanged upstreams: their clusters now belong to `new`
        self._app.runtime = new
        if self._server is not None:
            self._server.max_body_bytes = config.max_request_body_bytes
        self.config = config
        old.close()
        log.info("configuration reloaded (%d routes)", len(config.routes))

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop accepting, drain in-flight requests (bounded), close upstream pools;
        the admin listener (``/ready`` answering 503) closes last."""
        self.start_drain(drain_timeout_s)
        if self._drain_task is not None:
            await asyncio.shield(self._drain_task)
        if self._runtime is not None:
            await self._runtime.aclose()
        if self._admin is not None:
            admin, self._admin = self._admin, None
            await admin.shutdown(1.0)
        if self._worker_admin is not None:
            own, self._worker_admin = self._worker_admin, None
            await own.shutdown(1.0)
        self.started = False

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _log_warnings(config: GatewayConfig, doc: LocatedDocument | None) -> None:
    for warning in config_warnings(config, doc):
        log.warning("%s", warning)
