"""Access log: one JSON line per request, written by a background thread.

The request path fills an `AccessEntry` (a few attribute assignments); once the
response is sent `AccessLog.emit` formats its line (about 2 µs) and appends it to a
bounded deque. The writer thread wakes every ``FLUSH_INTERVAL_S`` (or when the deque
is half full) and writes each batch with one ``write``. A full deque drops the line
and counts it (`AccessLog.dropped`) instead of blocking the event loop. See
docs/access-log.md.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from json.encoder import encode_basestring_ascii as _str
from typing import TYPE_CHECKING, Protocol

from meshgate.config.models import ACCESS_LOG_FIELDS
from meshgate.http.stream import StreamBody

if TYPE_CHECKING:
    from meshgate.config.models import AccessLogConfig
    from meshgate.http.messages import Request, Response
    from meshgate.observability.tracing import RequestTrace, UnsampledTrace
    from meshgate.pipeline.context import RequestContext

log = logging.getLogger("meshgate.accesslog")

# Fields given to the line template as numbers (formatted by `%`), or as text that
# needs no JSON escaping (a method token, the peer's IP address); the others as JSON.
_SPECS = {
    "method": '"%s"',
    "client_ip": '"%s"',
    "protocol": '"HTTP/%s"',
    "status": "%d",
    "bytes_in": "%d",
    "bytes_out": "%d",
    "duration_ms": "%.3f",
    "attempts": "%d",
}

FLUSH_INTERVAL_S = 0.05
CLOSE_TIMEOUT_S = 5.0


class AccessEntry:
    """What one request leaves for its log line; filled by the server and the app."""

    __slots__ = (
        "aborted",
        "body",
        "bytes_out",
        "client_ip",
        "ctx",
        "end",
        "method",
        "path",
        "request_id",
        "route",
        "start",
        "status",
        "trace",
        "version",
    )

    def __init__(self, request: Request) -> None:
        self.start = time.monotonic()
        self.method = request.method
        self.path = request.path  # as received (before any rewrite), without the query
        self.version = request.http_version  # "1.1", "1.0" or "2"
        self.client_ip = request.client_ip
        self.body = request.body  # the body as received (bytes_in), even if replaced later
        self.ctx: RequestContext | None = None  # set by the app once a route matched
        self.route: str | None = None  # set by the app when no ctx exists (404, preflight)
        self.request_id: str | None = None  # likewise
        self.trace: RequestTrace | UnsampledTrace | None = None  # set by the app when tracing is on
        self.status = 0
        self.bytes_out = 0
        self.end = 0.0
        self.aborted = False


class AccessLog:
    """Bounded in-memory queue of entries plus the thread that writes them."""

    def __init__(self, config: AccessLogConfig) -> None:
        self.config = config
        self.fields = tuple(config.fields)
        self.capacity = config.buffer_lines
        self._half = max(1, config.buffer_lines // 2)
        self.dropped = 0  # entries not logged because the queue was full
        self.written = 0  # lines written
        self.closed = False
        self._queue: deque[str] = deque()
        self._wake = threading.Event()
        self._fd: int | None = None
        if config.path is not None:  # OSError here: the caller decides
            self._fd = os.open(config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # The line as one %-template over the configured fields, in their order, and
        # which of the values `_line` computes fill it.
        self._template = "{" + ",".join(f'"{n}":{_SPECS.get(n, "%s")}' for n in self.fields)
        self._pick = [ACCESS_LOG_FIELDS.index(name) for name in self.fields]
        self._all = self._pick == list(range(len(ACCESS_LOG_FIELDS)))
        self._second = -1
        self._second_text = ""
        self._ms = -1
        self._ms_text = ""
        self._write_failed = False
        self._thread = threading.Thread(target=self._run, name="meshgate-accesslog", daemon=True)
        self._thread.start()

    # --- event loop side --------------------------------------------------------
    def emit(self, entry: AccessEntry) -> None:
        """Format the finished entry's line and queue it; never blocks (a full queue
        drops the line). The line is built here, not in the writer thread: that keeps
        requests from living on in the queue and the thread from holding the GIL."""
        queue = self._queue
        n = len(queue)
        if n >= self.capacity or self.closed:
            self.dropped += 1
            return
        entry.end = time.monotonic()
        try:
            line = self._line(entry, time.time() - entry.end)
        except Exception:  # a bad value must not break the request path
            log.exception("access log line could not be built")
            return
        queue.append(line)
        if n + 1 == self._half:
            self._wake.set()

    def close(self) -> None:
        """Write what is queued, then stop the thread and close the file (blocks)."""
        if self.closed:
            return
        self.closed = True
        self._wake.set()
        self._thread.join(CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            log.warning("access log writer did not finish within %g s", CLOSE_TIMEOUT_S)
        elif self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- writer thread -------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            stopping = self.closed
            self._flush()
            if stopping:
                self._flush()
                return

    def _flush(self) -> None:
        queue = self._queue
        lines: list[str] = []
        pop = queue.popleft
        while queue:
            lines.append(pop())  # only this thread pops: never empty here
        if lines:
            self._write("".join(lines).encode("utf-8", "replace"))
            self.written += len(lines)

    def _write(self, data: bytes) -> None:
        try:
            if self._fd is None:
                out = sys.stdout
                out.write(data.decode("utf-8"))
                out.flush()
                return
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except (OSError, ValueError) as exc:
            if not self._write_failed:
                log.error("access log write failed: %s", exc)
            self._write_failed = True
            return
        self._write_failed = False

    def _time(self, mono: float, offset: float) -> str:
        """The quoted UTC time of ``mono`` (a monotonic reading; ``offset`` turns it
        into wall time), to the millisecond; the text is reused within a millisecond."""
        ms = int((mono + offset) * 1000)
        if ms != self._ms:
            self._ms = ms
            second = ms // 1000
            if second != self._second:
                self._second = second
                self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._ms_text = f'"{self._second_text}.{ms % 1000:03d}Z"'
        return self._ms_text

    def _line(self, e: AccessEntry, offset: float) -> str:
        """One JSON line; values are formatted by hand (strings escaped by the json
        module's C escaper), about 3 times faster than encoding a dict."""
        ctx = e.ctx
        body = e.body
        upstream = upstream_ms = "null"
        if ctx is not None:
            route = _str(ctx.route.name) if ctx.route is not None else "null"
            request_id = _str(ctx.request_id)
            attempts = ctx.attempts
            if ctx.upstream_host is not None:
                upstream = _str(ctx.upstream_host)
            if ctx.upstream_s is not None:
                upstream_ms = "%.3f" % (ctx.upstream_s * 1000)
        else:
            route = "null" if e.route is None else _str(e.route)
            request_id = "null" if e.request_id is None else _str(e.request_id)
            attempts = 0
        received = body.received if isinstance(body, StreamBody) else (body.length or 0)
        values = (
            self._time(e.start, offset),
            request_id,
            e.client_ip,
            e.method,
            _str(e.path),
            e.version,
            route,
            e.status,
            received,
            e.bytes_out,
            (e.end - e.start) * 1000,
            upstream,
            upstream_ms,
            attempts,
            "null" if e.trace is None else f'"{e.trace.trace_id}"',
        )
        line = self._template % (values if self._all else tuple(values[i] for i in self._pick))
        return line + (',"aborted":true}\n' if e.aborted else "}\n")


def open_access_log(config: AccessLogConfig) -> AccessLog | None:
    """The running access log, or None when disabled or its file cannot be opened
    (logged; the gateway serves without it)."""
    if not config.enabled:
        return None
    try:
        return AccessLog(config)
    except OSError as exc:
        log.error("access log not written: cannot open %s: %s", config.path, exc.strerror or exc)
        return None


class LoggingApp(Protocol):
    """An app the server feeds access log entries to (`GatewayApp`)."""

    access_log: AccessLog | None

    async def __call__(self, request: Request, entry: AccessEntry | None = None) -> Response: ...

    async def aclose(self) -> None: ...
