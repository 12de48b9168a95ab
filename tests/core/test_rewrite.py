"""Tests of path/query rewrites and redirects (meshgate.core.rewrite)."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from meshgate.core.rewrite import (
    REDIRECT_STATUSES,
    PathRewrite,
    QueryRewrite,
    Redirect,
    RewriteError,
    split_target,
)

# --------------------------------------------------------------------------- split_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/a/b?x=1", ("/a/b", "x=1")),
        ("/a/b", ("/a/b", "")),
        ("/a?", ("/a", "")),
        ("/?a=1?b=2", ("/", "a=1?b=2")),
        ("", ("", "")),
    ],
)
def test_split_target(target: str, expected: tuple[str, str]) -> None:
    assert split_target(target) == expected


# --------------------------------------------------------------------------- strip / replace prefix


@pytest.mark.parametrize(
    ("prefix", "path", "expected"),
    [
        ("/api", "/api", "/"),
        ("/api", "/api/", "/"),
        ("/api", "/api/x", "/x"),
        ("/api", "/api/x/y/", "/x/y/"),
        ("/api", "/api//x", "//x"),
        ("/api", "/apix", "/apix"),
        ("/api", "/apix/y", "/apix/y"),
        ("/api", "/ap", "/ap"),
        ("/api", "/", "/"),
        ("/api", "/v1/api/x", "/v1/api/x"),
        ("/api/", "/api", "/"),
        ("/api/", "/api/x", "/x"),
        ("/api/", "/apix", "/apix"),
        ("/a/b", "/a/b/c", "/c"),
        ("/a/b", "/a/bc", "/a/bc"),
        ("/a/b", "/a", "/a"),
        ("/", "/x", "/x"),
        ("/", "/", "/"),
    ],
)
def test_strip_prefix(prefix: str, path: str, expected: str) -> None:
    assert PathRewrite.build(strip_prefix=prefix).apply(path) == expected


@pytest.mark.parametrize(
    ("old", "new", "path", "expected"),
    [
        ("/api", "/v2", "/api", "/v2"),
        ("/api", "/v2", "/api/", "/v2/"),
        ("/api", "/v2", "/api/users/7", "/v2/users/7"),
        ("/api", "/v2", "/apix", "/apix"),
        ("/api", "/v2/", "/api/x", "/v2/x"),
        ("/api", "/", "/api/x", "/x"),
        ("/api", "/", "/api", "/"),
        ("/api", "/internal/api", "/api/x", "/internal/api/x"),
        ("/", "/v2", "/x", "/v2/x"),
        ("/", "/v2", "/", "/v2/"),
        ("/old/path", "/new", "/old/path/q", "/new/q"),
        ("/old/path", "/new", "/old/pathq", "/old/pathq"),
    ],
)
def test_replace_prefix(old: str, new: str, path: str, expected: str) -> None:
    assert PathRewrite.build(replace_prefix=(old, new)).apply(path) == expected


prefixes = st.lists(st.sampled_from(["a", "api", "v1", "x"]), min_size=1, max_size=3).map(
    lambda segs: "/" + "/".join(segs)
)
paths = st.lists(st.text(st.sampled_from("apix/v1.%-"), max_size=6), min_size=0, max_size=4).map(
    lambda segs: "/" + "/".join(segs)
)


@settings(max_examples=300, deadline=None)
@given(prefix=prefixes, path=paths, trailing=st.booleans())
def test_strip_prefix_result_always_starts_with_slash(
    prefix: str, path: str, trailing: bool
) -> None:
    rewrite = PathRewrite.build(strip_prefix=prefix + "/" if trailing else prefix)
    result = rewrite.apply(path)
    assert result.startswith("/")
    if path == prefix or path.startswith(prefix + "/"):
        assert result == (path[len(prefix) :] or "/")
    else:
        # not under the prefix on a segment boundary: untouched
        assert result == path


@settings(max_examples=300, deadline=None)
@given(prefix=prefixes, path=paths, new=prefixes)
def test_replace_prefix_identity_outside_prefix(prefix: str, path: str, new: str) -> None:
    assume(path != prefix and not path.startswith(prefix + "/"))
    assert PathRewrite.build(replace_prefix=(prefix, new)).apply(path) == path
    assert PathRewrite.build(strip_prefix=prefix).apply(path) == path


# --------------------------------------------------------------------------- regex


@pytest.mark.parametrize(
    ("pattern", "replacement", "path", "expected"),
    [
        (r"/users/(\d+)", r"/v2/users/\1", "/users/42", "/v2/users/42"),
        (r"/users/(\d+)", r"/v2/users/\1", "/users/42/x", "/users/42/x"),  # fullmatch only
        (r"/users/(\d+)", r"/v2/users/\1", "/xusers/42", "/xusers/42"),
        (r"/(\w+)/(\w+)", r"/\2/\1", "/a/b", "/b/a"),
        (
            r"/u/(?P<id>\d+)/(?P<tab>\w+)",
            r"/profile/\g<tab>/\g<id>",
            "/u/7/posts",
            "/profile/posts/7",
        ),
        (r"/u/(?P<id>\d+)", r"/p/\g<1>", "/u/7", "/p/7"),
        (r"/u/(\d+)", r"/all/\g<0>", "/u/7", "/all//u/7"),
        (r"/u/(\d+)", r"\g<1>0", "/u/7", "/70"),  # no leading '/': one is added
        (r"/(a)?(b)", r"/[\1][\2]", "/b", "/[][b]"),  # group that did not match: empty
        (r"/files/(.*)", r"/static/\1", "/files/", "/static/"),
        (r"/x", r"/a\\b", "/x", "/a\\b"),
        (r"/x", r"", "/x", "/"),
        (r"/(.*)\.php", r"/\1", "/index.php", "/index"),
    ],
)
def test_regex_rewrite(pattern: str, replacement: str, path: str, expected: str) -> None:
    assert PathRewrite.build(regex=(pattern, replacement)).apply(path) == expected


@settings(max_examples=200, deadline=None)
@given(path=paths)
def test_regex_agrees_with_python_re(path: str) -> None:
    pattern, replacement = r"/(?P<first>[^/]*)/?(.*)", r"/\2/\g<first>/\1"
    rewrite = PathRewrite.build(regex=(pattern, replacement))
    expected = re.compile(pattern).sub(replacement, path) if re.fullmatch(pattern, path) else path
    assert rewrite.apply(path) == expected


@pytest.mark.parametrize(
    ("pattern", "replacement", "message"),
    [
        (r"/u/(\d+)", r"/\2", "group 2 does not exist"),
        (r"/u/(\d+)", r"/\g<5>", "group 5 does not exist"),
        (r"/u/(?P<id>\d+)", r"/\g<name>", "no group named 'name'"),
        (r"/u/(?P<id>\d+)", r"/\g<>", "no group named ''"),
        (r"/u/\d+", r"/\1", "group 1 does not exist"),
        (r"/u/(\d+)", r"/\10", "ambiguous"),
        (r"/u/(\d+)", r"/\g", "unsupported escape"),
        (r"/u/(\d+)", r"/\g<1", "unsupported escape"),
        (r"/u/(\d+)", r"/\0", "unsupported escape"),
        (r"/u/(\d+)", r"/\n", "unsupported escape"),
        (r"/u/(\d+)", "/x\\", "unsupported escape"),
        (r"/u/(\d+", r"/\1", "does not compile"),
        (r"/u/(\d+)", r"/\1?x=1", "must not contain '?'"),
        (r"/u/(\d+)", r"/a b", "whitespace"),
    ],
)
def test_regex_errors_name_pattern_and_replacement(
    pattern: str, replacement: str, message: str
) -> None:
    with pytest.raises(RewriteError, match=re.escape(message)) as info:
        PathRewrite.build(regex=(pattern, replacement))
    assert repr(pattern) in str(info.value)


def test_ambiguous_reference_suggests_both_readings() -> None:
    with pytest.raises(RewriteError) as info:
        PathRewrite.build(regex=(r"/(a)", r"/\12"))
    assert r"\g<1>2" in str(info.value) and r"\g<12>" in str(info.value)


# --------------------------------------------------------------------------- build / describe


@pytest.mark.parametrize(
    "kwargs",
    [
        {"strip_prefix": "/a", "replace_prefix": ("/a", "/b")},
        {"strip_prefix": "/a", "regex": ("/a", "/b")},
        {"replace_prefix": ("/a", "/b"), "regex": ("/a", "/b")},
    ],
)
def test_only_one_path_rewrite(kwargs: dict[str, object]) -> None:
    with pytest.raises(RewriteError, match="only one of"):
        PathRewrite.build(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strip_prefix": "api"}, "strip_prefix 'api' must start with '/'"),
        ({"strip_prefix": ""}, "must start with '/'"),
        ({"replace_prefix": ("api", "/v2")}, "replace_prefix prefix 'api'"),
        ({"replace_prefix": ("/api", "v2")}, "replace_prefix replacement 'v2'"),
        ({"replace_prefix": ("/api", "/v2?x=1")}, "must not contain '?'"),
        ({"strip_prefix": "/a#b"}, "must not contain"),
        ({"strip_prefix": "/a\r\nb"}, "control characters"),
    ],
)
def test_prefix_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RewriteError, match=re.escape(message)):
        PathRewrite.build(**kwargs)  # type: ignore[arg-type]


def test_no_path_rewrite_is_identity() -> None:
    rewrite = PathRewrite.build()
    assert rewrite.empty
    assert rewrite.apply("/anything/at/all") == "/anything/at/all"
    assert not PathRewrite.build(strip_prefix="/a").empty


@pytest.mark.parametrize(
    ("rewrite", "text"),
    [
        (PathRewrite.build(), "keep path"),
        (PathRewrite.build(strip_prefix="/api/"), "strip prefix '/api'"),
        (PathRewrite.build(strip_prefix="/"), "strip prefix '/'"),
        (PathRewrite.build(replace_prefix=("/api", "/v2")), "replace prefix '/api' with '/v2'"),
        (PathRewrite.build(regex=(r"/u/(\d+)", r"/users/\1")), r"regex '/u/(\\d+)' -> "),
    ],
)
def test_path_describe(rewrite: PathRewrite, text: str) -> None:
    assert text in rewrite.describe()


# --------------------------------------------------------------------------- query


@pytest.mark.parametrize(
    ("set_params", "remove", "query", "expected"),
    [
        ({}, ["debug"], "a=1&debug=1&b=2", "a=1&b=2"),
        ({}, ["debug"], "debug=1&debug=2", ""),
        ({}, ["debug"], "debug", ""),
        ({}, ["debug"], "debugger=1&xdebug=1", "debugger=1&xdebug=1"),
        ({}, ["debug"], "", ""),
        ({}, ["a b"], "a+b=1&a%20b=2&c=3", "c=3"),
        ({}, ["admin"], "adm%69n=1&x=1", "x=1"),
        ({"v": "2"}, [], "", "v=2"),
        ({"v": "2"}, [], "v=1&a=1", "a=1&v=2"),
        ({"v": "2", "w": "3"}, ["a"], "a=1&b=2", "b=2&v=2&w=3"),
        ({"q": "a b&c=d/é"}, [], "x=1", "x=1&q=a%20b%26c%3Dd%2F%C3%A9"),
        ({"k&=": "v"}, [], "", "k%26%3D=v"),
        ({}, ["x"], "a=%zz&b=%C3%A9+z&&c=;d=1&x=1", "a=%zz&b=%C3%A9+z&&c=;d=1"),
    ],
)
def test_query_rewrite(
    set_params: dict[str, str], remove: list[str], query: str, expected: str
) -> None:
    assert QueryRewrite(set_params, remove).apply(query) == expected


@settings(max_examples=300, deadline=None)
@given(
    params=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "drop", "set", "c%20d"]), st.text("xyz%+=é", max_size=4)
        ),
        max_size=6,
    )
)
def test_query_untouched_params_kept_byte_for_byte(params: list[tuple[str, str]]) -> None:
    query = "&".join(f"{name}={value}" for name, value in params)
    rewrite = QueryRewrite({"set": "1"}, ["drop"])
    kept = [f"{name}={value}" for name, value in params if name not in ("drop", "set")]
    assert rewrite.apply(query) == "&".join([*kept, "set=1"])


def test_query_empty_rewrite_is_identity() -> None:
    rewrite = QueryRewrite()
    assert rewrite.empty
    assert rewrite.apply("b=2&a=1&&x") == "b=2&a=1&&x"
    assert not QueryRewrite(remove=["a"]).empty
    assert not QueryRewrite({"a": "1"}).empty


def test_query_set_order_is_kept() -> None:
    assert QueryRewrite({"z": "1", "a": "2", "m": "3"}).apply("") == "z=1&a=2&m=3"


@pytest.mark.parametrize(("set_params", "remove"), [({"": "x"}, []), ({}, [""])])
def test_query_empty_name_refused(set_params: dict[str, str], remove: list[str]) -> None:
    with pytest.raises(RewriteError, match="parameter name is empty"):
        QueryRewrite(set_params, remove)


def test_query_describe() -> None:
    assert QueryRewrite().describe() == "keep query"
    assert QueryRewrite({"v": "2"}, ["b", "a"]).describe() == "remove a, b; set v=2"


# --------------------------------------------------------------------------- redirect


@pytest.mark.parametrize(
    ("kwargs", "request_", "expected"),
    [
        # https upgrade keeps host, path and query
        (
            {"scheme": "https"},
            ("http", "example.com", "/a/b?x=1&y=2"),
            "https://example.com/a/b?x=1&y=2",
        ),
        ({"scheme": "HTTPS"}, ("http", "example.com", "/"), "https://example.com/"),
        # the default port of the old scheme goes; another port stays
        ({"scheme": "https"}, ("http", "example.com:80", "/a"), "https://example.com/a"),
        ({"scheme": "https"}, ("http", "example.com:8080", "/a"), "https://example.com:8080/a"),
        ({"scheme": "https"}, ("http", "example.com:443", "/a"), "https://example.com/a"),
        ({"scheme": "http"}, ("https", "example.com:443", "/a"), "http://example.com/a"),
        (
            {"scheme": "https", "port": 8443},
            ("http", "example.com:80", "/a"),
            "https://example.com:8443/a",
        ),
        (
            {"scheme": "https", "port": 443},
            ("http", "example.com:8080", "/a"),
            "https://example.com/a",
        ),
        ({"scheme": "https"}, ("http", "[::1]:80", "/a"), "https://[::1]/a"),
        ({"scheme": "https"}, ("http", "[::1]:8080", "/a"), "https://[::1]:8080/a"),
        ({"scheme": "https"}, ("HTTP", "Example.COM", "/"), "https://Example.COM/"),
        # same scheme: the request's port is kept, even a default one... then omitted
        ({"path": "/new"}, ("http", "example.com:80", "/old"), "http://example.com/new"),
        (
            {"path": "/new"},
            ("http", "example.com:8080", "/old?q=1"),
            "http://example.com:8080/new?q=1",
        ),
        # host change: no port unless configured
        (
            {"host": "new.example.com"},
            ("https", "old.example.com:8443", "/p?q"),
            "https://new.example.com/p?q",
        ),
        (
            {"host": "new.example.com", "port": 8443},
            ("https", "old:1", "/p"),
            "https://new.example.com:8443/p",
        ),
        (
            {"host": "new.example.com", "port": 443},
            ("https", "old", "/p"),
            "https://new.example.com/p",
        ),
        (
            {"host": "new.example.com", "port": 443},
            ("http", "old", "/p"),
            "http://new.example.com:443/p",
        ),
        ({"host": "[2001:db8::1]"}, ("http", "old", "/p"), "http://[2001:db8::1]/p"),
        ({"port": 8080}, ("http", "example.com:9000", "/p"), "http://example.com:8080/p"),
        ({"port": 80}, ("http", "example.com:9000", "/p"), "http://example.com/p"),
        # path replaced, query kept or stripped
        ({"path": "/login"}, ("https", "h", "/account?next=%2F"), "https://h/login?next=%2F"),
        (
            {"path": "/login", "strip_query": True},
            ("https", "h", "/account?next=1"),
            "https://h/login",
        ),
        ({"scheme": "https", "strip_query": True}, ("http", "h", "/a?b"), "https://h/a"),
        ({"scheme": "https"}, ("http", "h", "/a?"), "https://h/a"),
        # the path stays relative to the new authority: no open redirect
        ({"scheme": "https"}, ("http", "h", "//evil.example/x"), "https://h//evil.example/x"),
    ],
)
def test_redirect_location(
    kwargs: dict[str, object], request_: tuple[str, str, str], expected: str
) -> None:
    redirect = Redirect.build(**kwargs)  # type: ignore[arg-type]
    assert redirect.location(*request_) == expected


@pytest.mark.parametrize("status", REDIRECT_STATUSES)
def test_redirect_statuses(status: int) -> None:
    assert Redirect.build(status=status, scheme="https").status == status


def test_redirect_default_status_is_302() -> None:
    assert Redirect.build(scheme="https").status == 302


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "redirect changes nothing"),
        ({"status": 301, "strip_query": True}, "redirect changes nothing"),
        ({"status": 200, "scheme": "https"}, "redirect status 200 is not one of 301, 302"),
        ({"status": 304, "scheme": "https"}, "redirect status 304"),
        ({"scheme": "ftp"}, "redirect scheme 'ftp' must be 'http' or 'https'"),
        ({"host": "a/b"}, "redirect host 'a/b'"),
        ({"host": "user@evil"}, "redirect host 'user@evil'"),
        ({"host": "a b"}, "redirect host 'a b'"),
        ({"host": "a\r\nX-Evil: 1"}, "redirect host"),
        ({"host": ""}, "redirect host ''"),
        ({"host": "example.com:8443"}, "set port separately"),
        ({"host": "[]"}, "redirect host '[]'"),
        ({"host": "[::1"}, "redirect host '[::1'"),
        ({"port": 0}, "redirect port 0 must be in 1..65535"),
        ({"port": 65536}, "redirect port 65536"),
        ({"path": "login"}, "redirect path 'login' must start with '/'"),
        ({"path": "/a?b=1"}, "must not contain '?'"),
        ({"path": "/a\nb"}, "control characters"),
    ],
)
def test_redirect_build_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RewriteError, match=re.escape(message)):
        Redirect.build(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "target", "message"),
    [
        ("", "/", "bad Host ''"),
        ("a b", "/", "bad Host"),
        ("a\r\nSet-Cookie: x", "/", "bad Host"),
        ("evil@h", "/", "bad Host"),
        ("h/x", "/", "bad Host"),
        ("h:abc", "/", "bad port in Host 'h:abc'"),
        ("h:0", "/", "bad port"),
        ("h:70000", "/", "bad port"),
        ("h:1:2", "/", "bad port"),
        ("[::1]x", "/", "bad Host"),
        ("h", "/a\r\nSet-Cookie: x", "unsafe characters in target"),
        ("h", "/a?b=\n", "unsafe characters in target"),
        ("h", "/a b", "unsafe characters in target"),
        ("h", "*", "target '*' does not start with '/'"),
        ("h", "http://other/x", "does not start with '/'"),
        ("h", "?x=1", "does not start with '/'"),
    ],
)
def test_redirect_refuses_unsafe_request_input(host: str, target: str, message: str) -> None:
    with pytest.raises(RewriteError, match=re.escape(message)):
        Redirect.build(scheme="https").location("http", host, target)


def test_redirect_configured_host_ignores_request_host() -> None:
    # the request's Host is not even parsed when the host is replaced
    assert Redirect.build(host="h").location("http", "", "/") == "http://h/"


def test_redirect_configured_path_replaces_any_target() -> None:
    assert Redirect.build(path="/p").location("http", "h", "*") == "http://h/p"


@settings(max_examples=200, deadline=None)
@given(target=st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=20))
def test_location_never_contains_cr_or_lf(target: str) -> None:
    redirect = Redirect.build(scheme="https")
    if any(c in target for c in "\r\n"):
        with pytest.raises(RewriteError):
            redirect.location("http", "h", "/" + target)
    else:
        try:
            location = redirect.location("http", "h", "/" + target)
        except RewriteError:
            return  # other control characters or whitespace: refused too
        assert location.startswith("https://h/")
        assert "\r" not in location and "\n" not in location


def test_redirect_describe() -> None:
    text = Redirect.build(status=301, scheme="https", port=8443, strip_query=True).describe()
    assert text == "redirect 301, scheme https, port 8443, drop query"
    assert Redirect.build(host="h", path="/p").describe() == "redirect 302, host h, path /p"


def test_rewrite_error_is_a_value_error() -> None:
    assert issubclass(RewriteError, ValueError)
