"""The gRPC helpers: which requests are gRPC, grpc-timeout, errors as gRPC statuses."""

from __future__ import annotations

import pytest

from meshgate.http.grpc import (
    STATUS_OF_HTTP,
    encode_message,
    error_as_grpc,
    frame_message,
    health_request,
    health_status,
    is_grpc,
    parse_timeout,
)
from meshgate.http.messages import BytesBody, Headers, Request, error_response


def request(content_type: str | None) -> Request:
    headers = Headers({"content-type": content_type} if content_type is not None else {})
    return Request("POST", "/pkg.Svc/Call", headers, BytesBody())


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/grpc", True),
        ("application/grpc+proto", True),
        ("application/grpc;charset=utf-8", True),
        ("application/grpc-web", False),
        ("application/grpc-web+proto", False),
        ("application/json", False),
        (None, False),
    ],
)
def test_is_grpc(content_type: str | None, expected: bool) -> None:
    assert is_grpc(request(content_type)) is expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1S", 1.0),
        ("100m", 0.1),
        ("2M", 120.0),
        ("1H", 3600.0),
        ("250000u", 0.25),
        ("5000000n", 0.005),
        (" 3S ", 3.0),
        ("99999999S", 99999999.0),
        ("123456789S", None),  # more than 8 digits
        ("10", None),  # no unit
        ("S", None),
        ("-1S", None),
        ("1.5S", None),
        ("1s", None),  # units are case-sensitive: s is not one
        ("", None),
    ],
)
def test_parse_timeout(value: str, seconds: float | None) -> None:
    parsed = parse_timeout(value)
    assert parsed == pytest.approx(seconds) if seconds is not None else parsed is None


def test_encode_message_percent_encodes_what_is_not_printable_ascii() -> None:
    assert encode_message("no route matches") == "no route matches"
    assert encode_message("100% done") == "100%25 done"
    assert encode_message("café\nnext") == "caf%C3%A9%0Anext"
    assert encode_message("a:b/c?d=e&f") == "a:b/c?d=e&f"


@pytest.mark.parametrize(
    ("status", "code"),
    [(404, 12), (401, 16), (403, 7), (429, 8), (502, 14), (503, 14), (504, 4), (500, 2)],
)
def test_errors_become_trailers_only_answers(status: int, code: int) -> None:
    err = error_response(status, "it went wrong", "rid-1", {"retry-after": "3"})
    resp = error_as_grpc(err.status, "it went wrong", err.headers)
    assert resp.status == 200
    assert resp.body.length == 0
    assert resp.headers.get("content-type") == "application/grpc"
    assert resp.headers.get("grpc-status") == str(code)
    assert resp.headers.get("grpc-message") == "it went wrong"
    assert resp.headers.get("x-request-id") == "rid-1"
    assert resp.headers.get("retry-after") == "3"
    assert resp.headers.get_all("content-type") == ["application/grpc"]
    assert STATUS_OF_HTTP.get(status, 2) == code


def test_health_request_encodes_the_service_name() -> None:
    assert health_request("") == b"\x00\x00\x00\x00\x00"  # proto3: empty string left out
    assert health_request("a.B") == b"\x00\x00\x00\x00\x05\x0a\x03a.B"
    long_name = "s" * 200  # a two-byte length varint
    assert health_request(long_name)[5:8] == b"\x0a\xc8\x01"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (frame_message(b"\x08\x01"), 1),  # SERVING
        (frame_message(b"\x08\x02"), 2),  # NOT_SERVING
        (frame_message(b""), 0),  # UNKNOWN: the default is left out
        (frame_message(b"\x12\x02hi\x08\x01"), 1),  # an unknown length-delimited field first
        (frame_message(b"\x10\x05\x08\x03"), 3),  # an unknown varint field first
        (b"\x01\x00\x00\x00\x02\x08\x01", None),  # compressed
        (b"\x00\x00\x00\x00\x03\x08\x01", None),  # length does not match
        (frame_message(b"\x08"), None),  # truncated varint
        (frame_message(b"\x0d\x00\x00\x00\x00"), None),  # a fixed32 field: not this message
        (b"", None),
    ],
)
def test_health_status(data: bytes, status: int | None) -> None:
    assert health_status(data) == status
