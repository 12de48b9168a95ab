"""gRPC over HTTP/2, as a proxy sees it (sans-IO): which requests are gRPC, their
``grpc-timeout``, the gateway's own errors as gRPC statuses, and the two messages
of the standard health check (grpc.health.v1), encoded by hand: one string field
out, one enum field back, no protobuf library needed.

A gRPC server answers HTTP 200 and puts the call's status in trailers
(``grpc-status``, ``grpc-message``), or, with no message to send, in the head
alone (a *trailers-only* response). A gRPC client reads a bare HTTP error (a 503
from the gateway) as a transport failure with a made-up status and no message,
so the gateway answers its own errors to gRPC requests as trailers-only
responses carrying the status that means the same, as Envoy does.
"""

from __future__ import annotations

from urllib.parse import quote

from meshgate.http.messages import Headers, Request, Response

# gRPC status codes (grpc/doc/statuscodes.md).
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

# The gRPC status of a gateway-made HTTP error (Envoy's httpToGrpcStatus, except
# 429: RESOURCE_EXHAUSTED, the status of a rate limit, where Envoy says UNAVAILABLE).
STATUS_OF_HTTP: dict[int, int] = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    405: UNIMPLEMENTED,
    408: DEADLINE_EXCEEDED,
    413: RESOURCE_EXHAUSTED,
    429: RESOURCE_EXHAUSTED,
    431: RESOURCE_EXHAUSTED,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: DEADLINE_EXCEEDED,
}

# grpc-timeout units (the gRPC over HTTP/2 spec: at most 8 digits, then a unit).
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}

# Fields of the gateway's JSON error that a trailers-only answer does not carry.
_NOT_KEPT = frozenset({"content-type", "content-length"})


def is_grpc(request: Request) -> bool:
    """A gRPC call: ``content-type: application/grpc`` (or ``application/grpc+proto``
    and the like; not gRPC-Web, which is another protocol)."""
    ctype = request.headers.get("content-type")
    return (
        ctype is not None
        and ctype.startswith("application/grpc")
        and not ctype.startswith("application/grpc-web")
    )


def parse_timeout(value: str) -> float | None:
    """Seconds of a ``grpc-timeout`` value such as ``"100m"`` or ``"5S"``; None when
    it is not one."""
    value = value.strip()
    unit = _UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


def encode_message(message: str) -> str:
    """A ``grpc-message`` value: UTF-8, percent-encoded outside printable ASCII and
    for ``%`` itself."""
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def error_as_grpc(status: int, message: str, headers: Headers) -> Response:
    """A trailers-only gRPC answer in place of the gateway's HTTP error ``status``
    (``headers``: the error's fields; e.g. ``retry-after`` and ``x-request-id`` stay)."""
    fields = [(n, v) for n, v in headers.raw() if n not in _NOT_KEPT]
    fields.append(("content-type", "application/grpc"))
    fields.append(("grpc-status", str(STATUS_OF_HTTP.get(status, UNKNOWN))))
    fields.append(("grpc-message", encode_message(message)))
    return Response(200, Headers.from_lower(fields))


HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
SERVING = 1  # HealthCheckResponse.ServingStatus


def frame_message(message: bytes) -> bytes:
    """One gRPC message on the wire: uncompressed flag, 4-byte length, the bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def health_request(service: str) -> bytes:
    """A framed ``HealthCheckRequest{service}`` ("" asks about the server as a whole)."""
    name = service.encode()
    return frame_message(b"\x0a" + _varint(len(name)) + name if name else b"")


def health_status(data: bytes) -> int | None:
    """The ``status`` of the framed ``HealthCheckResponse`` in ``data`` (0, UNKNOWN,
    when the field is absent: proto3 leaves defaults out); None when ``data`` is not
    one uncompressed message of that shape."""
    if len(data) < 5 or data[0] != 0 or int.from_bytes(data[1:5], "big") != len(data) - 5:
        return None
    pos, end, status = 5, len(data), 0
    while pos < end:
        key, pos = _read_varint(data, pos)
        if key is None:
            return None
        wire_type = key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
            if value is None:
                return None
            if key >> 3 == 1:
                status = value
        elif wire_type == 2:
            size, pos = _read_varint(data, pos)
            if size is None or pos + size > end:
                return None
            pos += size
        else:
            return None
    return status


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int | None, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None, pos
