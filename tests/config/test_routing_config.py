"""Routing config checked where it is written: `meshgate validate` errors with file:line
for bad matchers, rewrites, redirects, splits, mirrors, templates and faults, and
warnings for routes that can never match.

Every snippet below is appended to `HEAD`, so the first route starts on line 7.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest

from meshgate.config.loader import config_warnings, parse_config
from tests.config.located import problems_of

HEAD = dedent(
    """\
    upstreams:
      - name: a
        instances: [{host: 127.0.0.1, port: 9001}]
      - name: b
        instances: [{host: 127.0.0.1, port: 9002}]
    routes:
    """
)


def routes(text: str) -> str:
    return HEAD + dedent(text)


def one_problem(text: str) -> str:
    found = problems_of(text)
    assert len(found) == 1, found
    return found[0]


def warnings_of(text: str) -> list[str]:
    config, doc = parse_config(text, "gw.yaml")
    return [str(w) for w in config_warnings(config, doc)]


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshgate", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path.parent,
        check=False,
    )


# --------------------------------------------------------------------------- errors

ERRORS = [
    pytest.param(
        """\
        - path_regex: '/x/(?P<id>[0-9+'
          upstream: a
        """,
        "gw.yaml:7: routes[0].path_regex: invalid regex '/x/(?P<id>[0-9+': "
        "unterminated character set at position 10",
        id="invalid-path-regex",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          headers:
            - name: x-v
              regex: '('
        """,
        "gw.yaml:10: routes[0].headers[0]: header matcher 'x-v': invalid regex '(': "
        "missing ), unterminated subpattern at position 0",
        id="invalid-header-regex",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          query:
            - name: v
              regex: '[a-'
        """,
        "gw.yaml:10: routes[0].query[0]: query matcher 'v': invalid regex '[a-': "
        "unterminated character set at position 0",
        id="invalid-query-regex",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          rewrite:
            regex: {pattern: '/x/(', replacement: /y}
        """,
        "gw.yaml:9: routes[0].rewrite: regex '/x/(' does not compile: "
        "missing ), unterminated subpattern at position 3",
        id="invalid-rewrite-regex",
    ),
    pytest.param(
        """\
        - path: /x/*
          upstream: a
          rewrite:
            regex: {pattern: '/x/(.*)', replacement: '/y/\\2'}
        """,
        "gw.yaml:9: routes[0].rewrite: regex '/x/(.*)' replacement '/y/\\\\2': "
        "group 2 does not exist (the pattern has 1)",
        id="rewrite-group-number-missing",
    ),
    pytest.param(
        """\
        - path: /x/*
          upstream: a
          rewrite:
            regex: {pattern: '/x/(?P<rest>.*)', replacement: '/y/\\g<nope>'}
        """,
        "gw.yaml:9: routes[0].rewrite: regex '/x/(?P<rest>.*)' replacement '/y/\\\\g<nope>': "
        "the pattern has no group named 'nope'",
        id="rewrite-group-name-missing",
    ),
    pytest.param(
        """\
        - path: /x/*
          upstream: a
          rewrite:
            regex: {pattern: '/x/(.*)', replacement: '/y/\\10'}
        """,
        "gw.yaml:9: routes[0].rewrite: regex '/x/(.*)' replacement '/y/\\\\10': "
        "ambiguous '\\\\10'; write '\\g<1>0' or '\\g<10>'",
        id="rewrite-group-ambiguous",
    ),
    pytest.param(
        """\
        - name: users
          path: /x
          upstream: a
        - name: users
          path: /y
          upstream: b
        """,
        "gw.yaml:10: routes[1].name: duplicate route name 'users' (also routes[0])",
        id="duplicate-route-name",
    ),
    pytest.param(
        """\
        - path: /x
          split:
            - {upstream: a, weight: 0}
            - {upstream: b, weight: 0}
        """,
        "gw.yaml:8: routes[0].split: split weights sum to 0: give one upstream a weight > 0",
        id="split-weights-sum-to-0",
    ),
    pytest.param(
        """\
        - path: /x
          split:
            - {upstream: a, weight: 3}
            - {upstream: b, weight: -1}
        """,
        "gw.yaml:10: routes[0].split[1].weight: Input should be greater than or equal to 0",
        id="negative-weight",
    ),
    pytest.param(
        """\
        - path: /x
          split: []
        """,
        "gw.yaml:8: routes[0].split: split must list at least one upstream",
        id="empty-split",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          request_headers:
            set:
              x-user: '${user}'
        """,
        "gw.yaml:10: routes[0].request_headers.set: x-user: unknown variable ${user} at offset 0 "
        "(known: request_id, remote_addr, route, method, path, host, scheme, param.*, header.*, "
        "query.*, jwt.*)",
        id="unknown-template-variable",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          response_headers:
            add:
              x-id: 'id-${request_id'
        """,
        "gw.yaml:10: routes[0].response_headers.add: x-id: unterminated '${' at offset 3: "
        "missing '}'",
        id="unterminated-template-variable",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          request_headers:
            set: {x-a: "a\\nb"}
        """,
        "gw.yaml:10: routes[0].request_headers.set: x-a: forbidden character LF at offset 1: "
        "header values cannot contain CR, LF or NUL",
        id="template-with-line-break",
    ),
    pytest.param(
        """\
        - path: /x
          redirect:
            status: 301
            scheme: https
            body: moved
        """,
        "gw.yaml:11: routes[0].redirect.body: unknown key",
        id="redirect-with-body",
    ),
    pytest.param(
        """\
        - path: /x
          redirect:
            status: 301
            strip_query: false
        """,
        "gw.yaml:8: routes[0].redirect: redirect changes nothing (set scheme, host, port or "
        "path): it would send the client to the same URL forever",
        id="redirect-changes-nothing",
    ),
    pytest.param(
        """\
        - path: /x
          redirect: {status: 200, scheme: https}
        """,
        "gw.yaml:8: routes[0].redirect: redirect status 200 is not one of 301, 302, 303, 307, 308",
        id="redirect-status",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          redirect: {scheme: https}
        """,
        "gw.yaml:7: routes[0]: route: give only one of upstream, split, redirect "
        "(got upstream, redirect)",
        id="redirect-and-upstream",
    ),
    pytest.param(
        """\
        - path: /x
          split: [{upstream: a, weight: 1}]
          redirect: {scheme: https}
        """,
        "gw.yaml:7: routes[0]: route: give only one of upstream, split, redirect "
        "(got split, redirect)",
        id="redirect-and-split",
    ),
    pytest.param(
        """\
        - path: /x
          redirect: {scheme: https}
          mirror: {upstream: b}
        """,
        "gw.yaml:7: routes[0]: a redirect route answers without forwarding: remove mirror",
        id="redirect-and-mirror",
    ),
    pytest.param(
        """\
        - path: /x
          redirect: {scheme: https}
          rewrite: {strip_prefix: /x}
          request_headers: {set: {x-a: b}}
        """,
        "gw.yaml:7: routes[0]: a redirect route answers without forwarding: "
        "remove rewrite, request_headers",
        id="redirect-and-rewrite",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          mirror: {upstream: a}
        """,
        "gw.yaml:9: routes[0].mirror.upstream: the mirror 'a' is the route's own upstream",
        id="mirror-is-own-upstream",
    ),
    pytest.param(
        """\
        - path: /x
          split: [{upstream: a, weight: 9}, {upstream: b, weight: 1}]
          mirror:
            upstream: b
        """,
        "gw.yaml:10: routes[0].mirror.upstream: the mirror 'b' is the route's own upstream",
        id="mirror-is-a-split-upstream",
    ),
    pytest.param(
        """\
        - path: /x
          split:
            - {upstream: a, weight: 1}
            - {upstream: c, weight: 1}
        """,
        "gw.yaml:10: routes[0].split[1].upstream: unknown upstream 'c'; defined: a, b",
        id="unknown-split-upstream",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          mirror: {upstream: shadow}
        """,
        "gw.yaml:9: routes[0].mirror.upstream: unknown upstream 'shadow'; defined: a, b",
        id="unknown-mirror-upstream",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          sticky: {header: x-user}
        """,
        "gw.yaml:7: routes[0]: sticky needs 'split'",
        id="sticky-without-split",
    ),
    pytest.param(
        """\
        - path: /x
          split: [{upstream: a, weight: 1}]
          sticky: {header: x-user, cookie: session}
        """,
        "gw.yaml:9: routes[0].sticky: sticky: give only one of header, cookie (got header, cookie)",
        id="sticky-header-and-cookie",
    ),
    pytest.param(
        """\
        - path: /x
          path_prefix: /y
          upstream: a
        """,
        "gw.yaml:7: routes[0]: route: give only one of path, path_prefix, path_regex "
        "(got path, path_prefix)",
        id="path-and-prefix",
    ),
    pytest.param(
        """\
        - path_prefix: /x
          path_regex: '/y.*'
          upstream: a
        """,
        "gw.yaml:7: routes[0]: route: give only one of path, path_prefix, path_regex "
        "(got path_prefix, path_regex)",
        id="prefix-and-regex",
    ),
    pytest.param(
        """\
        - methods: [GET]
          upstream: a
        """,
        "gw.yaml:7: routes[0]: route: give one of path, path_prefix, path_regex",
        id="no-path",
    ),
    pytest.param(
        """\
        - path_prefix: /api/*
          upstream: a
        """,
        "gw.yaml:7: routes[0].path_prefix: path_prefix '/api/*': no ':param' or '*' here; "
        "use 'path'",
        id="prefix-with-wildcard",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          headers:
            - {name: x-v, exact: '2', present: true}
        """,
        "gw.yaml:10: routes[0].headers[0]: header matcher 'x-v': give only one of exact, regex, "
        "present (got exact, present)",
        id="header-matcher-two-conditions",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          headers:
            - {name: x-v}
        """,
        "gw.yaml:10: routes[0].headers[0]: header matcher 'x-v': give one of exact, regex, present",
        id="header-matcher-no-condition",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          query:
            - {name: v, exact: '2', regex: '[0-9]'}
        """,
        "gw.yaml:10: routes[0].query[0]: query matcher 'v': give only one of exact, regex, "
        "present (got exact, regex)",
        id="query-matcher-two-conditions",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          query:
            - {name: v}
        """,
        "gw.yaml:10: routes[0].query[0]: query matcher 'v': give one of exact, regex, present",
        id="query-matcher-no-condition",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          headers:
            - {name: 'x v', present: true}
        """,
        "gw.yaml:10: routes[0].headers[0].name: 'x v' is not a valid header name",
        id="header-matcher-bad-name",
    ),
    pytest.param(
        """\
        - path: /x
          upstream: a
          fault:
            abort: {percent: 10, status: 200}
        """,
        "gw.yaml:10: routes[0].fault.abort.status: Input should be greater than or equal to 400",
        id="fault-abort-status",
    ),
]


@pytest.mark.parametrize(("snippet", "expected"), ERRORS)
def test_routing_error_with_file_line_and_key(snippet: str, expected: str) -> None:
    assert one_problem(routes(snippet)) == expected


def test_every_bad_route_is_reported_in_one_run() -> None:
    text = routes(
        """\
        - path_regex: '('
          upstream: a
        - path: /ok
          upstream: a
        - path: /x
          upstream: a
          request_headers: {set: {x-a: '${nope}'}}
        - path: /y
          redirect: {status: 302}
        """
    )
    found = problems_of(text)
    assert [p.split(": ", 2)[:2] for p in found] == [
        ["gw.yaml:7", "routes[0].path_regex"],
        ["gw.yaml:13", "routes[2].request_headers.set"],
        ["gw.yaml:15", "routes[3].redirect"],
    ]


# Fault messages must name the keys the user writes (fault.delay.duration_s,
# fault.delay.percent, fault.abort.status...), not the internal builder's arguments.
FAULT_KEYS = {"fault", "delay", "abort", "percent", "duration_s", "status", "header_trigger"}
FAULT_KEYS |= {"max_delay_s"}


def underscored_names(message: str) -> set[str]:
    """Key-like words of a message (``abort_percent``, ``max_delay_s``...)."""
    return set(re.findall(r"\b[a-z]+(?:_[a-z]+)+\b", message))


def test_fault_delay_above_max_delay_is_refused_naming_the_config_keys() -> None:
    text = routes(
        """\
        - path: /x
          upstream: a
          fault:
            delay: {percent: 10, duration_s: 20}
            max_delay_s: 5
        """
    )
    problem = one_problem(text)
    assert problem.startswith("gw.yaml:"), problem
    assert "routes[0].fault" in problem, problem
    assert "20" in problem and "max_delay_s" in problem, problem
    assert "duration_s" in problem, problem  # the key that is too big
    assert underscored_names(problem) <= FAULT_KEYS, problem


@pytest.mark.parametrize(
    "fault",
    ["{abort: {percent: 0, status: 503}}", "{delay: {percent: 50, duration_s: 0}}"],
)
def test_fault_that_does_nothing_is_refused_naming_the_config_keys(fault: str) -> None:
    text = routes(
        f"""\
        - path: /x
          upstream: a
          fault: {fault}
        """
    )
    problem = one_problem(text)
    assert problem.startswith("gw.yaml:9: routes[0].fault"), problem
    assert "does nothing" in problem, problem
    assert "percent" in problem and "header_trigger" in problem, problem
    assert underscored_names(problem) <= FAULT_KEYS, problem


def test_param_variable_the_route_cannot_capture_is_refused() -> None:
    """`${param.user}` on a route whose only parameter is `id` always renders empty: a typo
    a user needs to hear about, as an unknown variable."""
    text = routes(
        """\
        - path: /users/:id
          upstream: a
          request_headers:
            set: {x-user: '${param.user}'}
        """
    )
    problem = one_problem(text)
    assert problem.startswith("gw.yaml:"), problem
    assert "routes[0]" in problem and "${param.user}" in problem, problem


def test_param_variables_of_wildcards_and_regex_groups_are_accepted() -> None:
    """docs/routing.md: `path: /static/*` captures the rest of the path as `${param.*}`."""
    text = routes(
        """\
        - path: /static/*
          upstream: a
          request_headers: {set: {x-rest: '${param.*}'}}
        - path_regex: '/v(?P<ver>[0-9]+)/.*'
          upstream: a
          request_headers: {set: {x-ver: 'v${param.ver}'}}
        """
    )
    config, _ = parse_config(text, "gw.yaml")
    assert config.routes[0].request_headers is not None
    assert config.routes[0].request_headers.set == {"x-rest": "${param.*}"}


# --------------------------------------------------------------------------- warnings


def test_same_path_and_method_twice_is_shadowed() -> None:
    text = routes(
        """\
        - name: users
          path: /users/:id
          methods: [GET, POST]
          upstream: a
        - name: users-v2
          path: /users/:uid
          methods: [GET]
          upstream: b
        """
    )
    assert warnings_of(text) == [
        "gw.yaml:11: routes[1]: warning: route 'users-v2' never matches: "
        "'users' (routes[0]) takes all its requests"
    ]


def test_same_path_and_method_after_a_catch_all_is_shadowed() -> None:
    text = routes(
        """\
        - name: catch-all
          path: /*
          upstream: a
        - name: users
          path: /users
          upstream: b
        - name: everything-get
          path: /*
          methods: [GET]
          upstream: b
        - name: prefix-root
          path_prefix: /
          upstream: b
        """
    )
    # /users is not shadowed: a static path beats the wildcard whatever the order.
    assert warnings_of(text) == [
        "gw.yaml:13: routes[2]: warning: route 'everything-get' never matches: "
        "'catch-all' (routes[0]) takes all its requests",
        "gw.yaml:17: routes[3]: warning: route 'prefix-root' never matches: "
        "'catch-all' (routes[0]) takes all its requests",
    ]


def test_any_method_route_shadows_a_later_route_for_one_method() -> None:
    text = routes(
        """\
        - {name: any, path: /orders, upstream: a}
        - {name: get-only, path: /orders, methods: [GET], upstream: b}
        """
    )
    assert warnings_of(text) == [
        "gw.yaml:8: routes[1]: warning: route 'get-only' never matches: "
        "'any' (routes[0]) takes all its requests"
    ]


def test_regex_route_after_catch_all_is_shadowed() -> None:
    text = routes(
        """\
        - name: catch-all
          path: /*
          upstream: a
        - name: versioned
          path_regex: '/v(?P<n>[0-9]+)/.*'
          upstream: b
        """
    )
    assert warnings_of(text) == [
        "gw.yaml:10: routes[1]: warning: route 'versioned' never matches: "
        "'catch-all' (routes[0]) takes all its requests"
    ]


def test_guarded_route_after_an_unguarded_identical_one_is_shadowed() -> None:
    text = routes(
        """\
        - name: v1
          path: /api/users
          upstream: a
        - name: v2
          path: /api/users
          headers: [{name: x-api-version, exact: '2'}]
          upstream: b
        """
    )
    assert warnings_of(text) == [
        "gw.yaml:10: routes[1]: warning: route 'v2' never matches: "
        "'v1' (routes[0]) takes all its requests"
    ]


@pytest.mark.parametrize(
    "snippet",
    [
        pytest.param(
            """\
            - {path: /api/users, headers: [{name: x-api-version, exact: '2'}], upstream: b}
            - {path: /api/users, upstream: a}
            """,
            id="guarded-earlier-route",
        ),
        pytest.param(
            """\
            - {path: /api/users, query: [{name: version, exact: '2'}], upstream: b}
            - {path: /api/users, query: [{name: version, present: true}], upstream: a}
            """,
            id="different-guards",
        ),
        pytest.param(
            """\
            - {path: /orders, methods: [GET], upstream: a}
            - {path: /orders, methods: [GET, POST], upstream: b}
            """,
            id="narrower-method-set-earlier",
        ),
        pytest.param(
            """\
            - {path: /users/:id, upstream: a}
            - {path: /users/me, upstream: b}
            """,
            id="exact-after-param",
        ),
        pytest.param(
            """\
            - {path: '/*', hosts: [api.example.com], upstream: a}
            - {path: '/*', upstream: b}
            """,
            id="host-route-earlier",
        ),
        pytest.param(
            """\
            - {path: '/*', upstream: a}
            - {path: '/*', hosts: [api.example.com], upstream: b}
            """,
            id="host-route-after-any-host-catch-all",
        ),
        pytest.param(
            """\
            - {path: '/*', upstream: a}
            - {path_regex: '/v[0-9]+/.*', hosts: ['*.example.com'], upstream: b}
            """,
            id="host-regex-after-any-host-catch-all",
        ),
        pytest.param(
            """\
            - {path: '/*', methods: [GET], upstream: a}
            - {path_regex: '/v[0-9]+/.*', upstream: b}
            """,
            id="regex-after-get-only-catch-all",
        ),
    ],
)
def test_routes_that_can_match_are_not_reported(snippet: str) -> None:
    """Host routes are tried before routes without hosts (docs/routing.md, Precedence 1),
    whatever the declaration order: a later host route is not shadowed by an any-host one."""
    assert warnings_of(routes(snippet)) == []


# --------------------------------------------------------------------------- CLI


def test_validate_cli_reports_an_error_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        routes(
            """\
            - name: users
              path: /users/:id
              upstream: a
              rewrite:
                regex: {pattern: '/users/(?P<id>[0-9]+)', replacement: '/u/\\g<uid>'}
            """
        )
    )
    result = validate(path)
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:10: routes[0].rewrite: regex '/users/(?P<id>[0-9]+)' replacement "
        "'/u/\\\\g<uid>': the pattern has no group named 'uid'"
    ]


def test_validate_cli_reports_shadowed_routes_as_warnings_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        routes(
            """\
            - name: catch-all
              path: /*
              upstream: a
            - name: versioned
              path_regex: '/v[0-9]+/.*'
              upstream: b
            - name: v2
              path: /*
              headers: [{name: x-api-version, exact: '2'}]
              upstream: b
            - name: beta
              path: /beta
              headers: [{name: x-beta, present: true}]
              upstream: b
            - name: beta-open
              path: /beta
              upstream: a
            """
        )
    )
    result = validate(path)
    assert result.returncode == 0, result
    assert result.stderr.splitlines() == [
        f"{path}:10: routes[1]: warning: route 'versioned' never matches: "
        "'catch-all' (routes[0]) takes all its requests",
        f"{path}:13: routes[2]: warning: route 'v2' never matches: "
        "'catch-all' (routes[0]) takes all its requests",
    ]
    assert result.stdout.strip() == f"{path}: ok (5 routes, 2 upstreams, 2 warning(s))"


def test_validate_cli_infinite_weight_names_the_weight(tmp_path: Path) -> None:
    """A weight of .inf passes the models and is refused when the split is built: the
    message must still say which key, in config terms (no Python object repr)."""
    path = tmp_path / "gw.yaml"
    path.write_text(
        routes(
            """\
            - path: /x
              split:
                - {upstream: a, weight: .inf}
                - {upstream: b, weight: 1}
            """
        )
    )
    result = validate(path)
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:9: routes[0].split[0].weight: "), lines
    assert "object at 0x" not in lines[0], lines
