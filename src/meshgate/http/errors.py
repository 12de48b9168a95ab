"""Errors of the HTTP layer, each carrying the status the client should see."""

from __future__ import annotations


class HTTPError(Exception):
    """Something the gateway answers with an error status."""

    status = 500
    reason = "internal error"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.reason)
        self.detail = detail or self.reason


class Refused(Exception):
    """A request the server refuses itself, before (or instead of) the app: the
    status and detail it answers (a malformed head, a limit, a timeout)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class BadRequest(HTTPError):
    status = 400
    reason = "bad request"


class BodyTooLarge(HTTPError):
    status = 413
    reason = "request body too large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


class BodyTimeout(HTTPError):
    status = 408
    reason = "request body timeout"


class ClientDisconnected(HTTPError):
    status = 499
    reason = "client closed the connection"


class UpstreamError(HTTPError):
    """The upstream could not give a usable response."""

    status = 502
    reason = "bad gateway"


class UpstreamConnectError(UpstreamError):
    status = 503
    reason = "upstream connect failed"


class UpstreamConnectTimeout(UpstreamConnectError):
    reason = "upstream connect timeout"


class UpstreamTlsError(UpstreamConnectError):
    """The TLS handshake failed (certificate not verified, name mismatch, no shared
    version): the upstream is there but not usable, hence 502 rather than 503."""

    status = 502
    reason = "upstream TLS handshake failed"


class UpstreamTimeout(UpstreamError):
    status = 504
    reason = "upstream response timeout"


class UpstreamReset(UpstreamError):
    reason = "upstream connection reset"


class UpstreamRefused(UpstreamReset):
    """An HTTP/2 upstream refused the stream (REFUSED_STREAM, or a GOAWAY that did not
    take it): it processed nothing of the request, which may be sent again."""

    reason = "upstream refused the stream"


class UpstreamBadResponse(UpstreamError):
    reason = "upstream sent an invalid response"


class BreakerOpen(HTTPError):
    """The upstream's circuit breaker is open: answered without contacting it."""

    status = 503
    reason = "circuit breaker open"


class Overflow(HTTPError):
    """A concurrency threshold of the upstream is reached (never an upstream failure)."""

    status = 503
    reason = "upstream overflow"

    def __init__(self, which: str) -> None:
        super().__init__(f"too many {which} to the upstream")
        self.which = which
