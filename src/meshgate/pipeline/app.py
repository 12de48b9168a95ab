"""The gateway application: route, run the route's chain, map failures to JSON."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

from meshgate.core.router import Match, MethodNotAllowed
from meshgate.http.errors import HTTPError
from meshgate.http.grpc import parse_timeout
from meshgate.http.messages import Headers, Request, Response, error_response, new_request_id
from meshgate.observability.accesslog import AccessEntry, AccessLog, open_access_log
from meshgate.observability.metrics import NO_ROUTE, RequestStats
from meshgate.pipeline.builtins import REQUEST_ID_HEADER, RESPONSE_TIME_HEADER
from meshgate.pipeline.context import RequestContext
from meshgate.pipeline.runtime import CompiledRoute, Runtime

if TYPE_CHECKING:
    from meshgate.config.tracing import TracingConfig
    from meshgate.observability.tracing import RequestTrace, Tracing, UnsampledTrace

log = logging.getLogger("meshgate.gateway")

_VALID_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def choose_request_id(request: Request) -> str:
    """The client's ``x-request-id`` when it is sane, else a new random id."""
    given = request.headers.get("x-request-id")
    if given is not None and _VALID_REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()


def open_tracing(config: TracingConfig) -> Tracing | None:
    """The running tracer provider and exporter, or None when tracing is off (the
    OpenTelemetry SDK is only imported when it is on) or cannot start (logged)."""
    if not config.enabled:
        return None
    try:
        from meshgate.observability.tracing import Tracing

        return Tracing(config)
    except Exception:
        log.exception("tracing not started; serving without it")
        return None


def _preflight_route(runtime: Runtime, request: Request) -> CompiledRoute | None:
    """The route a CORS preflight (OPTIONS with Access-Control-Request-Method) is for,
    when that route has a CORS policy; None: route the OPTIONS like any request."""
    headers = request.headers
    method = headers.get("access-control-request-method")
    if method is None:
        return None
    found = runtime.router.match(
        method.strip().upper(), request.path, request.host, headers.raw(), request.query_string
    )
    if not isinstance(found, Match) or found.route.cors is None:
        return None
    return found.route


