"""A deadline that moves often but fires rarely.

Keep-alive connections move their deadline on every request (head, body,
idle, upstream response). Re-scheduling a loop timer each time costs more
than the request's own work, so the deadline is a float moved by assignment
and one timer chases it: when the timer fires early it re-arms for the
remaining time; when it fires late enough it calls back once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    __slots__ = ("_at", "_callback", "_handle", "_loop", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the handle is due
        self._when = 0.0  # the deadline (loop time); 0 = none

    def set(self, delay_s: float) -> None:
        """Call back ``delay_s`` seconds from now (replacing any earlier deadline)."""
        when = self._loop.time() + delay_s
        self._when = when
        if self._handle is None or self._at > when:
            if self._handle is not None:
                self._handle.cancel()
            self._at = when
            self._handle = self._loop.call_at(when, self._fire)

    def clear(self) -> None:
        """No deadline (the timer, if any, will find nothing due)."""
        self._when = 0.0

    def cancel(self) -> None:
        """No deadline and no timer: for a connection that is gone."""
        self._when = 0.0
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        when = self._when
        if not when:
            return
        if self._loop.time() < when:
            self._at = when
            self._handle = self._loop.call_at(when, self._fire)
            return
        self._when = 0.0
        self._callback()
