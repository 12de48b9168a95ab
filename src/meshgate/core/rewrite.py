"""Path and query rewrites and redirects (sans-IO).

Everything is validated when built from config (`RewriteError` says what is
wrong and with which value); applying a rewrite to a request never raises,
except `Redirect.location` for a request whose Host or target cannot be put
in a Location header safely (the caller answers 400).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Literal
from urllib.parse import quote, unquote_plus


class RewriteError(ValueError):
    """A rewrite or redirect is badly configured, or a request cannot be redirected."""


def split_target(target: str) -> tuple[str, str]:
    """Split a request target into path and query: "/a/b?x=1" -> ("/a/b", "x=1")."""
    path, _, query = target.partition("?")
    return path, query


def _has_unsafe_char(value: str) -> bool:
    """Whitespace or a control character: never valid in a URL we emit."""
    return any(c.isspace() or c < " " or c == "\x7f" for c in value)


def _check_path_piece(what: str, value: str) -> None:
    """A configured path prefix: starts with '/', no query, fragment, space or control."""
    if not value.startswith("/"):
        raise RewriteError(f"{what} {value!r} must start with '/'")
    _check_path_chars(what, value)


def _check_path_chars(what: str, value: str) -> None:
    if _has_unsafe_char(value) or "?" in value or "#" in value:
        raise RewriteError(
            f"{what} {value!r} must not contain '?', '#', whitespace or control characters"
        )


# --------------------------------------------------------------------------- path


_Piece = str | int  # literal text, or the number of a group to insert


_TEMPLATE_ESCAPE = re.compile(r"\\(?:([1-9])([0-9]?)|g<([^>]*)>|(\\)|(.?))", re.DOTALL)


def _parse_replacement(pattern: re.Pattern[str], replacement: str) -> tuple[_Piece, ...]:
    """Split a regex replacement into literal text and group numbers.

    Accepts the part of Python's `re.sub` template syntax that cannot be
    misread: ``\\1``..``\\9``, ``\\g<number>``, ``\\g<name>`` and ``\\\\``. A
    digit right after ``\\N`` is refused (Python would read ``\\10`` as group
    10): write ``\\g<1>0`` or ``\\g<10>``.
    """
    where = f"regex {pattern.pattern!r} replacement {replacement!r}"
    pieces: list[_Piece] = []
    literal = ""
    done = 0
    for escape in _TEMPLATE_ESCAPE.finditer(replacement):
        literal += replacement[done : escape.start()]
        done = escape.end()
        digit, next_digit, ref, backslash, other = escape.groups()
        if backslash is not None:
            literal += "\\"
            continue
        if other is not None:
            raise RewriteError(
                f"{where}: unsupported escape {escape.group()!r}; "
                "use \\1..\\9, \\g<number>, \\g<name> or \\\\"
            )
        if next_digit:
            raise RewriteError(
                f"{where}: ambiguous {escape.group()!r}; "
                f"write '\\g<{digit}>{next_digit}' or '\\g<{digit}{next_digit}>'"
            )
        if digit is not None:
            group = int(digit)
        elif ref.isascii() and ref.isdigit():
            group = int(ref)
        elif ref in pattern.groupindex:
            group = pattern.groupindex[ref]
        else:
            raise RewriteError(f"{where}: the pattern has no group named {ref!r}")
        if group > pattern.groups:
            raise RewriteError(
                f"{where}: group {group} does not exist (the pattern has {pattern.groups})"
            )
        if literal:
            pieces.append(literal)
            literal = ""
        pieces.append(group)
    literal += replacement[done:]
    if literal:
        pieces.append(literal)
    return tuple(pieces)


def _under_prefix(path: str, prefix: str) -> bool:
    """`path` is `prefix` or below it, on a segment boundary ("/api" covers "/api/x", not
    "/apix"). `prefix` has no trailing '/'; the root prefix is "" and covers every path."""
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")


class PathRewrite:
    """One way to rewrite a request path: strip a prefix, replace it, or a regex.

    Prefixes match whole segments and ignore a trailing '/' ("/api" and
    "/api/" both cover "/api", "/api/" and "/api/x" but not "/apix"). A
    rewritten path always starts with '/'; a path the rewrite does not cover
    is returned unchanged.
    """

    __slots__ = ("_kind", "_pattern", "_pieces", "_prefix", "_replacement")

    _kind: Literal["none", "strip", "replace", "regex"]
    _prefix: str
    _replacement: str
    _pattern: re.Pattern[str] | None
    _pieces: tuple[_Piece, ...]

    def __init__(
        self,
        kind: Literal["none", "strip", "replace", "regex"],
        prefix: str = "",
        replacement: str = "",
        pattern: re.Pattern[str] | None = None,
        pieces: tuple[_Piece, ...] = (),
    ) -> None:
        """Use `build`, which validates; this only stores."""
        self._kind = kind
        self._prefix = prefix
        self._replacement = replacement
        self._pattern = pattern
        self._pieces = pieces

    @classmethod
    def build(
        cls,
        *,
        strip_prefix: str | None = None,
        replace_prefix: tuple[str, str] | None = None,
        regex: tuple[str, str] | None = None,
    ) -> PathRewrite:
        """A validated rewrite from at most one of the three forms (none: keep the path)."""
        given = [
            name
            for name, value in (
                ("strip_prefix", strip_prefix),
                ("replace_prefix", replace_prefix),
                ("regex", regex),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise RewriteError(f"path rewrite: use only one of {', '.join(given)}")
        if strip_prefix is not None:
            _check_path_piece("strip_prefix", strip_prefix)
            return cls("strip", prefix=strip_prefix.rstrip("/"))
        if replace_prefix is not None:
            old, new = replace_prefix
            _check_path_piece("replace_prefix prefix", old)
            _check_path_piece("replace_prefix replacement", new)
            return cls("replace", prefix=old.rstrip("/"), replacement=new.rstrip("/"))
        if regex is not None:
            source, replacement = regex
            try:
                pattern = re.compile(source)
            except re.error as exc:
                raise RewriteError(f"regex {source!r} does not compile: {exc}") from None
            _check_path_chars(f"regex {source!r} replacement", replacement)
            pieces = _parse_replacement(pattern, replacement)
            return cls("regex", replacement=replacement, pattern=pattern, pieces=pieces)
        return cls("none")

    @property
    def empty(self) -> bool:
        """True when the rewrite keeps every path as it is."""
        return self._kind == "none"

    def apply(self, path: str) -> str:
        """The rewritten path."""
        kind = self._kind
        if kind == "strip" or kind == "replace":
            prefix = self._prefix
            if not _under_prefix(path, prefix):
                return path
            return self._replacement + path[len(prefix) :] or "/"
        if kind == "regex":
            assert self._pattern is not None
            match = self._pattern.fullmatch(path)
            if match is None:
                return path
            result = "".join(
                p if isinstance(p, str) else (match.group(p) or "") for p in self._pieces
            )
            return result if result.startswith("/") else "/" + result
        return path

    def describe(self) -> str:
        """One line for `meshgate explain`."""
        if self._kind == "strip":
            return f"strip prefix {self._prefix or '/'!r}"
        if self._kind == "replace":
            return f"replace prefix {self._prefix or '/'!r} with {self._replacement or '/'!r}"
        if self._kind == "regex":
            assert self._pattern is not None
            return f"regex {self._pattern.pattern!r} -> {self._replacement!r} (whole path)"
        return "keep path"


# --------------------------------------------------------------------------- query


_NO_PARAMS: Mapping[str, str] = MappingProxyType({})


class QueryRewrite:
    """Remove and set query parameters; every other parameter is kept byte for byte.

    A parameter's name is compared after decoding (%XX and '+'), so an encoded
    name ("adm%69n") cannot slip past `remove`.
    """

    __slots__ = ("_drop", "_set", "_suffix")

    def __init__(
        self, set_params: Mapping[str, str] = _NO_PARAMS, remove: Collection[str] = ()
    ) -> None:
        for name in (*set_params, *remove):
            if not name:
                raise RewriteError("query rewrite: a parameter name is empty")
        self._set = tuple(set_params.items())
        self._drop = frozenset(remove) | frozenset(set_params)
        self._suffix = "&".join(
            f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in self._set
        )

    @property
    def empty(self) -> bool:
        """True when the rewrite keeps every query as it is."""
        return not self._drop

    def apply(self, query: str) -> str:
        """The rewritten query (without '?'): kept parameters in order, then the set ones."""
        if not self._drop:
            return query
        drop = self._drop
        parts = [
            part
            for part in (query.split("&") if query else ())
            if unquote_plus(part.partition("=")[0]) not in drop
        ]
        if self._suffix:
            parts.append(self._suffix)
        return "&".join(parts)

    def describe(self) -> str:
        """One line for `meshgate explain`."""
        removed = sorted(self._drop.difference(name for name, _ in self._set))
        steps = []
        if removed:
            steps.append("remove " + ", ".join(removed))
        if self._set:
            steps.append("set " + ", ".join(f"{name}={value}" for name, value in self._set))
        return "; ".join(steps) or "keep query"


# --------------------------------------------------------------------------- redirect


REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NOT_IN_HOST = ":/?#@\\[]"


def _is_host_name(host: str) -> bool:
    """A host name or a bracketed IPv6 address, without port, userinfo or path."""
    if _has_unsafe_char(host):
        return False
    if host.startswith("[") and host.endswith("]"):
        # an IPv6 address (with ':') in brackets
        inside = host[1:-1]
        return bool(inside) and not any(c in inside for c in _NOT_IN_HOST if c != ":")
    return bool(host) and not any(c in host for c in _NOT_IN_HOST)


def _split_host(authority: str) -> tuple[str, int | None]:
    """A Host header value as (host, port); raises RewriteError when it is malformed."""
    host, port_text = authority, ""
    if authority.startswith("["):
        end = authority.find("]") + 1
        if end and authority[end : end + 1] == ":":
            host, port_text = authority[:end], authority[end + 1 :]
    elif ":" in authority:
        host, _, port_text = authority.partition(":")
    if not _is_host_name(host):
        raise RewriteError(f"cannot redirect: bad Host {authority!r}")
    if not port_text:
        return host, None
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) <= 65535):
        raise RewriteError(f"cannot redirect: bad port in Host {authority!r}")
    return host, int(port_text)


class Redirect:
    """Answer with a redirect to the request's URL with some parts replaced."""

    __slots__ = ("_host", "_path", "_port", "_scheme", "_status", "_strip_query")

    def __init__(
        self,
        status: int,
        scheme: str | None,
        host: str | None,
        port: int | None,
        path: str | None,
        strip_query: bool,
    ) -> None:
        """Use `build`, which validates; this only stores."""
        self._status = status
        self._scheme = scheme
        self._host = host
        self._port = port
        self._path = path
        self._strip_query = strip_query

    @classmethod
    def build(
        cls,
        *,
        status: int = 302,
        scheme: str | None = None,
        host: str | None = None,
        port: int | None = None,
        path: str | None = None,
        strip_query: bool = False,
    ) -> Redirect:
        """A validated redirect. One of scheme, host, port or path must be set, or the
        redirect would send the client back to the same URL forever."""
        if status not in REDIRECT_STATUSES:
            raise RewriteError(
                f"redirect status {status!r} is not one of {', '.join(map(str, REDIRECT_STATUSES))}"
            )
        if scheme is not None:
            scheme = scheme.lower()
            if scheme not in _DEFAULT_PORTS:
                raise RewriteError(f"redirect scheme {scheme!r} must be 'http' or 'https'")
        if host is not None and not _is_host_name(host):
            raise RewriteError(
                f"redirect host {host!r} must be a host name or [IPv6 address] without "
                "'/', '@', whitespace or a port (set port separately)"
            )
        if port is not None and not 0 < port <= 65535:
            raise RewriteError(f"redirect port {port!r} must be in 1..65535")
        if path is not None:
            _check_path_piece("redirect path", path)
        if scheme is None and host is None and port is None and path is None:
            raise RewriteError(
                "redirect changes nothing (set scheme, host, port or path): "
                "it would send the client to the same URL forever"
            )
        return cls(status, scheme, host, port, path, strip_query)

    @property
    def status(self) -> int:
        """The response status: 301, 302, 303, 307 or 308."""
        return self._status

    def location(self, scheme: str, host: str, target: str) -> str:
        """The absolute URL to send the client to, for a request made with `scheme`,
        Host header `host` (may hold ':port') and request target `target`.

        With a configured host, the port is the configured one or none; without,
        the request's port is kept, unless port is configured, or the scheme
        changes and the request's port was its scheme's default (http://h:80
        -> https://h). A port that is the default of the new scheme is left out.
        Raises RewriteError when the Host or target cannot go in a Location
        header (missing or malformed Host, a target not starting with '/',
        whitespace or control characters).
        """
        scheme = scheme.lower()
        new_scheme = self._scheme or scheme
        port: int | None
        if self._host is not None:
            name, port = self._host, self._port
        else:
            name, request_port = _split_host(host)
            if self._port is not None:
                port = self._port
            elif new_scheme != scheme and request_port == _DEFAULT_PORTS.get(scheme):
                port = None
            else:
                port = request_port
        if port is not None and port == _DEFAULT_PORTS.get(new_scheme):
            port = None
        path, query = split_target(target)
        if self._path is not None:
            path = self._path
        elif not path.startswith("/"):
            raise RewriteError(f"cannot redirect: target {target!r} does not start with '/'")
        url = f"{new_scheme}://{name}{'' if port is None else f':{port}'}{path}"
        if query and not self._strip_query:
            url = f"{url}?{query}"
        if _has_unsafe_char(url):
            raise RewriteError(f"cannot redirect: unsafe characters in target {target!r}")
        return url

    def describe(self) -> str:
        """One line for `meshgate explain`."""
        parts = [f"redirect {self._status}"]
        for label, value in (
            ("scheme", self._scheme),
            ("host", self._host),
            ("port", self._port),
            ("path", self._path),
        ):
            if value is not None:
                parts.append(f"{label} {value}")
        if self._strip_query:
            parts.append("drop query")
        return ", ".join(parts)
