"""Discovery from meshgate's control plane: the instances registered for one service,
kept current with the watch API (long-poll, resumed from the last revision; a
snapshot when the control plane says so).

Like the other sources, a failure keeps the last good list (retried with a backoff
from `RETRY_MIN_S` doubling to `RETRY_MAX_S`), and an empty list never replaces
a non-empty one: discovery never empties an upstream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshgate.config.discovery import DiscoveryConfig
from meshgate.config.models import InstanceConfig
from meshgate.control.client import ControlPlaneClient, ControlPlaneError
from meshgate.upstream.discovery import DiscoveryError, Instances, Source

log = logging.getLogger("meshgate.discovery")

RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
WATCH_WAIT_S = 30.0


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DiscoveryError(f"control_plane {what} {path}: {exc.strerror or exc}") from None


class ControlPlaneSource(Source):
    def __init__(self, config: DiscoveryConfig, on_change: Callable[[Instances], None]) -> None:
        super().__init__(on_change)
        assert config.type == "control_plane" and config.url and config.service
        assert config.ca_bundle_file is not None
        self.config = config
        self.prefix = f"instances/{config.namespace}/{config.service}/"
        self.state: dict[str, dict[str, Any]] = {}
        self.revision: int | None = None
        self.last: Instances | None = None
        self._client: ControlPlaneClient | None = None

    def __repr__(self) -> str:
        return f"ControlPlaneSource({self.config.url} {self.prefix})"

    def client(self) -> ControlPlaneClient:
        if self._client is None:
            cfg = self.config
            assert cfg.url is not None and cfg.ca_bundle_file is not None
            token = (
                _read(cfg.admin_token_file, "admin_token_file").strip()
                if cfg.admin_token_file
                else None
            )
            self._client = ControlPlaneClient(
                cfg.url,
                _read(cfg.ca_bundle_file, "ca_bundle_file"),
                identity_dir=cfg.identity_dir,
                admin_token=token,
            )
        return self._client

    def _instances(self) -> Instances:
        out = []
        for key in sorted(self.state):
            v = self.state[key]
            out.append(
                InstanceConfig(
                    host=v["address"], port=v["port"], weight=v["weight"], metadata=v["metadata"]
                )
            )
        return out

    async def _poll(self, timeout_s: float) -> bool:
        """One watch round; whether the instance list changed."""
        try:
            res = await self.client().watch(
                self.revision, timeout_s=timeout_s, prefixes=(self.prefix,)
            )
        except ControlPlaneError as exc:
            raise DiscoveryError(f"{self!r}: {exc}") from None
        before = dict(self.state)
        if res.snapshot:
            self.state = {i["key"]: i["value"] for i in res.events}
        else:
            for e in res.events:
                if e["type"] == "delete":
                    self.state.pop(e["key"], None)
                else:
                    self.state[e["key"]] = e["value"]
        self.revision = res.revision
        return self.state != before

    async def load(self) -> Instances:
        """A snapshot now (the first list), or DiscoveryError."""
        self.revision = None
        await self._poll(0)
        instances = self._instances()
        if not instances:
            raise DiscoveryError(f"{self!r}: no instances registered")
        self.last = instances
        return instances

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=repr(self))

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                changed = await self._poll(WATCH_WAIT_S)
            except DiscoveryError as exc:
                log.warning("%s; keeping the previous instances", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_MIN_S
            if not changed:
                continue
            instances = self._instances()
            if not instances:
                log.warning("%r: every instance is gone; keeping the previous ones", self)
                continue
            if instances == self.last:
                continue
            self.last = instances
            self._apply(instances)

    async def aclose(self) -> None:
        await self._stop_task()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
