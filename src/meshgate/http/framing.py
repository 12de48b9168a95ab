"""HTTP/1.1 message framing shared by the server and the upstream side."""

from __future__ import annotations

LAST_CHUNK = b"0\r\n\r\n"

# Chunk framing ("ffffffff;ext\r\n" ... "\r\n") allowed per chunk beyond a fixed allowance.
CHUNK_FRAMING_BYTES = 32


def frame_chunk(data: bytes) -> bytes:
    """One non-empty piece of a chunked body as it goes on the wire."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk(trailers: list[tuple[str, str]]) -> bytes:
    """The last chunk of a chunked body carrying ``trailers`` (fields with a line
    break, or not ASCII, are left out)."""
    fields = []
    for name, value in trailers:
        line = f"{name}: {value}\r\n"
        if line.count("\n") == 1 and line.count("\r") == 1 and line.isascii():
            fields.append(line)
    return f"0\r\n{''.join(fields)}\r\n".encode()


def takes_trailers(te_values: list[str]) -> bool:
    """Whether TE field values (RFC 9110 10.1.4) list ``trailers``."""
    return any(
        token.split(";", 1)[0].strip().lower() == "trailers"
        for value in te_values
        for token in value.split(",")
    )


def connection_tokens(value: str) -> set[str]:
    """The lower-cased names listed in a Connection field value."""
    return {t.strip().lower() for t in value.split(",")}


def framing_too_large(raw_bytes: int, body_bytes: int, chunks: int, allowance: int) -> bool:
    """Whether a chunked message spent more on framing and trailers than it may.

    ``raw_bytes`` read from the wire carried ``body_bytes`` of body in ``chunks``
    chunks; the rest is chunk framing and trailers, which the parser buffers
    whole, so it is bounded by ``allowance`` plus a little per chunk.
    """
    return raw_bytes - body_bytes > allowance + CHUNK_FRAMING_BYTES * chunks
