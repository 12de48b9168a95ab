"""An in-memory asyncio transport for driving a server protocol without sockets."""

from __future__ import annotations

import asyncio


class MemoryTransport(asyncio.Transport):
    """Keeps what the protocol writes in ``data``; closing only sets ``closed``."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 4321) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed
