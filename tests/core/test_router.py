"""Tests of the sans-IO radix router (meshgate.core.router)."""

from __future__ import annotations

import contextlib
import string
from collections.abc import Sequence
from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from meshgate.core.router import (
    Match,
    MethodNotAllowed,
    PatternError,
    RouteConflictError,
    Router,
    parse_pattern,
    split_path,
    validate_host_pattern,
)

# A route is (path, name, methods, hosts); the router's value is the name.
Route = tuple[str, str, list[str] | None, list[str] | None]


def build(routes: list[Route]) -> Router[str]:
    router: Router[str] = Router()
    for path, name, methods, hosts in routes:
        router.add(path, name, methods, hosts)
    return router


def matched(result: object) -> tuple[str, dict[str, str]]:
    assert isinstance(result, Match), f"expected a Match, got {result!r}"
    return result.route, result.params


# --------------------------------------------------------------------------- priority / paths

PRIORITY_ROUTES: list[Route] = [
    ("/", "root", None, None),
    ("/users", "users", None, None),
    ("/users/me", "users-me", None, None),
    ("/users/:id", "user", None, None),
    ("/users/:id/posts", "user-posts", None, None),
    ("/users/*", "users-rest", None, None),
    ("/a/b/c", "abc", None, None),
    ("/a/:x/d", "axd", None, None),
    ("/a/*", "a-rest", None, None),
    ("/static/:file", "static-file", None, None),
    ("/files/*", "files", None, None),
    ("/deep/:a/:b/:c", "deep", None, None),
    ("/deep/x/y/z", "deep-static", None, None),
]


@pytest.mark.parametrize(
    ("path", "route", "params"),
    [
        ("/", "root", {}),
        ("", "root", {}),
        ("/users", "users", {}),
        # static beats param
        ("/users/me", "users-me", {}),
        ("/users/42", "user", {"id": "42"}),
        ("/users/42/posts", "user-posts", {"id": "42"}),
        # param branch fails deeper -> wildcard
        ("/users/42/comments", "users-rest", {"*": "42/comments"}),
        ("/users/me/posts", "user-posts", {"id": "me"}),
        # backtracking: /a/b exists statically but only /a/b/c below it
        ("/a/b/c", "abc", {}),
        ("/a/b/d", "axd", {"x": "b"}),
        ("/a/zz/d", "axd", {"x": "zz"}),
        ("/a/b/e", "a-rest", {"*": "b/e"}),
        ("/a/b", "a-rest", {"*": "b"}),
        # '*' matches zero segments
        ("/a", "a-rest", {"*": ""}),
        ("/a/", "a-rest", {"*": ""}),
        ("/files", "files", {"*": ""}),
        ("/files/x", "files", {"*": "x"}),
        ("/files/x/y/z.txt", "files", {"*": "x/y/z.txt"}),
        # empty segments are ignored
        ("//users//42//posts/", "user-posts", {"id": "42"}),
        ("/files//x///y/", "files", {"*": "x/y"}),
        # deep backtracking
        ("/deep/x/y/z", "deep-static", {}),
        ("/deep/x/y/q", "deep", {"a": "x", "b": "y", "c": "q"}),
        ("/deep/x/q/z", "deep", {"a": "x", "b": "q", "c": "z"}),
    ],
)
def test_priority_and_backtracking(path: str, route: str, params: dict[str, str]) -> None:
    router = build(PRIORITY_ROUTES)
    assert matched(router.match("GET", path)) == (route, params)


@pytest.mark.parametrize(
    "path",
    ["/nope", "/static", "/static/a/b", "/deep/x/y", "/deep/x", "/users2"],
)
def test_no_match_is_none(path: str) -> None:
    assert build(PRIORITY_ROUTES).match("GET", path) is None


def test_empty_router_matches_nothing() -> None:
    router: Router[str] = Router()
    assert router.match("GET", "/") is None
    assert router.match("GET", "/x", "example.com") is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/users/a%20b", {"id": "a b"}),
        ("/users/caf%C3%A9", {"id": "café"}),
        ("/users/100%25", {"id": "100%"}),
        # an encoded slash stays inside its segment
        ("/users/a%2Fb", {"id": "a/b"}),
        ("/users/plain", {"id": "plain"}),
    ],
)
def test_params_are_percent_decoded(path: str, expected: dict[str, str]) -> None:
    router = build([("/users/:id", "user", None, None)])
    assert matched(router.match("GET", path)) == ("user", expected)


def test_static_segments_match_percent_decoded_request() -> None:
    router = build([("/café/menu", "menu", None, None)])
    assert matched(router.match("GET", "/caf%C3%A9/menu")) == ("menu", {})


def test_wildcard_capture_is_decoded() -> None:
    router = build([("/files/*", "files", None, None)])
    assert matched(router.match("GET", "/files/a%20b/c")) == ("files", {"*": "a b/c"})


def test_route_at_root_with_wildcard() -> None:
    router = build([("/*", "all", None, None)])
    assert matched(router.match("GET", "/")) == ("all", {"*": ""})
    assert matched(router.match("GET", "/x/y")) == ("all", {"*": "x/y"})


def test_pattern_empty_segments_are_ignored() -> None:
    router = build([("//a///:b//", "r", None, None)])
    assert matched(router.match("GET", "/a/1")) == ("r", {"b": "1"})


def test_split_path() -> None:
    assert split_path("/a//b/") == ["a", "b"]
    assert split_path("") == []
    assert split_path("/x%2Fy/%41") == ["x/y", "A"]


# --------------------------------------------------------------------------- methods


def test_method_mismatch_gives_405_with_sorted_allowed() -> None:
    router = build(
        [
            ("/items", "create", ["POST"], None),
            ("/items", "remove", ["DELETE"], None),
            ("/items", "replace", ["put"], None),
        ]
    )
    result = router.match("PATCH", "/items")
    assert result == MethodNotAllowed(("DELETE", "POST", "PUT"))


def test_get_implies_head_in_allowed() -> None:
    router = build([("/items", "list", ["GET"], None), ("/items", "create", ["POST"], None)])
    assert router.match("DELETE", "/items") == MethodNotAllowed(("GET", "HEAD", "POST"))


def test_head_falls_back_to_get_route() -> None:
    router = build([("/items/:id", "get", ["GET"], None)])
    assert matched(router.match("HEAD", "/items/7")) == ("get", {"id": "7"})


def test_explicit_head_route_beats_get() -> None:
    router = build([("/x", "get", ["GET"], None), ("/x", "head", ["HEAD"], None)])
    assert matched(router.match("HEAD", "/x")) == ("head", {})
    assert matched(router.match("GET", "/x")) == ("get", {})


def test_any_method_route() -> None:
    router = build([("/x", "post", ["POST"], None), ("/x", "any", None, None)])
    assert matched(router.match("POST", "/x")) == ("post", {})
    for method in ("GET", "DELETE", "HEAD", "BREW"):
        assert matched(router.match(method, "/x")) == ("any", {})


def test_same_path_routes_in_declaration_order_whatever_their_methods() -> None:
    """Method sets are not a precedence level: an any-method route declared
    first takes the methods of a later, narrower one (validate warns)."""
    router = build([("/x", "any", None, None), ("/x", "post", ["POST"], None)])
    assert matched(router.match("POST", "/x")) == ("any", {})


def test_method_mismatch_on_static_backtracks_to_param() -> None:
    router = build([("/a/b", "static", ["GET"], None), ("/a/:x", "param", ["POST"], None)])
    assert matched(router.match("POST", "/a/b")) == ("param", {"x": "b"})
    assert matched(router.match("GET", "/a/b")) == ("static", {})
    # neither takes PUT: both nodes contribute to Allow
    assert router.match("PUT", "/a/b") == MethodNotAllowed(("GET", "HEAD", "POST"))
    assert router.match("PUT", "/a/c") == MethodNotAllowed(("POST",))


def test_method_mismatch_falls_through_to_wildcard() -> None:
    router = build([("/f", "post-only", ["POST"], None), ("/f/*", "rest", ["GET"], None)])
    assert matched(router.match("GET", "/f")) == ("rest", {"*": ""})
    assert matched(router.match("POST", "/f")) == ("post-only", {})
    assert router.match("PUT", "/f") == MethodNotAllowed(("GET", "HEAD", "POST"))


def test_405_only_when_path_matches() -> None:
    router = build([("/x", "post", ["POST"], None)])
    assert router.match("GET", "/y") is None


# --------------------------------------------------------------------------- hosts


HOST_ROUTES: list[Route] = [
    ("/x", "exact", None, ["api.example.com"]),
    ("/x", "wild", None, ["*.example.com"]),
    ("/x", "wild-longer", None, ["*.eu.example.com"]),
    ("/x", "any", None, None),
    ("/only-any", "only-any", None, None),
    ("/only-api", "only-api", None, ["API.Example.com"]),
]


@pytest.mark.parametrize(
    ("host", "path", "route"),
    [
        ("api.example.com", "/x", "exact"),
        ("API.EXAMPLE.COM", "/x", "exact"),
        ("api.example.com:8443", "/x", "exact"),
        ("www.example.com", "/x", "wild"),
        ("a.b.example.com", "/x", "wild"),
        ("shop.eu.example.com", "/x", "wild-longer"),
        ("Shop.EU.example.com:80", "/x", "wild-longer"),
        # the bare suffix is not matched by '*.example.com'
        ("example.com", "/x", "any"),
        ("other.org", "/x", "any"),
        (None, "/x", "any"),
        ("", "/x", "any"),
        # host-specific tree fails: falls back to any-host routes
        ("api.example.com", "/only-any", "only-any"),
        ("www.example.com", "/only-any", "only-any"),
        ("api.example.com", "/only-api", "only-api"),
    ],
)
def test_host_matching(host: str | None, path: str, route: str) -> None:
    router = build(HOST_ROUTES)
    assert matched(router.match("GET", path, host))[0] == route


def test_host_specific_route_not_visible_for_other_hosts() -> None:
    router = build(HOST_ROUTES)
    assert router.match("GET", "/only-api", "www.example.com") is None
    assert router.match("GET", "/only-api") is None


def test_ipv6_host_port_stripped() -> None:
    router = build([("/x", "v6", None, ["[::1]"]), ("/x", "any", None, None)])
    assert matched(router.match("GET", "/x", "[::1]:8080"))[0] == "v6"
    assert matched(router.match("GET", "/x", "[::1]"))[0] == "v6"


def test_host_tree_method_mismatch_falls_back_then_405() -> None:
    router = build(
        [
            ("/x", "api-post", ["POST"], ["api.example.com"]),
            ("/x", "any-get", ["GET"], None),
        ]
    )
    assert matched(router.match("GET", "/x", "api.example.com")) == ("any-get", {})
    assert matched(router.match("POST", "/x", "api.example.com")) == ("api-post", {})
    assert router.match("PUT", "/x", "api.example.com") == MethodNotAllowed(("GET", "HEAD", "POST"))


def test_route_with_several_hosts() -> None:
    router = build([("/x", "multi", None, ["a.com", "*.b.com"])])
    assert matched(router.match("GET", "/x", "a.com"))[0] == "multi"
    assert matched(router.match("GET", "/x", "z.b.com"))[0] == "multi"
    assert router.match("GET", "/x", "c.com") is None


def test_same_wildcard_suffix_shares_a_tree() -> None:
    router = build([("/a", "a", None, ["*.example.com"]), ("/b", "b", None, ["*.EXAMPLE.com"])])
    assert matched(router.match("GET", "/a", "x.example.com"))[0] == "a"
    assert matched(router.match("GET", "/b", "x.example.com"))[0] == "b"
    router.add("/a", "again", None, ["*.example.com"])  # same tree: declared later, shadowed
    assert matched(router.match("GET", "/a", "y.example.com"))[0] == "a"


@pytest.mark.parametrize("host", ["", "  ", "*.", "*", "a.*.com", "a/b", "a b.com", "**.x.com"])
def test_bad_host_patterns(host: str) -> None:
    with pytest.raises(PatternError):
        validate_host_pattern(host)
    with pytest.raises(PatternError):
        Router[str]().add("/x", "r", None, [host])


def test_host_pattern_normalised() -> None:
    assert validate_host_pattern(" API.Example.com ") == "api.example.com"
    assert validate_host_pattern("*.Example.com") == "*.example.com"


# --------------------------------------------------------------------------- conflicts / patterns


def test_same_method_twice_first_declared_wins() -> None:
    router = build([("/x/:id", "a", ["GET"], None)])
    router.add("/x/:id", "b", ["get"])
    assert matched(router.match("GET", "/x/1")) == ("a", {"id": "1"})


def test_any_method_twice_first_declared_wins() -> None:
    router = build([("/x", "a", None, None)])
    router.add("/x", "b")
    assert matched(router.match("DELETE", "/x"))[0] == "a"


def test_different_methods_same_path_ok() -> None:
    router = build([("/x", "a", ["GET"], None), ("/x", "b", ["POST"], None)])
    assert matched(router.match("POST", "/x"))[0] == "b"


def test_different_param_names_at_same_position_conflict() -> None:
    router = build([("/users/:id", "a", None, None)])
    with pytest.raises(RouteConflictError, match="conflicts"):
        router.add("/users/:name/posts", "b")


def test_same_param_name_at_same_position_ok() -> None:
    router = build([("/users/:id", "a", None, None), ("/users/:id/posts", "b", None, None)])
    assert matched(router.match("GET", "/users/1/posts")) == ("b", {"id": "1"})


def test_param_names_may_differ_under_different_parents() -> None:
    router = build([("/a/:x", "a", None, None), ("/b/:y", "b", None, None)])
    assert matched(router.match("GET", "/b/1")) == ("b", {"y": "1"})


def test_same_path_in_different_host_trees_no_conflict() -> None:
    router = build(
        [
            ("/x", "a", None, ["a.com"]),
            ("/x", "b", None, ["b.com"]),
            ("/x", "c", None, None),
        ]
    )
    assert matched(router.match("GET", "/x", "b.com"))[0] == "b"


def test_failed_add_leaves_table_unchanged() -> None:
    router = build([("/x/:id", "old", None, ["b.com"])])
    with pytest.raises(RouteConflictError):
        router.add("/x/:name", "new", None, ["a.com", "b.com"])
    assert router.match("GET", "/x/1", "a.com") is None


def test_conflict_is_a_value_error() -> None:
    assert issubclass(RouteConflictError, ValueError)
    assert issubclass(PatternError, ValueError)


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "users",
        "users/:id",
        "/a/*/b",
        "/a/*/*",
        "/a/:",
        "/a/:1x",
        "/a/:x-y",
        "/a/:x/:x",
        "/a/b*",
        "/a/**",
        "/a/*x",
    ],
)
def test_bad_patterns_raise_pattern_error(pattern: str) -> None:
    with pytest.raises(PatternError):
        parse_pattern(pattern)
    with pytest.raises(PatternError):
        Router[str]().add(pattern, "r")


@pytest.mark.parametrize(
    ("pattern", "segments"),
    [
        ("/", []),
        ("/a/:b/*", ["a", ":b", "*"]),
        ("/a//b/", ["a", "b"]),
        ("/v1:beta/x", ["v1:beta", "x"]),
        ("/:_private", [":_private"]),
    ],
)
def test_good_patterns(pattern: str, segments: list[str]) -> None:
    assert parse_pattern(pattern) == segments


def test_colon_inside_static_segment_is_literal() -> None:
    router = build([("/v1:beta/x", "r", None, None)])
    assert matched(router.match("GET", "/v1:beta/x")) == ("r", {})
    assert router.match("GET", "/v1/x") is None


# --------------------------------------------------------------------------- properties

STATIC_ALPHABET = string.ascii_lowercase
# Disjoint from STATIC_ALPHABET so a value can never be taken by a static child.
SAFE_VALUE_ALPHABET = string.ascii_uppercase + string.digits + "-._~"

static_seg = st.text(STATIC_ALPHABET, min_size=1, max_size=4)


@st.composite
def patterns(draw: st.DrawFn, allow_wildcard: bool = True) -> list[str]:
    """Pattern segments: static text, ':name' (unique names), optional final '*'."""
    n = draw(st.integers(0, 5))
    names = iter(draw(st.permutations(["a", "b", "c", "d", "e", "id"])))
    segs: list[str] = []
    for _ in range(n):
        if draw(st.booleans()):
            segs.append(":" + next(names))
        else:
            segs.append(draw(static_seg))
    if allow_wildcard and draw(st.booleans()):
        segs.append("*")
    return segs


def instantiate(
    segs: list[str], values: list[str], rest: list[str], encode: bool
) -> tuple[str, dict[str, str]]:
    out: list[str] = []
    params: dict[str, str] = {}
    vals = iter(values)
    for seg in segs:
        if seg == "*":
            params["*"] = "/".join(rest)
            out.extend(quote(r, safe="") if encode else r for r in rest)
        elif seg.startswith(":"):
            value = next(vals)
            params[seg[1:]] = value
            out.append(quote(value, safe="") if encode else value)
        else:
            out.append(seg)
    return "/" + "/".join(out), params


safe_values = st.lists(st.text(SAFE_VALUE_ALPHABET, min_size=1, max_size=8), min_size=6, max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    segs=patterns(),
    values=safe_values,
    rest=st.lists(st.text(SAFE_VALUE_ALPHABET, min_size=1, max_size=5), max_size=3),
)
def test_property_pattern_matches_its_instances(
    segs: list[str], values: list[str], rest: list[str]
) -> None:
    pattern = "/" + "/".join(segs)
    router = build([(pattern, "r", None, None)])
    path, params = instantiate(segs, values, rest, encode=False)
    assert matched(router.match("GET", path)) == ("r", params)


@settings(max_examples=200, deadline=None)
@given(
    segs=patterns(),
    values=st.lists(
        st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8),
        min_size=6,
        max_size=6,
    ),
)
def test_property_percent_encoded_values_round_trip(segs: list[str], values: list[str]) -> None:
    """Any text (even '/', '%', unicode) survives percent-encoding into a param."""
    pattern = "/" + "/".join(segs)
    router = build([(pattern, "r", None, None)])
    path, params = instantiate(segs, values, [], encode=True)
    assert matched(router.match("GET", path)) == ("r", params)


@settings(max_examples=200, deadline=None)
@given(
    target=patterns(allow_wildcard=False),
    others=st.lists(patterns(), max_size=8),
    values=safe_values,
)
def test_property_instance_matches_itself_among_other_routes(
    target: list[str], others: list[list[str]], values: list[str]
) -> None:
    """With other (possibly overlapping) routes registered, an instance of a
    non-wildcard pattern still reaches its own route with exactly its params."""
    router: Router[str] = Router()
    pattern = "/" + "/".join(target)
    router.add(pattern, "target")
    for i, segs in enumerate(others):
        with contextlib.suppress(RouteConflictError):
            router.add("/" + "/".join(segs), f"other{i}")
    path, params = instantiate(target, values, [], encode=False)
    assert matched(router.match("GET", path)) == ("target", params)


