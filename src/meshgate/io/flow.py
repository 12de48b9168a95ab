"""Write flow control shared by the HTTP/1.1 and HTTP/2 protocols (client and
server side): the transport says when its buffer is above its high-water mark
(`pause_writing`) and back below the low one (`resume_writing`); writers await
one shared future meanwhile."""

from __future__ import annotations

import asyncio

from mypy_extensions import mypyc_attr


# Compiled in the mypyc build (scripts/compile_hot.py) with its HTTP/1.1 subclasses; the
# HTTP/2 protocols subclassing it stay interpreted.
@mypyc_attr(allow_interpreted_subclasses=True)
class WriteFlow(asyncio.Protocol):
    """Base of a protocol with a ``loop``; its ``__init__`` sets ``_write_paused``
    (False) and ``_drain_waiter`` (None)."""

    # loop is a slot here, not in the subclasses: in the compiled build an interpreted
    # subclass's own "loop" slot would hide the compiled class's attribute
    __slots__ = ("_drain_waiter", "_write_paused", "loop")

    loop: asyncio.AbstractEventLoop
    _write_paused: bool
    _drain_waiter: asyncio.Future[None] | None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        """Let the writers waiting for the buffer go (it drained, or the connection
        ended and they check for that)."""
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail_drain(self, exc: BaseException) -> None:
        """The connection is gone: the writers waiting for the buffer get ``exc``."""
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
            waiter.exception()  # retrieved here; the writers check `closed` too

    def _drain_future(self) -> asyncio.Future[None]:
        """The future the writers await until `resume_writing`."""
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = self.loop.create_future()
        return waiter
