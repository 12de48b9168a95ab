"""Response cache decisions (sans-IO): what to cache, under which key, for how long.

A `CachePolicy` (one per route) says whether a request may be answered from the
cache (`request_cacheable`, `request_revalidates`), builds its key (`key`, and
`vary_key` for the variants a response's `Vary` asks for), whether a response
may be stored (`storable`) and how long it stays fresh (`freshness`, RFC 9111
with the stale-while-revalidate / stale-if-error extensions of RFC 5861).
`not_modified` answers a client's conditional request from a stored entry and
`revalidation_headers` makes the conditional request that revalidates one with
the upstream. A stored response is a `StoredResponse` (a `VaryIndex` under
the key of a response with `Vary`), `refreshed` by a 304, and turned into
bytes for a shared store by `encode_entry` / `decode_entry`. `LruBytes` stores
entries in memory within a byte budget and `SingleFlight` keeps the books of
the fills in progress, so that concurrent misses for one key cause one
upstream request.

Header fields are `(name, value)` pairs; names are compared case-insensitively.
Two clocks are injected: `now` is any clock that does not go backwards (the
one `Freshness.state` is asked with later), `date_now` the Unix time at the
same instant, compared with the HTTP dates of `Date` and `Expires`.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import mktime_tz, parsedate_tz
from typing import Generic, Literal, TypeVar

V = TypeVar("V")

Headers = Sequence[tuple[str, str]]
State = Literal["fresh", "stale-while-revalidate", "stale-if-error-only", "expired"]

# Larger delta-seconds values count as this one (RFC 9111 section 1.2.2).
_DELTA_MAX = 2**31

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(r"[0-9]+")
# an entity tag in an If-None-Match list: optional weakness mark, quoted opaque tag
_ETAG = re.compile(r'\s*(W/)?("[^"]*")\s*')


class CacheError(ValueError):
    """A cache policy or store is badly configured, or a `Vary: *` response was keyed."""


REQUEST_FIELDS = frozenset(
    {"authorization", "cache-control", "pragma", "if-none-match", "if-modified-since"}
)
"""The request fields a `CachePolicy` and `not_modified` read, besides the key's."""


def _values(headers: Headers, name: str) -> list[str]:
    """The values of the fields named `name` (lower-case), in order."""
    return [v for n, v in headers if n.lower() == name]


