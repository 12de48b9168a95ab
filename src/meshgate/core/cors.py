"""Cross-origin resource sharing decisions (sans-IO), as the Fetch standard has browsers check them.

A `CorsPolicy` says which origins may read responses and what a preflight may
ask for. It gives the response header fields; the caller puts them on the
answer. A request whose origin the policy does not allow gets no CORS header
at all, and the browser keeps the response from the page.

Origins are `scheme://host[:port]`, compared exactly after lower-casing (a
port is compared as written: browsers leave out the default port, so write
"https://example.com", not "https://example.com:443"). A request's `Origin`
that is not of that form ("null" from sandboxed frames and file: pages, a
list, garbage) never matches an origin list or the regex.

An origin list holding "*" allows every origin, including "null", and is
answered with `Access-Control-Allow-Origin: *` on every response, whether the
request has an `Origin` or not, so responses do not depend on the origin and a
cache may share them without `Vary: Origin`. "*" is refused together with
credentials, which browsers never send to a "*" answer. Every other policy
echoes the request's origin and adds `Vary: Origin` to every response, also to
those without CORS fields, so that a cache never serves one origin's answer to
another.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Methods and header names a browser never needs a preflight's permission for.
# CORS-safelisted request headers are listed in a preflight only when their value
# is not a safelisted one (e.g. content-type: application/json); a policy allows
# these names anyway, for the origins it allows, as most servers do.
_SAFELISTED_METHODS = frozenset({"GET", "HEAD", "POST"})
_SAFELISTED_HEADERS = frozenset({"accept", "accept-language", "content-language", "content-type"})

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ORIGIN = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)

_PREFLIGHT_VARY = ("vary", "origin, access-control-request-method, access-control-request-headers")
_VARY = ("vary", "origin")


class CorsError(ValueError):
    """A CORS policy is badly configured."""


def _origin_key(origin: str) -> str | None:
    """`origin` lower-cased if it is scheme://host[:port]; None if not."""
    if _ORIGIN.fullmatch(origin) is None:
        return None
    return origin.lower()


def _tokens(what: str, names: Sequence[str]) -> tuple[str, ...]:
    for i, name in enumerate(names):
        if _TOKEN.fullmatch(name) is None:
            raise CorsError(f"{what} {i} ({name!r}) is not a valid name")
    return tuple(names)


