"""`Gateway`: a configured HTTP server plus its runtime, started and stopped as one."""

from __future__ import annotations

import logging
import random
from types import TracebackType

from meshgate.config.loader import LocatedDocument, config_warnings
from meshgate.config.models import GatewayConfig
from meshgate.io.server import HttpServer
from meshgate.pipeline.app import GatewayApp
from meshgate.pipeline.runtime import Runtime, build_runtime

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
    ) -> None:
        self.config = config
        self._rng = rng or random.Random()  # splits, mirroring, fault odds
        self._doc = doc
        self._reuse_port = reuse_port
        self._runtime: Runtime | None = None
        self._app: GatewayApp | None = None
        self._server: HttpServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "gateway not started"
        return self._server.port

    @property
    def runtime(self) -> Runtime:
        assert self._runtime is not None, "gateway not started"
        return self._runtime

    async def start(self) -> None:
        """Build the runtime (raises `ConfigError`) and start listening."""
        self._runtime = build_runtime(self.config, self._doc, rng=self._rng)
        _log_warnings(self.config, self._doc)
        try:
            await self._runtime.start()
        except BaseException:
            await self._runtime.aclose()
            raise
        self._app = GatewayApp(self._runtime)
        self._server = HttpServer(
            self._app,
            self.config.listener,
            self.config.max_request_body_bytes,
            reuse_port=self._reuse_port,
        )
        try:
            await self._server.start()
        except BaseException:
            await self._runtime.aclose()
            raise
        log.info(
            "gateway listening on %s:%d (%d routes)",
            self.config.listener.host,
            self.port,
            len(self.config.routes),
        )

    async def reload(self, config: GatewayConfig, doc: LocatedDocument | None = None) -> None:
        """Build a new runtime aside and swap it in; raise `ConfigError` and keep the old."""
        assert self._app is not None and self._runtime is not None
        new = build_runtime(config, doc, rng=self._rng, previous=self._runtime)
        _log_warnings(config, doc)
        try:
            await new.start()  # key sets fetched before the new table serves
        except BaseException:
            await new.aclose()
            raise
        if config.listener != self.config.listener:
            log.warning("listener settings changed: they take effect on restart only")
        old, self._runtime = self._runtime, new
        self._app.runtime = new
        if self._server is not None:
            self._server.max_body_bytes = config.max_request_body_bytes
        self.config = config
        old.close()
        log.info("configuration reloaded (%d routes)", len(config.routes))

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop accepting, drain in-flight requests (bounded), close upstream pools."""
        if self._server is not None:
            timeout = self.config.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
            await self._server.shutdown(timeout)
        if self._runtime is not None:
            await self._runtime.aclose()

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
