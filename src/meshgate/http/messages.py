"""Request/response types shared by the server, the proxy and middleware.

Header names are kept lower-case ``str`` (latin-1 decoded, as on the wire);
bodies are async streams of ``bytes`` chunks so nothing is buffered whole
unless a middleware asks for it (``await body.read_all(limit)``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection, Iterable, Iterator
from operator import itemgetter
from random import getrandbits
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl

from mypy_extensions import mypyc_attr

from meshgate.http.errors import BodyTooLarge

if TYPE_CHECKING:
    from meshgate.http.tls import TlsInfo


class Headers:
    """Ordered multi-map of header fields with case-insensitive names."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] | dict[str, str] | None = None) -> None:
        if items is None:
            self._items: list[tuple[str, str]] = []
        elif isinstance(items, dict):
            self._items = [(k.lower(), v) for k, v in items.items()]
        else:
            self._items = [(k.lower(), v) for k, v in items]

    @classmethod
    def from_lower(cls, items: list[tuple[str, str]]) -> Headers:
        """Wrap a list whose names are already lower-case (no copy)."""
        # cls() rather than cls.__new__(cls): mypyc (the compiled build) cannot compile
        # a __new__ call on a class it compiles
        h = cls()
        h._items = items
        return h

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self._items:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self._items if k == name]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: str) -> None:
        self.set(name, value)

    def __delitem__(self, name: str) -> None:
        self.remove(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        name = name.lower()
        for k, _ in self._items:  # noqa: SIM110 - a loop, not any(genexpr): on every response
            if k == name:
                return True
        return False

    def set(self, name: str, value: str) -> None:
        """Replace every field called ``name`` with one field (in the first one's place)."""
        name = name.lower()
        items = self._items
        found = -1
        dupes = False
        for i, kv in enumerate(items):
            if kv[0] == name:
                if found < 0:
                    found = i
                else:
                    dupes = True
        if found < 0:
            items.append((name, value))
            return
        items[found] = (name, value)
        if dupes:
            self._items = items[: found + 1] + [kv for kv in items[found + 1 :] if kv[0] != name]

    def set_fields(
        self, fields: list[tuple[str, str]], names: Collection[str] | None = None
    ) -> None:
        """`set` each (lower-case name, value) pair, in one pass over the fields.

        ``names``: the set of the fields' names, when the caller has it at hand.
        """
        items = self._items
        if names is None:
            names = {name for name, _ in fields}
        for name, _ in items:
            if name in names:
                self._items = items = [kv for kv in items if kv[0] not in names]
                break
        items.extend(fields)

    def add(self, name: str, value: str) -> None:
        self._items.append((name.lower(), value))

    def remove(self, name: str) -> None:
        name = name.lower()
        self._items = [kv for kv in self._items if kv[0] != name]

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def raw(self) -> list[tuple[str, str]]:
        """The underlying list (do not keep it across awaits)."""
        return self._items

    def copy(self) -> Headers:
        return Headers.from_lower(list(self._items))

    def __iter__(self) -> Iterator[str]:
        # map, not a generator expression: mypyc (the compiled build) turns a returned
        # generator expression into a list, which is not an iterator
        return map(itemgetter(0), self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._items == other._items
        return NotImplemented

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


# Interpreted subclasses of these (other modules', plugins', tests') are allowed when
# this module is compiled (scripts/compile_hot.py); a no-op in pure Python.
@mypyc_attr(allow_interpreted_subclasses=True)
class Body:
    """An async stream of byte chunks; ``read()`` returns b"" at the end.

    ``trailers``: fields that came after the data (HTTP/2 trailers, e.g. gRPC's
    ``grpc-status``), set by the producer before the end; read them once ``read()``
    has returned b"". A body that wraps another passes them on.
    """

    __slots__ = ("length", "trailers")

    def __init__(self, length: int | None = None) -> None:
        self.length = length  # total size when known (Content-Length)
        self.trailers: Headers | None = None

    async def read(self) -> bytes:
        raise NotImplementedError

    def is_complete(self) -> bool:
        """True when every chunk is already buffered (read() will not wait)."""
        return False

    async def read_all(self, limit: int | None = None) -> bytes:
        """Read the rest of the body; raise `BodyTooLarge` past ``limit`` bytes."""
        parts = []
        size = 0
        while chunk := await self.read():
            size += len(chunk)
            if limit is not None and size > limit:
                await self.aclose()
                raise BodyTooLarge(limit)
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        """Give up on the rest of the body."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Chunks(self)


class _Chunks:
    """``async for chunk in body``: ``read()`` until b"". A class rather than an async
    generator, which mypyc (the compiled build) does not compile."""

    __slots__ = ("_body",)

    def __init__(self, body: Body) -> None:
        self._body = body

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._body.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk


HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
"""Fields that describe one connection, never forwarded (plus any ``proxy-*``)."""


@mypyc_attr(allow_interpreted_subclasses=True)
class BytesBody(Body):
    """A body that is already in memory."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes = b"") -> None:
        super().__init__(len(data))
        self._data: bytes | None = data

    async def read(self) -> bytes:
        return self.take()

    def take(self) -> bytes:
        """The data, without awaiting (later reads return b"")."""
        data, self._data = self._data, None
        return data or b""

    def is_complete(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._data = None


class Request:
    """A request as the gateway received it; middleware may edit it before the proxy."""

    __slots__ = (
        "body",
        "client_ip",
        "client_port",
        "headers",
        "host",
        "http_version",
        "method",
        "path",
        "query_string",
        "scheme",
        "target",
        "tls",
        "upgrade",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: Body,
        *,
        client_ip: str = "127.0.0.1",
        client_port: int = 0,
        http_version: str = "1.1",
        scheme: str = "http",
        host: str | None = None,
    ) -> None:
        self.method = method
        self.set_target(target)
        self.headers = headers
        self.body = body
        self.client_ip = client_ip
        self.client_port = client_port
        self.http_version = http_version
        self.scheme = scheme
        self.host = (headers.get("host") if host is None else host) or ""
        # The TLS session of an HTTPS request (client certificate, version; see
        # docs/tls.md); None over plain HTTP.
        self.tls: TlsInfo | None = None
        # "websocket" when the client asked to upgrade (see docs/websocket.md).
        self.upgrade: str | None = None

    def set_target(self, target: str) -> None:
        """Change what is forwarded: path plus query (``path`` and ``query_string`` follow)."""
        self.target = target
        q = target.find("?")
        if q == -1:
            self.path = target
            self.query_string = ""
        else:
            self.path = target[:q]
            self.query_string = target[q + 1 :]

    @property
    def query(self) -> dict[str, str]:
        """Query parameters (last value wins), decoded."""
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target}>"


@mypyc_attr(allow_interpreted_subclasses=True)
class Response:
    """Status, headers and a body (bytes or a stream)."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        headers: Headers | dict[str, str] | None = None,
        body: Body | bytes | str | None = None,
    ) -> None:
        self.status = status
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        if body is None:
            body = b""
        if isinstance(body, str):
            body = body.encode()
        self.body: Body = BytesBody(body) if isinstance(body, bytes) else body

    @classmethod
    def json(
        cls, status: int, data: Any, headers: Headers | dict[str, str] | None = None
    ) -> Response:
        resp = cls(status, headers, json.dumps(data, separators=(",", ":")).encode())
        resp.headers.set("content-type", "application/json")
        return resp

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


def new_request_id() -> str:
    """A random 128-bit id, hex encoded (not secret: no syscall per request)."""
    return f"{getrandbits(128):032x}"


class ErrorResponse(Response):
    """An answer the gateway made itself (no route, rate limited, upstream down...),
    as opposed to one from an upstream: a gRPC request gets it as a gRPC status."""

    __slots__ = ("message",)

    def __init__(
        self, status: int, message: str, request_id: str, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps({"error": message, "request_id": request_id}, separators=(",", ":"))
        super().__init__(status, headers, body)
        self.message = message
        self.headers.set("content-type", "application/json")
        self.headers.set("x-request-id", request_id)


def error_response(
    status: int, message: str, request_id: str, headers: dict[str, str] | None = None
) -> Response:
    """The gateway's error format: ``{"error": ..., "request_id": ...}``."""
    return ErrorResponse(status, message, request_id, headers)


def cookie_value(headers: Headers, name: str) -> str | None:
    """The value of cookie ``name`` from the request's Cookie header(s), if sent."""
    for line in headers.get_all("cookie"):
        for pair in line.split(";"):
            key, eq, value = pair.strip().partition("=")
            if eq and key == name:
                return value
    return None