def _split_list(value: str) -> list[str]:
    """The comma-separated members of `value`, commas inside quoted strings kept."""
    parts: list[str] = []
    start = 0
    quoted = False
    escaped = False
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif quoted:
            if c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ",":
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def _unquote(text: str) -> str | None:
    """The content of the quoted string `text`, or None if it is not exactly one."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return None
    out: list[str] = []
    escaped = False
    for c in text[1:-1]:
        if escaped:
            out.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            return None
        else:
            out.append(c)
    return None if escaped else "".join(out)


def _token(text: str) -> str | None:
    return text if _TOKEN.fullmatch(text) is not None else None


def parse_cache_control(values: Sequence[str]) -> dict[str, str | None]:
    """The directives of the `Cache-Control` field lines `values`, merged in order.

    Names are lower-cased; a directive without argument maps to None, one with
    a token or quoted-string argument to the argument (unquoted). When a
    directive appears more than once, the first occurrence counts. Malformed
    members (bad name, bad argument, unterminated quote) are skipped; never raises.
    """
    directives: dict[str, str | None] = {}
    for value in values:
        for part in _split_list(value):
            name, sep, arg = part.partition("=")
            name = name.strip().lower()
            if _TOKEN.fullmatch(name) is None:
                continue
            parsed: str | None = None
            if sep:
                arg = arg.strip()
                parsed = _unquote(arg) if arg.startswith('"') else _token(arg)
                if parsed is None:
                    continue
            directives.setdefault(name, parsed)
    return directives


def _delta(arg: str | None) -> int | None:
    """The delta-seconds `arg` (capped at 2**31), or None when it is not one."""
    if arg is None or _DIGITS.fullmatch(arg) is None:
        return None
    return min(int(arg), _DELTA_MAX)


def _http_date(value: str | None) -> float | None:
    """The Unix time of the HTTP date `value`, or None when it is not a date."""
    if value is None:
        return None
    try:
        parsed = parsedate_tz(value)
        return None if parsed is None else float(mktime_tz(parsed))
    except (ValueError, TypeError, IndexError, OverflowError):
        return None


def _first(headers: Headers, name: str) -> str | None:
    values = _values(headers, name)
    return values[0].strip() if values else None


@dataclass(frozen=True, slots=True)
class Freshness:
    """How long a stored response may be served, on the `now` clock.

    `stored_at`: the clock reading at which the response's age was 0 (the
    time it was received, minus the age it already had). `lifetime_s`: its
    freshness lifetime (0 for `no-cache`: stored, but revalidated before each
    use). `stale_while_revalidate_s`, `stale_if_error_s`: how long after it
    turns stale it may still be served while it is revalidated in the
    background, or when the upstream fails (RFC 5861). `must_revalidate`: a
    stale response must never be served without a successful revalidation
    (`no-cache`, `must-revalidate`, `proxy-revalidate` or `s-maxage`), which
    overrides both stale windows.
    """

    stored_at: float
    lifetime_s: float
    stale_while_revalidate_s: float
    stale_if_error_s: float
    must_revalidate: bool

    def state(self, now: float) -> State:
        """Whether the entry may be served at `now`.

        "fresh": serve it (HIT). "stale-while-revalidate": serve it (STALE) and
        revalidate in the background. "stale-if-error-only": revalidate first,
        serve it (STALE) only if the upstream fails (error or 5xx).
        "expired": revalidate and serve only the upstream's answer. The
        windows start when the lifetime ends and overlap: an entry within the
        stale-while-revalidate window may also be served on error.
        """
        staleness = now - self.stored_at - self.lifetime_s
        if staleness < 0:
            return "fresh"
        if self.must_revalidate:
            return "expired"
        if staleness < self.stale_while_revalidate_s:
            return "stale-while-revalidate"
        if staleness < self.stale_if_error_s:
            return "stale-if-error-only"
        return "expired"

    def age(self, now: float) -> int:
        """The value of the `Age` field at `now`: whole seconds, never negative."""
        return max(0, math.floor(now - self.stored_at))

    def servable_until(self) -> float:
        """The clock reading from which the entry is "expired" (only revalidation
        can make it servable again)."""
        end = self.stored_at + self.lifetime_s
        if self.must_revalidate:
            return end
        return end + max(self.stale_while_revalidate_s, self.stale_if_error_s)


class CachePolicy:
    """What one route caches, under which key, and for how long.

    Build with `CachePolicy.build`. Requests with `Cache-Control: no-cache`
    (or `max-age=0`, or `Pragma: no-cache` without `Cache-Control`) are not
    bypassed: they may use a stored entry only after revalidating it with the
    upstream (`request_revalidates`), and the answer refreshes the entry, so
    a client's reload cannot force unconditional upstream requests.
    """

    __slots__ = (
        "_authorization_ok",
        "_default_ttl_s",
        "_header_names",
        "_max_object_bytes",
        "_methods",
        "_query_names",
        "_set_cookie_ok",
        "_stale_if_error_s",
        "_stale_while_revalidate_s",
        "_statuses",
    )

    _authorization_ok: bool
    _default_ttl_s: float
    _header_names: tuple[str, ...]
    _max_object_bytes: int
    _methods: frozenset[str]
    _query_names: frozenset[str] | None
    _set_cookie_ok: bool
    _stale_if_error_s: float
    _stale_while_revalidate_s: float
    _statuses: frozenset[int]

    @classmethod
    def build(
        cls,
        *,
        default_ttl_s: float = 300.0,
        methods: Sequence[str] = ("GET", "HEAD"),
        statuses: Sequence[int] = (200, 301, 404),
        max_object_bytes: int = 1024 * 1024,
        key_query: Sequence[str] | None = None,
        key_headers: Sequence[str] = (),
        cache_set_cookie: bool = False,
        public_with_authorization: bool = False,
        stale_while_revalidate_s: float = 0.0,
        stale_if_error_s: float = 0.0,
    ) -> CachePolicy:
        """A policy; raises CacheError naming what is wrong.

        `default_ttl_s`: freshness lifetime of a response without `s-maxage`,
        `max-age` or `Expires`. `methods` (case-insensitive; HEAD is answered
        from GET's entries) and `statuses`: what is cached. `max_object_bytes`:
        the largest body stored. `key_query`: the query parameters in the key:
        None for the whole query string as sent, [] for none, else the named
        parameters, sorted by name. `key_headers`: request header names whose
        values are in the key. `cache_set_cookie`: store responses carrying
        `Set-Cookie` (the cookie is served to everybody). `public_with_authorization`:
        requests with `Authorization` are served from and stored in the cache.
        `stale_while_revalidate_s`, `stale_if_error_s`: the stale windows of
        responses whose `Cache-Control` names none.
        """
        for what, seconds in (
            ("default_ttl_s", default_ttl_s),
            ("stale_while_revalidate_s", stale_while_revalidate_s),
            ("stale_if_error_s", stale_if_error_s),
        ):
            if not 0.0 <= seconds < math.inf:
                raise CacheError(f"{what} must be a finite number >= 0, got {seconds!r}")
        if (
            isinstance(max_object_bytes, bool)
            or not isinstance(max_object_bytes, int)
            or max_object_bytes < 0
        ):
            raise CacheError(f"max_object_bytes must be an integer >= 0, got {max_object_bytes!r}")
        if not methods:
            raise CacheError("methods must name at least one method")
        for i, method in enumerate(methods):
            if _TOKEN.fullmatch(method) is None:
                raise CacheError(f"methods {i} ({method!r}) is not a valid method")
        for i, status in enumerate(statuses):
            if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
                raise CacheError(f"statuses {i} ({status!r}) is not an HTTP status")
        for i, name in enumerate(key_headers):
            if _TOKEN.fullmatch(name) is None:
                raise CacheError(f"key_headers {i} ({name!r}) is not a valid header name")
        if key_query is not None:
            for i, param in enumerate(key_query):
                if not param or "&" in param or "=" in param:
                    raise CacheError(f"key_query {i} ({param!r}) is not a query parameter name")

        self = cls.__new__(cls)
        self._default_ttl_s = float(default_ttl_s)
        self._methods = frozenset(m.upper() for m in methods)
        self._statuses = frozenset(statuses)
        self._max_object_bytes = max_object_bytes
        self._query_names = None if key_query is None else frozenset(key_query)
        self._header_names = tuple(sorted({h.lower() for h in key_headers}))
        self._set_cookie_ok = cache_set_cookie
        self._authorization_ok = public_with_authorization
        self._stale_while_revalidate_s = float(stale_while_revalidate_s)
        self._stale_if_error_s = float(stale_if_error_s)
        return self

    @property
    def max_object_bytes(self) -> int:
        """The largest body stored: a caller buffering a body of unknown length
        stops (and does not store) once it grows past this."""
        return self._max_object_bytes

    @property
    def request_fields(self) -> frozenset[str]:
        """Every request field the policy's methods and `not_modified` read (lower-case):
        passing them only the fields with these names gives the same answers."""
        return REQUEST_FIELDS | frozenset(self._header_names)

    def request_cacheable(self, method: str, request_headers: Headers) -> str | None:
        """None when the request may be answered from the cache, else why not
        (the BYPASS reason): "method" (not a cached method), "authorization"
        (carries `Authorization` and the route does not say its content is
        public) or "no-store" (in the request's `Cache-Control`)."""
        if method.upper() not in self._methods:
            return "method"
        if not request_headers:
            return None
        if not self._authorization_ok and _values(request_headers, "authorization"):
            return "authorization"
        if "no-store" in parse_cache_control(_values(request_headers, "cache-control")):
            return "no-store"
        return None

    def request_revalidates(self, request_headers: Headers) -> bool:
        """True when the client asks that a stored entry be revalidated before use:
        `Cache-Control: no-cache` or `max-age=0`, or `Pragma: no-cache` when the
        request has no `Cache-Control`. Then treat a fresh entry as expired."""
        if not request_headers:
            return False
        values = _values(request_headers, "cache-control")
        if not values:
            return any(
                "no-cache" in (p.strip().lower() for p in v.split(","))
                for v in _values(request_headers, "pragma")
            )
        directives = parse_cache_control(values)
        return "no-cache" in directives or _delta(directives.get("max-age")) == 0

    def key(self, method: str, host: str, path: str, query: str, headers: Headers) -> str:
        """The cache key: `host` (lower-cased) + `path` + "?" + the selected query
        (left out when empty), then a line with the method (HEAD counts as GET)
        and a line `name: value` per selected request header, values joined by ", "
        (no line when absent). Query parameters are compared as sent (not
        percent-decoded); selected ones keep their order among equal names.

        Keys start with host and path, so `LruBytes.purge_prefix("host/path")`
        purges a path prefix for every method and variant. Components never
        hold CR or LF (the HTTP parser refuses them), so keys are unambiguous.
        """
        names = self._query_names
        if names is not None:
            params = [p for p in query.split("&") if p.partition("=")[0] in names]
            params.sort(key=lambda p: p.partition("=")[0])
            query = "&".join(params)
        method = method.upper()
        parts = [f"{host.lower()}{path}?{query}" if query else f"{host.lower()}{path}"]
        parts.append("GET" if method == "HEAD" else method)
        for name in self._header_names:
            values = _values(headers, name)
            if values:
                parts.append(f"{name}: {', '.join(v.strip() for v in values)}")
        return "\n".join(parts)

    def storable(
        self,
        status: int,
        response_headers: Headers,
        body_length: int | None,
        request_had_authorization: bool,
    ) -> tuple[bool, str]:
        """Whether a response may be stored, and the reason when not: "status"
        (not a cached status), "no-store", "private" (also with field names:
        the whole response stays out), "authorization" (the request carried
        `Authorization` and the route does not say its content is public),
        "set-cookie" (unless configured), "vary-star" (`Vary: *`, never stored)
        or "size" (body over `max_object_bytes`; a `body_length` of None, for
        an unknown length, passes and the caller counts). "ok" when storable."""
        if status not in self._statuses:
            return False, "status"
        directives = parse_cache_control(_values(response_headers, "cache-control"))
        if "no-store" in directives:
            return False, "no-store"
        if "private" in directives:
            return False, "private"
        if request_had_authorization and not self._authorization_ok:
            return False, "authorization"
        if not self._set_cookie_ok and _values(response_headers, "set-cookie"):
            return False, "set-cookie"
        if "*" in _vary_names(_values(response_headers, "vary")):
            return False, "vary-star"
        if body_length is not None and body_length > self._max_object_bytes:
            return False, "size"
        return True, "ok"

    def freshness(self, response_headers: Headers, now: float, date_now: float) -> Freshness:
        """The freshness of a response received at `now` (Unix time `date_now`).

        Lifetime: `s-maxage`, else `max-age`, else `Expires` minus `Date` (or
        minus `date_now` without a valid `Date`), else `default_ttl_s`; 0 with
        `no-cache`, and 0 (stale) when the directive used is malformed or
        `Expires` is not a date (RFC 9111 section 5.3). Stale windows: the
        response's `stale-while-revalidate` / `stale-if-error`, else the
        policy's. Age already spent upstream: the larger of the `Age` field
        and `date_now` minus `Date` (RFC 9111 section 4.2.3, without the
        request's round trip, which the caller does not measure).
        """
        directives = parse_cache_control(_values(response_headers, "cache-control"))
        date = _http_date(_first(response_headers, "date"))
        lifetime: float
        if "no-cache" in directives:
            lifetime = 0.0
        elif "s-maxage" in directives:
            lifetime = _delta(directives["s-maxage"]) or 0.0
        elif "max-age" in directives:
            lifetime = _delta(directives["max-age"]) or 0.0
        elif _values(response_headers, "expires"):
            expires = _http_date(_first(response_headers, "expires"))
            base = date_now if date is None else date
            lifetime = 0.0 if expires is None else max(0.0, expires - base)
        else:
            lifetime = self._default_ttl_s
        apparent_age = 0.0 if date is None else max(0.0, date_now - date)
        initial_age = max(apparent_age, float(_delta(_first(response_headers, "age")) or 0))
        swr = _delta(directives.get("stale-while-revalidate"))
        sie = _delta(directives.get("stale-if-error"))
        return Freshness(
            stored_at=now - initial_age,
            lifetime_s=float(lifetime),
            stale_while_revalidate_s=self._stale_while_revalidate_s if swr is None else float(swr),
            stale_if_error_s=self._stale_if_error_s if sie is None else float(sie),
            must_revalidate=any(
                d in directives
                for d in ("no-cache", "must-revalidate", "proxy-revalidate", "s-maxage")
            ),
        )


def _vary_names(vary_header_values: Sequence[str]) -> list[str]:
    """The header names a `Vary` lists, lower-cased, each once, sorted."""
    names = {n.strip().lower() for v in vary_header_values for n in v.split(",")}
    names.discard("")
    return sorted(names)


def vary_key(vary_header_values: Sequence[str], request_headers: Headers) -> str:
    """The variant of a request among the responses stored with this `Vary`.

    One line per header named by `Vary` (sorted): `name` alone when the
    request lacks it (an absent header matches only an absent one), else
    `name=value` with the values joined by "," and spaces around commas
    removed; `Accept-Encoding` members are lower-cased, inner spaces removed
    and sorted (q-values kept). "" without `Vary`. Raises CacheError for
    `Vary: *`, whose responses are never stored.
    """
    lines: list[str] = []
    for name in _vary_names(vary_header_values):
        if name == "*":
            raise CacheError("Vary: * matches no other request; the response is not stored")
        values = _values(request_headers, name)
        if not values:
            lines.append(name)
            continue
        members = [m.strip() for v in values for m in v.split(",")]
        if name == "accept-encoding":
            members = sorted("".join(m.lower().split()) for m in members if m)
        lines.append(f"{name}={','.join(members)}")
    return "\n".join(lines)


def not_modified(request_headers: Headers, etag: str | None, last_modified: str | None) -> bool:
    """True when a client's conditional GET/HEAD is answered by 304 from an entry
    with this `ETag` / `Last-Modified`.

    `If-None-Match` (all its lines) decides when present: "*" matches any entry
    with an ETag, a list matches when one of its tags equals `etag` by weak
    comparison (W/ ignored, opaque tags equal). Otherwise `If-Modified-Since`
    matches when both it and `last_modified` are HTTP dates and the entry is
    not newer. Malformed fields match nothing.
    """
    inm = _values(request_headers, "if-none-match")
    if inm:
        if etag is None:
            return False
        stored = _ETAG.fullmatch(etag)
        for member in _split_list(",".join(inm)):
            if member.strip() == "*":
                return True
            tag = _ETAG.fullmatch(member)
            if tag is not None and stored is not None and tag.group(2) == stored.group(2):
                return True
        return False
    since = _http_date(_first(request_headers, "if-modified-since"))
    modified = _http_date(last_modified)
    return since is not None and modified is not None and modified <= since


def revalidation_headers(etag: str | None, last_modified: str | None) -> list[tuple[str, str]]:
    """The fields that make the upstream request for a stale entry conditional:
    `If-None-Match` with its ETag and `If-Modified-Since` with its Last-Modified,
    for those it has. A 304 answer refreshes the entry."""
    fields: list[tuple[str, str]] = []
    if etag is not None:
        fields.append(("if-none-match", etag))
    if last_modified is not None:
        fields.append(("if-modified-since", last_modified))
    return fields


# Separates a key from the variant lines of a response with `Vary`: the key's own
# entry is then a `VaryIndex`, each variant's response is at key + this + `vary_key`.
VARIANT_SEPARATOR = "\n~vary\n"

# Fields never stored: framing (recomputed from the stored body), Age (recomputed
# when served) and the cache's own status field.
_NOT_STORED = frozenset({"age", "content-length", "transfer-encoding", "x-cache"})

# Bytes counted per stored entry besides its body and header text (LruBytes budget).
ENTRY_OVERHEAD_BYTES = 256

_MAGIC = b"MGC1"


def stored_headers(headers: Headers) -> tuple[tuple[str, str], ...]:
    """The fields of a response that are stored with it, names lower-cased."""
    return tuple((n.lower(), v) for n, v in headers if n.lower() not in _NOT_STORED)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response in the cache.

    `headers`: as `stored_headers` keeps them. `tag`: names the route config that
    stored it (a lookup by another config ignores it, so a changed route starts
    empty). `vary`: the response's `Vary` field values (empty without).
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    freshness: Freshness
    tag: str
    vary: tuple[str, ...] = ()

    @property
    def etag(self) -> str | None:
        return _first(self.headers, "etag")

    @property
    def last_modified(self) -> str | None:
        return _first(self.headers, "last-modified")

    @property
    def size(self) -> int:
        """The bytes it is counted as in a byte budget."""
        fields = sum(len(n) + len(v) for n, v in self.headers)
        return len(self.body) + fields + ENTRY_OVERHEAD_BYTES

    def refreshed(
        self, not_modified_headers: Headers, policy: CachePolicy, now: float, date_now: float
    ) -> StoredResponse:
        """This response after a 304 revalidated it at `now`: the fields the 304
        carries replace the stored ones of the same names (RFC 9111 section 3.2,
        framing fields excepted) and its freshness starts again from them. The
        stored `Date` goes when the 304 has none (it would date the response back
        to its first fetch)."""
        fresh = stored_headers(not_modified_headers)
        names = {n for n, _ in fresh} | {"date"}
        headers = tuple(kv for kv in self.headers if kv[0] not in names) + fresh
        return StoredResponse(
            status=self.status,
            headers=headers,
            body=self.body,
            freshness=policy.freshness(headers, now, date_now),
            tag=self.tag,
            vary=tuple(_values(headers, "vary")),
        )


@dataclass(frozen=True, slots=True)
class VaryIndex:
    """Stored under a key whose response has `Vary`: the variant of a request is
    at key + `VARIANT_SEPARATOR` + `vary_key(vary, request headers)`."""

    vary: tuple[str, ...]
    tag: str

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.vary) + len(self.tag) + ENTRY_OVERHEAD_BYTES


Entry = StoredResponse | VaryIndex


def encode_entry(entry: Entry) -> bytes:
    """`entry` as bytes (for a shared store): a magic, a length-prefixed JSON head,
    then the body as is. `decode_entry` reverses it."""
    meta: dict[str, object]
    body = b""
    if isinstance(entry, VaryIndex):
        meta = {"kind": "vary", "vary": list(entry.vary), "tag": entry.tag}
    else:
        f = entry.freshness
        meta = {
            "kind": "response",
            "status": entry.status,
            "headers": [list(kv) for kv in entry.headers],
            "freshness": [
                f.stored_at,
                f.lifetime_s,
                f.stale_while_revalidate_s,
                f.stale_if_error_s,
                f.must_revalidate,
            ],
            "tag": entry.tag,
            "vary": list(entry.vary),
        }
        body = entry.body
    head = json.dumps(meta, separators=(",", ":")).encode()
    return _MAGIC + len(head).to_bytes(4, "big") + head + body


def decode_entry(data: bytes) -> Entry:
    """The entry `encode_entry` made `data` from; CacheError when `data` is not one."""
    if data[:4] != _MAGIC or len(data) < 8:
        raise CacheError("not a stored cache entry")
    size = int.from_bytes(data[4:8], "big")
    try:
        meta = json.loads(data[8 : 8 + size])
        if meta["kind"] == "vary":
            return VaryIndex(tuple(str(v) for v in meta["vary"]), str(meta["tag"]))
        stored_at, lifetime, swr, sie, must = meta["freshness"]
        return StoredResponse(
            status=int(meta["status"]),
            headers=tuple((str(n), str(v)) for n, v in meta["headers"]),
            body=data[8 + size :],
            freshness=Freshness(
                float(stored_at), float(lifetime), float(swr), float(sie), bool(must)
            ),
            tag=str(meta["tag"]),
            vary=tuple(str(v) for v in meta["vary"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"malformed stored cache entry: {exc}") from None


class LruBytes(Generic[V]):
    """An in-memory store of values by key, within `max_bytes` in total.

    The caller gives each entry's size (body plus headers, as it counts them).
    Storing evicts least recently used entries until the total fits; `get`
    makes an entry the most recently used. `bytes_used` is always the sum of
    the sizes of the entries present; `evictions` counts the entries dropped
    to make room (not those replaced, deleted or purged).
    """

    __slots__ = ("_bytes_used", "_entries", "evictions", "max_bytes")

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise CacheError(f"max_bytes must be an integer >= 1, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._bytes_used = 0
        self.evictions = 0
        self._entries: OrderedDict[str, tuple[int, V]] = OrderedDict()

    def __len__(self) -> int:
        """The number of entries stored."""
        return len(self._entries)

    @property
    def bytes_used(self) -> int:
        """The total size of the entries stored."""
        return self._bytes_used

    def put(self, key: str, entry_size: int, value: V) -> bool:
        """Store `value` under `key` as the most recently used entry, replacing
        any entry of `key`. False (and the old entry of `key` removed, as it is
        outdated) when `entry_size` alone exceeds `max_bytes`."""
        if entry_size < 0:
            raise CacheError(f"entry_size must be >= 0, got {entry_size!r}")
        self.delete(key)
        if entry_size > self.max_bytes:
            return False
        entries = self._entries
        entries[key] = (entry_size, value)
        self._bytes_used += entry_size
        while self._bytes_used > self.max_bytes:
            size, _ = entries.popitem(last=False)[1]
            self._bytes_used -= size
            self.evictions += 1
        return True

    def get(self, key: str) -> V | None:
        """The value of `key`, made the most recently used; None when absent."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def delete(self, key: str) -> bool:
        """Remove the entry of `key`; False when there was none."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes_used -= entry[0]
        return True

    def purge_prefix(self, prefix: str) -> int:
        """Remove every entry whose key starts with `prefix`; how many were removed."""
        keys = [k for k in self._entries if k.startswith(prefix)]
        for k in keys:
            self.delete(k)
        return len(keys)


class SingleFlight:
    """The books of the cache fills in progress, one per key.

    The first miss for a key `begin`s a fill and is its leader: it asks the
    upstream and calls `end` when done, whether the answer was stored or not
    (an upstream error releases the waiters, who then ask on their own or
    fail). A later miss for the key `join`s as a waiter while there is room
    (at most `max_waiters` per fill), else it goes to the upstream itself.
    A waiter that gives up before the fill ends calls `leave`; `end` releases
    all waiters at once, which then must not call `leave`.
    """

    __slots__ = ("_waiters", "max_waiters")

    def __init__(self, max_waiters: int = 1000) -> None:
        if isinstance(max_waiters, bool) or not isinstance(max_waiters, int) or max_waiters < 0:
            raise CacheError(f"max_waiters must be an integer >= 0, got {max_waiters!r}")
        self.max_waiters = max_waiters
        self._waiters: dict[str, int] = {}

    def __len__(self) -> int:
        """The number of fills in progress."""
        return len(self._waiters)

    def begin(self, key: str) -> bool:
        """True: no fill of `key` was in progress, the caller leads one now.
        False: one is in progress (then `join` it)."""
        if key in self._waiters:
            return False
        self._waiters[key] = 0
        return True

    def join(self, key: str) -> bool:
        """Wait for the fill of `key` in progress: True when counted as a waiter;
        False when the fill already has `max_waiters` waiters or none is in progress."""
        n = self._waiters.get(key)
        if n is None or n >= self.max_waiters:
            return False
        self._waiters[key] = n + 1
        return True

    def leave(self, key: str) -> None:
        """A waiter of `key` gives up before the fill ends (timeout, client gone)."""
        n = self._waiters.get(key)
        if n:
            self._waiters[key] = n - 1

    def waiting(self, key: str) -> int:
        """The number of waiters of the fill of `key` (0 when none is in progress)."""
        return self._waiters.get(key, 0)

    def end(self, key: str) -> int:
        """The fill of `key` is over: the number of waiters it releases."""
        return self._waiters.pop(key, 0)
