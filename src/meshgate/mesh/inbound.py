"""The inbound side of a sidecar: who is calling (the verified client certificate's
SPIFFE ID), may it (authorization policies), and the headers the app gets.

`InboundGuard` is the first stage of every inbound route, before the per-source
rate limits (which count by the ``source_service`` it sets)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from meshgate.control.ca import SpiffeId
from meshgate.control.policy import AuthzPolicy, decide
from meshgate.core.tracecontext import format_traceparent
from meshgate.http.messages import error_response
from meshgate.http.tls import TlsInfo
from meshgate.mesh.metrics import MeshStats
from meshgate.mesh.state import MeshState
from meshgate.pipeline.context import Next, RequestContext

SOURCE_SERVICE = "x-source-service"
SOURCE_IDENTITY = "x-source-identity"
SOURCE_NAMESPACE = "x-source-namespace"
# Set only by the sidecar, from the verified certificate: a caller's own are dropped.
IDENTITY_HEADERS = (SOURCE_SERVICE, SOURCE_IDENTITY, SOURCE_NAMESPACE)
UNKNOWN = "unknown"


def peer_identity(tls: TlsInfo | None, trust_domain: str) -> SpiffeId | None:
    """The SPIFFE ID in the verified client certificate, when it is of ``trust_domain``."""
    cert = tls.client_certificate if tls is not None else None
    if cert is None:
        return None
    for kind, value in cert.san:
        if kind == "URI" and value.startswith("spiffe://"):
            try:
                sid = SpiffeId.parse(value)
            except ValueError:
                return None
            return sid if sid.trust_domain == trust_domain else None
    return None


class InboundGuard:
    """Middleware: refuse when the sidecar's own certificate expired (503), set the
    caller's identity headers, apply authorization (403), start a trace context."""

    def __init__(
        self,
        service: str,
        namespace: str,
        state: MeshState,
        stats: MeshStats,
        trust_domain: Callable[[], str],
        expired: Callable[[], bool],
    ) -> None:
        self.service = service
        self.label = f"{service}.{namespace}"  # metrics: services as service.namespace
        self.state = state
        self.stats = stats
        self.trust_domain = trust_domain
        self.expired = expired
        self._policies: tuple[AuthzPolicy, ...] = ()
        self._version = -1  # the state's authz_version they were taken at

    def policies(self) -> tuple[AuthzPolicy, ...]:
        """This service's authorization policies (recomputed when the state's change)."""
        state = self.state
        if self._version != state.authz_version:
            self._policies = tuple(p for p in state.authz.values() if p.to == self.service)
            self._version = state.authz_version
        return self._policies

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        start = time.monotonic()
        request = ctx.request
        if self.expired():
            ctx.response = error_response(
                503, "sidecar certificate expired: not serving inbound traffic", ctx.request_id
            )
            self.stats.record("inbound", UNKNOWN, self.label, 503, time.monotonic() - start)
            return
        headers = request.headers
        for name in IDENTITY_HEADERS:
            headers.remove(name)
        peer = peer_identity(request.tls, self.trust_domain())
        source = UNKNOWN
        if peer is not None:
            source = f"{peer.service}.{peer.namespace}"
            headers.set(SOURCE_SERVICE, peer.service)
            headers.set(SOURCE_NAMESPACE, peer.namespace)
            headers.set(SOURCE_IDENTITY, peer.uri)
            ctx.state["source_service"] = peer.service
        verdict = decide(
            self.policies(),
            self.state.defaults.get(self.service),
            self.service,
            peer,
            request.path,
            request.method,
        )
        if verdict == "deny":
            who = peer.uri if peer is not None else "a caller without a mesh identity"
            ctx.response = error_response(
                403, f"{who} may not call {request.method} {request.path}", ctx.request_id
            )
            self.stats.record("inbound", source, self.label, 403, time.monotonic() - start)
            return
        if "traceparent" not in headers:
            trace_id = int.from_bytes(secrets.token_bytes(16), "big") or 1
            span_id = int.from_bytes(secrets.token_bytes(8), "big") or 1
            headers.set("traceparent", format_traceparent(trace_id, span_id, False))
        record = self.stats.record
        await _counted(
            ctx,
            call_next,
            lambda status: record("inbound", source, self.label, status, time.monotonic() - start),
        )


class OutboundTag:
    """Middleware of the outbound routes (named after their destination): drop
    identity headers the app set (only the destination sidecar sets them, from the
    certificate) and count the call."""

    def __init__(self, label: str, stats: MeshStats) -> None:
        self.label = label  # this service as service.namespace (the metrics' source)
        self.stats = stats

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        start = time.monotonic()
        headers = ctx.request.headers
        for name in IDENTITY_HEADERS:
            headers.remove(name)
        route = ctx.route
        destination = route.name if route is not None else UNKNOWN
        record = self.stats.record
        await _counted(
            ctx,
            call_next,
            lambda status: record(
                "outbound", self.label, destination, status, time.monotonic() - start
            ),
        )


async def _counted(ctx: RequestContext, call_next: Next, record: Callable[[int], None]) -> None:
    """Run the rest of the chain, then ``record`` the status answered (500 when it
    raised, or set no response)."""
    status = 500
    try:
        await call_next()
        if ctx.response is not None:
            status = ctx.response.status
    finally:
        record(status)
