"""Response compression decisions, sans-IO: which content coding a client gets
(RFC 9110 §12.5.3 ``Accept-Encoding``) and whether a response qualifies.

Everything here works on plain header values, so the HTTP layer only reads
fields and applies the `Decision`; docs/compression.md explains the rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_QVALUE = re.compile(r"^(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)$")
_ALIASES = {"x-gzip": "gzip"}  # RFC 9110 §8.4.1.3
_ENTITY_TAG = re.compile(r'(W/)?("[^"]*")')


def parse_accept_encoding(value: str) -> dict[str, float]:
    """Each coding listed in an ``Accept-Encoding`` value, lower-case, with its weight.

    ``x-gzip`` counts as ``gzip``. An element whose name is not a token or whose
    weight is not a valid qvalue is left out (as if not listed); a coding listed
    twice keeps the lower weight, so the order of elements never matters.
    """
    out: dict[str, float] = {}
    for element in value.split(","):
        name, *params = element.split(";")
        name = name.strip().lower()
        if not _TOKEN.match(name):
            continue
        q: float | None = 1.0
        for param in params:
            key, _, raw = param.partition("=")
            if key.strip().lower() == "q":
                raw = raw.strip()
                q = float(raw) if _QVALUE.match(raw) else None
        if q is None:
            continue
        name = _ALIASES.get(name, name)
        previous = out.get(name)
        out[name] = q if previous is None else min(q, previous)
    return out


def negotiate(accept_encoding: str | None, available: Sequence[str]) -> str | None:
    """The coding of ``available`` (the server's order of preference) to answer with,
    or None to send the content as it is (identity).

    - No ``Accept-Encoding`` field: None. RFC 9110 would allow any coding, but a
      client that says nothing may not decode anything (curl without
      ``--compressed``), so, like nginx and Envoy, nothing is compressed.
    - A coding's weight is its own, else that of ``*``, else 0; weight 0 means
      "not acceptable". The highest weight wins; ties go to the earlier coding
      of ``available``.
    - ``identity`` (listed, or through ``*``) beats the best coding only with a
      strictly higher weight; unlisted, it never does.
    """
    if accept_encoding is None:
        return None
    weights = parse_accept_encoding(accept_encoding)
    star = weights.get("*")
    best: str | None = None
    best_q = 0.0
    for coding in available:
        q = weights.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    identity = weights.get("identity", star)
    if best is None or (identity is not None and identity > best_q):
        return None
    return best


class MediaTypeError(ValueError):
    """A content-type pattern that is not ``type/subtype``, ``type/*`` or ``type/*+suffix``."""


class MediaTypes:
    """An allow list of media types: exact ``type/subtype``, a whole type ``type/*``,
    or a structured-syntax suffix ``type/*+suffix`` (``application/*+json``).

    Parameters of the checked value (``; charset=utf-8``) and case are ignored.
    """

    __slots__ = ("_exact", "_suffixes", "_types", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._exact: set[str] = set()
        self._types: set[str] = set()
        self._suffixes: set[tuple[str, str]] = set()
        for pattern in self.patterns:
            kind, slash, sub = pattern.strip().lower().partition("/")
            if not slash or not _TOKEN.match(kind) or kind == "*":
                raise MediaTypeError(f"{pattern!r} is not a media type (type/subtype)")
            if sub == "*":
                self._types.add(kind)
            elif sub.startswith("*+") and _TOKEN.match(sub[2:]) and "*" not in sub[2:]:
                self._suffixes.add((kind, sub[1:]))
            elif _TOKEN.match(sub) and "*" not in sub:
                self._exact.add(f"{kind}/{sub}")
            else:
                raise MediaTypeError(f"{pattern!r}: use type/subtype, type/* or type/*+suffix")

    def matches(self, content_type: str | None) -> bool:
        if content_type is None:
            return False
        media = content_type.partition(";")[0].strip().lower()
        kind, slash, sub = media.partition("/")
        if not slash or not sub:
            return False
        if media in self._exact or kind in self._types:
            return True
        plus = sub.rfind("+")
        return plus > 0 and (kind, sub[plus:]) in self._suffixes


def has_directive(values: Iterable[str], name: str) -> bool:
    """Whether Cache-Control field values carry directive ``name`` (lower-case)."""
    for value in values:
        for part in value.split(","):
            if part.partition("=")[0].strip().lower() == name:
                return True
    return False


def vary_with_accept_encoding(values: Sequence[str]) -> str | None:
    """The one ``Vary`` value that adds ``Accept-Encoding`` to ``values`` (the
    response's Vary field lines), or None when they already cover it (they name
    it, or ``*``)."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if any(n == "*" or n.lower() == "accept-encoding" for n in names):
        return None
    return ", ".join([*names, "Accept-Encoding"])


def weak_etag(etag: str) -> str:
    """``"x"`` -> ``W/"x"``: a compressed body is not byte-for-byte the tagged one."""
    etag = etag.strip()
    return etag if etag.startswith("W/") else f"W/{etag}"


def lists_weak_form(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` lists the strong ``etag`` in its weak form ``W/etag``."""
    etag = etag.strip()
    return any(weak and tag == etag for weak, tag in _ENTITY_TAG.findall(if_none_match))


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one response."""

    coding: str | None = None  # compress with this coding; None: the body goes as it is
    vary: bool = False  # add Accept-Encoding to Vary: the answer depends on it
    weaken_etag: bool = False  # mark a strong ETag weak (W/)


UNCHANGED = Decision()
_NO_COMPRESSION_STATUS = frozenset({204, 206, 304})


@dataclass(frozen=True, slots=True)
class CompressPolicy:
    """A route's compression settings and the rules applying them."""

    codings: tuple[str, ...]  # enabled, in the server's order of preference
    min_size_bytes: int
    types: MediaTypes

    def decide(
        self,
        *,
        status: int,
        accept_encoding: str | None,
        content_type: str | None,
        length: int | None,
        content_encoding: str | None = None,
        cache_control: Sequence[str] = (),
        request_cache_control: Sequence[str] = (),
        ranged: bool = False,
        etag: str | None = None,
        if_none_match: str | None = None,
    ) -> Decision:
        """Decide for one response.

        ``length``: the body size when known (Content-Length); ``ranged``: the
        request asked for a range. A response compressed for some clients varies
        by Accept-Encoding even when this client gets it as it is (``vary``); one
        that is never compressed (wrong type, too small, already encoded,
        ``no-transform``) does not.
        """
        if status < 200 or status in _NO_COMPRESSION_STATUS or ranged:
            if status == 304 and _revalidates_weakened(etag, if_none_match):
                # The client revalidates a variant we compressed (it holds our weak
                # tag): answer with that variant's validator and Vary.
                return Decision(None, vary=True, weaken_etag=True)
            return UNCHANGED
        if content_encoding is not None and content_encoding.strip():
            return UNCHANGED
        if has_directive(cache_control, "no-transform") or has_directive(
            request_cache_control, "no-transform"
        ):
            return UNCHANGED
        if length == 0 or (length is not None and length < self.min_size_bytes):
            return UNCHANGED
        if not self.types.matches(content_type):
            return UNCHANGED
        coding = negotiate(accept_encoding, self.codings)
        if coding is None:
            return Decision(None, vary=True)
        return Decision(coding, vary=True, weaken_etag=etag is not None)


def _revalidates_weakened(etag: str | None, if_none_match: str | None) -> bool:
    """A strong ``etag`` the client's ``If-None-Match`` holds in the weak form."""
    if etag is None or if_none_match is None or etag.lstrip().startswith("W/"):
        return False
    return lists_weak_form(if_none_match, etag)
