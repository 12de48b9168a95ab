"""Upstream config of docs/upstreams.md (`instances`, `discovery`, `health_check`,
`load_balancer`, `hash_key`) checked where it is written: every mistake is
reported by `parse_config(text, "gw.yaml")` with file:line and the key path,
and a config it accepts must also build (no traceback later at start or from
`meshgate validate`).

Each snippet marks the line(s) the problem may point at with ``#<``.
"""

from __future__ import annotations

import asyncio
import random
from textwrap import dedent, indent

import pytest

from meshgate.config.loader import ConfigError, parse_config
from meshgate.pipeline.runtime import build_runtime

HEAD = dedent(
    """\
    upstreams:
      - name: a  #<
        instances: [{host: 127.0.0.1, port: 9001}]
    """
)


def upstream(body: str) -> str:
    """Upstream `a` (its `- name: a` line is line 2) with ``body`` added to its settings."""
    return HEAD + indent(dedent(body), "    ")


def bare(body: str) -> str:
    """Upstream `a` without instances, with ``body`` as its other settings."""
    return "upstreams:\n  - name: a  #<\n" + indent(dedent(body), "    ")


def marked_lines(text: str) -> list[int]:
    return [i for i, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith("#<")]


def build_error(text: str) -> str | None:
    """What building the runtime of an accepted config raises (None: nothing)."""
    config, located = parse_config(text, "gw.yaml")

    async def build() -> None:
        build_runtime(config, located, rng=random.Random(1)).close()

    try:
        asyncio.run(build())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def located_problem(text: str) -> str:
    """The one problem parse_config reports (fails the test when it accepts)."""
    try:
        parse_config(text, "gw.yaml")
    except ConfigError as exc:
        found = [str(p) for p in exc.problems]
        assert len(found) == 1, found
        return found[0]
    err = build_error(text)
    pytest.fail(
        f"accepted by parse_config; the runtime build then raises {err}"
        if err
        else "accepted by parse_config (and by the runtime build)"
    )


def hc(line: str) -> str:
    """A `health_check:` mapping with one setting (line 5); a problem may point at
    the setting or at the `health_check:` line (4) for checks across settings."""
    return upstream(f"health_check:  #<\n  {line}  #<\n")


