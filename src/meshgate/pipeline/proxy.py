"""The terminal middleware: forward the request to an upstream host.

Errors become responses (502/503/504, or the client-side 400/408/413) with
``ctx.upstream_error`` set, so middleware wrapping the proxy (retry,
breaker) can see what happened without catching exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from meshgate.core.breaker import CircuitBreaker
from meshgate.core.retry import Failure, parse_retry_after
from meshgate.http.errors import (
    BreakerOpen,
    HTTPError,
    Overflow,
    UpstreamConnectError,
    UpstreamError,
    UpstreamRefused,
    UpstreamReset,
    UpstreamTimeout,
)
from meshgate.http.framing import LAST_CHUNK, frame_chunk
from meshgate.http.messages import HOP_BY_HOP, Body, BytesBody, Headers, Response
from meshgate.io.h2client import AutoPool, H2Pool, H2Stream
from meshgate.io.tunnel import UpgradeResponse
from meshgate.io.upstream import ResponseHead, UpstreamConnection
from meshgate.pipeline.context import Next, RequestContext
from meshgate.upstream.cluster import Cluster, UpstreamHost

log = logging.getLogger("meshgate.proxy")

# Not copied to the upstream request: hop-by-hop, or set by the proxy itself.
_SKIP_REQUEST = HOP_BY_HOP | {
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
}
# With tracing on, the proxy writes its own trace headers (see observability/tracing.py).
_SKIP_TRACED = _SKIP_REQUEST | {"traceparent", "tracestate"}

# ctx.state key marking a mirrored copy (its Host gets "-shadow", see pipeline/mirror.py).
SHADOW = "meshgate.shadow"


def shadow_host(host: str) -> str:
    """``api.example.com:8080`` -> ``api.example.com-shadow:8080``."""
    colon = host.rfind(":")
    if colon != -1 and "]" not in host[colon:]:
        return f"{host[:colon]}-shadow{host[colon:]}"
    return f"{host}-shadow" if host else host


C = TypeVar("C")

# Request-body pump tasks, referenced until done (asyncio keeps tasks weakly).
_pumps: set[asyncio.Task[None]] = set()


def build_request_head(ctx: RequestContext, host: UpstreamHost) -> tuple[bytes, bool, bool]:
    """Serialize the upstream request head; return (head, has_body, chunked).

    Fields the client's Connection header named were already dropped by the
    server on receipt, so only fixed hop-by-hop names are filtered here.
    """
    req = ctx.request
    route = ctx.route
    assert route is not None
    removed = route.remove_request_headers
    preserve_host = route.preserve_host
    trace = ctx.trace
    skip = _SKIP_REQUEST if trace is None else _SKIP_TRACED
    parts = [f"{req.method} {req.target} HTTP/1.1\r\n"]
    append = parts.append
    forwarded_for = ""
    has_host = False
    for name, value in req.headers.raw():
        if name in removed:  # configured away (may include an untrusted x-forwarded-for)
            continue
        if name in skip or name.startswith("proxy-"):
            if name == "x-forwarded-for":
                forwarded_for = f"{forwarded_for}, {value}" if forwarded_for else value
            continue
        if name == "host":
            if not preserve_host:
                continue
            has_host = True
        append(f"{name}: {value}\r\n")
    if not has_host:
        key = host.key
        parts.append(f"host: {shadow_host(key) if SHADOW in ctx.state else key}\r\n")
    client = req.client_ip
    xff = f"{forwarded_for}, {client}" if forwarded_for else client
    parts.append(f"x-forwarded-for: {xff}\r\n")
    parts.append(f"x-forwarded-proto: {req.scheme}\r\n")  # one line per part: counted below
    if req.host:
        parts.append(f"x-forwarded-host: {req.host}\r\n")
    if trace is not None:
        parts.append(f"traceparent: {trace.upstream_traceparent}\r\n")
        if trace.tracestate is not None:
            parts.append(f"tracestate: {trace.tracestate}\r\n")
    if req.upgrade is not None and route.websocket is not None:
        parts.append("connection: upgrade\r\n")
        parts.append(f"upgrade: {req.upgrade}\r\n")
    body = req.body
    length = body.length
    has_body = length != 0
    chunked = False
    if length is None:
        parts.append("transfer-encoding: chunked\r\n")
        chunked = True
    elif length > 0 or req.method in ("POST", "PUT", "PATCH"):
        parts.append(f"content-length: {length}\r\n")
    parts.append("\r\n")
    text = "".join(parts)
    if text.count("\n") != len(parts) or text.count("\r") != len(parts):
        raise HTTPError("a middleware put a line break into the request line or a header")
    try:
        return text.encode("latin-1"), has_body, chunked
    except UnicodeEncodeError:
        raise HTTPError("a middleware put a non-latin-1 character into a header") from None


# Not copied to an HTTP/2 upstream request: as for HTTP/1.1, and "host" (the
# authority goes in :authority); "te" is let through when it is "trailers".
_SKIP_H2 = _SKIP_REQUEST | {"host"}
_SKIP_H2_TRACED = _SKIP_TRACED | {"host"}


def build_h2_request(
    ctx: RequestContext, host: UpstreamHost, scheme: bytes
) -> list[tuple[bytes, bytes]]:
    """The header list of the request to an HTTP/2 upstream (the same fields as
    `build_request_head`, pseudo-fields first; ``te: trailers`` kept, RFC 9113 8.2.2)."""
    req = ctx.request
    route = ctx.route
    assert route is not None
    removed = route.remove_request_headers
    trace = ctx.trace
    skip = _SKIP_H2 if trace is None else _SKIP_H2_TRACED
    authority = req.headers.get("host") if route.preserve_host else None
    if authority is None:
        authority = shadow_host(host.key) if SHADOW in ctx.state else host.key
    fields = [
        (":method", req.method),
        (":scheme", scheme.decode()),
        (":authority", authority),
        (":path", req.target),
    ]
    append = fields.append
    forwarded_for = ""
    for name, value in req.headers.raw():
        if name in removed:
            continue
        if name in skip or name.startswith("proxy-"):
            if name == "x-forwarded-for":
                forwarded_for = f"{forwarded_for}, {value}" if forwarded_for else value
            elif name == "te" and value.strip().lower() == "trailers":
                append(("te", "trailers"))
            continue
        append((name, value))
    client = req.client_ip
    append(("x-forwarded-for", f"{forwarded_for}, {client}" if forwarded_for else client))
    append(("x-forwarded-proto", req.scheme))
    if req.host:
        append(("x-forwarded-host", req.host))
    if trace is not None:
        append(("traceparent", trace.upstream_traceparent))
        if trace.tracestate is not None:
            append(("tracestate", trace.tracestate))
    length = req.body.length
    if length is not None and (length > 0 or req.method in ("POST", "PUT", "PATCH")):
        append(("content-length", str(length)))
    text = "".join([v for _, v in fields])
    if "\n" in text or "\r" in text or "\0" in text:
        raise HTTPError("a middleware put a line break into the request line or a header")
    try:
        return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields]
    except UnicodeEncodeError:
        raise HTTPError("a middleware put a non-latin-1 character into a header") from None


def response_from(head: ResponseHead) -> Response:
    """The client-facing response (the connection already dropped hop-by-hop fields)."""
    return Response(head.status, Headers.from_lower(head.headers), head.body)


async def _send_body(body: Body, conn: UpstreamConnection | H2Stream, chunked: bool) -> None:
    """Write the whole request body upstream (framed when chunked)."""
    while chunk := await body.read():
        await conn.write_body(frame_chunk(chunk) if chunked else chunk)
    if chunked:
        await conn.write_body(LAST_CHUNK)
    conn.request_written()


async def _pump(body: Body, conn: UpstreamConnection | H2Stream, chunked: bool) -> None:
    """Stream the request body upstream in the background; any failure ends the exchange."""
    try:
        await _send_body(body, conn, chunked)
    except HTTPError as exc:
        conn.fail_exchange(exc)
    except asyncio.CancelledError:
        conn.fail_exchange(UpstreamReset("request body transfer cancelled"))
        raise
    except Exception as exc:
        log.exception("request body transfer failed")
        conn.fail_exchange(UpstreamReset(f"request body transfer failed: {exc}"))


async def _exchange(
    conn: UpstreamConnection,
    ctx: RequestContext,
    head: bytes,
    has_body: bool,
    chunked: bool,
    timeout_s: float,
) -> ResponseHead:
    req = ctx.request
    # (build_request_head asked for the upgrade when the route tunnels WebSockets)
    upgrade = req.upgrade is not None and ctx.route is not None and ctx.route.websocket is not None
    conn.start(head, head_request=req.method == "HEAD", body_follows=has_body, upgrade=upgrade)
    if has_body:
        body = req.body
        if body.is_complete():
            await _send_body(body, conn, chunked)
        else:
            task = asyncio.get_running_loop().create_task(_pump(body, conn, chunked))
            _pumps.add(task)
            task.add_done_callback(_pumps.discard)
    return await conn.response_head(timeout_s)


async def _exchange_h2(
    stream: H2Stream, ctx: RequestContext, fields: list[tuple[bytes, bytes]], timeout_s: float
) -> ResponseHead:
    req = ctx.request
    body = req.body
    has_body = body.length != 0
    stream.start(fields, body if has_body else None, req.method)
    if has_body:
        if body.is_complete():
            try:
                await _send_body(body, stream, False)
            except UpstreamReset:
                if not stream.answered:
                    raise  # (answered early, then the upload stopped: the answer stands)
        else:
            task = asyncio.get_running_loop().create_task(_pump(body, stream, False))
            _pumps.add(task)
            task.add_done_callback(_pumps.discard)
    return await stream.response_head(timeout_s)


async def _h2_stream(cluster: Cluster, pool: H2Pool) -> H2Stream:
    """A stream on a connection with room: an open one, the one being opened, or a
    new one (within the upstream's connection thresholds)."""
    stream = pool.open_stream()
    while stream is None:
        connecting = pool.connecting
        if connecting is not None:
            await asyncio.shield(connecting)  # its failure is this request's too
            stream = pool.open_stream()
            continue
        client = await _connect(cluster, pool.connect)
        if not client.has_room():
            raise UpstreamRefused("upstream allows no stream on a new connection")
        stream = client.open_stream()
    return stream


async def _h2_response(
    ctx: RequestContext,
    cluster: Cluster,
    pool: H2Pool,
    fields: list[tuple[bytes, bytes]],
    per_try_timeout_s: float | None,
) -> ResponseHead:
    """One exchange on an HTTP/2 upstream; a stream the upstream refused (it processed
    nothing) is sent once more on another stream when the request has no body."""
    stream = await _h2_stream(cluster, pool)
    try:
        try:
            return await _exchange_h2(stream, ctx, fields, _try_timeout(ctx, per_try_timeout_s))
        except UpstreamRefused:
            if ctx.request.body.length != 0:
                raise
            stream = await _h2_stream(cluster, pool)
            return await _exchange_h2(stream, ctx, fields, _try_timeout(ctx, per_try_timeout_s))
    except BaseException:
        stream.abort()
        raise


def _try_timeout(ctx: RequestContext, per_try_timeout_s: float | None) -> float:
    assert ctx.deadline is not None
    remaining = ctx.deadline - time.monotonic()
    return max(min(remaining, per_try_timeout_s) if per_try_timeout_s else remaining, 0.001)


def failure_kind(exc: HTTPError) -> Failure | None:
    """How an attempt failed, in retry_on terms (None: not the upstream's doing)."""
    if isinstance(exc, UpstreamConnectError):
        return "connect-failure"
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamError):
        return "reset"
    return None