class CorsPolicy:
    """Which origins may read responses, and what their preflights may ask for.

    Build with `CorsPolicy.build`. `allowed_origin` decides the origin,
    `preflight` answers an `OPTIONS` request carrying
    `Access-Control-Request-Method`, `response_headers` gives the fields of
    any other response.
    """

    __slots__ = (
        "_any_header",
        "_any_method",
        "_any_origin",
        "_credentials",
        "_expose",
        "_headers",
        "_max_age",
        "_methods",
        "_methods_text",
        "_origins",
        "_regex",
        "_varies",
    )

    _any_header: bool
    _any_method: bool
    _any_origin: bool
    _credentials: bool
    _expose: str
    _headers: frozenset[str]
    _max_age: str
    _methods: frozenset[str]
    _methods_text: str
    _origins: frozenset[str]
    _regex: re.Pattern[str] | None
    _varies: bool

    @classmethod
    def build(
        cls,
        *,
        allow_origins: Sequence[str] = (),
        allow_origin_regex: str | None = None,
        allow_methods: Sequence[str] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"),
        allow_headers: Sequence[str] = (),
        expose_headers: Sequence[str] = (),
        allow_credentials: bool = False,
        max_age_s: int = 600,
    ) -> CorsPolicy:
        """A policy; raises CorsError naming what is wrong.

        `allow_origins`: exact origins (see the module), or "*" for any origin
        (not with `allow_credentials`; "null" is refused: any sandboxed page
        can send it). `allow_origin_regex`: a regex that must match the whole
        lower-cased origin; origins matching either are allowed.
        `allow_methods`: methods a preflight may ask for, compared
        case-sensitively as browsers do (they upper-case GET, HEAD, POST, PUT,
        DELETE and OPTIONS but send other methods, "PATCH" too, as the page
        wrote them); GET, HEAD and POST are always allowed, "*" allows any
        method. `allow_headers`: request header names a preflight may ask for,
        case-insensitive; the CORS-safelisted names accept, accept-language,
        content-language and content-type are always allowed, "*" allows any
        name. `expose_headers`: response header names the page may read
        besides the safelisted ones. `allow_credentials`: the page may send
        cookies and read the response. `max_age_s`: how long browsers may
        cache a preflight's answer.
        """
        if allow_origin_regex is not None:
            try:
                regex: re.Pattern[str] | None = re.compile(allow_origin_regex)
            except re.error as e:
                raise CorsError(
                    f"allow_origin_regex {allow_origin_regex!r} is invalid: {e}"
                ) from None
        else:
            regex = None
        origins: set[str] = set()
        any_origin = False
        for i, origin in enumerate(allow_origins):
            if origin == "*":
                any_origin = True
                continue
            if origin.lower() == "null":
                raise CorsError(
                    f"allow_origins {i} is 'null', which any sandboxed page or file can send"
                )
            key = _origin_key(origin)
            if key is None:
                raise CorsError(
                    f"allow_origins {i} ({origin!r}) is not an origin: scheme://host[:port], "
                    "without path or trailing slash"
                )
            origins.add(key)
        if any_origin and allow_credentials:
            raise CorsError(
                "allow_origins '*' cannot be used with allow_credentials: list the origins "
                "or use allow_origin_regex"
            )
        if isinstance(max_age_s, bool) or not isinstance(max_age_s, int) or max_age_s < 0:
            raise CorsError(f"max_age_s must be an integer >= 0, got {max_age_s!r}")
        methods = _tokens("allow_methods", allow_methods)
        headers = _tokens("allow_headers", allow_headers)
        exposed = _tokens("expose_headers", expose_headers)

        self = cls.__new__(cls)
        self._any_origin = any_origin
        self._origins = frozenset(origins)
        self._regex = regex
        self._varies = not any_origin and bool(origins or regex)
        self._credentials = allow_credentials
        self._any_method = "*" in methods
        self._methods = frozenset(methods) | _SAFELISTED_METHODS
        self._methods_text = ", ".join(dict.fromkeys(methods))
        self._any_header = "*" in headers
        self._headers = frozenset(h.lower() for h in headers) | _SAFELISTED_HEADERS
        self._expose = ", ".join(dict.fromkeys(h.lower() for h in exposed))
        self._max_age = str(max_age_s)
        return self

    def allowed_origin(self, origin: str | None) -> str | None:
        """The value of `Access-Control-Allow-Origin` for a request with this `Origin`.

        "*" for a policy allowing any origin (also without an `Origin`); else
        `origin` as sent when the policy allows it; None when it does not, or
        the request has no `Origin`: then the response gets no CORS field.
        """
        if self._any_origin:
            return "*"
        if origin is None:
            return None
        if origin in self._origins:  # the usual case: already lower-case
            return origin
        key = _origin_key(origin)
        if key is None:
            return None
        if key in self._origins or (self._regex is not None and self._regex.fullmatch(key)):
            return origin
        return None

    def preflight(
        self, origin: str | None, request_method: str | None, request_headers: str | None
    ) -> list[tuple[str, str]] | None:
        """The answer to a preflight, from its `Origin`, `Access-Control-Request-Method`
        and `Access-Control-Request-Headers` (a comma-separated list, or None).

        None when there is no origin or no method, or the origin, the method
        or a header name is not allowed: the caller answers without CORS
        fields and the browser does not send the request. Otherwise the
        response fields: allow-origin, allow-credentials ("true", when
        configured), allow-methods (the configured list, if not empty; the
        requested method when "*" is configured), allow-headers (the
        requested names, lower-cased, when there are any), max-age, and
        `Vary` on the origin and both request fields.
        """
        allowed = self.allowed_origin(origin)
        if allowed is None or origin is None or request_method is None:
            return None
        if request_method not in self._methods and not (
            self._any_method and _TOKEN.fullmatch(request_method)
        ):
            return None
        names: list[str] = []
        if request_headers is not None:
            for item in request_headers.split(","):
                name = item.strip(" \t").lower()
                if not name:
                    continue
                if name not in self._headers and not (self._any_header and _TOKEN.fullmatch(name)):
                    return None
                names.append(name)
        fields = [("access-control-allow-origin", allowed)]
        if self._credentials:
            fields.append(("access-control-allow-credentials", "true"))
        methods = request_method if self._any_method else self._methods_text
        if methods:
            fields.append(("access-control-allow-methods", methods))
        if names:
            fields.append(("access-control-allow-headers", ", ".join(dict.fromkeys(names))))
        fields.append(("access-control-max-age", self._max_age))
        fields.append(_PREFLIGHT_VARY)
        return fields

    def response_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """The CORS fields of a response (not a preflight's) to a request with this `Origin`.

        For an allowed origin: allow-origin, allow-credentials ("true", when
        configured), expose-headers (when configured) and `Vary: Origin`
        (except for a policy allowing any origin, answered "*" always). For a
        request without `Origin` or with one not allowed, only `Vary: Origin`
        when the policy allows some origins, since another origin would get
        another answer; nothing for a policy that allows none.
        """
        allowed = self.allowed_origin(origin)
        if allowed is None:
            return [_VARY] if self._varies else []
        fields = [("access-control-allow-origin", allowed)]
        if self._credentials:
            fields.append(("access-control-allow-credentials", "true"))
        if self._expose:
            fields.append(("access-control-expose-headers", self._expose))
        if self._varies:
            fields.append(_VARY)
        return fields
