"""Active health checks: HTTP, gRPC and TCP probes of upstream instances, each on
its own jittered schedule, with a bound on the probes running at once.

The verdicts (thresholds, transitions, jitter) are kept by the sans-IO
`meshgate.core.health.HealthTable`; this module only runs the probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING

from meshgate.core.health import HealthTable
from meshgate.http.errors import HTTPError
from meshgate.http.grpc import HEALTH_CHECK_PATH, SERVING, health_request, health_status
from meshgate.http.messages import BytesBody, Headers
from meshgate.io.h2client import H2Client, H2Pool

if TYPE_CHECKING:
    from meshgate.io.tls import ClientTls

log = logging.getLogger("meshgate.health")

Probe = Callable[[str, int], Awaitable[bool]]


def http_probe(
    path: str,
    host_header: str | None,
    expected: Collection[int],
    timeout_s: float,
    *,
    tls: ClientTls | None = None,
) -> Probe:
    """A probe sending ``GET path`` and expecting one of ``expected`` as the status
    (over TLS with ``tls``: the handshake and verification are part of the check)."""
    statuses = frozenset(expected)

    async def probe(host: str, port: int) -> bool:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await _open(host, port, tls)
                authority = host_header or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n"
                    "User-Agent: meshgate-health\r\n\r\n".encode("latin-1")
                )
                line = await reader.readline()
        except (OSError, TimeoutError, UnicodeEncodeError):
            return False
        finally:
            if writer is not None:
                writer.close()
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            return False
        return int(parts[1]) in statuses

    return probe


async def _open(
    host: str, port: int, tls: ClientTls | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the instance; over TLS, the handshake verified (and the peer
    being the SPIFFE ID wanted: OSError otherwise)."""
    if tls is None:
        return await asyncio.open_connection(host, port)
    reader, writer = await asyncio.open_connection(
        host, port, ssl=tls.context(), server_hostname=tls.server_name or host
    )
    problem = tls.peer_problem(writer.get_extra_info("ssl_object"))
    if problem is not None:
        writer.close()
        raise OSError(problem)
    return reader, writer


def grpc_probe(
    service: str, authority: str | None, timeout_s: float, *, tls: ClientTls | None = None
) -> Probe:
    """A probe calling ``grpc.health.v1.Health/Check`` for ``service`` on a new HTTP/2
    connection (h2c, or TLS with ALPN h2 when ``tls``): healthy when the call ends
    OK with the status SERVING."""
    message = health_request(service)

    async def probe(host: str, port: int) -> bool:
        pool = H2Pool(
            host,
            port,
            idle_timeout_s=timeout_s,
            connect_timeout_s=timeout_s,
            read_timeout_s=timeout_s,
            tls=tls,
        )
        fields = [
            (b":method", b"POST"),
            (b":scheme", pool.scheme),
            (b":authority", (authority or f"{host}:{port}").encode("latin-1")),
            (b":path", HEALTH_CHECK_PATH.encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", b"meshgate-health"),
        ]
        client: H2Client | None = None
        try:
            async with asyncio.timeout(timeout_s):
                client = await pool.connect()
                stream = client.open_stream()
                stream.start(fields, BytesBody(message), "POST")
                await stream.write_body(message)
                stream.request_written()
                head = await stream.response_head(timeout_s)
                data = await head.body.read_all(1024)
        except (HTTPError, OSError, TimeoutError):
            return False
        finally:
            if client is not None:
                client.close()
        # (a trailers-only answer carries grpc-status in its head)
        status = (head.body.trailers or Headers.from_lower(head.headers)).get("grpc-status")
        return head.status == 200 and status == "0" and health_status(data) == SERVING

    return probe


def tcp_probe(timeout_s: float, *, tls: ClientTls | None = None) -> Probe:
    """A probe that only opens (and closes) a TCP connection (with ``tls``: and
    completes a verified TLS handshake)."""

    async def probe(host: str, port: int) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await _open(host, port, tls)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    return probe


class HealthChecker:
    """Probes every instance it is given until it is removed; verdicts go to ``table``."""

    def __init__(
        self,
        name: str,
        probe: Probe,
        table: HealthTable,
        *,
        max_concurrent: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.probe = probe
        self.table = table
        self.clock = clock
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def add(self, key: str, host: str, port: int) -> None:
        if key in self._tasks:
            return
        self.table.add(key)
        task = asyncio.get_running_loop().create_task(self._run(key, host, port))
        self._tasks[key] = task

    def remove(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
        self.table.remove(key)

    async def _run(self, key: str, host: str, port: int) -> None:
        next_at = self.clock()  # the first probe right away
        while True:
            delay = next_at - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            async with self._slots:
                ok = await self.probe(host, port)
            now = self.clock()
            moved = self.table.record(key, ok, now)
            if moved is not None:
                verdict = "healthy" if moved.healthy else "unhealthy"
                log.warning(
                    "%s in %s is %s after %d %s check(s)",
                    key,
                    self.name,
                    verdict,
                    moved.consecutive,
                    "passed" if moved.healthy else "failed",
                )
            next_at = self.table.next_check_at(key, now)

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
