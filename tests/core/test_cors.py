"""Tests of the CORS decisions (meshgate.core.cors)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core.cors import CorsError, CorsPolicy

PREFLIGHT_VARY = ("vary", "origin, access-control-request-method, access-control-request-headers")

LISTED = CorsPolicy.build(allow_origins=["https://app.example.com", "http://localhost:3000"])
REGEX = CorsPolicy.build(
    allow_origins=["https://app.example.com"],
    allow_origin_regex=r"https://[a-z0-9-]+\.preview\.example\.com",
)
ANY = CorsPolicy.build(allow_origins=["*"])
CREDENTIALS = CorsPolicy.build(
    allow_origins=["https://app.example.com"],
    allow_origin_regex=r"https://.*\.example\.org",
    allow_credentials=True,
)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"allow_origins": ["*"], "allow_credentials": True},
            r"'\*' cannot be used with allow_credentials",
        ),
        (
            {"allow_origins": ["https://a.example", "*"], "allow_credentials": True},
            r"allow_credentials",
        ),
        ({"allow_origin_regex": "https://(a"}, r"allow_origin_regex 'https://\(a' is invalid"),
        ({"allow_origins": ["https://a.example/"]}, r"allow_origins 0 \('https://a\.example/'\)"),
        (
            {"allow_origins": ["https://a.example", "a.example"]},
            r"allow_origins 1 .* not an origin",
        ),
        ({"allow_origins": ["https://a.example/path"]}, r"not an origin"),
        ({"allow_origins": ["https://a.example:port"]}, r"not an origin"),
        ({"allow_origins": ["https://user@a.example"]}, r"not an origin"),
        ({"allow_origins": ["https://*.example.com"]}, r"not an origin"),
        ({"allow_origins": [""]}, r"not an origin"),
        ({"allow_origins": ["null"]}, r"allow_origins 0 is 'null'"),
        ({"allow_origins": ["NULL"]}, r"'null'"),
        ({"allow_methods": ["GET", "BAD METHOD"]}, r"allow_methods 1 \('BAD METHOD'\)"),
        ({"allow_headers": ["x-ok", "x-bad\r\nset-cookie: a=b"]}, r"allow_headers 1 "),
        ({"expose_headers": [""]}, r"expose_headers 0 \(''\) is not a valid name"),
        ({"max_age_s": -1}, r"max_age_s must be an integer >= 0, got -1"),
        ({"max_age_s": True}, r"got True"),
        ({"max_age_s": 1.5}, r"got 1\.5"),
    ],
)
def test_bad_configuration(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CorsError, match=message):
        CorsPolicy.build(**kwargs)


def test_cors_error_is_a_value_error() -> None:
    assert issubclass(CorsError, ValueError)


def test_regex_with_credentials_is_allowed() -> None:
    # the origin is echoed, never "*"
    assert CREDENTIALS.allowed_origin("https://x.example.org") == "https://x.example.org"


# --------------------------------------------------------------------------- allowed_origin


@pytest.mark.parametrize(
    ("policy", "origin", "expected"),
    [
        (LISTED, "https://app.example.com", "https://app.example.com"),
        (LISTED, "http://localhost:3000", "http://localhost:3000"),
        # scheme and host compared case-insensitively; the origin echoed as sent
        (LISTED, "HTTPS://App.Example.COM", "HTTPS://App.Example.COM"),
        (LISTED, "http://LOCALHOST:3000", "http://LOCALHOST:3000"),
        # anything else is refused
        (LISTED, "http://app.example.com", None),  # another scheme
        (LISTED, "https://app.example.com:443", None),  # the port as written
        (LISTED, "http://localhost", None),
        (LISTED, "http://localhost:3001", None),
        (LISTED, "https://app.example.com.evil.test", None),
        (LISTED, "https://evil.test/https://app.example.com", None),
        (LISTED, "https://app.example.com/", None),
        (LISTED, "https://app.example.com https://evil.test", None),
        (LISTED, "null", None),
        (LISTED, "", None),
        (LISTED, None, None),
        # regex: the whole lower-cased origin
        (REGEX, "https://pr-12.preview.example.com", "https://pr-12.preview.example.com"),
        (REGEX, "https://PR-12.Preview.Example.com", "https://PR-12.Preview.Example.com"),
        (REGEX, "https://app.example.com", "https://app.example.com"),
        (REGEX, "https://pr-12.preview.example.com.evil.test", None),  # fullmatch
        (REGEX, "https://x.pr-12.preview.example.com", None),
        (REGEX, "http://pr-12.preview.example.com", None),
        (REGEX, "null", None),
        (REGEX, None, None),
        # a regex cannot be fooled by what is not an origin
        (CREDENTIALS, "https://a.example.org", "https://a.example.org"),
        (CREDENTIALS, "https://evil.test/.example.org", None),
        (CREDENTIALS, "https://evil.test#.example.org", None),
        (CREDENTIALS, "https://evil.test?.example.org", None),
        (CREDENTIALS, "https://evil.test@x.example.org", None),
        (CREDENTIALS, "https://x.example.org:8443", None),  # the regex has no port
        # "*": every request is answered "*"
        (ANY, "https://anything.test", "*"),
        (ANY, "null", "*"),
        (ANY, None, "*"),
        # IPv6 host
        (
            CorsPolicy.build(allow_origins=["http://[::1]:8080"]),
            "http://[::1]:8080",
            "http://[::1]:8080",
        ),
        # no origins configured: nothing is allowed
        (CorsPolicy.build(), "https://app.example.com", None),
    ],
)
def test_allowed_origin(policy: CorsPolicy, origin: str | None, expected: str | None) -> None:
    assert policy.allowed_origin(origin) == expected


def test_configured_origins_are_compared_lower_cased() -> None:
    policy = CorsPolicy.build(allow_origins=["HTTPS://App.Example.com"])
    assert policy.allowed_origin("https://app.example.com") == "https://app.example.com"


def test_a_regex_that_matches_null_does_not_allow_it() -> None:
    policy = CorsPolicy.build(allow_origin_regex=".*")
    assert policy.allowed_origin("null") is None
    assert policy.allowed_origin("https://a.test") == "https://a.test"


# --------------------------------------------------------------------------- response_headers


@pytest.mark.parametrize(
    ("policy", "origin", "expected"),
    [
        (
            LISTED,
            "https://app.example.com",
            [("access-control-allow-origin", "https://app.example.com"), ("vary", "origin")],
        ),
        # not allowed, or no origin: only Vary, since another origin gets another answer
        (LISTED, "https://evil.test", [("vary", "origin")]),
        (LISTED, "null", [("vary", "origin")]),
        (LISTED, None, [("vary", "origin")]),
        (REGEX, None, [("vary", "origin")]),
        (
            CREDENTIALS,
            "https://a.example.org",
            [
                ("access-control-allow-origin", "https://a.example.org"),
                ("access-control-allow-credentials", "true"),
                ("vary", "origin"),
            ],
        ),
        (CREDENTIALS, "https://evil.test", [("vary", "origin")]),
        # "*": the same answer for every request, so no Vary
        (ANY, "https://anything.test", [("access-control-allow-origin", "*")]),
        (ANY, None, [("access-control-allow-origin", "*")]),
        # a policy that allows nothing answers nothing
        (CorsPolicy.build(), "https://app.example.com", []),
        (CorsPolicy.build(), None, []),
    ],
)
def test_response_headers(
    policy: CorsPolicy, origin: str | None, expected: list[tuple[str, str]]
) -> None:
    assert policy.response_headers(origin) == expected


def test_response_headers_expose_headers() -> None:
    policy = CorsPolicy.build(
        allow_origins=["https://app.example.com"],
        expose_headers=["X-Request-Id", "RateLimit-Remaining", "x-request-id"],
        allow_credentials=True,
    )
    assert policy.response_headers("https://app.example.com") == [
        ("access-control-allow-origin", "https://app.example.com"),
        ("access-control-allow-credentials", "true"),
        ("access-control-expose-headers", "x-request-id, ratelimit-remaining"),
        ("vary", "origin"),
    ]
    assert policy.response_headers("https://evil.test") == [("vary", "origin")]
    any_origin = CorsPolicy.build(allow_origins=["*"], expose_headers=["X-Request-Id"])
    assert any_origin.response_headers(None) == [
        ("access-control-allow-origin", "*"),
        ("access-control-expose-headers", "x-request-id"),
    ]


def test_response_headers_are_a_new_list_each_time() -> None:
    first = LISTED.response_headers("https://evil.test")
    first.append(("x", "y"))
    assert LISTED.response_headers("https://evil.test") == [("vary", "origin")]


# --------------------------------------------------------------------------- preflight


def preflight_policy(**kwargs: Any) -> CorsPolicy:
    return CorsPolicy.build(allow_origins=["https://app.example.com"], **kwargs)


ORIGIN = "https://app.example.com"
DEFAULT_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"


@pytest.mark.parametrize(
    ("policy", "origin", "method", "headers", "expected"),
    [
        (
            preflight_policy(),
            ORIGIN,
            "PUT",
            None,
            [
                ("access-control-allow-origin", ORIGIN),
                ("access-control-allow-methods", DEFAULT_METHODS),
                ("access-control-max-age", "600"),
                PREFLIGHT_VARY,
            ],
        ),
        # requested headers: the allowed ones echoed, lower-cased, once each
        (
            preflight_policy(allow_headers=["X-Trace", "Authorization"], max_age_s=0),
            ORIGIN,
            "DELETE",
            "authorization , X-Trace,,x-trace",
            [
                ("access-control-allow-origin", ORIGIN),
                ("access-control-allow-methods", DEFAULT_METHODS),
                ("access-control-allow-headers", "authorization, x-trace"),
                ("access-control-max-age", "0"),
                PREFLIGHT_VARY,
            ],
        ),
        # safelisted names are always allowed
        (
            preflight_policy(),
            ORIGIN,
            "POST",
            "Content-Type, accept, Accept-Language, content-language",
            [
                ("access-control-allow-origin", ORIGIN),
                ("access-control-allow-methods", DEFAULT_METHODS),
                (
                    "access-control-allow-headers",
                    "content-type, accept, accept-language, content-language",
                ),
                ("access-control-max-age", "600"),
                PREFLIGHT_VARY,
            ],
        ),
        # an empty header list is no header
        (
            preflight_policy(allow_methods=["PUT"], max_age_s=86400),
            ORIGIN,
            "PUT",
            " , ",
            [
                ("access-control-allow-origin", ORIGIN),
                ("access-control-allow-methods", "PUT"),
                ("access-control-max-age", "86400"),
                PREFLIGHT_VARY,
            ],
        ),
        # credentials
        (
            CREDENTIALS,
            "https://x.example.org",
            "GET",
            "content-type",
            [
                ("access-control-allow-origin", "https://x.example.org"),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", DEFAULT_METHODS),
                ("access-control-allow-headers", "content-type"),
                ("access-control-max-age", "600"),
                PREFLIGHT_VARY,
            ],
        ),
        # "*" origin
        (
            ANY,
            "https://anything.test",
            "PATCH",
            None,
            [
                ("access-control-allow-origin", "*"),
                ("access-control-allow-methods", DEFAULT_METHODS),
                ("access-control-max-age", "600"),
                PREFLIGHT_VARY,
            ],
        ),
        # "*" methods and headers: the requested ones echoed
        (
            preflight_policy(allow_methods=["*"], allow_headers=["*"]),
            ORIGIN,
            "PURGE",
            "X-Anything, x-other",
            [
                ("access-control-allow-origin", ORIGIN),
                ("access-control-allow-methods", "PURGE"),
                ("access-control-allow-headers", "x-anything, x-other"),
                ("access-control-max-age", "600"),
                PREFLIGHT_VARY,
            ],
        ),
        # safelisted methods pass even when not configured (browsers do not ask
        # permission for them); no allow-methods field when none is configured
        (
            preflight_policy(allow_methods=[], allow_headers=["x-trace"]),
            ORIGIN,
            "GET",
            "x-trace",
            [
                ("access-control-allow-origin", ORIGIN),
                ("access-control-allow-headers", "x-trace"),
                ("access-control-max-age", "600"),
                PREFLIGHT_VARY,
            ],
        ),
        # refused: origin
        (preflight_policy(), "https://evil.test", "GET", None, None),
        (preflight_policy(), "null", "GET", None, None),
        (preflight_policy(), None, "GET", None, None),
        (ANY, None, "GET", None, None),  # without an origin it is no preflight
        # refused: method (case-sensitive, as browsers compare it)
        (preflight_policy(), ORIGIN, None, None, None),
        (preflight_policy(), ORIGIN, "", None, None),
        (preflight_policy(), ORIGIN, "PURGE", None, None),
        (preflight_policy(), ORIGIN, "patch", None, None),
        (preflight_policy(allow_methods=["GET"]), ORIGIN, "PUT", None, None),
        (preflight_policy(allow_methods=["*"]), ORIGIN, "BAD METHOD", None, None),
        (preflight_policy(allow_methods=["*"]), ORIGIN, "PUT\r\nx-injected: 1", None, None),
        # refused: a header not allowed
        (preflight_policy(), ORIGIN, "GET", "x-trace", None),
        (preflight_policy(), ORIGIN, "GET", "content-type, authorization", None),
        (preflight_policy(allow_headers=["x-trace"]), ORIGIN, "GET", "x-trace, x-other", None),
        (preflight_policy(allow_headers=["*"]), ORIGIN, "GET", "x-ok, bad name", None),
        (preflight_policy(allow_headers=["*"]), ORIGIN, "GET", "x\r\nset-cookie: a=b", None),
    ],
)
def test_preflight(
    policy: CorsPolicy,
    origin: str | None,
    method: str | None,
    headers: str | None,
    expected: list[tuple[str, str]] | None,
) -> None:
    assert policy.preflight(origin, method, headers) == expected


def test_methods_are_kept_as_configured() -> None:
    policy = preflight_policy(allow_methods=["patch", "PUT", "PUT"])
    fields = policy.preflight(ORIGIN, "patch", None)
    assert fields is not None
    assert ("access-control-allow-methods", "patch, PUT") in fields
    assert policy.preflight(ORIGIN, "PATCH", None) is None


# --------------------------------------------------------------------------- properties


hosts = st.from_regex(r"[a-zA-Z0-9-]{1,12}(\.[a-zA-Z0-9-]{1,12}){0,2}", fullmatch=True)
well_formed = st.builds(
    lambda scheme, host, port: f"{scheme}://{host}{port}",
    st.sampled_from(["http", "https", "HTTPS", "Https"]),
    hosts,
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
)
origins = st.one_of(well_formed, st.just("null"), st.text(max_size=30))


@st.composite
def credentialed_policies(draw: st.DrawFn) -> CorsPolicy:
    listed = draw(st.lists(well_formed, max_size=4))
    regex = draw(st.sampled_from([None, r".*", r"https?://.*", r"https://[a-z]+"]))
    return CorsPolicy.build(
        allow_origins=listed,
        allow_origin_regex=regex,
        allow_headers=draw(st.sampled_from([(), ("*",), ("x-trace",)])),
        allow_credentials=True,
    )


@settings(max_examples=300, deadline=None)
@given(policy=credentialed_policies(), origin=st.one_of(st.none(), origins))
def test_with_credentials_the_origin_is_echoed_never_star(
    policy: CorsPolicy, origin: str | None
) -> None:
    allowed = policy.allowed_origin(origin)
    assert allowed is None or allowed == origin
    fields = policy.response_headers(origin)
    preflight = policy.preflight(origin, "PUT", "x-trace") or []
    for name, value in fields + preflight:
        if name == "access-control-allow-origin":
            assert value != "*"
            assert value == origin
    if allowed is None:
        assert fields in ([("vary", "origin")], [])  # [] when the policy allows no origin
        assert not preflight
    else:
        assert ("access-control-allow-credentials", "true") in fields
        assert ("vary", "origin") in fields


@settings(max_examples=200, deadline=None)
@given(origin=st.one_of(st.none(), origins), method=st.text(max_size=10), headers=st.text())
def test_echoed_values_are_header_safe(origin: str | None, method: str, headers: str) -> None:
    policy = CorsPolicy.build(
        allow_origin_regex=".*", allow_methods=["*"], allow_headers=["*"], allow_credentials=True
    )
    for _, value in policy.response_headers(origin) + (
        policy.preflight(origin, method, headers) or []
    ):
        assert not any(c in value for c in "\r\n\x00")