async def _attempt(
    ctx: RequestContext, cluster: Cluster, host: UpstreamHost, per_try_timeout_s: float | None
) -> Failure | None:
    """One attempt on ``host``: sets ``ctx.response``; returns the failure kind or None."""
    route = ctx.route
    assert route is not None and ctx.deadline is not None
    pool = host.pool
    if isinstance(pool, AutoPool):  # protocol auto, this instance not asked yet
        try:
            pool = host.pool = await _connect(cluster, pool.resolve)
        except HTTPError as exc:
            return _failed(ctx, cluster, host, exc)
    if isinstance(pool, H2Pool):
        return await _attempt_h2(ctx, cluster, host, pool, per_try_timeout_s)
    try:
        head, has_body, chunked = build_request_head(ctx, host)
    except HTTPError as exc:
        _unsendable(ctx, exc)
        return None
    conn: UpstreamConnection | None = None
    cluster.started(host)
    ctx.upstream_host = host.key
    started = time.monotonic()
    try:
        conn = pool.take_idle()
        if conn is None:
            conn = await _connect(cluster, pool.connect)
        timeout_s = _try_timeout(ctx, per_try_timeout_s)
        try:
            result = await _exchange(conn, ctx, head, has_body, chunked, timeout_s)
        except UpstreamReset:
            # A pooled connection the upstream closed just before we used it:
            # try once on a new connection when nothing of the request was lost.
            if conn.requests == 1 or conn.got_bytes or has_body:
                raise
            conn = await _connect(cluster, pool.connect)
            result = await _exchange(conn, ctx, head, has_body, chunked, timeout_s)
        if result.status == 101 and route.websocket is not None:
            # The connection is the tunnel's now (never pooled): see io/tunnel.py.
            headers = Headers.from_lower(result.headers)
            ctx.response = UpgradeResponse(headers, conn, route.websocket.idle_timeout_s)
        else:
            ctx.response = response_from(result)
        ctx.upstream_error = None
        return None
    except HTTPError as exc:
        if conn is not None:
            conn.abort()
        return _failed(ctx, cluster, host, exc)
    except BaseException:
        if conn is not None:
            conn.abort()
        raise
    finally:
        cluster.finished(host)
        ctx.upstream_s = time.monotonic() - started