@settings(max_examples=200, deadline=None)
@given(
    segs=patterns(allow_wildcard=False),
    position=st.integers(0, 10),
    literal=static_seg,
    static_first=st.booleans(),
    with_wildcard=st.booleans(),
)
def test_property_static_beats_param_for_its_literal_path(
    segs: list[str], position: int, literal: str, static_first: bool, with_wildcard: bool
) -> None:
    assume(segs)
    position %= len(segs)
    param_segs = list(segs)
    param_segs[position] = ":zz"
    static_segs = [literal if i == position else s for i, s in enumerate(param_segs)]
    # the static route: every param of the param route filled with a literal
    static_segs = [("v" + s[1:]) if s.startswith(":") else s for s in static_segs]
    param_pattern = "/" + "/".join(param_segs)
    static_pattern = "/" + "/".join(static_segs)
    routes: list[Route] = [
        (param_pattern, "param", None, None),
        (static_pattern, "static", None, None),
    ]
    if not static_first:
        routes.reverse()
    if with_wildcard:
        routes.append(("/" + "/".join([*param_segs[:position], "*"]), "wild", None, None))
    router = build(routes)
    assert matched(router.match("GET", static_pattern)) == ("static", {})


path_chars = st.characters(blacklist_categories=("Cs",))


@settings(max_examples=200, deadline=None)
@given(
    path=st.one_of(
        st.text(path_chars, max_size=40),
        st.lists(st.sampled_from(["a", "b", "x", "", "%", "%zz", "%2F", "..", "*", ":x"])).map(
            "/".join
        ),
    ),
    method=st.sampled_from(["GET", "HEAD", "POST", "DELETE", "get", "", "BREW"]),
    host=st.one_of(
        st.none(),
        st.text(path_chars, max_size=20),
        st.sampled_from(
            ["api.example.com", "x.example.com:80", "[::1]:1", ":", "[", "]:", "EXAMPLE.COM"]
        ),
    ),
)
def test_property_match_never_raises(path: str, method: str, host: str | None) -> None:
    router = build(
        [
            ("/", "root", ["GET"], None),
            ("/a/:x", "ax", ["GET"], None),
            ("/a/b/*", "ab", ["POST"], None),
            ("/:p/x", "px", None, None),
            ("/x", "host", None, ["api.example.com", "*.example.com"]),
            ("/*", "all", ["DELETE"], None),
        ]
    )
    result = router.match(method, path, host)
    assert result is None or isinstance(result, Match | MethodNotAllowed)
    if isinstance(result, MethodNotAllowed):
        assert list(result.allowed) == sorted(result.allowed)
        assert "*" not in result.allowed


# ------------------------------------------------------------------- guards and regex routes


class HeaderIs:
    """A guard accepting requests whose header ``name`` equals ``value``."""

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value

    def test(self, headers: Sequence[tuple[str, str]], query_string: str) -> bool:
        return any(k == self.name and v == self.value for k, v in headers)


class QueryHas:
    def __init__(self, text: str) -> None:
        self.text = text

    def test(self, headers: Sequence[tuple[str, str]], query_string: str) -> bool:
        return self.text in query_string.split("&")


def test_guarded_routes_tried_in_declaration_order() -> None:
    router: Router[str] = Router()
    router.add("/users/:id", "v2", guard=HeaderIs("x-api-version", "2"))
    router.add("/users/:id", "v3", guard=QueryHas("version=3"))
    router.add("/users/:id", "v1")
    assert matched(router.match("GET", "/users/7", headers=[("x-api-version", "2")])) == (
        "v2",
        {"id": "7"},
    )
    assert matched(router.match("GET", "/users/7", query="a=1&version=3"))[0] == "v3"
    assert matched(router.match("GET", "/users/7", headers=[("x-api-version", "9")]))[0] == "v1"


def test_failed_guard_backtracks_to_less_specific_route() -> None:
    router: Router[str] = Router()
    router.add("/api/users", "static", guard=HeaderIs("x-beta", "1"))
    router.add("/api/:thing", "param")
    router.add("/api/*", "wild")
    assert matched(router.match("GET", "/api/users", headers=[("x-beta", "1")]))[0] == "static"
    assert matched(router.match("GET", "/api/users")) == ("param", {"thing": "users"})


