"""Tests of the streaming encoders and bodies (meshgate.http.compression)."""

from __future__ import annotations

import random
import zlib
from typing import Any

import brotli
import pytest
import zstandard

from meshgate.http import compression
from meshgate.http.compression import SLICE_BYTES, CompressedBody, CompressionFailed, HeadBody
from meshgate.http.messages import Body


class Chunks(Body):
    """A body yielding given chunks; records whether it was closed."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__(None)
        self.chunks = list(chunks)
        self.closed = False

    async def read(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    async def aclose(self) -> None:
        self.closed = True
        self.chunks = []


def decoder(coding: str) -> Any:
    if coding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if coding == "br":
        return brotli.Decompressor()
    return zstandard.ZstdDecompressor().decompressobj()


def decode(d: Any, coding: str, data: bytes) -> bytes:
    if coding != "br":
        out: bytes = d.decompress(data)
        return out
    # brotli's Decompressor hands out at most ~32 KiB of a flushed (unfinished)
    # stream per call: ask again with no input until it has nothing more.
    parts = [d.process(data)]
    while more := d.process(b""):
        parts.append(more)
    return b"".join(parts)


def sample(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [b"lorem", b"ipsum", b"dolor", b"sit", b"amet", bytes(range(32, 48))]
    return b" ".join(rng.choices(words, k=n // 4 + 1))[:n]


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
async def test_each_read_decodes_to_what_has_been_read(coding: str) -> None:
    parts = [sample(n, i) for i, n in enumerate([10, 5000, 1, 40000, 300, 70000])]
    source = Chunks(parts)
    body = CompressedBody(source, coding, 5)
    assert body.length is None
    d = decoder(coding)
    for part in parts:
        out = await body.read()
        assert out
        assert decode(d, coding, out) == part  # flushed: nothing held back
    tail = await body.read()
    assert decode(d, coding, tail) == b""
    if coding == "gzip":
        assert d.eof
    assert await body.read() == b""


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
async def test_a_large_chunk_is_compressed_slice_by_slice(coding: str) -> None:
    data = sample(5 * SLICE_BYTES + 123, 9)
    body = CompressedBody(Chunks([data]), coding, 1)
    d = decoder(coding)
    decoded = b""
    reads = 0
    while out := await body.read():
        reads += 1
        piece = decode(d, coding, out)
        assert len(piece) <= SLICE_BYTES
        decoded += piece
    assert decoded == data
    assert reads == 7  # six slices and the end of the stream


class Broken:
    def __init__(self, level: int) -> None:
        pass

    def compress(self, data: bytes | memoryview) -> bytes:
        raise zlib.error("boom")

    def finish(self) -> bytes:
        return b""


async def test_encoder_failure_closes_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(compression.ENCODERS, "gzip", Broken)
    source = Chunks([b"a" * 100, b"b" * 100])
    body = CompressedBody(source, "gzip", 6)
    with pytest.raises(CompressionFailed, match="gzip compression failed: boom"):
        await body.read()
    assert source.closed
    assert await body.read() == b""


async def test_aclose_gives_up_on_the_source() -> None:
    source = Chunks([b"a" * 100, b"b" * 100])
    body = CompressedBody(source, "br", 4)
    assert await body.read()
    await body.aclose()
    assert source.closed
    assert await body.read() == b""


async def test_head_body_is_empty_of_unknown_length() -> None:
    source = Chunks([])
    body = HeadBody(source)
    assert body.length is None
    assert body.is_complete()
    assert await body.read() == b""
    assert source.closed
