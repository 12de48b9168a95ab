"""`meshgate explain`: the report for one request, without traffic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest

from meshgate.config.loader import parse_config
from meshgate.explain import ExplainError, make_request, run_explain

CONFIG = dedent(
    """\
    upstreams:
      - name: users-v1
        instances: [{host: 127.0.0.1, port: 9101}, {host: 127.0.0.1, port: 9102}]
      - name: users-v2
        instances: [{host: 127.0.0.1, port: 9103}]
      - name: shadow
        instances: [{host: 127.0.0.1, port: 9104}]
    routes:
      - name: users-header-v2
        path: /api/users/:id
        headers: [{name: x-api-version, exact: "2"}]
        upstream: users-v2
        rewrite: {strip_prefix: /api}
      - name: users
        path: /api/users/:id
        methods: [GET]
        split: [{upstream: users-v1, weight: 90}, {upstream: users-v2, weight: 10}]
        sticky: {header: x-user}
        mirror: {upstream: shadow, percent: 10}
        rewrite: {regex: {pattern: "/api/(.*)", replacement: "/v1/\\\\1"}, query: {remove: [debug]}}
        request_headers: {set: {x-user-id: "${param.id}"}}
        response_headers: {remove: [x-internal-trace]}
        fault: {abort: {percent: 1, status: 503}}
      - name: old
        path_prefix: /old
        redirect: {status: 301, scheme: https, host: new.example.com}
    """
)


def explain(method: str, url: str, *headers: str) -> str:
    config, doc = parse_config(CONFIG, "gw.yaml")
    return "\n".join(run_explain(config, doc, method, url, list(headers)))


def test_matched_route_with_split_rewrite_and_stages() -> None:
    out = explain("GET", "/api/users/7?debug=1&x=2", "x-user: alice")
    assert "route: users (routes[1], gw.yaml:14)" in out
    assert "matched: path /api/users/:id; params id='7'; methods GET; hosts any" in out
    assert (
        "chain: request_id -> response_time -> fault -> request_headers -> rewrite -> split"
        " -> mirror -> response_headers -> proxy"
    ) in out
    assert "rewrite: /api/users/7?debug=1&x=2 -> /v1/users/7?x=2" in out
    assert "split: users-v1 90%, users-v2 10% (sticky by header x-user)" in out
    assert "sticky key 'alice' -> users-v1" in out
    assert "mirror: shadow, 10% of requests" in out
    assert "fault: abort 503 for 1% of requests" in out
    assert "response header: remove x-internal-trace" in out
    assert "x-user-id: 7" in out


def test_sticky_choice_is_stable_and_follows_the_key() -> None:
    picks = {
        explain("GET", "/api/users/1", f"x-user: u{i}").split("sticky key")[1] for i in range(40)
    }
    assert any("users-v1" in p for p in picks)
    assert any("users-v2" in p for p in picks)
    assert explain("GET", "/api/users/1", "x-user: u3") == explain(
        "GET", "/api/users/1", "x-user: u3"
    )


def test_header_condition_selects_the_earlier_route() -> None:
    out = explain("GET", "http://a.com/api/users/7", "x-api-version: 2")
    assert "route: users-header-v2 (routes[0], gw.yaml:9)" in out
    assert "condition met: header x-api-version = '2'" in out
    assert "rewrite: /api/users/7 -> /users/7" in out
    assert "upstream: users-v2 (round_robin over 127.0.0.1:9103); timeout 15s" in out


def test_redirect_is_shown_with_its_location() -> None:
    out = explain("POST", "/old/x?y=1")
    assert "route: old (routes[2], gw.yaml:24)" in out
    assert "answer: 301 redirect to https://new.example.com/old/x?y=1" in out
    assert "proxy" not in out


def test_unmatched_request_lists_closest_routes_with_reasons() -> None:
    out = explain("POST", "/api/users/7")
    assert "answer: 404 no route matches" in out
    lines = out.splitlines()
    start = lines.index("closest routes:")
    assert lines[start + 1].startswith("  users-header-v2 (routes[0], gw.yaml:9)")
    assert lines[start + 2] == "    - header x-api-version is missing"
    assert lines[start + 3].startswith("  users (routes[1]")
    assert lines[start + 4] == "    - method POST not in GET"
    assert "path /api/users/7 does not match path_prefix /old" in out


def test_method_not_allowed_is_explained() -> None:
    config = CONFIG.replace('headers: [{name: x-api-version, exact: "2"}]', "methods: [PUT]")
    parsed, doc = parse_config(config, "gw.yaml")
    out = "\n".join(run_explain(parsed, doc, "DELETE", "/api/users/7", []))
    assert "answer: 405 method not allowed (Allow: GET, HEAD, PUT)" in out


@pytest.mark.parametrize(
    ("url", "headers", "problem"),
    [
        ("api/users", [], "give http://host/path or /path"),
        ("ftp://x/y", [], "scheme must be http or https"),
        ("/x", ["no-colon"], "expected 'name: value'"),
    ],
)
def test_bad_request_input(url: str, headers: list[str], problem: str) -> None:
    with pytest.raises(ExplainError, match=problem):
        make_request("GET", url, headers)


def test_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(CONFIG)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshgate",
            "explain",
            "-c",
            str(cfg),
            "GET",
            "/api/users/9",
            "-H",
            "x-api-version: 2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "route: users-header-v2" in run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "meshgate", "explain", "-c", str(cfg), "GET", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "explain: URL 'nope'" in bad.stderr