async def _attempt_h2(
    ctx: RequestContext,
    cluster: Cluster,
    host: UpstreamHost,
    pool: H2Pool,
    per_try_timeout_s: float | None,
) -> Failure | None:
    """`_attempt` on an HTTP/2 upstream."""
    try:
        fields = build_h2_request(ctx, host, pool.scheme)
    except HTTPError as exc:
        _unsendable(ctx, exc)
        return None
    cluster.started(host)
    ctx.upstream_host = host.key
    started = time.monotonic()
    try:
        head = await _h2_response(ctx, cluster, pool, fields, per_try_timeout_s)
        ctx.response = response_from(head)
        ctx.upstream_error = None
        return None
    except HTTPError as exc:
        return _failed(ctx, cluster, host, exc)
    finally:
        cluster.finished(host)
        ctx.upstream_s = time.monotonic() - started


def _unsendable(ctx: RequestContext, exc: HTTPError) -> None:
    """The request cannot be written (a middleware broke a header): our error."""
    log.error(
        "%s %s: %s (request id %s)",
        ctx.request.method,
        ctx.request.path,
        exc.detail,
        ctx.request_id,
    )
    ctx.upstream_error = exc  # ours, not the upstream's
    ctx.error(exc.status, exc.detail)


def _failed(
    ctx: RequestContext, cluster: Cluster, host: UpstreamHost, exc: HTTPError
) -> Failure | None:
    """An attempt failed with ``exc``: its error answer; the failure kind."""
    if isinstance(exc, Overflow):
        ctx.upstream_error = exc
        ctx.error(exc.status, exc.detail, {"x-meshgate-overflow": exc.which})
        return None
    if isinstance(exc, UpstreamError):
        log.warning(
            "%s %s -> %s (%s): %s",
            ctx.request.method,
            ctx.request.path,
            host.key,
            cluster.name,
            exc.detail,
        )
    ctx.upstream_error = exc
    ctx.error(exc.status, exc.detail)
    return failure_kind(exc)


