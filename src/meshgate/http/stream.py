"""A body stream fed by a protocol and read by one consumer, with back-pressure.

The producer (a connection's ``data_received``) calls `feed`; when more than
``high_water`` bytes wait unread, ``pause()`` is called (it pauses reading
the socket); once the consumer has taken them, ``resume()`` is called.
Memory per stream is therefore bounded by ``high_water`` plus one socket read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from meshgate.http.errors import HTTPError
from meshgate.http.messages import Body

HIGH_WATER_BYTES = 256 * 1024


def _noop() -> None:
    return None


class StreamBody(Body):
    __slots__ = (
        "_chunks",
        "_done",
        "_eof",
        "_exc",
        "_high",
        "_on_abandon",
        "_on_first_read",
        "_pause",
        "_paused",
        "_resume",
        "_size",
        "_started",
        "_waiter",
        "received",
    )

    def __init__(
        self,
        length: int | None,
        pause: Callable[[], None] = _noop,
        resume: Callable[[], None] = _noop,
        *,
        high_water: int = HIGH_WATER_BYTES,
        on_abandon: Callable[[], None] = _noop,
    ) -> None:
        super().__init__(length)
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._done = False  # consumer has seen the end (or gave up)
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._pause = pause
        self._resume = resume
        self._paused = False
        self._high = high_water
        self._on_abandon = on_abandon
        self._on_first_read: Callable[[], None] | None = None
        self._started = False
        self.received = 0  # bytes fed so far

    # producer side -------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self._done:
            return
        self._chunks.append(data)
        self._size += len(data)
        self.received += len(data)
        if self._size > self._high and not self._paused:
            self._paused = True
            self._pause()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        """End the stream with an error the consumer will see on its next read."""
        if self._eof or self._exc is not None:
            return
        self._exc = exc
        self._wake()

    def on_first_read(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once, when the consumer first asks for data."""
        self._on_first_read = callback

    @property
    def error(self) -> HTTPError | None:
        """The HTTP error the stream failed with, if any."""
        return self._exc if isinstance(self._exc, HTTPError) else None

    @property
    def at_eof(self) -> bool:
        return self._eof

    @property
    def consumed(self) -> bool:
        """The consumer read to the end (or gave up)."""
        return self._done

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # consumer side -------------------------------------------------------
    def is_complete(self) -> bool:
        return self._eof and self._exc is None

    def take_all(self) -> bytes:
        """Everything, when `is_complete` (no await needed); marks the body consumed."""
        assert self._eof and self._exc is None and self._on_first_read is None
        chunks = self._chunks
        self._chunks = []
        self._size = 0
        self._done = True
        if self._paused:
            self._paused = False
            self._resume()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @property
    def being_read(self) -> bool:
        """A consumer has started reading and has not given up."""
        return self._started and not self._done

    async def read(self) -> bytes:
        self._started = True
        if self._on_first_read is not None:
            callback, self._on_first_read = self._on_first_read, None
            callback()
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self._eof or self._done:
                self._done = True
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._size = 0
        if self._paused:
            self._paused = False
            self._resume()
        return data

    async def aclose(self) -> None:
        """Drop what is buffered; stop the producer if not at the end."""
        if self._done:
            return
        self._done = True
        self._chunks = []
        self._size = 0
        if not self._eof:
            self._on_abandon()
