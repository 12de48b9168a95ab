"""Dot-segment removal: routing and the upstream must see the same path."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgate.http.paths import normalize_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/public/../admin/x", "/admin/x"),
        ("/a/./b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/../../x", "/x"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/%2E%2E/b", "/b"),
        ("/a/.%2e/b", "/b"),
        ("/a/../b?next=/../c", "/b?next=/../c"),
        ("/x/.hidden/y", "/x/.hidden/y"),
        ("/a/..b/c", "/a/..b/c"),
        ("/a%2f..%2fb", "/a%2f..%2fb"),
    ],
)
def test_dot_segments_removed(target: str, expected: str) -> None:
    assert normalize_target(target) == expected


segment = st.sampled_from(["a", "b", "c1", ".", "..", "%2e", "%2e%2e", ".x", "x.."])


@given(st.lists(segment, max_size=12))
def test_agrees_with_posix_normalisation(segments: list[str]) -> None:
    target = "/" + "/".join(segments)
    got = normalize_target(target)
    assert ".." not in got.split("/") and "." not in got.split("/")
    literal = "/" + "/".join(s.replace("%2e", ".") for s in segments)
    assert (got.rstrip("/") or "/") == posixpath.normpath(literal)
