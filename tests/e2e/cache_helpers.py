"""An origin server for the cache e2e tests, and gateway configs caching its answers.

`origin` is a `ControlledUpstream` behaviour whose answer is chosen by the query
string, so each test picks its caching headers by URL:

``cc=``    Cache-Control        ``etag=``   ETag (answers 304 to a matching If-None-Match)
``lm=``    Last-Modified        ``vary=``   Vary
``cookie=`` Set-Cookie          ``expires_in=SEC``  Expires, SEC seconds from now
``size=N`` a body of N bytes (else ``<path> #<n>``, n counting that path's requests)

(``status=`` and ``delay=`` are the `ControlledUpstream`'s own.) A HEAD request
gets the head only.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

from tests.e2e.resilience_helpers import ControlledUpstream, Reply, Seen, upstream_cfg


class Origin(ControlledUpstream):
    """Counts requests per path; answers as the module docstring says."""

    __test__ = False

    def __init__(self, name: str = "origin") -> None:
        super().__init__(name, self._answer)
        self.per_path: dict[str, int] = {}

    def count_of(self, path: str) -> int:
        return self.per_path.get(path, 0)

    def seen(self, path: str) -> list[Seen]:
        return [s for s in self.requests if s.path == path]

    def _answer(self, seen: Seen, _n: int) -> Reply:
        q = seen.query
        n = self.per_path.get(seen.path, 0) + 1
        self.per_path[seen.path] = n
        headers: list[tuple[str, str]] = []
        etag = q.get("etag")
        if "cc" in q:
            headers.append(("Cache-Control", q["cc"]))
        if etag is not None:
            headers.append(("ETag", etag))
        if "lm" in q:
            headers.append(("Last-Modified", q["lm"]))
        if "vary" in q:
            headers.append(("Vary", q["vary"]))
        if "cookie" in q:
            headers.append(("Set-Cookie", q["cookie"]))
        if "expires_in" in q:
            expires = formatdate(time.time() + float(q["expires_in"]), usegmt=True)
            headers.append(("Expires", expires))
        if etag is not None and seen.headers.get("if-none-match") == etag:
            return Reply(304, headers=tuple(headers), body=b"")
        if "size" in q:
            body = b"x" * int(q["size"])
        else:
            body = f"{seen.path} #{n}".encode()
            if "vary" in q:
                body += f" {q['vary']}={seen.headers.get(q['vary'].lower())}".encode()
        headers.append(("Content-Type", "text/plain"))
        return Reply(200, headers=tuple(headers), body=b"" if seen.method == "HEAD" else body)


def cache_config(port: int, cache: dict[str, Any] | None = None, **route: Any) -> dict[str, Any]:
    """A gateway config: every path cached by route 'cached' (retries off, so an
    upstream error is one request), forwarded to the origin on ``port``."""
    cfg: dict[str, Any] = {
        "listener": {"host": "127.0.0.1", "port": 0, "idle_timeout_s": 10},
        "timeout_s": 5,
        "drain_timeout_s": 1,
        "upstreams": [upstream_cfg(port, name="origin")],
        "routes": [
            {
                "name": "cached",
                "path": "/*",
                "upstream": "origin",
                "retry": {"max_retries": 0},
                "cache": cache if cache is not None else {},
                **route,
            }
        ],
    }
    return cfg
