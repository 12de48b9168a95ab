"""Radix-tree router (sans-IO).

Path patterns are split on ``/`` into segments; a segment is static text,
``:name`` (one segment captured into ``params[name]``) or ``*`` (the rest of
the path, zero or more segments, captured into ``params["*"]``; only allowed
last). Empty segments are ignored, so ``/a//b/`` matches ``/a/b``.

Priority at every depth: static beats param beats wildcard, with
backtracking: when a deeper static branch fails, the param branch is tried,
then the wildcard. A node only counts as a match when it has a route for the
request method (or for any method); nodes that match the path but not the
method are remembered so the caller can answer 405 with ``Allow``.

Host patterns: exact (``api.example.com``) or a leading wildcard
(``*.example.com``, which matches one or more labels before the suffix).
Routes without hosts match any host. A request is tried against the tree for
its exact host, then the wildcard trees from the longest suffix down, then
the any-host tree; the first full match wins.

Several routes may share a path shape and method: each may carry a *guard*
(header and query conditions, `meshgate.core.matchers.RequestMatcher`) and
they are tried in the order they were added; the first whose guard accepts
the request wins, and when none does the walk backtracks as if the node had
no route. Regex routes (`add_regex`) are tried after the tree, in the order
added, against the request path as received (not percent-decoded); their
named groups become params.

The table is immutable once built: build a new one aside and swap the
reference to reload.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar
from urllib.parse import unquote

T = TypeVar("T")

ANY_METHOD = "*"


class RouteConflictError(ValueError):
    """Two routes name the parameter at the same path position differently."""


class Guard(Protocol):
    """Extra conditions on a route (headers, query), checked after the path matched."""

    def test(self, headers: Sequence[tuple[str, str]], query_string: str) -> bool: ...


class PatternError(ValueError):
    """A path or host pattern is malformed."""


class Match(Generic[T]):
    """A full match: the route value and the captured parameters.

    A plain slotted class, not a frozen dataclass: one is built per request.
    """

    __slots__ = ("params", "route")

    def __init__(self, route: T, params: dict[str, str]) -> None:
        self.route = route
        self.params = params

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Match):
            return NotImplemented
        return bool(self.route == other.route and self.params == other.params)

    __hash__ = None  # type: ignore[assignment]  # mutable params: unhashable, like a dict

    def __repr__(self) -> str:
        return f"Match(route={self.route!r}, params={self.params!r})"


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    """The path matched at least one route, but none for the method."""

    allowed: tuple[str, ...]


class _Node(Generic[T]):
    __slots__ = ("children", "param", "param_name", "routes", "wildcard")

    def __init__(self, param_name: str = "") -> None:
        self.children: dict[str, _Node[T]] = {}
        self.param: _Node[T] | None = None
        self.param_name = param_name
        self.wildcard: _Node[T] | None = None
        # (methods, guard, route) in the order added; methods holds "*" for any
        self.routes: list[tuple[frozenset[str], Guard | None, T]] = []


class _RegexRoute(Generic[T]):
    __slots__ = ("guard", "methods", "pattern", "route")

    def __init__(
        self, pattern: re.Pattern[str], methods: frozenset[str], guard: Guard | None, route: T
    ) -> None:
        self.pattern = pattern
        self.methods = methods
        self.guard = guard
        self.route = route

    def allows(self, method: str) -> bool:
        m = self.methods
        return ANY_METHOD in m or method in m or (method == "HEAD" and "GET" in m)


def split_path(path: str) -> list[str]:
    """Split a request path into percent-decoded, non-empty segments."""
    return [unquote(s) if "%" in s else s for s in path.split("/") if s]


def parse_pattern(pattern: str) -> list[str]:
    """Validate a route path pattern and return its segments."""
    if not pattern.startswith("/"):
        raise PatternError(f"path pattern {pattern!r} must start with '/'")
    segments = [s for s in pattern.split("/") if s]
    names: set[str] = set()
    for i, seg in enumerate(segments):
        if seg == "*":
            if i != len(segments) - 1:
                raise PatternError(f"path pattern {pattern!r}: '*' must be the last segment")
        elif seg.startswith(":"):
            name = seg[1:]
            if not name.isidentifier():
                raise PatternError(
                    f"path pattern {pattern!r}: parameter name {name!r} is not an identifier"
                )
            if name in names:
                raise PatternError(f"path pattern {pattern!r}: parameter {name!r} repeated")
            names.add(name)
        elif "*" in seg or ":" in seg[:1]:
            raise PatternError(f"path pattern {pattern!r}: bad segment {seg!r}")
    return segments


def validate_host_pattern(host: str) -> str:
    """Lower-case and check a host pattern; return it normalised."""
    h = host.strip().lower()
    if not h:
        raise PatternError("host pattern is empty")
    body = h[2:] if h.startswith("*.") else h
    if not body or "*" in body or "/" in body or " " in body:
        raise PatternError(f"host pattern {host!r}: use 'name.example.com' or '*.example.com'")
    return h


class _Tree(Generic[T]):
    __slots__ = ("regexes", "root")

    def __init__(self) -> None:
        self.root: _Node[T] = _Node()
        self.regexes: list[_RegexRoute[T]] = []

    def conflict(self, segments: Sequence[str], pattern: str) -> str | None:
        """Why adding this route would fail, without changing the tree; None if it fits."""
        node: _Node[T] | None = self.root
        for seg in segments:
            assert node is not None
            if seg == "*":
                node = node.wildcard
            elif seg.startswith(":"):
                if node.param is not None and node.param.param_name != seg[1:]:
                    return (
                        f"path pattern {pattern!r}: parameter '{seg}' conflicts with "
                        f"':{node.param.param_name}' already registered at the same position"
                    )
                node = node.param
            else:
                node = node.children.get(seg)
            if node is None:
                return None
        return None

    def insert(
        self, segments: Sequence[str], methods: Sequence[str], guard: Guard | None, route: T
    ) -> None:
        node = self.root
        for seg in segments:
            if seg == "*":
                if node.wildcard is None:
                    node.wildcard = _Node()
                node = node.wildcard
            elif seg.startswith(":"):
                if node.param is None:
                    node.param = _Node(param_name=seg[1:])
                node = node.param
            else:
                child = node.children.get(seg)
                if child is None:
                    child = node.children[seg] = _Node()
                node = child
        node.routes.append((frozenset(methods), guard, route))

    def match(self, segments: list[str], req: _Req) -> tuple[T, dict[str, str]] | None:
        params: dict[str, str] = {}
        route = self._walk(self.root, segments, 0, req, params)
        if route is not None:
            return route, params
        if self.regexes:
            return self._match_regex(req)
        return None

    def _match_regex(self, req: _Req) -> tuple[T, dict[str, str]] | None:
        for rx in self.regexes:
            m = rx.pattern.fullmatch(req.path)
            if m is None:
                continue
            if not rx.allows(req.method):
                req.allowed.update(rx.methods)
                continue
            if rx.guard is None or rx.guard.test(req.headers, req.query):
                return rx.route, {k: v for k, v in m.groupdict().items() if v is not None}
        return None

    def _walk(
        self,
        node: _Node[T],
        segments: list[str],
        index: int,
        req: _Req,
        params: dict[str, str],
    ) -> T | None:
        if index == len(segments):
            found = self._take(node, req)
            if found is not None:
                return found
            # `*` also matches zero remaining segments.
            if node.wildcard is not None:
                found = self._take(node.wildcard, req)
                if found is not None:
                    params["*"] = ""
                return found
            return None
        seg = segments[index]
        child = node.children.get(seg)
        if child is not None:
            found = self._walk(child, segments, index + 1, req, params)
            if found is not None:
                return found
        param = node.param
        if param is not None:
            found = self._walk(param, segments, index + 1, req, params)
            if found is not None:
                params[param.param_name] = seg
                return found
        wild = node.wildcard
        if wild is not None:
            found = self._take(wild, req)
            if found is not None:
                params["*"] = "/".join(segments[index:])
                return found
        return None

    @staticmethod
    def _take(node: _Node[T], req: _Req) -> T | None:
        """The first route added here that takes the method and whose guard accepts.

        HEAD falls back to routes for GET only after every route that names
        HEAD (or any method) was tried.
        """
        routes = node.routes
        if not routes:
            return None
        method = req.method
        seen = False
        for methods, guard, route in routes:
            if method in methods or ANY_METHOD in methods:
                seen = True
                if guard is None or guard.test(req.headers, req.query):
                    return route
        if method == "HEAD":
            for methods, guard, route in routes:
                if "GET" in methods:
                    seen = True
                    if guard is None or guard.test(req.headers, req.query):
                        return route
        if not seen:
            for methods, _, _ in routes:
                req.allowed.update(methods)
        return None


class _Req:
    """What one lookup needs about the request, plus the methods seen (for 405)."""

    __slots__ = ("allowed", "headers", "method", "path", "query")

    def __init__(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], query: str
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.query = query
        self.allowed: set[str] = set()


class Router(Generic[T]):
    """Immutable-after-build route table: ``add`` everything, then ``match``."""

    __slots__ = ("_any", "_exact", "_wild")

    def __init__(self) -> None:
        self._exact: dict[str, _Tree[T]] = {}
        self._wild: list[tuple[str, _Tree[T]]] = []  # (".example.com", tree), longest first
        self._any: _Tree[T] = _Tree()

    def add(
        self,
        path: str,
        route: T,
        methods: Iterable[str] | None = None,
        hosts: Iterable[str] | None = None,
        *,
        guard: Guard | None = None,
    ) -> None:
        """Register ``route`` for ``path`` (and ``methods``/``hosts``; None = any).

        ``guard``, when given, must also accept the request. Routes added for
        the same path shape and method are tried in the order added.
        """
        segments = parse_pattern(path)
        method_list = _methods(methods)
        trees = self._trees_for(hosts)
        for tree in trees:  # all checks first: a refused route changes nothing
            problem = tree.conflict(segments, path)
            if problem is not None:
                raise RouteConflictError(problem)
        for tree in trees:
            tree.insert(segments, method_list, guard, route)

    def add_regex(
        self,
        pattern: str,
        route: T,
        methods: Iterable[str] | None = None,
        hosts: Iterable[str] | None = None,
        *,
        guard: Guard | None = None,
    ) -> None:
        """Register ``route`` for paths the regex matches whole (tried after the tree)."""
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise PatternError(f"path regex {pattern!r}: {exc}") from None
        entry = _RegexRoute(compiled, frozenset(_methods(methods)), guard, route)
        for tree in self._trees_for(hosts):
            tree.regexes.append(entry)

    def _trees_for(self, hosts: Iterable[str] | None) -> list[_Tree[T]]:
        if not hosts:
            return [self._any]
        trees: list[_Tree[T]] = []
        for raw in hosts:
            host = validate_host_pattern(raw)
            if host.startswith("*."):
                suffix = host[1:]
                found = next((t for s, t in self._wild if s == suffix), None)
                if found is None:
                    found = _Tree()
                    self._wild.append((suffix, found))
                    self._wild.sort(key=lambda item: len(item[0]), reverse=True)
                trees.append(found)
            else:
                trees.append(self._exact.setdefault(host, _Tree()))
        return trees

    def match(
        self,
        method: str,
        path: str,
        host: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        query: str = "",
    ) -> Match[T] | MethodNotAllowed | None:
        """Find the route for a request; None means 404.

        ``headers`` (lower-case names) and ``query`` (the raw query string)
        are only looked at by routes with a guard.
        """
        segments = split_path(path)
        req = _Req(method, path, headers, query)
        if host and (self._exact or self._wild):
            h = host.lower()
            colon = h.rfind(":")
            if colon != -1 and "]" not in h[colon:]:
                h = h[:colon]
            tree = self._exact.get(h)
            if tree is not None:
                found = tree.match(segments, req)
                if found is not None:
                    return Match(found[0], found[1])
            for suffix, tree in self._wild:
                if h.endswith(suffix) and len(h) > len(suffix):
                    found = tree.match(segments, req)
                    if found is not None:
                        return Match(found[0], found[1])
        found = self._any.match(segments, req)
        if found is not None:
            return Match(found[0], found[1])
        if req.allowed:
            methods = set(req.allowed)
            methods.discard(ANY_METHOD)
            if "GET" in methods:
                methods.add("HEAD")
            return MethodNotAllowed(tuple(sorted(methods)))
        return None


def _methods(methods: Iterable[str] | None) -> list[str]:
    return list(dict.fromkeys(m.upper() for m in methods)) if methods else [ANY_METHOD]