ERRORS = [
    # --- protocol -------------------------------------------------------------------
    pytest.param(
        upstream("protocol: h2\n"),
        "upstreams[0]",
        "protocol h2 is HTTP/2 over TLS: enable tls, or use h2c",
        id="h2-without-tls",
    ),
    pytest.param(
        upstream("protocol: h2c\ntls: {verify: false}\n"),
        "upstreams[0]",
        "protocol h2c is HTTP/2 over plain TCP: use h2 with tls",
        id="h2c-with-tls",
    ),
    pytest.param(
        upstream("health_check: {type: grpc}\n"),
        "upstreams[0]",
        "health_check type grpc needs protocol h2 or h2c",
        id="grpc-health-check-over-http1",
    ),
    pytest.param(
        upstream("protocol: http3  #<\n"),
        "upstreams[0].protocol",
        "Input should be 'http1', 'h2', 'h2c' or 'auto'",
        id="unknown-protocol",
    ),
    pytest.param(
        upstream("protocol: auto\n"),
        "upstreams[0]",
        "protocol auto picks HTTP/2 or HTTP/1.1 by ALPN, which needs tls",
        id="auto-without-tls",
    ),
    # --- instances and discovery --------------------------------------------------
    pytest.param(
        bare("load_balancer: round_robin\n"),
        "upstreams[0]",
        "list instances or set discovery",
        id="no-instances-no-discovery",
    ),
    pytest.param(
        bare("instances: []\n"),
        "upstreams[0]",
        "list instances or set discovery",
        id="empty-instances-no-discovery",
    ),
    pytest.param(
        bare("instances: [{host: 127.0.0.1, port: 0}]  #<\n"),
        "upstreams[0].instances[0].port",
        "greater than or equal to 1",
        id="port-zero",
    ),
    pytest.param(
        bare("instances: [{host: 127.0.0.1, port: 70000}]  #<\n"),
        "upstreams[0].instances[0].port",
        "less than or equal to 65535",
        id="port-too-big",
    ),
    pytest.param(
        bare("instances: [{host: 127.0.0.1, port: '80'}]  #<\n"),
        "upstreams[0].instances[0].port",
        "valid integer",
        id="port-as-string",
    ),
    pytest.param(
        bare("instances: [{host: 127.0.0.1, port: 80, weight: 0}]  #<\n"),
        "upstreams[0].instances[0].weight",
        "greater than or equal to 1",
        id="zero-weight",
    ),
    pytest.param(
        bare("instances: [{port: 80}]  #<\n"),
        "upstreams[0].instances[0].host",
        "Field required",
        id="instance-without-host",
    ),
    pytest.param(
        upstream("discovery: {type: consul, path: x.yaml}  #<\n"),
        "upstreams[0].discovery.type",
        "Input should be 'file'",
        id="unknown-discovery-type",
    ),
    pytest.param(
        upstream("discovery: {}  #<\n"),
        "upstreams[0].discovery",  # .path or the mapping
        "path",
        id="discovery-without-path",
    ),
    pytest.param(
        upstream("discovery: {path: x.yaml, colour: blue}  #<\n"),
        "upstreams[0].discovery.colour",
        "unknown key",
        id="discovery-unknown-key",
    ),
    # --- balancers and hash keys ------------------------------------------------
    pytest.param(
        upstream("load_balancer: fastest  #<\n"),
        "upstreams[0].load_balancer",
        "unknown load balancer 'fastest'",
        id="unknown-balancer",
    ),
    pytest.param(
        upstream("load_balancer: consistent_hash\n"),
        "upstreams[0]",
        "consistent_hash needs hash_key",
        id="consistent-hash-without-hash-key",
    ),
    pytest.param(
        upstream("load_balancer: consistent_hash\nhash_key: {header: x-user, cookie: sid}  #<\n"),
        "upstreams[0].hash_key",
        "give exactly one of header, cookie, query, source",
        id="hash-key-two-sources",
    ),
    pytest.param(
        upstream("load_balancer: consistent_hash\nhash_key: {query: u, source: ip}  #<\n"),
        "upstreams[0].hash_key",
        "give exactly one of header, cookie, query, source",
        id="hash-key-query-and-source",
    ),
    pytest.param(
        upstream("load_balancer: consistent_hash\nhash_key: {}  #<\n"),
        "upstreams[0].hash_key",
        "give exactly one of header, cookie, query, source",
        id="hash-key-empty",
    ),
    pytest.param(
        upstream("load_balancer: consistent_hash\nhash_key: {source: cookie}  #<\n"),
        "upstreams[0].hash_key.source",
        "Input should be 'ip' or 'path'",
        id="hash-key-unknown-source",
    ),
    pytest.param(
        upstream("load_balancer: consistent_hash\nhash_key: {headr: x-user}  #<\n"),
        "upstreams[0].hash_key.headr",
        "unknown key",
        id="hash-key-misspelt",
    ),
    pytest.param(
        upstream("load_balancer: consistent_hash\nhash_key: {header: 'x user'}  #<\n"),
        "upstreams[0].hash_key",
        "",
        id="hash-key-header-not-a-header-name",
    ),
    # --- health checks -------------------------------------------------------------
    pytest.param(
        hc("path: health"),
        "upstreams[0].health_check",
        "health check path 'health' must start with '/'",
        id="path-without-slash",
    ),
    pytest.param(
        hc("path: /health check"),
        "upstreams[0].health_check",
        "",
        id="path-with-a-space",  # "GET /health check HTTP/1.1": every probe fails
    ),
    pytest.param(
        hc('path: "/health\\r\\nX-Injected: 1"'),
        "upstreams[0].health_check",
        "",
        id="path-with-crlf",
    ),
    pytest.param(
        hc('host: "users.internal\\r\\nX-Injected: 1"'),
        "upstreams[0].health_check",
        "",
        id="host-with-crlf",  # a header written into every probe
    ),
    pytest.param(
        hc("type: udp"),
        "upstreams[0].health_check.type",
        "Input should be 'http', 'tcp' or 'grpc'",
        id="unknown-check-type",
    ),
    pytest.param(
        hc("unhealthy_threshold: 0"),
        "upstreams[0].health_check.unhealthy_threshold",
        "greater than or equal to 1",
        id="zero-unhealthy-threshold",
    ),
    pytest.param(
        hc("healthy_threshold: -1"),
        "upstreams[0].health_check.healthy_threshold",
        "greater than or equal to 1",
        id="negative-healthy-threshold",
    ),
    pytest.param(
        hc("unhealthy_threshold: 1.5"),
        "upstreams[0].health_check.unhealthy_threshold",
        "valid integer",
        id="fractional-threshold",
    ),
    pytest.param(
        hc("healthy_threshold: many"),
        "upstreams[0].health_check.healthy_threshold",
        "valid integer",
        id="threshold-not-a-number",
    ),
    pytest.param(
        hc("interval_s: 0"),
        "upstreams[0].health_check.interval_s",
        "greater than 0",
        id="zero-interval",
    ),
    pytest.param(
        hc("timeout_s: -1"),
        "upstreams[0].health_check.timeout_s",
        "greater than 0",
        id="negative-timeout",
    ),
    pytest.param(
        hc("interval_s: .inf"),
        "upstreams[0].health_check",
        "finite",
        id="infinite-interval",
    ),
    pytest.param(
        hc("timeout_s: .inf"),
        "upstreams[0].health_check",
        "finite",
        id="infinite-timeout",
    ),
    pytest.param(
        hc("jitter_percent: 60"),
        "upstreams[0].health_check.jitter_percent",
        "less than or equal to 50",
        id="jitter-above-50",
    ),
    pytest.param(
        hc("jitter_percent: -1"),
        "upstreams[0].health_check.jitter_percent",
        "greater than or equal to 0",
        id="negative-jitter",
    ),
    pytest.param(
        hc("max_concurrent: 0"),
        "upstreams[0].health_check.max_concurrent",
        "greater than or equal to 1",
        id="zero-concurrent-checks",
    ),
    pytest.param(
        hc("panic_threshold_percent: 120"),
        "upstreams[0].health_check.panic_threshold_percent",
        "less than or equal to 100",
        id="panic-above-100",
    ),
    pytest.param(
        hc("panic_threshold_percent: -5"),
        "upstreams[0].health_check.panic_threshold_percent",
        "greater than or equal to 0",
        id="negative-panic",
    ),
    pytest.param(
        hc("expected_statuses: []"),
        "upstreams[0].health_check",
        "",
        id="no-expected-status",  # every check would fail: all instances out
    ),
    pytest.param(
        hc("expected_statuses: [200, 600]"),
        "upstreams[0].health_check",
        "600",
        id="expected-status-above-599",
    ),
    pytest.param(
        hc("expected_statuses: [42]"),
        "upstreams[0].health_check",
        "42",
        id="expected-status-below-100",
    ),
    pytest.param(
        hc("unhealthy_treshold: 3"),
        "upstreams[0].health_check.unhealthy_treshold",
        "unknown key",
        id="misspelt-health-key",
    ),
]


