"""HTTP/1.1 framing helpers: the last chunk with trailers, and TE: trailers."""

from __future__ import annotations

import pytest

from meshgate.http.framing import last_chunk, takes_trailers


def test_last_chunk_carries_the_trailers() -> None:
    assert last_chunk([("grpc-status", "0"), ("x-sum", "abc")]) == (
        b"0\r\ngrpc-status: 0\r\nx-sum: abc\r\n\r\n"
    )
    assert last_chunk([]) == b"0\r\n\r\n"


def test_last_chunk_leaves_out_fields_that_would_break_the_framing() -> None:
    fields = [("a", "1\r\nx: injected"), ("b", "caf\u00e9"), ("c", "ok")]
    assert last_chunk(fields) == b"0\r\nc: ok\r\n\r\n"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["trailers"], True),
        (["gzip, trailers"], True),
        (["Trailers"], True),
        (["gzip;q=0.5", "trailers;q=1"], True),
        (["gzip"], False),
        ([], False),
        (["trailersx"], False),
    ],
)
def test_takes_trailers(values: list[str], expected: bool) -> None:
    assert takes_trailers(values) is expected
