"""A real OTLP/HTTP trace receiver for the tracing e2e tests.

`OtlpReceiver` is a small keep-alive HTTP/1.1 server on plain asyncio streams that
accepts ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest`` body,
decodes it and answers ``200`` with an empty ``ExportTraceServiceResponse``; any
other request gets 404. Every span received is kept as a `ReceivedSpan`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SERVER = Span.SpanKind.SPAN_KIND_SERVER
CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
ERROR = Status.StatusCode.STATUS_CODE_ERROR
UNSET = Status.StatusCode.STATUS_CODE_UNSET


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


def _attrs(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kv: KeyValue
    for kv in items:
        out[kv.key] = _value(kv.value)
    return out


@dataclass
class ReceivedSpan:
    """One exported span, ids as lower-case hex ("" for no parent)."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    trace_state: str
    attributes: dict[str, Any]
    status: int
    resource: dict[str, Any]
    start_ns: int
    end_ns: int


class OtlpReceiver:
    __test__ = False

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.exports = 0  # POST /v1/traces requests decoded
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    async def start(self) -> OtlpReceiver:
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

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def children_of(self, span: ReceivedSpan) -> list[ReceivedSpan]:
        """The spans whose parent is ``span``, by start time."""
        found = [s for s in self.spans if s.parent_id == span.span_id]
        return sorted(found, key=lambda s: s.start_ns)

    def servers(self) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.kind == SERVER]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if method == "POST" and target == "/v1/traces":
                    self._record(ExportTraceServiceRequest.FromString(body))
                    status, payload = 200, ExportTraceServiceResponse().SerializeToString()
                else:
                    status, payload = 404, b""
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/x-protobuf\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except asyncio.CancelledError:
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
            self._tasks.discard(task)

    def _record(self, request: ExportTraceServiceRequest) -> None:
        self.exports += 1
        for rs in request.resource_spans:
            resource = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self.spans.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            trace_state=span.trace_state,
                            attributes=_attrs(span.attributes),
                            status=span.status.code,
                            resource=resource,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                        )
                    )