async def _connect(cluster: Cluster, connect: Callable[[], Awaitable[C]]) -> C:
    """A new connection within the upstream's connection and pending thresholds."""
    limits = cluster.limits
    if cluster.open_connections() >= cluster.max_connections:
        limits.overflow["connections"] += 1
        raise Overflow("connections")
    if not limits.try_acquire("pending"):
        raise Overflow("pending requests")
    cluster.connecting += 1
    try:
        return await connect()
    finally:
        cluster.connecting -= 1
        limits.release("pending")


async def proxy(ctx: RequestContext, call_next: Next) -> None:
    """Forward to a host of the route's upstream and set ``ctx.response``, retrying
    failed attempts as the route's retry policy, the upstream's budget and its
    breaker allow."""
    route = ctx.route
    assert route is not None
    cluster = ctx.cluster or route.cluster
    assert cluster is not None, "a forwarding route always has an upstream"
    limits = cluster.limits
    if not limits.try_acquire("requests"):
        exc = Overflow("requests")
        ctx.upstream_error = exc
        ctx.error(exc.status, exc.detail, {"x-meshgate-overflow": exc.which})
        return
    budget = cluster.budget
    budget.request_started()
    policy = route.retry
    req = ctx.request
    replay: bytes | None = None  # the request body, kept so a retry can send it again
    recorded: _Recorded | None = None  # a body of unknown length, kept as it streams out
    length = req.body.length
    if policy is not None and length and length <= route.retry_body_bytes:
        replay = await req.body.read_all(route.retry_body_bytes)
        req.body = BytesBody(replay)
    elif policy is not None and length is None:
        req.body = recorded = _Recorded(req.body, route.retry_body_bytes)
    # (a longer body can only be retried when it never left: connect failure)
    breaker = cluster.breaker
    hash_key = cluster.hash_key(req) if cluster.config.hash_key is not None else None
    tried: list[UpstreamHost] = []
    trace = ctx.trace
    attempt = 0
    retries = 0  # retry slots taken (budget and limits), given back at the end
    try:
        while True:
            attempt += 1
            if breaker is not None and not breaker.allow(time.monotonic()):
                if attempt == 1:
                    _breaker_open(ctx, breaker)
                break  # a retry refused by the breaker: the last answer stands
            try:
                host = cluster.pick(tried, hash_key, route.subset)
            except HTTPError as exc:  # no healthy instance
                if attempt == 1:
                    ctx.upstream_error = exc
                    ctx.error(exc.status, exc.detail)
                break
            if policy is not None:
                tried.append(host)
            if attempt > 1 and replay is not None:
                req.body = BytesBody(replay)
            ctx.attempts = attempt
            if trace is not None:  # the attempt's span: parent-id of the upstream traceparent
                trace.start_attempt(req, host, cluster.name, attempt)
            try:
                failure = await _attempt(ctx, cluster, host, route.per_try_timeout_s)
            except BaseException as exc:  # cancelled (client gone): free a half-open probe slot
                if trace is not None:
                    trace.abort_attempt(exc)
                if breaker is not None:
                    breaker.record_ignored(time.monotonic())
                raise
            resp = ctx.response
            assert resp is not None
            status = resp.status
            if trace is not None:
                trace.end_attempt(status, failure, ctx.upstream_error)
            # Not the upstream's doing: local overflow, or a client-side error.
            local = failure is None and ctx.upstream_error is not None
            if not local:
                cluster.stats.attempt(ctx.upstream_s or 0.0, failure, status)
            if breaker is not None or cluster.outliers is not None:
                _record(breaker, cluster, host, failure, status, local)
            if policy is None or local or attempt > policy.max_retries:
                break
            grpc_status = (
                _grpc_status(resp)
                if failure is None and status == 200 and policy.retries_grpc
                else None
            )
            if failure is None and status < 400 and grpc_status is None:
                break  # no retry condition covers a success or a redirect
            if not policy.retriable(
                method=req.method,
                failure=failure,
                status=None if failure else status,
                grpc_status=grpc_status,
            ):
                break
            if recorded is not None and replay is None:
                replay = recorded.replay()
            if failure != "connect-failure" and length != 0 and replay is None:
                break  # the body streamed out and is gone
            delay = policy.backoff_s(attempt, _retry_after(resp) if failure is None else None)
            deadline = ctx.deadline
            assert deadline is not None
            if delay is None or time.monotonic() + delay >= deadline:
                break
            if not budget.try_retry():
                break  # budget exhausted: the original failure is the answer
            if not limits.try_acquire("retries"):
                budget.retry_finished()
                break
            retries += 1
            cluster.stats.retries += 1
            await resp.body.aclose()
            await asyncio.sleep(delay)
    finally:
        for _ in range(retries):
            budget.retry_finished()
            limits.release("retries")
        limits.release("requests")
        budget.request_finished()
    if attempt > 1 and route.attempts_header and ctx.response is not None:
        ctx.response.headers.set("x-meshgate-attempts", str(attempt))


