"""Tracing: W3C trace context in and out, OpenTelemetry spans, OTLP/HTTP export.

One `Tracing` per gateway app (built only when ``tracing.enabled``; importing this
module loads the OpenTelemetry SDK). It owns its own `TracerProvider` (never the
global one), with a `BatchSpanProcessor` whose thread exports over OTLP/HTTP: ending
a span only appends it to a bounded queue. Each recorded request gets a
`RequestTrace`: the SERVER span, and one CLIENT span per upstream attempt whose id
is the parent-id of the ``traceparent`` sent upstream.

Sampling is decided here, before the SDK is involved: a request whose caller sent a
valid ``traceparent`` follows its ``sampled`` flag; a new trace is recorded with
probability ``sample_rate`` (decided on a drawn trace id's low 64 bits, as the SDK's
``TraceIdRatioBased``; a recorded trace then gets its ids from the SDK, an unrecorded
one keeps the drawn id). Requests not recorded get an `UnsampledTrace`: trace
and span ids and a valid ``traceparent`` (flags 00) are propagated with no
OpenTelemetry object at all (the SDK's non-recording spans cost about 20 us per
request). See docs/tracing.md.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from meshgate import __version__
from meshgate.core.tracecontext import (
    format_traceparent,
    format_tracestate,
    parse_traceparent,
    parse_tracestate,
)

if TYPE_CHECKING:
    from meshgate.config.tracing import TracingConfig
    from meshgate.http.messages import Request
    from meshgate.pipeline.runtime import CompiledRoute
    from meshgate.upstream.cluster import UpstreamHost

log = logging.getLogger("meshgate.tracing")

# Methods the HTTP semantic conventions name; others are reported as "_OTHER".
_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)
_ERROR = Status(StatusCode.ERROR)
_LOW_64 = (1 << 64) - 1


class Tracing:
    """The tracer provider, its batch exporter and the per-request entry point."""

    def __init__(self, config: TracingConfig) -> None:
        self.config = config
        self._exporter = OTLPSpanExporter(
            endpoint=config.endpoint,
            headers=dict(config.headers),
            timeout=config.export_timeout_s,
        )
        self._processor = BatchSpanProcessor(
            self._exporter,
            max_queue_size=config.max_queue_size,
            schedule_delay_millis=config.schedule_delay_s * 1000,
            max_export_batch_size=config.max_export_batch_size,
            export_timeout_millis=config.export_timeout_s * 1000,
        )
        self._provider = TracerProvider(
            # Only requests `begin` decided to record reach the SDK: new roots are
            # always sampled there, remote parents followed as they say.
            sampler=ParentBased(ALWAYS_ON),
            resource=Resource.create({"service.name": config.service_name}),
            shutdown_on_exit=False,  # `close` does it, bounded
        )
        self._provider.add_span_processor(self._processor)
        self.tracer = self._provider.get_tracer("meshgate", __version__)
        self.closed = False
        self._random = random.Random()
        # New traces whose id's low 64 bits fall below this are recorded.
        self._sample_bound = round(config.sample_rate * (_LOW_64 + 1))

    def begin(self, request: Request) -> RequestTrace | UnsampledTrace:
        """Start the request's trace, as a child of the caller's ``traceparent``
        when it sent a valid one (its ``tracestate`` is then passed on), else as a
        new trace: a SERVER span when it is recorded, else an `UnsampledTrace`."""
        headers = request.headers
        parent = parse_traceparent(headers.get_all("traceparent"))
        context: Context | None = None
        tracestate: str | None = None
        if parent is None:
            trace_id = _nonzero(self._random, 128)
            if trace_id & _LOW_64 >= self._sample_bound:  # as TraceIdRatioBased decides
                return UnsampledTrace(trace_id, None, self._random)
        else:
            members = parse_tracestate(headers.get_all("tracestate"))
            state = TraceState()
            if members is not None:
                tracestate = format_tracestate(members)
                state = TraceState(members)
            if not parent.sampled:
                return UnsampledTrace(parent.trace_id, tracestate, self._random)
            remote = SpanContext(
                parent.trace_id,
                parent.parent_id,
                is_remote=True,
                trace_flags=TraceFlags(parent.flags),
                trace_state=state,
            )
            context = trace.set_span_in_context(NonRecordingSpan(remote))
        method = request.method
        span = self.tracer.start_span(method, context, SpanKind.SERVER)
        if span.is_recording():
            known = method in _KNOWN_METHODS
            span.set_attributes(
                {
                    "http.request.method": method if known else "_OTHER",
                    "url.path": request.path,
                    "url.scheme": request.scheme,
                    "client.address": request.client_ip,
                    "network.protocol.version": request.http_version,
                }
            )
            if not known:
                span.set_attribute("http.request.method_original", method)
            agent = headers.get("user-agent")
            if agent is not None:
                span.set_attribute("user_agent.original", agent)
        return RequestTrace(self.tracer, span, tracestate, method)

    def close(self) -> None:
        """Export the spans still queued and stop the export thread (blocks).

        Waits at most ``export_timeout_s``; then the exporter is shut down, which
        ends its retries, and whatever is still queued is lost (logged)."""
        if self.closed:
            return
        self.closed = True
        closer = threading.Thread(
            target=self._provider.shutdown, name="meshgate-tracing-close", daemon=True
        )
        closer.start()
        closer.join(self.config.export_timeout_s)
        if closer.is_alive():
            log.warning(
                "spans not exported within %g s of stopping (is %s reachable?): dropped",
                self.config.export_timeout_s,
                self.config.endpoint,
            )
            self._exporter.shutdown()  # type: ignore[no-untyped-call]  # unannotated in the SDK


class RequestTrace:
    """One request's spans and the trace headers its upstream attempts carry.

    ``upstream_traceparent`` is set by `start_attempt` for the attempt about to be
    sent; the proxy writes it, with ``tracestate``, into the upstream request head.
    """

    __slots__ = (
        "_attempt",
        "_context",
        "_tracer",
        "method",
        "span",
        "tracestate",
        "upstream_traceparent",
    )

    def __init__(
        self, tracer: trace.Tracer, span: Span, tracestate: str | None, method: str
    ) -> None:
        self._tracer = tracer
        self.span = span
        self.method = method
        self.tracestate = tracestate  # passed on upstream as received (validated)
        self._context = trace.set_span_in_context(span)  # parent of the attempt spans
        self._attempt: Span | None = None
        sc = span.get_span_context()
        self.upstream_traceparent = format_traceparent(
            sc.trace_id, sc.span_id, sc.trace_flags.sampled
        )

    @property
    def trace_id(self) -> str:
        """The trace id as 32 lower-case hex digits (access log)."""
        return f"{self.span.get_span_context().trace_id:032x}"

    def routed(self, route: CompiledRoute, request_id: str) -> None:
        """The request matched ``route``: the span is named ``METHOD template``."""
        span = self.span
        if not span.is_recording():
            return
        template = route_template(route)
        if template is not None:
            span.update_name(f"{self.method} {template}")
            span.set_attribute("http.route", template)
        span.set_attribute("meshgate.route", route.name)
        span.set_attribute("meshgate.request_id", request_id)

    def start_attempt(self, request: Request, host: UpstreamHost, upstream: str, n: int) -> None:
        """Start the CLIENT span of upstream attempt ``n`` (1 = first) on ``host``;
        its id becomes the parent-id of ``upstream_traceparent``."""
        span = self._tracer.start_span(self.method, self._context, SpanKind.CLIENT)
        self._attempt = span
        sc = span.get_span_context()
        self.upstream_traceparent = format_traceparent(
            sc.trace_id, sc.span_id, sc.trace_flags.sampled
        )
        if span.is_recording():
            method = self.method
            span.set_attributes(
                {
                    "http.request.method": method if method in _KNOWN_METHODS else "_OTHER",
                    "server.address": host.host,
                    "server.port": host.port,
                    "url.full": f"http://{host.key}{request.path}",
                    "meshgate.upstream": upstream,
                    "meshgate.attempt": n,
                }
            )
            if n > 1:
                span.set_attribute("http.request.resend_count", n - 1)

    def end_attempt(self, status: int, failure: str | None, error: Exception | None) -> None:
        """End the attempt span: ``failure`` (connect-failure, timeout, reset) or a
        local ``error`` (no upstream answer; ``status`` is then the gateway's own) is
        its error.type; else the upstream's ``status`` (4xx and 5xx are errors)."""
        span, self._attempt = self._attempt, None
        if span is None:
            return
        if span.is_recording():
            if failure is not None or error is not None:
                _set_error(span, failure or type(error).__name__)
            else:
                span.set_attribute("http.response.status_code", status)
                if status >= 400:
                    _set_error(span, str(status))
        span.end()

    def abort_attempt(self, exc: BaseException) -> None:
        """End the attempt span of an attempt interrupted by ``exc`` (cancelled)."""
        span, self._attempt = self._attempt, None
        if span is not None:
            if span.is_recording():
                _set_error(span, type(exc).__name__)
            span.end()

    def finish(self, status: int) -> None:
        """End the server span with the status answered (5xx are errors)."""
        span = self.span
        if span.is_recording():
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                _set_error(span, str(status))
        span.end()

    def abort(self, exc: BaseException) -> None:
        """End the spans of a request interrupted by ``exc`` (client gone: cancelled)."""
        self.abort_attempt(exc)
        span = self.span
        if span.is_recording():
            _set_error(span, type(exc).__name__)
        span.end()


def _nonzero(rng: random.Random, bits: int) -> int:
    """A random id of ``bits`` bits; W3C ids are never all zero."""
    while True:
        value = rng.getrandbits(bits)
        if value:
            return value


class UnsampledTrace:
    """A request whose trace is not recorded: its trace id, the caller's
    ``tracestate``, and a new span id per upstream attempt for the ``traceparent``
    (flags 00) sent upstream. Same interface as `RequestTrace`; recording calls do
    nothing."""

    __slots__ = ("_random", "_trace_id", "tracestate", "upstream_traceparent")

    def __init__(self, trace_id: int, tracestate: str | None, rng: random.Random) -> None:
        self._trace_id = trace_id
        self._random = rng
        self.tracestate = tracestate
        self.upstream_traceparent = ""  # set by each start_attempt

    @property
    def trace_id(self) -> str:
        return f"{self._trace_id:032x}"

    def routed(self, route: CompiledRoute, request_id: str) -> None:
        return None

    def start_attempt(self, request: Request, host: UpstreamHost, upstream: str, n: int) -> None:
        span_id = _nonzero(self._random, 64)
        self.upstream_traceparent = format_traceparent(self._trace_id, span_id, False)

    def end_attempt(self, status: int, failure: str | None, error: Exception | None) -> None:
        return None

    def abort_attempt(self, exc: BaseException) -> None:
        return None

    def finish(self, status: int) -> None:
        return None

    def abort(self, exc: BaseException) -> None:
        return None


def _set_error(span: Span, error_type: str) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(_ERROR)


def route_template(route: CompiledRoute) -> str | None:
    """``http.route``: the route's path pattern as the router holds it (a prefix ends
    in ``/*``), its regex, or None for a route that matches any path."""
    config = route.config
    if config.path is not None:
        return config.path
    if config.path_prefix is not None:
        return config.path_prefix.rstrip("/") + "/*"
    return config.path_regex
