"""Tests of the compression decisions (meshgate.core.encoding)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgate.core.encoding import (
    UNCHANGED,
    CompressPolicy,
    Decision,
    MediaTypeError,
    MediaTypes,
    has_directive,
    lists_weak_form,
    negotiate,
    parse_accept_encoding,
    vary_with_accept_encoding,
    weak_etag,
)

ALL = ("br", "zstd", "gzip")

# --------------------------------------------------------------------------- negotiation


@pytest.mark.parametrize(
    ("accept", "available", "chosen"),
    [
        # no field: nothing is compressed; an empty field: identity only
        (None, ALL, None),
        ("", ALL, None),
        # plain lists: the server's preference breaks ties, whatever the client's order
        ("gzip", ALL, "gzip"),
        ("gzip, deflate, br", ALL, "br"),
        ("gzip, deflate, br, zstd", ALL, "br"),
        ("zstd, gzip", ALL, "zstd"),
        ("gzip, br", ("gzip", "br"), "gzip"),
        # weights decide before the server's order
        ("br;q=0.5, gzip", ALL, "gzip"),
        ("gzip;q=0.2, br;q=0.8, zstd;q=0.9", ALL, "zstd"),
        ("br;q=0.001, gzip;q=0.002", ALL, "gzip"),
        # q=0: not acceptable
        ("br;q=0, gzip", ALL, "gzip"),
        ("br;q=0, zstd;q=0, gzip;q=0", ALL, None),
        ("gzip;q=0.000", ALL, None),
        # only codings we do not produce
        ("deflate, compress", ALL, None),
        ("gzip", ("br", "zstd"), None),
        # '*' covers codings not listed; an explicit entry overrides it
        ("*", ALL, "br"),
        ("*;q=0.5, gzip", ALL, "gzip"),
        ("*;q=0", ALL, None),
        ("br;q=0, *", ALL, "zstd"),
        ("*, br;q=0, zstd;q=0", ALL, "gzip"),
        # identity competes only when listed (or through '*'), and only when strictly higher
        ("gzip;q=0.5", ALL, "gzip"),
        ("gzip;q=0.5, identity", ALL, None),
        ("gzip;q=0.5, *", ("gzip",), None),
        ("gzip, identity", ALL, "gzip"),
        ("gzip;q=0.5, identity;q=0.5", ALL, "gzip"),
        ("identity", ALL, None),
        ("identity;q=0, gzip;q=0.1", ALL, "gzip"),
        # spelling: case, spaces, x-gzip, Q=
        ("GZIP", ALL, "gzip"),
        ("  br ;  q=1.0 ,gzip", ALL, "br"),
        ("x-gzip", ALL, "gzip"),
        ("br;Q=0, gzip", ALL, "gzip"),
        # malformed weights: the element counts as not listed
        ("br;q=2, gzip", ALL, "gzip"),
        ("br;q=abc, gzip;q=0.1", ALL, "gzip"),
        ("br;q=0.1234, gzip;q=0.1", ALL, "gzip"),
        ("br;q=-1", ALL, None),
        ("br;q=", ALL, None),
        # other parameters are ignored; empty elements are skipped
        ("br;level=5", ALL, "br"),
        (",,gzip,,", ALL, "gzip"),
        ("g zip, br", ALL, "br"),
        # a coding listed twice keeps its lower weight
        ("gzip, gzip;q=0", ALL, None),
        ("gzip;q=0, gzip", ALL, None),
        ("gzip;q=0.3, br;q=0.5, br;q=0.2", ALL, "gzip"),
    ],
)
def test_negotiate(accept: str | None, available: tuple[str, ...], chosen: str | None) -> None:
    assert negotiate(accept, available) == chosen


def test_parse_accept_encoding() -> None:
    assert parse_accept_encoding("gzip;q=0.5, BR, x-gzip;q=0.7, *;q=0, bad;q=9") == {
        "gzip": 0.5,
        "br": 1.0,
        "*": 0.0,
    }


ELEMENT = st.tuples(
    st.sampled_from(["br", "zstd", "gzip", "x-gzip", "identity", "*", "deflate", "BR", "Gzip"]),
    st.one_of(
        st.none(),
        st.sampled_from(["0", "0.0", "0.5", "0.25", "1", "1.000", "0.001", "2", "x", ""]),
    ),
)


def _field(elements: list[tuple[str, str | None]]) -> str:
    return ", ".join(name if q is None else f"{name};q={q}" for name, q in elements)


@given(
    st.lists(ELEMENT, max_size=8),
    st.permutations(list(ALL)).flatmap(lambda p: st.integers(1, 3).map(lambda n: tuple(p[:n]))),
)
def test_negotiation_properties(
    elements: list[tuple[str, str | None]], available: tuple[str, ...]
) -> None:
    accept = _field(elements)
    chosen = negotiate(accept, available)
    weights = parse_accept_encoding(accept)
    star = weights.get("*", 0.0)

    def q(coding: str) -> float:
        return weights.get(coding, star)

    # the element order never changes the answer
    assert negotiate(_field(list(reversed(elements))), available) == chosen
    if chosen is None:
        # either nothing is acceptable, or identity is strictly preferred
        best = max(q(c) for c in available)
        identity = weights.get("identity", weights.get("*"))
        assert best == 0 or (identity is not None and identity > best)
    else:
        assert chosen in available
        assert q(chosen) > 0
        assert all(q(other) <= q(chosen) for other in available)
        # ties go to the earliest coding the server offers
        assert all(q(other) < q(chosen) for other in available[: available.index(chosen)])


@given(st.text(max_size=60))
def test_negotiation_never_fails_on_any_text(text: str) -> None:
    chosen = negotiate(text, ALL)
    assert chosen is None or chosen in ALL


# --------------------------------------------------------------------------- media types


TYPES = MediaTypes(["text/*", "application/json", "application/*+xml", "image/svg+xml"])


@pytest.mark.parametrize(
    ("content_type", "matches"),
    [
        ("text/html", True),
        ("text/plain; charset=utf-8", True),
        ("TEXT/CSS", True),
        ("application/json", True),
        ("Application/JSON ; charset=UTF-8", True),
        ("application/atom+xml", True),
        ("application/vnd.api+xml;q=1", True),
        ("image/svg+xml", True),
        ("application/xml", False),  # application/*+xml is for suffixes only
        ("application/jsonp", False),
        ("image/png", False),
        ("application/octet-stream", False),
        ("text", False),
        ("text/", False),
        ("", False),
        (None, False),
    ],
)
def test_media_types(content_type: str | None, matches: bool) -> None:
    assert TYPES.matches(content_type) is matches


@pytest.mark.parametrize(
    "pattern", ["*/*", "text", "text/", "/json", "text/html*", "application/*json", "a b/c", "*+x"]
)
def test_media_type_patterns_refused(pattern: str) -> None:
    with pytest.raises(MediaTypeError):
        MediaTypes([pattern])


# --------------------------------------------------------------------------- header helpers


def test_vary_merge() -> None:
    assert vary_with_accept_encoding([]) == "Accept-Encoding"
    assert vary_with_accept_encoding(["Origin"]) == "Origin, Accept-Encoding"
    assert (
        vary_with_accept_encoding(["origin, cookie", "x-a"])
        == "origin, cookie, x-a, Accept-Encoding"
    )
    assert vary_with_accept_encoding(["Origin, accept-encoding"]) is None
    assert vary_with_accept_encoding(["*"]) is None
    assert vary_with_accept_encoding([" , "]) == "Accept-Encoding"


def test_etags_and_directives() -> None:
    assert weak_etag('"abc"') == 'W/"abc"'
    assert weak_etag('W/"abc"') == 'W/"abc"'
    assert lists_weak_form('"x", W/"abc"', '"abc"')
    assert lists_weak_form('W/"a,b"', '"a,b"')
    assert not lists_weak_form('"abc"', '"abc"')
    assert not lists_weak_form("*", '"abc"')
    assert has_directive(["public, No-Transform"], "no-transform")
    assert has_directive(["max-age=5", "no-transform"], "no-transform")
    assert not has_directive(["private=no-transform"], "no-transform")


# --------------------------------------------------------------------------- decisions


POLICY = CompressPolicy(ALL, 1024, MediaTypes(["text/*", "application/json"]))
COMPRESSIBLE: dict[str, Any] = {
    "status": 200,
    "accept_encoding": "gzip, br",
    "content_type": "application/json",
    "length": 5000,
}


def decide(**changes: Any) -> Decision:
    return POLICY.decide(**{**COMPRESSIBLE, **changes})


def test_compressible_response() -> None:
    assert decide() == Decision("br", vary=True, weaken_etag=False)
    assert decide(etag='"v1"') == Decision("br", vary=True, weaken_etag=True)
    assert decide(length=None) == Decision("br", vary=True)  # unknown length: compressed
    assert decide(length=1024).coding == "br"
    assert decide(status=404).coding == "br"


def test_client_without_a_coding_still_gets_vary() -> None:
    assert decide(accept_encoding=None) == Decision(None, vary=True)
    assert decide(accept_encoding="identity") == Decision(None, vary=True)
    assert decide(accept_encoding="br;q=0, gzip;q=0") == Decision(None, vary=True)


@pytest.mark.parametrize(
    "changes",
    [
        {"status": 204},
        {"status": 206},
        {"status": 101},
        {"status": 103},
        {"status": 304},
        {"ranged": True},
        {"length": 1023},
        {"length": 0},
        {"content_type": "image/png"},
        {"content_type": None},
        {"content_encoding": "gzip"},
        {"content_encoding": "identity"},
        {"cache_control": ["public", "no-transform"]},
        {"request_cache_control": ["no-transform"]},
    ],
)
def test_responses_left_alone(changes: dict[str, Any]) -> None:
    assert decide(**changes) == UNCHANGED


def test_304_for_a_variant_we_compressed() -> None:
    assert decide(status=304, etag='"v1"', if_none_match='W/"v1"') == Decision(
        None, vary=True, weaken_etag=True
    )
    assert decide(status=304, etag='"v1"', if_none_match='"v1"') == UNCHANGED
    assert decide(status=304, etag='W/"v1"', if_none_match='W/"v1"') == UNCHANGED
    assert decide(status=304, etag=None, if_none_match='W/"v1"') == UNCHANGED


@given(st.text(max_size=40))
def test_media_type_check_never_fails(content_type: str) -> None:
    assert TYPES.matches(content_type) in (True, False)


@given(
    st.lists(st.sampled_from(["Origin", "cookie", "Accept-Encoding", "x-a", " ", "*"]), max_size=5)
)
def test_vary_names_accept_encoding_once(names: list[str]) -> None:
    values = [", ".join(names)] if names else []
    merged = vary_with_accept_encoding(values)
    listed = [n.strip().lower() for n in ", ".join(names).split(",") if n.strip()]
    if merged is None:
        assert "accept-encoding" in listed or "*" in listed
    else:
        parts = [n.strip().lower() for n in merged.split(",")]
        assert parts.count("accept-encoding") == 1
        assert parts[:-1] == listed  # the existing names kept, in order
