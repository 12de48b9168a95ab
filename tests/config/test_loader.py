"""Tests of gateway.yaml loading: models, defaults and file:line error reporting."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from textwrap import dedent

import pytest

from meshgate.config.loader import (
    ConfigError,
    ConfigProblem,
    key_path,
    load_config,
    parse_config,
)
from meshgate.config.models import GatewayConfig, MiddlewareRef, RouteConfig
from tests.config.located import problems_of

UPSTREAM = dedent(
    """\
    upstreams:
      - name: svc
        instances:
          - {host: 127.0.0.1, port: 9001}
    """
)


def one_problem(text: str) -> str:
    found = problems_of(text)
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "listener:\n  port: 80\n  bogus: 1\n",
            "gw.yaml:3: listener.bogus: unknown key",
            id="unknown-nested-key",
        ),
        pytest.param(
            "timeout_s: 3\nlistenr:\n  port: 80\n",
            "gw.yaml:2: listenr: unknown key",
            id="unknown-top-level-key",
        ),
        pytest.param(
            "listener:\n  host: 0.0.0.0\n  port: 70000\n",
            "gw.yaml:3: listener.port: Input should be less than or equal to 65535",
            id="port-too-big",
        ),
        pytest.param(
            "listener:\n  port: -1\n",
            "gw.yaml:2: listener.port: Input should be greater than or equal to 0",
            id="port-negative",
        ),
        pytest.param(
            "listener:\n  port: http\n",
            "gw.yaml:2: listener.port: Input should be a valid integer",
            id="port-not-int",
        ),
        pytest.param(
            "listener:\n  port: true\n",
            "gw.yaml:2: listener.port: Input should be a valid integer",
            id="port-bool-is-not-a-port",
        ),
        pytest.param(
            "upstreams:\n  - name: a\n    instances:\n      - host: h\n        port: 0\n",
            "gw.yaml:5: upstreams[0].instances[0].port: Input should be greater than or equal to 1",
            id="instance-port",
        ),
        pytest.param(
            UPSTREAM
            + "routes:\n  - path: /x\n    upstream: svc\n  - path: /y\n    upstream: nope\n",
            "gw.yaml:9: routes[1].upstream: unknown upstream 'nope'; defined: svc",
            id="unknown-upstream",
        ),
        pytest.param(
            "routes:\n  - path: /x\n    upstream: nope\n",
            "gw.yaml:3: routes[0].upstream: unknown upstream 'nope'; defined: none",
            id="unknown-upstream-none-defined",
        ),
        pytest.param(
            UPSTREAM + "  - name: svc\n    instances: [{host: h, port: 1}]\n",
            "gw.yaml:5: upstreams[1].name: duplicate upstream name 'svc'",
            id="duplicate-upstream",
        ),
        pytest.param(
            UPSTREAM + "routes:\n  - upstream: svc\n    path: api/x\n",
            "gw.yaml:7: routes[0].path: path pattern 'api/x' must start with '/'",
            id="path-without-slash",
        ),
        pytest.param(
            UPSTREAM + "routes:\n  - upstream: svc\n    path: /a/*/b\n",
            "gw.yaml:7: routes[0].path: path pattern '/a/*/b': '*' must be the last segment",
            id="wildcard-not-last",
        ),
        pytest.param(
            UPSTREAM + "routes:\n  - upstream: svc\n    path: /a/:1\n",
            "gw.yaml:7: routes[0].path: path pattern '/a/:1': parameter name '1' "
            "is not an identifier",
            id="bad-param-name",
        ),
        pytest.param(
            UPSTREAM + "routes:\n  - upstream: svc\n    path: /x\n    methods: [GET, FETCH]\n",
            "gw.yaml:8: routes[0].methods: unknown HTTP method 'FETCH'",
            id="unknown-method",
        ),
        pytest.param(
            UPSTREAM + "routes:\n  - upstream: svc\n    path: /x\n    methods: []\n",
            "gw.yaml:8: routes[0].methods: methods must not be empty; omit it to allow any method",
            id="empty-methods",
        ),
        pytest.param(
            UPSTREAM + "routes:\n  - upstream: svc\n    path: /x\n    hosts: ['a.*.com']\n",
            "gw.yaml:8: routes[0].hosts: host pattern 'a.*.com': "
            "use 'name.example.com' or '*.example.com'",
            id="bad-host",
        ),
        pytest.param(
            UPSTREAM
            + "routes:\n  - upstream: svc\n    path: /x\n"
            + "    remove_request_headers: ['bad header']\n",
            "gw.yaml:8: routes[0].remove_request_headers: 'bad header' is not a valid header name",
            id="bad-header-name",
        ),
        pytest.param(
            "upstreams:\n  - name: a\n    load_balancer: fastest\n"
            "    instances: [{host: h, port: 1}]\n",
            "gw.yaml:3: upstreams[0].load_balancer: unknown load balancer 'fastest'; "
            "expected one of round_robin, weighted_round_robin, random, least_request, "
            "weighted_random, least_connections, consistent_hash",
            id="unknown-balancer",
        ),
        pytest.param(
            "upstreams:\n  - instances: [{host: h, port: 1}]\n",
            "gw.yaml:2: upstreams[0].name: Field required",
            id="missing-field-points-at-item",
        ),
        pytest.param(
            "upstreams:\n  - name: a\n    instances: []\n",
            "gw.yaml:2: upstreams[0]: upstream 'a': list instances or set discovery",
            id="no-instances",
        ),
        pytest.param(
            "timeout_s: 0\n",
            "gw.yaml:1: timeout_s: Input should be greater than 0",
            id="timeout-zero",
        ),
        pytest.param(
            "middleware:\n  - request_id\n  - {name: x, bogus: 1}\n",
            "gw.yaml:3: middleware[1].bogus: unknown key",
            id="middleware-unknown-key",
        ),
        pytest.param(
            "# comment\ntimeout_s: 1\nlistener:\n  port: 1\n  # another\n  port: 2\n",
            "gw.yaml:6: listener.port: duplicate key",
            id="duplicate-yaml-key",
        ),
        pytest.param(
            "timeout_s: 1\ntimeout_s: 2\n",
            "gw.yaml:2: timeout_s: duplicate key",
            id="duplicate-top-level-key",
        ),
        pytest.param(
            "listener:\n  port: [1\n",
            "gw.yaml:3: (yaml): expected ',' or ']', but got '<stream end>'",
            id="yaml-unclosed-flow",
        ),
        pytest.param(
            "timeout_s: 1\nlistener:\n  port: 1\n    host: x\n",
            "gw.yaml:4: (yaml): mapping values are not allowed here",
            id="yaml-bad-indent",
        ),
        pytest.param(
            "- a\n- b\n",
            "gw.yaml:1: (top level): the top level must be a mapping of keys",
            id="top-level-list",
        ),
        pytest.param(
            "# header comment\n\njust a string\n",
            "gw.yaml:3: (top level): the top level must be a mapping of keys",
            id="top-level-scalar",
        ),
    ],
)
def test_error_line_and_key_path(text: str, expected: str) -> None:
    assert one_problem(text) == expected


def test_every_problem_is_reported() -> None:
    text = "listener:\n  port: 99999\n  bogus: true\ntimeout_s: -1\n"
    assert problems_of(text) == [
        "gw.yaml:2: listener.port: Input should be less than or equal to 65535",
        "gw.yaml:3: listener.bogus: unknown key",
        "gw.yaml:4: timeout_s: Input should be greater than 0",
    ]


def test_all_reference_errors_reported_together() -> None:
    text = dedent(
        """\
        upstreams:
          - name: a
            instances: [{host: h, port: 1}]
          - name: a
            instances: [{host: h, port: 1}]
        routes:
          - path: /x
            upstream: b
        """
    )
    assert problems_of(text) == [
        "gw.yaml:4: upstreams[1].name: duplicate upstream name 'a'",
        "gw.yaml:8: routes[0].upstream: unknown upstream 'b'; defined: a",
    ]


def test_config_problem_fields() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("listener:\n  port: 70000\n", "gw.yaml")
    (problem,) = info.value.problems
    assert problem == ConfigProblem(
        "gw.yaml", 2, "listener.port", "Input should be less than or equal to 65535"
    )
    assert str(info.value) == str(problem)


def test_error_message_joins_problems() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("a: 1\nb: 2\n", "gw.yaml")
    assert str(info.value) == "gw.yaml:1: a: unknown key\ngw.yaml:2: b: unknown key"


def test_default_filename() -> None:
    with pytest.raises(ConfigError, match=r"^<config>:1: a: unknown key$"):
        parse_config("a: 1\n")


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        ((), "(top level)"),
        (("listener",), "listener"),
        (("listener", "port"), "listener.port"),
        (("routes", 0, "middleware", 2, "name"), "routes[0].middleware[2].name"),
    ],
)
def test_key_path(loc: tuple[str | int, ...], expected: str) -> None:
    assert key_path(loc) == expected


# --------------------------------------------------------------------------- defaults / models


def test_empty_document_gives_defaults() -> None:
    for text in ("", "# only a comment\n", "{}\n"):
        config, _ = parse_config(text, "gw.yaml")
        assert config == GatewayConfig()
        assert config.timeout_s == 15
        assert config.listener.port == 8080
        assert config.listener.host == "127.0.0.1"
        assert config.middleware == [
            MiddlewareRef(name="request_id"),
            MiddlewareRef(name="response_time"),
        ]
        assert config.routes == []
        assert config.upstreams == []


def test_route_defaults_and_normalisation() -> None:
    text = UPSTREAM + dedent(
        """\
        routes:
          - path: /x/:id
            upstream: svc
            methods: [get, GET, post]
            hosts: [API.Example.com]
            remove_request_headers: [Cookie]
        """
    )
    config, _ = parse_config(text, "gw.yaml")
    (route,) = config.routes
    assert route.methods == ["GET", "POST"]
    assert route.hosts == ["api.example.com"]
    assert route.remove_request_headers == ["cookie"]
    assert route.middleware is None
    assert route.timeout_s is None
    assert route.preserve_host is True
    (up,) = config.upstreams
    assert up.load_balancer == "round_robin"
    assert up.instances[0].weight == 1
    assert up.pool.idle_timeout_s == 4.0


def test_balancer_dashes_accepted() -> None:
    text = (
        "upstreams:\n  - name: a\n    load_balancer: least-request\n"
        "    instances: [{host: h, port: 1}]\n"
    )
    config, _ = parse_config(text, "gw.yaml")
    assert config.upstreams[0].load_balancer == "least_request"


def test_middleware_strings_become_refs() -> None:
    text = UPSTREAM + dedent(
        """\
        middleware: [request_id, {name: mypkg.mod:fn, config: {a: 1}}]
        routes:
          - path: /x
            upstream: svc
            middleware:
              - response_time
              - name: other.mod.fn
        """
    )
    config, _ = parse_config(text, "gw.yaml")
    assert config.middleware == [
        MiddlewareRef(name="request_id"),
        MiddlewareRef(name="mypkg.mod:fn", config={"a": 1}),
    ]
    assert config.routes[0].middleware == [
        MiddlewareRef(name="response_time"),
        MiddlewareRef(name="other.mod.fn"),
    ]


def test_empty_route_middleware_is_kept_distinct_from_omitted() -> None:
    text = UPSTREAM + "routes:\n  - path: /x\n    upstream: svc\n    middleware: []\n"
    config, _ = parse_config(text, "gw.yaml")
    assert config.routes[0].middleware == []


def test_models_are_frozen() -> None:
    config, _ = parse_config("", "gw.yaml")
    with pytest.raises(ValueError, match="frozen"):
        config.timeout_s = 3  # type: ignore[misc]


def test_route_model_direct_validation() -> None:
    route = RouteConfig.model_validate({"path": "/x", "upstream": "u", "middleware": ["a"]})
    assert route.middleware == [MiddlewareRef(name="a")]


def test_document_lines() -> None:
    text = UPSTREAM + "routes:\n  - path: /x\n    upstream: svc\n"
    _, doc = parse_config(text, "gw.yaml")
    assert doc.filename == "gw.yaml"
    assert doc.line_of(("upstreams",)) == 1
    assert doc.line_of(("upstreams", 0, "name")) == 2
    assert doc.line_of(("upstreams", 0, "instances", 0, "port")) == 4
    assert doc.line_of(("routes", 0, "upstream")) == 7
    # unknown deeper keys fall back to the deepest known one
    assert doc.line_of(("routes", 0, "middleware", 3, "name")) == 6
    assert doc.line_of(("nothing", "here")) == 1
    assert doc.problem(("routes", 0, "path"), "msg") == ConfigProblem(
        "gw.yaml", 6, "routes[0].path", "msg"
    )


def test_yaml_aliases_are_followed() -> None:
    text = dedent(
        """\
        upstreams:
          - name: a
            instances: &pool
              - {host: h, port: 1}
          - name: b
            instances: *pool
        """
    )
    config, _ = parse_config(text, "gw.yaml")
    assert config.upstreams[1].instances == config.upstreams[0].instances


# --------------------------------------------------------------------------- YAML edge cases


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "listener:\n  port: !env PORT\n",
            "gw.yaml:2: listener.port: invalid value: "
            "could not determine a constructor for the tag '!env'",
            id="unknown-tag",
        ),
        pytest.param(
            "listener:\n  port: !!int abc\n",
            "gw.yaml:2: listener.port: invalid value: "
            "invalid literal for int() with base 10: 'abc'",
            id="bad-explicit-int",
        ),
        pytest.param(
            "listener: {port: 1}\n? [a, b]\n: 1\n",
            "gw.yaml:2: (top level): keys must be plain names",
            id="complex-key",
        ),
        pytest.param(
            "listener:\n  <<: 5\n",
            "gw.yaml:2: listener: '<<' must merge a mapping",
            id="merge-of-scalar",
        ),
    ],
)
def test_yaml_construction_errors_are_config_errors(text: str, expected: str) -> None:
    assert one_problem(text) == expected


def test_keys_1_and_true_are_distinct_names() -> None:
    assert problems_of("listener:\n  1: x\n  true: y\n") == [
        "gw.yaml:2: listener.1: unknown key",
        "gw.yaml:3: listener.true: unknown key",
    ]


def test_quoted_keys_are_names() -> None:
    config, _ = parse_config('"timeout_s": 3\n', "gw.yaml")
    assert config.timeout_s == 3


def test_yaml_merge_keys() -> None:
    text = dedent(
        """\
        upstreams:
          - &base
            name: a
            load_balancer: random
            instances: [{host: h, port: 1}]
          - <<: *base
            name: b
        """
    )
    config, _ = parse_config(text, "gw.yaml")
    assert [u.name for u in config.upstreams] == ["a", "b"]
    assert config.upstreams[1].instances == config.upstreams[0].instances
    assert config.upstreams[1].load_balancer == "random"


def test_yaml_merge_sequence_first_source_wins() -> None:
    text = dedent(
        """\
        upstreams:
          - &one
            name: one
            load_balancer: random
            instances: [{host: h1, port: 1}]
          - &two
            name: two
            load_balancer: least_request
            connect_timeout_s: 2
            instances: [{host: h2, port: 2}]
          - <<: [*one, *two]
            name: three
        """
    )
    config, _ = parse_config(text, "gw.yaml")
    three = config.upstreams[2]
    assert three.name == "three"
    assert three.load_balancer == "random"
    assert three.connect_timeout_s == 2
    assert three.instances[0].host == "h1"


def test_yaml_merged_value_error_points_at_anchor_definition() -> None:
    text = dedent(
        """\
        upstreams:
          - &base
            name: a
            instances: [{host: h, port: 0}]
          - <<: *base
            name: b
        """
    )
    assert problems_of(text) == [
        "gw.yaml:4: upstreams[0].instances[0].port: Input should be greater than or equal to 1",
        "gw.yaml:4: upstreams[1].instances[0].port: Input should be greater than or equal to 1",
    ]


def test_yaml_merge_explicit_key_before_merge_keeps_its_line() -> None:
    text = dedent(
        """\
        upstreams:
          - &base
            name: a
            instances: [{host: h, port: 1}]
          - name: a
            <<: *base
        """
    )
    assert one_problem(text) == "gw.yaml:5: upstreams[1].name: duplicate upstream name 'a'"


def test_yaml_merge_explicit_value_error_keeps_its_line() -> None:
    text = dedent(
        """\
        upstreams:
          - &base
            name: a
            load_balancer: random
            instances: [{host: h, port: 1}]
          - instances: [{host: h, port: 0}]
            <<: *base
            name: b
        """
    )
    assert one_problem(text) == (
        "gw.yaml:6: upstreams[1].instances[0].port: Input should be greater than or equal to 1"
    )


# --------------------------------------------------------------------------- files / schema


def test_load_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    (problem,) = info.value.problems
    assert problem.file == str(missing)
    assert problem.key == "(file)"
    assert "No such file" in problem.message
    assert str(problem).startswith(f"{missing}:")


def test_load_config_directory_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(tmp_path)


def test_load_config_reads_file_and_reports_its_name(tmp_path: Path) -> None:
    good = tmp_path / "gw.yaml"
    good.write_text(UPSTREAM + "routes:\n  - {path: /x, upstream: svc}\n", encoding="utf-8")
    config, doc = load_config(str(good))
    assert config.routes[0].upstream == "svc"
    assert doc.filename == str(good)
    bad = tmp_path / "bad.yaml"
    bad.write_text("timeout_s: 1\nbogus: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{bad}:2: bogus: unknown key$"):
        load_config(bad)


def test_json_schema_is_valid_json_with_properties() -> None:
    from meshgate.config.loader import json_schema

    schema = json.loads(json_schema())
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["title"] == "meshgate gateway.yaml"
    props = schema["properties"]
    for key in ("listener", "timeout_s", "middleware", "upstreams", "routes"):
        assert key in props
    assert props["timeout_s"]["default"] == 15.0
    assert schema.get("additionalProperties") is False
    assert "RouteConfig" in schema["$defs"]
    assert "path" in schema["$defs"]["RouteConfig"]["properties"]


def test_shipped_demo_config_validates() -> None:
    text = resources.files("meshgate").joinpath("examples/demo.yaml").read_text("utf-8")
    config, _ = parse_config(text, "demo.yaml")
    assert {u.name for u in config.upstreams} == {"users", "cart", "orders"}
    assert [r.path for r in config.routes] == [
        "/api/v1/users/:id",
        "/api/v1/cart/*",
        "/api/v1/orders",
    ]
    assert config.routes[2].timeout_s == 5
    assert config.max_request_body_bytes == 1048576


def test_shipped_demo_config_loads_from_path() -> None:
    path = Path(str(resources.files("meshgate").joinpath("examples/demo.yaml")))
    config, _ = load_config(path)
    assert config.listener.port == 8080