@pytest.mark.parametrize(("text", "key", "message"), ERRORS)
def test_error_with_file_line_and_key(text: str, key: str, message: str) -> None:
    # the upstream's own line (2) is always marked; another marked line is more precise
    lines = [line for line in marked_lines(text) if line != 2] or [2]
    found = located_problem(text)
    prefixes = [f"gw.yaml:{line}: {key}" for line in lines]
    assert found.startswith(tuple(prefixes)), (found, prefixes)
    assert message in found.split(": ", 2)[2], (found, message)


def test_every_problem_is_reported_at_once() -> None:
    text = dedent(
        """\
        upstreams:
          - name: a
            load_balancer: consistent_hash
          - name: b
            instances: [{host: 127.0.0.1, port: 9002}]
            health_check:
              path: health
              unhealthy_threshold: 0
            hash_key: {header: x, query: y}
        """
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "gw.yaml")
    found = sorted(str(p) for p in info.value.problems)
    assert [p.split(": ")[0] for p in found] == [
        "gw.yaml:2",
        "gw.yaml:8",
        "gw.yaml:9",
    ], found
    # upstream a: both of its problems come in one message, or the first alone
    assert "list instances or set discovery" in found[0]


ACCEPTED = [
    pytest.param(bare("discovery: {path: /nonexistent/a.yaml}\n"), id="discovery-only"),
    pytest.param(upstream("discovery: {type: file, path: a.yaml}\n"), id="discovery-and-fallback"),
    pytest.param(
        upstream("load_balancer: consistent_hash\nhash_key: {header: X-User-Id}\n"),
        id="hash-header",
    ),
    pytest.param(
        upstream("load_balancer: consistent_hash\nhash_key: {cookie: sid}\n"), id="hash-cookie"
    ),
    pytest.param(
        upstream("load_balancer: consistent_hash\nhash_key: {query: user}\n"), id="hash-query"
    ),
    pytest.param(
        upstream("load_balancer: consistent_hash\nhash_key: {source: ip}\n"), id="hash-ip"
    ),
    pytest.param(
        upstream("load_balancer: consistent_hash\nhash_key: {source: path}\n"), id="hash-path"
    ),
    pytest.param(upstream("load_balancer: least-connections\n"), id="hyphenated-balancer"),
    pytest.param(upstream("health_check: {}\n"), id="health-defaults"),
    pytest.param(
        upstream(
            """\
            health_check:
              type: tcp
              interval_s: 0.5
              timeout_s: 0.2
              unhealthy_threshold: 1
              healthy_threshold: 1
              jitter_percent: 0
              max_concurrent: 1
              panic_threshold_percent: 0
            """
        ),
        id="health-tcp-edges",
    ),
    pytest.param(
        upstream(
            """\
            health_check:
              path: /healthz?full=1
              host: users.internal
              expected_statuses: [200, 204]
              jitter_percent: 50
              panic_threshold_percent: 100
            """
        ),
        id="health-http-full",
    ),
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_accepted_configs_build(text: str) -> None:
    assert build_error(text) is None


def test_defaults() -> None:
    config, _ = parse_config(upstream("health_check: {}\n"), "gw.yaml")
    up = config.upstreams[0]
    assert up.load_balancer == "round_robin" and up.hash_key is None and up.discovery is None
    h = up.health_check
    assert h is not None
    assert (h.type, h.path, h.host) == ("http", "/health", None)
    assert h.expected_statuses == list(range(200, 400))
    assert (h.interval_s, h.timeout_s, h.jitter_percent) == (10, 5, 10)
    assert (h.unhealthy_threshold, h.healthy_threshold) == (3, 2)  # the seed's 3 failures
    assert (h.max_concurrent, h.panic_threshold_percent) == (32, 50)
    plain, _ = parse_config(HEAD, "gw.yaml")
    assert plain.upstreams[0].health_check is None
    hyphen, _ = parse_config(upstream("load_balancer: weighted-round-robin\n"), "gw.yaml")
    assert hyphen.upstreams[0].load_balancer == "weighted_round_robin"


@pytest.mark.parametrize(
    ("settings", "pool_type", "alpn"),
    [
        ("", "Pool", None),
        ("protocol: h2c\n", "H2Pool", None),
        ("protocol: h2\ntls: {verify: false}\n", "H2Pool", ("h2",)),
        ("tls: {verify: false}\n", "Pool", ("http/1.1",)),
        ("protocol: http2\n", "H2Pool", None),  # http2 without tls: h2c
        ("protocol: http2\ntls: {verify: false}\n", "H2Pool", ("h2",)),  # with tls: h2
        ("protocol: auto\ntls: {verify: false}\n", "AutoPool", ("http/1.1",)),
    ],
)
def test_protocol_chooses_the_pool_and_alpn(
    settings: str, pool_type: str, alpn: tuple[str, ...] | None
) -> None:
    config, located = parse_config(upstream(settings), "gw.yaml")

    async def build() -> None:
        runtime = build_runtime(config, located, rng=random.Random(1))
        try:
            cluster = runtime.clusters["a"]
            assert type(cluster.hosts[0].pool).__name__ == pool_type
            assert (cluster.tls.alpn if cluster.tls is not None else None) == alpn
            # health probes speak HTTP/1.1 (or TCP) whatever the upstream's protocol
            probe = cluster.probe_tls
            assert (probe.alpn if probe is not None else None) == (
                None if alpn is None else ("http/1.1",)
            )
        finally:
            runtime.close()

    asyncio.run(build())