def test_failed_guard_is_404_not_405() -> None:
    router: Router[str] = Router()
    router.add("/x", "guarded", ["GET"], guard=HeaderIs("x-k", "v"))
    router.add("/x", "post", ["POST"])
    assert router.match("GET", "/x") is None
    assert router.match("PUT", "/x") == MethodNotAllowed(("GET", "HEAD", "POST"))


def test_method_specific_guard_failure_falls_back_to_any_method_route() -> None:
    router: Router[str] = Router()
    router.add("/x", "get-beta", ["GET"], guard=HeaderIs("x-beta", "1"))
    router.add("/x", "any")
    assert matched(router.match("GET", "/x"))[0] == "any"
    assert matched(router.match("GET", "/x", headers=[("x-beta", "1")]))[0] == "get-beta"


def test_regex_routes_come_after_the_tree_in_declaration_order() -> None:
    router: Router[str] = Router()
    router.add_regex(r"/api/v(?P<version>\d+)/.*", "versioned")
    router.add_regex(r"/api/.*", "any-api")
    router.add("/api/v1/health", "static")
    assert matched(router.match("GET", "/api/v1/health"))[0] == "static"
    assert matched(router.match("GET", "/api/v2/users")) == ("versioned", {"version": "2"})
    assert matched(router.match("GET", "/api/users"))[0] == "any-api"
    assert router.match("GET", "/other") is None


def test_regex_must_match_whole_path_and_sees_it_undecoded() -> None:
    router: Router[str] = Router()
    router.add_regex(r"/files/[a-z]+", "files")
    assert router.match("GET", "/files/abc/def") is None
    assert router.match("GET", "/files/a%20b") is None
    assert matched(router.match("GET", "/files/abc"))[0] == "files"


def test_regex_route_methods_and_guard() -> None:
    router: Router[str] = Router()
    router.add_regex(r"/r/\d+", "guarded", ["POST"], guard=HeaderIs("x-k", "v"))
    assert router.match("GET", "/r/1") == MethodNotAllowed(("POST",))
    assert router.match("POST", "/r/1") is None
    assert matched(router.match("POST", "/r/1", headers=[("x-k", "v")]))[0] == "guarded"


def test_regex_routes_per_host() -> None:
    router: Router[str] = Router()
    router.add_regex(r"/.*", "a", hosts=["a.com"])
    assert matched(router.match("GET", "/x", "a.com"))[0] == "a"
    assert router.match("GET", "/x", "b.com") is None


def test_bad_regex_is_a_pattern_error() -> None:
    with pytest.raises(PatternError, match=r"path regex '/\(': missing \)"):
        Router[str]().add_regex("/(", "r")


@settings(max_examples=200, deadline=None)
@given(
    target=patterns(),
    values=safe_values,
    regex_first=st.booleans(),
    guarded=st.booleans(),
    sends_header=st.booleans(),
)
def test_property_tree_routes_beat_regex_routes(
    target: list[str], values: list[str], regex_first: bool, guarded: bool, sends_header: bool
) -> None:
    """A regex route matching every path never takes a request a tree route
    takes, whatever the declaration order; it gets exactly those the tree
    routes decline (here: a failed header guard), with its named groups as params."""
    router: Router[str] = Router()
    guard = HeaderIs("x-v", "1") if guarded else None

    def add_regex() -> None:
        router.add_regex(r"/(?P<first>[^/]*).*", "regex")

    if regex_first:
        add_regex()
    router.add("/" + "/".join(target), "tree", guard=guard)
    if not regex_first:
        add_regex()
    path, params = instantiate(target, values, ["x", "y"], encode=False)
    headers = [("x-v", "1")] if sends_header else []
    result = matched(router.match("GET", path, headers=headers))
    if guarded and not sends_header:
        first = path.split("/")[1] if path != "/" else ""
        assert result == ("regex", {"first": first})
    else:
        assert result == ("tree", params)
