"""Request mirroring (shadowing): copy a share of a route's requests to another upstream.

The copy runs in its own task and its answer is read and dropped, so a slow
or dead mirror never delays or fails the request the client is waiting for.
The mirrored request carries the same headers (after the route's request
header transforms and rewrites), with ``-shadow`` added to its Host name as
Envoy does (to the instance's host:port on routes with ``preserve_host:
false``), so the shadow service can tell copies from real traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from meshgate.config.models import MirrorConfig
from meshgate.http.messages import BytesBody
from meshgate.pipeline.context import Next, RequestContext
from meshgate.pipeline.proxy import SHADOW, proxy, shadow_host
from meshgate.upstream.cluster import Cluster

log = logging.getLogger("meshgate.mirror")


async def _nothing() -> None:
    return None


class Mirror:
    """The mirror stage of one route (a middleware), with its bounded set of copies in flight."""

    __slots__ = (
        "cluster",
        "in_flight",
        "max_body_bytes",
        "max_concurrent",
        "percent",
        "random",
        "sent",
        "skipped",
        "tasks",
        "timeout_s",
    )

    def __init__(self, config: MirrorConfig, cluster: Cluster, random: Callable[[], float]) -> None:
        self.cluster = cluster
        self.percent = config.percent
        self.max_body_bytes = config.max_body_bytes
        self.max_concurrent = config.max_concurrent
        self.timeout_s = config.timeout_s
        self.random = random
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0
        self.sent = 0  # copies started
        self.skipped = 0  # chosen but not sent: too many in flight, or body too large

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        if self.percent >= 100 or self.random() * 100 < self.percent:
            await self._start(ctx)
        await call_next()

    async def _start(self, ctx: RequestContext) -> None:
        req = ctx.request
        length = req.body.length
        if self.in_flight >= self.max_concurrent or length is None or length > self.max_body_bytes:
            self.skipped += 1
            return
        data = b""
        if length:
            # Read (at most max_body_bytes) so both copies can be sent; the
            # client's request goes on from memory.
            data = await req.body.read_all(self.max_body_bytes)
            req.body = BytesBody(data)
        headers = req.headers.copy()
        host = headers.get("host")
        if host is not None:
            headers.set("host", shadow_host(host))
        mctx = ctx.spin_off(req.method, headers, BytesBody(data), self.timeout_s)
        mctx.cluster = self.cluster
        mctx.state[SHADOW] = True
        self.in_flight += 1
        self.sent += 1
        task = asyncio.get_running_loop().create_task(self._send(mctx))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    async def _send(self, ctx: RequestContext) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await proxy(ctx, _nothing)
                if ctx.response is not None:
                    while await ctx.response.body.read():
                        pass
        except TimeoutError:
            log.info("mirror to %s cut after %g s", self.cluster.name, self.timeout_s)
            if ctx.response is not None:
                await ctx.response.body.aclose()
        except Exception:
            log.exception("mirror to %s failed", self.cluster.name)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.in_flight -= 1

    def close(self) -> None:
        """Cancel the copies still in flight (shutdown or reload)."""
        for task in list(self.tasks):
            task.cancel()