class GatewayApp:
    """Callable the HTTP server runs for each request."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.stats = RequestStats()  # read by the admin listener's /metrics
        # Read by the server for every request: None = no access log.
        self.access_log: AccessLog | None = open_access_log(runtime.config.access_log)
        # Read for every request: None = tracing off, and nothing per request for it.
        self.tracing: Tracing | None = open_tracing(runtime.config.tracing)
        # Tracers replaced by a reload, exporting their last spans (aclose waits).
        self._closing_tracers: set[threading.Thread] = set()

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @runtime.setter
    def runtime(self, runtime: Runtime) -> None:
        """Replaced whole on reload; a changed ``access_log`` section reopens the log
        (the old writer finishes its queue in its own thread), a changed ``tracing``
        section restarts tracing (the old provider exports its queue in its own thread;
        requests in flight end their spans on it, and those are dropped)."""
        old_config = self._runtime.config
        self._runtime = runtime
        new_cfg = runtime.config.access_log
        if new_cfg != old_config.access_log:
            old, self.access_log = self.access_log, open_access_log(new_cfg)
            if old is not None:
                closing = threading.Thread(target=old.close, name="meshgate-accesslog-close")
                closing.start()
        if runtime.config.tracing != old_config.tracing:
            old_tracing, self.tracing = self.tracing, open_tracing(runtime.config.tracing)
            if old_tracing is not None:
                closing = threading.Thread(target=old_tracing.close, name="meshgate-tracing-close")
                self._closing_tracers = {t for t in self._closing_tracers if t.is_alive()}
                self._closing_tracers.add(closing)
                closing.start()

    async def aclose(self) -> None:
        """Flush and close the access log and export the queued spans (the server calls
        it when it shuts down; each waits a bounded time)."""
        alog, self.access_log = self.access_log, None
        if alog is not None:
            await asyncio.to_thread(alog.close)
        tracing, self.tracing = self.tracing, None
        if tracing is not None:
            await asyncio.to_thread(tracing.close)
        while self._closing_tracers:
            await asyncio.to_thread(self._closing_tracers.pop().join)  # bounded by close

    def _preflight(self, runtime: Runtime, request: Request) -> Response | None:
        """Answer a CORS preflight without running the route's chain or the upstream
        (the route's ip_rules still apply)."""
        route = _preflight_route(runtime, request)
        if route is None or route.cors is None:
            return None
        headers = request.headers
        guard = route.ip_guard
        if guard is not None and not guard.permits(request):
            return error_response(403, "client address not allowed", choose_request_id(request))
        fields = route.cors.preflight(
            headers.get("origin"),
            headers.get("access-control-request-method"),
            headers.get("access-control-request-headers"),
        )
        if fields is None:
            return error_response(403, "CORS preflight refused", choose_request_id(request))
        return Response(204, Headers(fields))

    def __call__(
        self, request: Request, entry: AccessEntry | None = None
    ) -> Coroutine[Any, Any, Response]:
        """Answer ``request``; with an access log ``entry``, leave the request's
        context (or, without one, its route name and request id) on it. With tracing
        on, the answer runs inside the request's server span."""
        tracing = self.tracing
        if tracing is None:
            return self._answer(request, entry, None)
        return self._traced(tracing, request, entry)

    async def _traced(
        self, tracing: Tracing, request: Request, entry: AccessEntry | None
    ) -> Response:
        try:
            trace = tracing.begin(request)
        except Exception:  # tracing never fails a request
            log.exception("trace not started for %s %s", request.method, request.path)
            return await self._answer(request, entry, None)
        if entry is not None:
            entry.trace = trace
        try:
            resp = await self._answer(request, entry, trace)
        except BaseException as exc:  # cancelled (client gone), or a bug the server answers
            trace.abort(exc)
            raise
        trace.finish(resp.status)
        return resp

    async def _answer(
        self,
        request: Request,
        entry: AccessEntry | None,
        trace: RequestTrace | UnsampledTrace | None,
    ) -> Response:
        start = time.monotonic()
        runtime = self._runtime
        if request.method == "OPTIONS":
            preflight = self._preflight(runtime, request)
            if preflight is not None:
                route_ = _preflight_route(runtime, request)
                name = route_.name if route_ is not None else NO_ROUTE
                self.stats.record(name, "OPTIONS", preflight.status, time.monotonic() - start)
                if entry is not None:
                    entry.route = name
                return preflight
        found = runtime.router.match(
            request.method, request.path, request.host, request.headers.raw(), request.query_string
        )
        if not isinstance(found, Match):
            rid = choose_request_id(request)
            if entry is not None:
                entry.request_id = rid
            if isinstance(found, MethodNotAllowed):
                allow = ", ".join(found.allowed)
                self.stats.record(NO_ROUTE, request.method, 405, time.monotonic() - start)
                return error_response(405, "method not allowed", rid, {"allow": allow})
            self.stats.record(NO_ROUTE, request.method, 404, time.monotonic() - start)
            return error_response(404, "no route matches", rid)
        route: CompiledRoute = found.route
        timeout_s = route.timeout_s
        if request.http_version == "2":  # a gRPC client's deadline shortens the route's
            grpc_timeout = request.headers.get("grpc-timeout")
            if grpc_timeout is not None:
                timeout_s = min(timeout_s, parse_timeout(grpc_timeout) or timeout_s)
        ctx = RequestContext(
            request,
            route,
            found.params,
            choose_request_id(request),
            start_time=start,
            deadline=start + timeout_s,
        )
        if entry is not None:
            entry.ctx = ctx
        if trace is not None:
            ctx.trace = trace
            trace.routed(route, ctx.request_id)
        if route.sets_request_id:
            request.headers.set(REQUEST_ID_HEADER, ctx.request_id)
        try:
            gate = route.gate
            if gate is None or gate(ctx):
                await route.handler(ctx)
        except HTTPError as exc:  # e.g. BodyTooLarge from body.read_all(limit) in a plugin
            if ctx.response is not None:
                await ctx.response.body.aclose()
            self.stats.record(route.name, request.method, exc.status, time.monotonic() - start)
            return error_response(exc.status, exc.detail, ctx.request_id)
        except Exception:
            log.exception(
                "middleware error on %s %s (request id %s)",
                request.method,
                request.path,
                ctx.request_id,
            )
            if ctx.response is not None:
                await ctx.response.body.aclose()
            self.stats.record(route.name, request.method, 500, time.monotonic() - start)
            return error_response(500, "internal error", ctx.request_id)
        resp = ctx.response
        if resp is None:
            log.error("route %s produced no response (request id %s)", route.name, ctx.request_id)
            self.stats.record(route.name, request.method, 500, time.monotonic() - start)
            return error_response(500, "no response produced", ctx.request_id)
        end = time.monotonic()
        late = ctx.late_headers
        names = route.builtin_names
        if names:
            # What the built-ins would have set on the way out (response_time inner),
            # then the late headers.
            fields: list[tuple[str, str]] = []
            if route.times_response:
                fields.append((RESPONSE_TIME_HEADER, f"{(end - start) * 1000.0:.2f}ms"))
            if route.sets_request_id:
                fields.append((REQUEST_ID_HEADER, ctx.request_id))
            if late is not None:
                fields += late[1]
                union = route.late_names.get(late[0])
                if union is None:
                    union = route.late_names[late[0]] = names | late[0]
                names = union
            resp.headers.set_fields(fields, names)
        elif late is not None:
            resp.headers.set_fields(late[1], late[0])
        self.stats.record(route.name, request.method, resp.status, end - start)
        return resp
