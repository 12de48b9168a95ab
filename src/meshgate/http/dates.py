"""The ``Date`` field value of responses, formatted once per second."""

from __future__ import annotations

import time
from email.utils import formatdate


class DateCache:
    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = 0
        self._value = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True)
        return self._value


http_date = DateCache()
"""Shared by the HTTP/1.1 and HTTP/2 servers (one event loop per process)."""
