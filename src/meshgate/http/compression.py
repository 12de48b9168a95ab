"""Streaming content-coding encoders and a body that compresses as it is read.

A body that has already arrived whole is compressed at once (`compress_whole`)
and keeps a length; any other is wrapped in a `CompressedBody`.

`CompressedBody` pulls a chunk from the body it wraps, compresses it and
flushes the encoder, so each chunk the upstream sends reaches the client as
soon as it arrives (a slow stream stays progressive) and nothing is held
back: memory is the wrapped body's own buffer plus one slice of input and
its output. Large slices are compressed in a worker thread (zlib, brotli and
zstandard release the GIL), so the event loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import Protocol

import brotli
import zstandard

from meshgate.http.errors import HTTPError
from meshgate.http.messages import Body

SLICE_BYTES = 128 * 1024  # at most this much input per encoder call
THREAD_MIN_BYTES = 32 * 1024  # slices this large are compressed off the event loop
BROTLI_WINDOW_BITS = 19  # 512 KiB window per stream (ngx_brotli's default), not brotli's 4 MiB


class Encoder(Protocol):
    def compress(self, data: bytes | memoryview) -> bytes:
        """Compressed ``data``, flushed: the client can decode all of it now."""
        ...

    def finish(self) -> bytes:
        """The end of the compressed stream."""
        ...


class GzipEncoder:
    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip wrapper

    def compress(self, data: bytes | memoryview) -> bytes:
        z = self._z
        return z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class BrotliEncoder:
    __slots__ = ("_b",)

    def __init__(self, quality: int) -> None:
        self._b = brotli.Compressor(quality=quality, lgwin=BROTLI_WINDOW_BITS)

    def compress(self, data: bytes | memoryview) -> bytes:
        b = self._b
        out: bytes = b.process(data) + b.flush()
        return out

    def finish(self) -> bytes:
        out: bytes = self._b.finish()
        return out


class ZstdEncoder:
    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        # A compressor per response: a ZstdCompressor runs one operation at a time.
        self._z = zstandard.ZstdCompressor(level=level).compressobj()

    def compress(self, data: bytes | memoryview) -> bytes:
        z = self._z
        out: bytes = z.compress(data) + z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return out

    def finish(self) -> bytes:
        out: bytes = self._z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        return out


ENCODERS: dict[str, Callable[[int], Encoder]] = {
    "gzip": GzipEncoder,
    "br": BrotliEncoder,
    "zstd": ZstdEncoder,
}


class CompressionFailed(HTTPError):
    """An encoder failed. Mid-stream the response is cut off (its head is already
    out); on a body compressed at once the stage sends it uncompressed instead."""

    status = 500
    reason = "response compression failed"


async def compress_whole(data: bytes, coding: str, level: int) -> bytes:
    """All of ``data`` (a body already in memory) as one finished stream."""
    encoder = ENCODERS[coding](level)

    def run() -> bytes:
        return encoder.compress(data) + encoder.finish()

    try:
        if len(data) >= THREAD_MIN_BYTES:
            return await asyncio.to_thread(run)
        return run()
    except (zlib.error, brotli.error, zstandard.ZstdError, MemoryError) as exc:
        raise CompressionFailed(f"{coding} compression failed: {exc}") from exc


class CompressedBody(Body):
    """``source`` compressed as it is read; the length is unknown (sent chunked)."""

    __slots__ = ("_coding", "_done", "_encoder", "_offset", "_pending", "_source")

    def __init__(self, source: Body, coding: str, level: int) -> None:
        super().__init__(None)
        self._source = source
        self._coding = coding
        self._encoder = ENCODERS[coding](level)
        self._pending: bytes = b""  # input read from the source, not yet compressed
        self._offset = 0
        self._done = False

    async def read(self) -> bytes:
        while not self._done:
            pending = self._pending
            if self._offset >= len(pending):
                chunk = await self._source.read()
                if not chunk:
                    self._done = True
                    return await self._encode(self._encoder.finish)
                self._pending = pending = chunk
                self._offset = 0
            start = self._offset
            end = min(start + SLICE_BYTES, len(pending))
            self._offset = end
            whole = start == 0 and end == len(pending)
            piece = pending if whole else memoryview(pending)[start:end]
            out = await self._encode(self._encoder.compress, piece)
            if out:
                return out
        return b""

    async def _encode(
        self, step: Callable[..., bytes], piece: bytes | memoryview | None = None
    ) -> bytes:
        args = () if piece is None else (piece,)
        try:
            if piece is not None and len(piece) >= THREAD_MIN_BYTES:
                return await asyncio.to_thread(step, *args)
            return step(*args)
        except (zlib.error, brotli.error, zstandard.ZstdError, MemoryError) as exc:
            await self.aclose()
            raise CompressionFailed(f"{self._coding} compression failed: {exc}") from exc

    async def aclose(self) -> None:
        """Stop: drop what is pending and give up on the rest of the source.

        The encoder is not touched again (a worker thread may still be using it
        when the read was cancelled)."""
        self._done = True
        self._pending = b""
        self._offset = 0
        await self._source.aclose()


class HeadBody(Body):
    """No body, of unknown length: a HEAD answer for what a GET would send compressed
    (no Content-Length), closing the upstream's (empty) body when done."""

    __slots__ = ("_source",)

    def __init__(self, source: Body) -> None:
        super().__init__(None)
        self._source = source

    async def read(self) -> bytes:
        await self._source.aclose()
        return b""

    def is_complete(self) -> bool:
        return True

    async def aclose(self) -> None:
        await self._source.aclose()
