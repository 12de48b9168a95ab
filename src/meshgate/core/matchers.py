"""Header and query-parameter matchers for routes (sans-IO).

A matcher checks one header or one query parameter with exactly one
criterion: an exact value (case-sensitive), a regex that must match the
whole value (``fullmatch``), or presence / absence. A route's
`RequestMatcher` ANDs all of them.

Headers arrive as ``(lower-case name, value)`` pairs, a name possibly
repeated. An exact or regex header matcher passes when any single field
value matches, or when the values joined with ``", "`` match (RFC 9110 list
semantics, so ``Accept: a`` + ``Accept: b`` also matches ``a, b``). Query
parameters have no list syntax: a repeated parameter passes when any of its
values matches.

Everything is validated and compiled once, at config load: `test` is the
per-request path and formats no strings; `failure` explains a miss for the
``explain`` CLI.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import ClassVar
from urllib.parse import unquote_plus


class MatcherError(ValueError):
    """A matcher is malformed (bad name, bad regex, not exactly one criterion)."""


EXACT = "exact"
REGEX = "regex"
PRESENT = "present"
ABSENT = "absent"

# RFC 9110 section 5.6.2: token = 1*tchar
TCHAR = frozenset("!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters)

# Longest value quoted whole in a failure reason; longer ones are cut.
_SHOWN = 64


def _show(value: str) -> str:
    if len(value) > _SHOWN:
        return repr(value[:_SHOWN]) + "..."
    return repr(value)


def _criterion(
    what: str, name: str, exact: str | None, regex: str | None, present: bool | None
) -> tuple[str, str, re.Pattern[str] | None]:
    """Check that exactly one criterion is given; return (kind, value, compiled regex)."""
    given = [k for k, v in ((EXACT, exact), (REGEX, regex), (PRESENT, present)) if v is not None]
    if len(given) != 1:
        got = ", ".join(given) if given else "none"
        raise MatcherError(
            f"{what} matcher {name!r}: give exactly one of exact, regex, present (got {got})"
        )
    if exact is not None:
        return EXACT, exact, None
    if regex is not None:
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise MatcherError(f"{what} matcher {name!r}: invalid regex {regex!r}: {exc}") from None
        return REGEX, regex, pattern
    return (PRESENT if present else ABSENT), "", None


class _FieldMatch:
    """What header and query matchers share: one name, one criterion."""

    __slots__ = ("_pattern", "kind", "name", "value")

    _what: ClassVar[str]  # "header" or "query", for describe()

    def __init__(self, name: str, kind: str, value: str, pattern: re.Pattern[str] | None) -> None:
        self.name = name
        self.kind = kind
        self.value = value
        self._pattern = pattern

    def describe(self) -> str:
        """Short text for ``explain``: ``header accept ~ /json$/``, ``query v = '2'``..."""
        head = f"{self._what} {self.name}"
        if self.kind == EXACT:
            return f"{head} = {self.value!r}"
        if self.kind == REGEX:
            return f"{head} ~ /{self.value}/"
        return f"{head} {self.kind}"

    def _any_matches(self, values: Sequence[str]) -> bool:
        if self.kind == EXACT:
            return self.value in values
        pattern = self._pattern
        assert pattern is not None
        return any(pattern.fullmatch(v) is not None for v in values)


class HeaderMatch(_FieldMatch):
    """One header: exact value, whole-value regex, present or absent."""

    __slots__ = ()

    _what = "header"

    @classmethod
    def build(
        cls,
        name: str,
        *,
        exact: str | None = None,
        regex: str | None = None,
        present: bool | None = None,
    ) -> HeaderMatch:
        """Validate and compile. ``present=False`` means the header must be absent.

        The name must be an HTTP token; it is lower-cased.
        """
        if not name:
            raise MatcherError("header matcher '': name is empty")
        bad = next((c for c in name if c not in TCHAR), None)
        if bad is not None:
            raise MatcherError(
                f"header matcher {name!r}: name is not an HTTP token (invalid character {bad!r})"
            )
        kind, value, pattern = _criterion("header", name, exact, regex, present)
        return cls(name.lower(), kind, value, pattern)

    def test(self, headers: Sequence[tuple[str, str]]) -> bool:
        """Whether the headers (lower-case names) satisfy this matcher."""
        name = self.name
        values = [v for n, v in headers if n == name]
        kind = self.kind
        if kind == PRESENT:
            return bool(values)
        if kind == ABSENT:
            return not values
        if not values:
            return False
        return self._any_matches(values) or (
            len(values) > 1 and self._any_matches((", ".join(values),))
        )

    def failure(self, headers: Sequence[tuple[str, str]]) -> str | None:
        """None when the headers match, else a short reason why not."""
        if self.test(headers):
            return None
        name = self.name
        values = [v for n, v in headers if n == name]
        if self.kind == ABSENT:
            return f"header {name} is present, wanted absent"
        if not values:
            return f"header {name} is missing"
        joined = ", ".join(values)
        if self.kind == EXACT:
            return f"header {name} is {_show(joined)}, wanted {self.value!r}"
        return f"header {name} {_show(joined)} does not match regex {self.value!r}"


class QueryMatch(_FieldMatch):
    """One query parameter (name percent-decoded, case-sensitive).

    Exact value, whole-value regex, present or absent; a repeated parameter
    matches when any of its values does.
    """

    __slots__ = ()

    _what = "query"

    @classmethod
    def build(
        cls,
        name: str,
        *,
        exact: str | None = None,
        regex: str | None = None,
        present: bool | None = None,
    ) -> QueryMatch:
        """Validate and compile. ``present=False`` means the parameter must be absent.

        The name is compared as written against the request's decoded names.
        """
        if not name:
            raise MatcherError("query matcher '': name is empty")
        kind, value, pattern = _criterion("query", name, exact, regex, present)
        return cls(name, kind, value, pattern)

    def test(self, query: Mapping[str, list[str]]) -> bool:
        """Whether the parsed query (see `parse_query`) satisfies this matcher."""
        kind = self.kind
        if kind == PRESENT:
            return self.name in query
        if kind == ABSENT:
            return self.name not in query
        values = query.get(self.name)
        return values is not None and self._any_matches(values)

    def failure(self, query: Mapping[str, list[str]]) -> str | None:
        """None when the query matches, else a short reason why not."""
        if self.test(query):
            return None
        name = self.name
        if self.kind == ABSENT:
            return f"query {name} is present, wanted absent"
        values = query.get(name)
        if not values:
            return f"query {name} is missing"
        if len(values) == 1:
            if self.kind == EXACT:
                return f"query {name} is {_show(values[0])}, wanted {self.value!r}"
            return f"query {name} {_show(values[0])} does not match regex {self.value!r}"
        shown = ", ".join(_show(v) for v in values)
        if self.kind == EXACT:
            return f"query {name} has values {shown}, wanted {self.value!r}"
        return f"query {name} has values {shown}, none matches regex {self.value!r}"


def parse_query(query: str) -> dict[str, list[str]]:
    """Parse a raw query string (no leading ``?``) into name -> values, in order.

    Fields are split on ``&`` (empty fields skipped); ``=`` is optional
    (``flag`` gives ``{"flag": [""]}``); names and values are
    percent-decoded with ``+`` as space. Malformed escapes are kept
    literally, bytes that are not UTF-8 become U+FFFD. Never raises.
    """
    result: dict[str, list[str]] = {}
    for field in query.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        if "%" in value or "+" in value:
            value = unquote_plus(value)
        values = result.get(name)
        if values is None:
            result[name] = [value]
        else:
            values.append(value)
    return result


class RequestMatcher:
    """All of a route's header and query matchers, ANDed."""

    __slots__ = ("_headers", "_query")

    def __init__(
        self, headers: Sequence[HeaderMatch] = (), query: Sequence[QueryMatch] = ()
    ) -> None:
        self._headers = tuple(headers)
        self._query = tuple(query)

    @property
    def empty(self) -> bool:
        """True when there is nothing to check (every request matches)."""
        return not self._headers and not self._query

    def test(self, headers: Sequence[tuple[str, str]], query_string: str) -> bool:
        """Whether every matcher passes; stops at the first that fails.

        The query string is parsed only when there are query matchers and
        every header matcher passed.
        """
        for header in self._headers:
            if not header.test(headers):
                return False
        if self._query:
            query = parse_query(query_string)
            for param in self._query:
                if not param.test(query):
                    return False
        return True

    def failures(self, headers: Sequence[tuple[str, str]], query_string: str) -> list[str]:
        """Every failing matcher's reason, headers first (empty when the request matches)."""
        reasons = [r for h in self._headers if (r := h.failure(headers)) is not None]
        if self._query:
            query = parse_query(query_string)
            reasons.extend(r for q in self._query if (r := q.failure(query)) is not None)
        return reasons

    def describe(self) -> list[str]:
        """One line per matcher, headers first, in configuration order."""
        return [m.describe() for m in (*self._headers, *self._query)]
