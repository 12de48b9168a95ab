"""A controllable test upstream for the resilience e2e tests.

`ControlledUpstream` is a small keep-alive HTTP/1.1 server on plain asyncio
streams. What it answers is chosen per request by ``behave(seen, n)`` (n counts
the requests this server received, from 0), or by the query string:
``?status=NNN`` forces a status, ``?delay=SEC`` holds the answer back (noticing
the gateway hanging up meanwhile: the request is then marked ``abandoned``).
It counts requests in flight and open connections, with their maxima.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""
    conn_id: int = 0
    at: float = field(default_factory=time.monotonic)
    abandoned: bool = False  # the gateway hung up before the answer

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query))


@dataclass(frozen=True)
class Reply:
    status: int = 200
    delay_s: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None  # default: "<name> <status>"


Behaviour = Callable[[Seen, int], Reply]


def always(status: int, **kw: Any) -> Behaviour:
    return lambda seen, n: Reply(status, **kw)


def fail_first(count: int, status: int = 503, **kw: Any) -> Behaviour:
    """The first ``count`` requests answer ``status`` (with ``kw``), then 200."""
    return lambda seen, n: Reply(status, **kw) if n < count else Reply(200)


def fail_first_each_path(count: int, status: int = 503, **kw: Any) -> Behaviour:
    """Per path: the first ``count`` requests answer ``status``, later ones 200."""
    seen_paths: dict[str, int] = {}

    def behave(seen: Seen, n: int) -> Reply:
        k = seen_paths.get(seen.path, 0)
        seen_paths[seen.path] = k + 1
        return Reply(status, **kw) if k < count else Reply(200)

    return behave


def fail_percent(percent: float, rng: random.Random, status: int = 503) -> Behaviour:
    return lambda seen, n: Reply(status) if rng.random() * 100 < percent else Reply(200)


class ControlledUpstream:
    __test__ = False

    def __init__(self, name: str, behave: Behaviour | None = None) -> None:
        self.name = name
        self.behave = behave
        self.requests: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0
        self.open_connections = 0
        self.max_open_connections = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def count(self) -> int:
        return len(self.requests)

    async def start(self) -> ControlledUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    def reply_for(self, seen: Seen, n: int) -> Reply:
        reply = self.behave(seen, n) if self.behave is not None else Reply()
        q = seen.query
        if "status" in q:
            reply = replace(reply, status=int(q["status"]))
        if "delay" in q:
            reply = replace(reply, delay_s=float(q["delay"]))
        return reply

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        conn_id = self.connections
        self.open_connections += 1
        self.max_open_connections = max(self.max_open_connections, self.open_connections)
        try:
            while await self._one(reader, writer, conn_id):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()
            self._tasks.discard(task)

    async def _one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn_id: int
    ) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        seen = Seen(method, target, headers, conn_id=conn_id)
        n = len(self.requests)
        self.requests.append(seen)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            seen.body = await _read_body(reader, headers)
            reply = self.reply_for(seen, n)
            if reply.delay_s > 0:
                try:
                    early = await asyncio.wait_for(reader.read(1), reply.delay_s)
                except TimeoutError:
                    early = None
                except ConnectionError:
                    early = b""
                if early is not None:  # EOF or reset (or bytes we did not ask for)
                    seen.abandoned = True
                    return False
            body = reply.body if reply.body is not None else f"{self.name} {reply.status}".encode()
            out = [f"HTTP/1.1 {reply.status} X", f"Content-Length: {len(body)}"]
            out += [f"{k}: {v}" for k, v in reply.headers]
            out.append(f"X-Upstream: {self.name}")
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            return True
        finally:
            self.in_flight -= 1


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0"))
    return await reader.readexactly(length) if length else b""


def upstream_cfg(*ports: int, name: str = "main", **extra: Any) -> dict[str, Any]:
    """An upstream entry with the given instance ports (connect timeout 1 s)."""
    cfg: dict[str, Any] = {
        "name": name,
        "connect_timeout_s": 1,
        "instances": [{"host": "127.0.0.1", "port": p} for p in ports],
    }
    cfg.update(extra)
    return cfg


def route_cfg(path: str = "/*", upstream: str = "main", **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"path": path, "upstream": upstream}
    cfg.update(extra)
    return cfg


@contextlib.contextmanager
def elapsed() -> Any:
    """``with elapsed() as t: ...; t()`` -> seconds since the block began."""
    start = time.monotonic()
    yield lambda: time.monotonic() - start
