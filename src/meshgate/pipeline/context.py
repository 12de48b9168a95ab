"""The per-request context every middleware receives."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from meshgate.http.messages import Body, Headers, Request, Response, error_response

if TYPE_CHECKING:
    from meshgate.observability.tracing import RequestTrace, UnsampledTrace
    from meshgate.pipeline.runtime import CompiledRoute
    from meshgate.upstream.cluster import Cluster

Next = Callable[[], Awaitable[None]]
# (names, fields): fields to set on the response at the end, and the set of their names
LateHeaders = tuple[frozenset[str], list[tuple[str, str]]]
Middleware = Callable[["RequestContext", Next], Awaitable[None]]


class RequestContext:
    """What a middleware sees and changes.

    ``response`` is None until something (the proxy, or a middleware that
    short-circuits) sets it; middleware before the proxy edits ``request``,
    middleware after ``await call_next()`` edits ``response``.
    """

    __slots__ = (
        "attempts",
        "cluster",
        "deadline",
        "late_headers",
        "params",
        "request",
        "request_id",
        "response",
        "route",
        "start_time",
        "state",
        "trace",
        "upstream_error",
        "upstream_host",
        "upstream_s",
    )

    def __init__(
        self,
        request: Request,
        route: CompiledRoute | None,
        params: dict[str, str],
        request_id: str,
        *,
        start_time: float | None = None,
        deadline: float | None = None,
    ) -> None:
        self.request = request
        self.route = route
        self.params = params
        self.request_id = request_id
        self.start_time = time.monotonic() if start_time is None else start_time
        self.deadline = deadline  # time.monotonic() value by which the upstream must answer
        self.state: dict[str, Any] = {}
        self.response: Response | None = None
        self.upstream_error: Exception | None = None  # set by the proxy when it answered 5xx
        self.cluster: Cluster | None = None  # upstream chosen by a split; None = the route's
        # Header fields set on the response once the whole chain is done (rate-limit
        # headers): lets a stage decide before the response exists without wrapping it.
        self.late_headers: LateHeaders | None = None
        # Set by the proxy (access log): attempts made, the last attempt's instance
        # ("host:port") and its seconds from picking a connection to the response head
        # (or the failure).
        self.attempts = 0
        self.upstream_host: str | None = None
        self.upstream_s: float | None = None
        # The request's spans and upstream trace headers; None unless tracing is on.
        self.trace: RequestTrace | UnsampledTrace | None = None

    def spin_off(
        self, method: str, headers: Headers, body: Body, timeout_s: float
    ) -> RequestContext:
        """A context for work of its own on this request's behalf (a mirrored copy, a
        background cache refresh): same route, params, id, target and client, the
        given method, headers and body, its own clock and ``timeout_s`` deadline."""
        req = self.request
        copy = Request(
            method,
            req.target,
            headers,
            body,
            client_ip=req.client_ip,
            client_port=req.client_port,
            http_version=req.http_version,
            scheme=req.scheme,
            host=req.host,
        )
        start = time.monotonic()
        return RequestContext(
            copy,
            self.route,
            self.params,
            self.request_id,
            start_time=start,
            deadline=start + timeout_s,
        )

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        """Build (and set) a JSON error response carrying the request id."""
        resp = error_response(status, message, self.request_id, headers)
        self.response = resp
        return resp
