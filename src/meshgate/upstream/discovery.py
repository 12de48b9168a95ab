"""Discovery sources: where an upstream's instance list comes from at run time.

A source delivers the whole list to a callback each time it changes; the
cluster diffs it against its hosts (new pools for added instances, removed
ones drained). A list that cannot be read or is invalid is logged and the
previous one kept: a bad edit never empties an upstream.

`FileSource` watches a YAML/JSON file; `meshgate.upstream.dnssource.DnsSource`
(its own module: dnspython loads only for upstreams that use DNS) resolves DNS
records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from meshgate.config.models import InstanceConfig

log = logging.getLogger("meshgate.discovery")

Instances = list[InstanceConfig]
_LIST = TypeAdapter(list[InstanceConfig])


class DiscoveryError(ValueError):
    """An instance list that cannot be used (says which file and what)."""


def read_instances(path: Path) -> Instances:
    """Parse a YAML or JSON list of ``{host, port, weight?, metadata?}``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DiscoveryError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise DiscoveryError(f"{path}: not YAML/JSON: {exc}") from None
    if data is None or data == []:
        # Never empty an upstream from a file: a zero-byte file is also what a
        # watcher sees halfway through an in-place save.
        raise DiscoveryError(f"{path}: no instances (an upstream is never emptied by discovery)")
    try:
        return _LIST.validate_python(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise DiscoveryError(f"{path}: [{where}]: {first['msg']}") from None


class Source:
    """What every discovery source shares: the callback that gets each new list,
    and the background task that watches or re-resolves."""

    def __init__(self, on_change: Callable[[Instances], None]) -> None:
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None

    def _apply(self, instances: Instances) -> None:
        """Hand ``instances`` to the cluster; a failure there is logged, not raised
        into the watch loop."""
        try:
            self.on_change(instances)
        except Exception:
            log.exception("%r: applying %d instances failed", self, len(instances))

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class FileSource(Source):
    """Instances from a file, re-read whenever it changes (its folder is watched,
    so editors that replace the file are seen too)."""

    def __init__(self, path: str | Path, on_change: Callable[[Instances], None]) -> None:
        super().__init__(on_change)
        self.path = Path(path).resolve()
        self._stop = asyncio.Event()

    def load(self) -> Instances:
        return read_instances(self.path)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        from watchfiles import awatch

        target = str(self.path)
        async for _ in awatch(
            os.path.dirname(target),
            stop_event=self._stop,
            watch_filter=lambda _change, changed: changed == target,
        ):
            try:
                instances = self.load()
            except DiscoveryError as exc:
                log.error("%s; keeping the previous instances", exc)
                continue
            self._apply(instances)

    async def aclose(self) -> None:
        self._stop.set()
        await self._stop_task()
