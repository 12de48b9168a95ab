"""Tests of the sans-IO header and query matchers (meshgate.core.matchers)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core import matchers
from meshgate.core.matchers import (
    HeaderMatch,
    MatcherError,
    QueryMatch,
    RequestMatcher,
    parse_query,
)

Headers = list[tuple[str, str]]

# --------------------------------------------------------------------------- header matchers

HEADER_CASES: list[tuple[str, dict[str, Any], Headers, str | None]] = [
    # exact
    ("x-api-version", {"exact": "2"}, [("x-api-version", "2")], None),
    (
        "x-api-version",
        {"exact": "2"},
        [("x-api-version", "1")],
        "header x-api-version is '1', wanted '2'",
    ),
    ("x-api-version", {"exact": "2"}, [("other", "2")], "header x-api-version is missing"),
    ("x-api-version", {"exact": "2"}, [], "header x-api-version is missing"),
    ("x-env", {"exact": "Prod"}, [("x-env", "prod")], "header x-env is 'prod', wanted 'Prod'"),
    ("x-env", {"exact": ""}, [("x-env", "")], None),
    ("x-env", {"exact": ""}, [("x-env", "x")], "header x-env is 'x', wanted ''"),
    # the matcher's name is lower-cased; request names arrive lower-case
    ("X-Api-Version", {"exact": "2"}, [("x-api-version", "2")], None),
    # several fields: any single one, or the comma-joined value
    ("accept", {"exact": "b"}, [("accept", "a"), ("accept", "b")], None),
    ("accept", {"exact": "a, b"}, [("accept", "a"), ("accept", "b")], None),
    (
        "accept",
        {"exact": "b, a"},
        [("accept", "a"), ("x", "y"), ("accept", "b")],
        "header accept is 'a, b', wanted 'b, a'",
    ),
    (
        "accept",
        {"exact": "a,b"},
        [("accept", "a"), ("accept", "b")],
        "header accept is 'a, b', wanted 'a,b'",
    ),
    # regex: whole value (fullmatch), not search
    ("accept", {"regex": r"application/.*json"}, [("accept", "application/vnd+json")], None),
    (
        "accept",
        {"regex": "json"},
        [("accept", "application/json")],
        "header accept 'application/json' does not match regex 'json'",
    ),
    (
        "accept",
        {"regex": "text/.*"},
        [("accept", "application/json, text/html")],
        "header accept 'application/json, text/html' does not match regex 'text/.*'",
    ),
    ("x-v", {"regex": "[0-9]+"}, [("x-v", "12"), ("x-v", "x")], None),
    ("x-v", {"regex": r"\d, \d"}, [("x-v", "1"), ("x-v", "2")], None),
    (
        "x-v",
        {"regex": "[0-9]"},
        [("x-v", "12"), ("x-v", "x")],
        "header x-v '12, x' does not match regex '[0-9]'",
    ),
    ("x-v", {"regex": ".*"}, [], "header x-v is missing"),
    ("x-v", {"regex": "(?i)abc"}, [("x-v", "ABC")], None),
    # present / absent
    ("x-debug", {"present": True}, [("x-debug", "")], None),
    ("x-debug", {"present": True}, [("x-debugger", "1")], "header x-debug is missing"),
    ("x-legacy", {"present": False}, [("x-other", "1")], None),
    ("x-legacy", {"present": False}, [], None),
    (
        "x-legacy",
        {"present": False},
        [("x-legacy", "1"), ("x-legacy", "2")],
        "header x-legacy is present, wanted absent",
    ),
]


@pytest.mark.parametrize(("name", "criterion", "headers", "reason"), HEADER_CASES)
def test_header_match(
    name: str, criterion: dict[str, Any], headers: Headers, reason: str | None
) -> None:
    m = HeaderMatch.build(name, **criterion)
    assert m.failure(headers) == reason
    assert m.test(headers) is (reason is None)


def test_header_failure_cuts_long_values() -> None:
    m = HeaderMatch.build("cookie", exact="x")
    reason = m.failure([("cookie", "a" * 1000)])
    assert reason == f"header cookie is {'a' * 64!r}..., wanted 'x'"


@pytest.mark.parametrize(
    ("criterion", "text"),
    [
        ({"exact": "2"}, "header x-api-version = '2'"),
        ({"regex": "v[0-9]+"}, "header x-api-version ~ /v[0-9]+/"),
        ({"present": True}, "header x-api-version present"),
        ({"present": False}, "header x-api-version absent"),
    ],
)
def test_header_describe(criterion: dict[str, Any], text: str) -> None:
    assert HeaderMatch.build("X-API-Version", **criterion).describe() == text


@pytest.mark.parametrize(
    ("name", "criterion", "message"),
    [
        (
            "x-api-version",
            {"regex": "("},
            "header matcher 'x-api-version': invalid regex '(': "
            "missing ), unterminated subpattern at position 0",
        ),
        (
            "x-api-version",
            {},
            "header matcher 'x-api-version': give exactly one of exact, regex, present (got none)",
        ),
        (
            "x-api-version",
            {"exact": "1", "regex": "1"},
            "header matcher 'x-api-version': give exactly one of exact, regex, present "
            "(got exact, regex)",
        ),
        (
            "x-a",
            {"regex": "1", "present": False},
            "header matcher 'x-a': give exactly one of exact, regex, present (got regex, present)",
        ),
        ("", {"exact": "1"}, "header matcher '': name is empty"),
        (
            "x api",
            {"exact": "1"},
            "header matcher 'x api': name is not an HTTP token (invalid character ' ')",
        ),
        (
            "x-api:",
            {"exact": "1"},
            "header matcher 'x-api:': name is not an HTTP token (invalid character ':')",
        ),
        (
            "x-é",
            {"exact": "1"},
            "header matcher 'x-é': name is not an HTTP token (invalid character 'é')",
        ),
    ],
)
def test_header_build_errors(name: str, criterion: dict[str, Any], message: str) -> None:
    with pytest.raises(MatcherError) as info:
        HeaderMatch.build(name, **criterion)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_header_name_accepts_every_token_character() -> None:
    name = "!#$%&'*+-.^_`|~09azAZ"
    m = HeaderMatch.build(name, present=True)
    assert m.test([(name.lower(), "")])


# --------------------------------------------------------------------------- query matchers

QUERY_CASES: list[tuple[str, dict[str, Any], str, str | None]] = [
    ("v", {"exact": "2"}, "v=2", None),
    ("v", {"exact": "2"}, "v=1", "query v is '1', wanted '2'"),
    ("v", {"exact": "2"}, "", "query v is missing"),
    ("v", {"exact": "2"}, "V=2", "query v is missing"),
    ("v", {"exact": ""}, "v", None),
    ("v", {"exact": "a b"}, "v=a+b", None),
    ("v", {"exact": "a&b"}, "v=a%26b", None),
    # the request's name is percent-decoded before comparison
    ("user id", {"exact": "7"}, "user%20id=7", None),
    ("tag", {"exact": "b"}, "tag=a&tag=b", None),
    # no list semantics for query values
    ("tag", {"exact": "a,b"}, "tag=a&tag=b", "query tag has values 'a', 'b', wanted 'a,b'"),
    ("v", {"regex": "[0-9]+"}, "v=42", None),
    ("v", {"regex": "[0-9]+"}, "v=42x", "query v '42x' does not match regex '[0-9]+'"),
    ("v", {"regex": "[0-9]+"}, "x=1", "query v is missing"),
    ("tag", {"regex": "b.*"}, "tag=a&tag=bc", None),
    (
        "tag",
        {"regex": "c"},
        "tag=a&tag=b",
        "query tag has values 'a', 'b', none matches regex 'c'",
    ),
    ("debug", {"present": True}, "debug", None),
    ("debug", {"present": True}, "debug=", None),
    ("debug", {"present": True}, "debugger=1", "query debug is missing"),
    ("debug", {"present": False}, "x=1", None),
    ("debug", {"present": False}, "debug=0", "query debug is present, wanted absent"),
]


@pytest.mark.parametrize(("name", "criterion", "query", "reason"), QUERY_CASES)
def test_query_match(name: str, criterion: dict[str, Any], query: str, reason: str | None) -> None:
    m = QueryMatch.build(name, **criterion)
    parsed = parse_query(query)
    assert m.failure(parsed) == reason
    assert m.test(parsed) is (reason is None)


def test_query_name_is_case_sensitive_and_kept_as_written() -> None:
    m = QueryMatch.build("Token", present=True)
    assert m.name == "Token"
    assert m.test({"Token": ["x"]})
    assert not m.test({"token": ["x"]})


@pytest.mark.parametrize(
    ("criterion", "text"),
    [
        ({"exact": "2"}, "query v = '2'"),
        ({"regex": "[0-9]+"}, "query v ~ /[0-9]+/"),
        ({"present": True}, "query v present"),
        ({"present": False}, "query v absent"),
    ],
)
def test_query_describe(criterion: dict[str, Any], text: str) -> None:
    assert QueryMatch.build("v", **criterion).describe() == text


@pytest.mark.parametrize(
    ("name", "criterion", "message"),
    [
        (
            "v",
            {"regex": "[a-"},
            "query matcher 'v': invalid regex '[a-': unterminated character set at position 0",
        ),
        ("v", {}, "query matcher 'v': give exactly one of exact, regex, present (got none)"),
        (
            "v",
            {"exact": "1", "present": True},
            "query matcher 'v': give exactly one of exact, regex, present (got exact, present)",
        ),
        ("", {"present": True}, "query matcher '': name is empty"),
    ],
)
def test_query_build_errors(name: str, criterion: dict[str, Any], message: str) -> None:
    with pytest.raises(MatcherError) as info:
        QueryMatch.build(name, **criterion)
    assert str(info.value) == message


# --------------------------------------------------------------------------- parse_query


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("", {}),
        ("&", {}),
        ("a=1&&b=2&", {"a": ["1"], "b": ["2"]}),
        ("flag", {"flag": [""]}),
        ("flag=", {"flag": [""]}),
        ("=v", {"": ["v"]}),
        ("a=1=2", {"a": ["1=2"]}),
        ("a=1&b=2&a=3", {"a": ["1", "3"], "b": ["2"]}),
        ("q=a+b&c+d=e", {"q": ["a b"], "c d": ["e"]}),
        ("q=a%2Bb", {"q": ["a+b"]}),
        ("q=%E2%82%AC", {"q": ["€"]}),
        ("q=%41%42%43", {"q": ["ABC"]}),
        ("q=100%", {"q": ["100%"]}),
        ("q=%zz&r=%4", {"q": ["%zz"], "r": ["%4"]}),
        ("q=%FF", {"q": ["\ufffd"]}),
        ("%26=%3D", {"&": ["="]}),
        ("q=a;b", {"q": ["a;b"]}),
        ("q=é", {"q": ["é"]}),
    ],
)
def test_parse_query(raw: str, parsed: dict[str, list[str]]) -> None:
    assert parse_query(raw) == parsed


@settings(max_examples=100)
@given(
    st.dictionaries(
        st.text(max_size=8), st.lists(st.text(max_size=8), min_size=1, max_size=3), max_size=5
    )
)
def test_parse_query_round_trips_urlencode(query: dict[str, list[str]]) -> None:
    assert parse_query(urlencode(query, doseq=True)) == query


@settings(max_examples=100)
@given(st.text(alphabet=st.sampled_from("ab=&%+2F0é"), max_size=20))
def test_parse_query_never_raises_and_keeps_every_field(raw: str) -> None:
    parsed = parse_query(raw)
    assert sum(len(v) for v in parsed.values()) == len([f for f in raw.split("&") if f])


# --------------------------------------------------------------------------- consistency


@settings(max_examples=100)
@given(
    criterion=st.one_of(
        st.builds(lambda v: {"exact": v}, st.sampled_from(["a", "b", "a, b", ""])),
        st.builds(lambda v: {"regex": v}, st.sampled_from(["a", "a.*", "b|a, b"])),
        st.builds(lambda v: {"present": v}, st.booleans()),
    ),
    headers=st.lists(
        st.tuples(st.sampled_from(["x", "y"]), st.sampled_from(["a", "b", "ab", ""])),
        max_size=4,
    ),
)
def test_header_test_agrees_with_failure(criterion: dict[str, Any], headers: Headers) -> None:
    m = HeaderMatch.build("x", **criterion)
    values = [v for n, v in headers if n == "x"]
    assert m.test(headers) is (m.failure(headers) is None)
    if "present" in criterion:
        assert m.test(headers) is (bool(values) == criterion["present"])
    elif "exact" in criterion:
        wanted = criterion["exact"]
        expected = bool(values) and (wanted in values or ", ".join(values) == wanted)
        assert m.test(headers) is expected


# --------------------------------------------------------------------------- RequestMatcher


def request_matcher() -> RequestMatcher:
    return RequestMatcher(
        headers=[
            HeaderMatch.build("x-api-version", exact="2"),
            HeaderMatch.build("x-legacy", present=False),
        ],
        query=[QueryMatch.build("debug", present=True), QueryMatch.build("v", regex="[0-9]+")],
    )


def test_request_matcher_ands_everything() -> None:
    rm = request_matcher()
    good_headers = [("x-api-version", "2")]
    assert rm.test(good_headers, "debug&v=3")
    assert rm.failures(good_headers, "debug&v=3") == []
    assert not rm.test(good_headers, "debug")
    assert not rm.test(good_headers, "v=3")
    assert not rm.test([("x-api-version", "2"), ("x-legacy", "1")], "debug&v=3")
    assert not rm.test([], "debug&v=3")


def test_request_matcher_failures_lists_every_reason_in_order() -> None:
    rm = request_matcher()
    assert rm.failures([("x-legacy", "1")], "v=x") == [
        "header x-api-version is missing",
        "header x-legacy is present, wanted absent",
        "query debug is missing",
        "query v 'x' does not match regex '[0-9]+'",
    ]


def test_request_matcher_describe() -> None:
    assert request_matcher().describe() == [
        "header x-api-version = '2'",
        "header x-legacy absent",
        "query debug present",
        "query v ~ /[0-9]+/",
    ]


def test_empty_request_matcher_matches_everything() -> None:
    rm = RequestMatcher()
    assert rm.empty
    assert rm.test([("x", "y")], "a=1")
    assert rm.failures([], "") == []
    assert rm.describe() == []
    assert not RequestMatcher(headers=[HeaderMatch.build("x", present=True)]).empty
    assert not RequestMatcher(query=[QueryMatch.build("x", present=True)]).empty


class Recorder:
    """A stand-in matcher that records being asked."""

    def __init__(self, log: list[str], name: str, result: bool) -> None:
        self.log, self.name, self.result = log, name, result

    def test(self, _: object) -> bool:
        self.log.append(self.name)
        return self.result


def test_request_matcher_short_circuits(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    parsed: list[str] = []
    monkeypatch.setattr(matchers, "parse_query", lambda q: parsed.append(q) or {})
    rm = RequestMatcher(
        headers=[Recorder(log, "h1", True), Recorder(log, "h2", False), Recorder(log, "h3", True)],
        query=[Recorder(log, "q1", True)],
    )
    assert not rm.test([], "a=1")
    assert log == ["h1", "h2"]
    assert parsed == []

    log.clear()
    rm = RequestMatcher(
        headers=[Recorder(log, "h1", True)],
        query=[Recorder(log, "q1", False), Recorder(log, "q2", True)],
    )
    assert not rm.test([], "a=1")
    assert log == ["h1", "q1"]
    assert parsed == ["a=1"]


def test_request_matcher_parses_query_only_with_query_matchers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[str] = []
    real = matchers.parse_query
    monkeypatch.setattr(matchers, "parse_query", lambda q: parsed.append(q) or real(q))
    headers_only = RequestMatcher(headers=[HeaderMatch.build("x", present=True)])
    assert headers_only.test([("x", "")], "a=1")
    assert headers_only.failures([], "a=1") == ["header x is missing"]
    assert parsed == []
    with_query = RequestMatcher(query=[QueryMatch.build("a", exact="1")])
    assert with_query.test([], "a=1")
    assert parsed == ["a=1"]