def _breaker_open(ctx: RequestContext, breaker: CircuitBreaker) -> None:
    wait_s = max(1, math.ceil(breaker.retry_after_s(time.monotonic())))
    exc = BreakerOpen()
    ctx.upstream_error = exc
    ctx.error(exc.status, exc.detail, {"retry-after": str(wait_s)})


def _record(
    breaker: CircuitBreaker | None,
    cluster: Cluster,
    host: UpstreamHost,
    failure: Failure | None,
    status: int,
    local: bool,
) -> None:
    """Tell the breaker and the outlier detector how an attempt went."""
    now = time.monotonic()
    if breaker is not None:
        if local:
            breaker.record_ignored(now)
        elif failure is not None or status >= 500:
            breaker.record_failure(now)
        else:
            breaker.record_success(now)
    if cluster.outliers is not None and not local:
        cluster.record(host, now, status, failure)


def _grpc_status(resp: Response) -> int | None:
    """The gRPC status of a trailers-only answer (in its head), if it is one."""
    value = resp.headers.get("grpc-status")
    return int(value) if value is not None and value.isdigit() else None


class _Recorded(Body):
    """A request body of unknown length as it streams to the upstream, its bytes kept
    (up to ``limit``) so that a retry can send it again."""

    __slots__ = ("_body", "_limit", "_parts", "_size", "complete")

    def __init__(self, body: Body, limit: int) -> None:
        super().__init__(body.length)
        self._body = body
        self._limit = limit
        self._parts: list[bytes] | None = []  # None: past the limit
        self._size = 0
        self.complete = False  # read to the end

    def is_complete(self) -> bool:
        return self._body.is_complete()

    async def read(self) -> bytes:
        chunk = await self._body.read()
        parts = self._parts
        if not chunk:
            self.complete = True
            self.trailers = self._body.trailers
        elif parts is not None:
            self._size += len(chunk)
            if self._size > self._limit:
                self._parts = None
            else:
                parts.append(chunk)
        return chunk

    async def aclose(self) -> None:
        await self._body.aclose()

    def replay(self) -> bytes | None:
        """The whole body, when it was read to the end within the limit."""
        parts = self._parts
        return b"".join(parts) if self.complete and parts is not None else None


def _retry_after(resp: Response) -> float | None:
    value = resp.headers.get("retry-after")
    return None if value is None else parse_retry_after(value, time.time())
