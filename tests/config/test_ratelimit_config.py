"""Rate-limit config checked where it is written: every mistake is reported with
file:line and the key path (`parse_config(text, "gw.yaml")`).

Each snippet marks the line the problem must point at with a ``#<`` comment.
"""

from __future__ import annotations

from textwrap import dedent, indent

import pytest

from meshgate.config.loader import parse_config
from tests.config.located import doc, marked_line, problems_of


def route_with(limits: str) -> str:
    """One route whose rate_limits are the YAML list ``limits``."""
    return "routes:\n  - path: /x\n    upstream: a\n    rate_limits:\n" + indent(
        dedent(limits), "      "
    )


ERRORS = [
    pytest.param(
        route_with("""\
            - limit: 5
              window_s: 10
              key: [ip, bogus]  #<
            """),
        "routes[0].rate_limits[0].key",
        "unknown key part 'bogus'; use one of ip, route, method, path, consumer, source or "
        "header:NAME, param:NAME, query:NAME, jwt:NAME, cookie:NAME",
        id="unknown-key-part",
    ),
    pytest.param(
        """\
        rate_limit:
          limits:
            - limit: 5
              window_s: 10
              key: [jwt]  #<
        """,
        "rate_limit.limits[0].key",
        "unknown key part 'jwt'",
        id="kind-without-name-or-colon",
    ),
    pytest.param(
        route_with("""\
            - limit: 5
              window_s: 10
              key: ['header:']  #<
            """),
        "routes[0].rate_limits[0].key",
        "key part 'header:': header: needs a name of token characters",
        id="header-without-name",
    ),
    pytest.param(
        route_with("""\
            - limit: 5
              window_s: 10
              key: ['cookie:a b']  #<
            """),
        "routes[0].rate_limits[0].key",
        "key part 'cookie:a b': cookie: needs a name of token characters",
        id="cookie-name-not-a-token",
    ),
    pytest.param(
        route_with("""\
            - limit: 5
              window_s: 10
              key: []  #<
            """),
        "routes[0].rate_limits[0].key",
        "key must name at least one part, e.g. [ip]",
        id="empty-key",
    ),
    pytest.param(
        """\
        rate_limit:
          limits:
            - name: per-ip  #<
              limit: 5
        """,
        "rate_limit.limits[0]",
        "sliding_window needs window_s",
        id="sliding-window-without-window",
    ),
    pytest.param(
        route_with("""\
            - name: nothing  #<
            """),
        "routes[0].rate_limits[0]",
        "sliding_window needs limit and window_s",
        id="sliding-window-without-numbers",
    ),
    pytest.param(
        route_with("""\
            - algorithm: token_bucket  #<
              rate_per_s: 1
              burst: 2
              window_s: 3
            """),
        "routes[0].rate_limits[0]",
        "token_bucket does not use window_s",
        id="token-bucket-with-window",
    ),
    pytest.param(
        route_with("""\
            - algorithm: token_bucket  #<
              rate_per_s: 1
            """),
        "routes[0].rate_limits[0]",
        "token_bucket needs burst",
        id="token-bucket-without-burst",
    ),
    pytest.param(
        route_with("""\
            - algorithm: concurrency  #<
              limit: 2
              window_s: 10
            """),
        "routes[0].rate_limits[0]",
        "concurrency does not use window_s",
        id="concurrency-with-window",
    ),
    pytest.param(
        """\
        rate_limit:
          redis: {url: 'redis://127.0.0.1:6379/0'}
          limits:
            - algorithm: concurrency  #<
              limit: 2
              backend: redis
        """,
        "rate_limit.limits[0]",
        "concurrency limits are local only (backend: local)",
        id="concurrency-with-redis",
    ),
    pytest.param(
        """\
        rate_limit:
          limits:
            - limit: 2
              window_s: 1
              backend: redis  #<
        """,
        "rate_limit.limits[0].backend",
        "backend: redis needs rate_limit.redis",
        id="global-redis-without-redis-settings",
    ),
    pytest.param(
        route_with("""\
            - limit: 2
              window_s: 1
              backend: redis  #<
            """),
        "routes[0].rate_limits[0].backend",
        "backend: redis needs rate_limit.redis",
        id="route-redis-without-redis-settings",
    ),
    pytest.param(
        """\
        rate_limit:
          redis:
            url: http://127.0.0.1:6379  #<
        """,
        "rate_limit.redis.url",
        "redis url 'http://127.0.0.1:6379' must start with redis://, rediss:// or unix://",
        id="bad-redis-url-scheme",
    ),
    pytest.param(
        route_with("""\
            - {name: per-ip, limit: 1, window_s: 1}
            - {name: per-ip, limit: 5, window_s: 60}  #<
            """),
        "routes[0].rate_limits[1]",
        "duplicate limit name 'per-ip' (give each limit a name:)",
        id="duplicate-name-on-route",
    ),
    pytest.param(
        route_with("""\
            - {limit: 1, window_s: 1, key: [ip, route]}
            - {limit: 5, window_s: 60, key: [ip, route]}  #<
            """),
        "routes[0].rate_limits[1]",
        "duplicate limit name 'ip+route' (give each limit a name:)",
        id="duplicate-default-name-from-key",
    ),
    pytest.param(
        """\
        rate_limit:
          limits:
            - {name: per-ip, limit: 100, window_s: 10}
        routes:
          - path: /x
            upstream: a
            rate_limits:
              - {name: per-ip, limit: 5, window_s: 1}  #<
        """,
        "routes[0].rate_limits[0]",
        "duplicate limit name 'per-ip' (give each limit a name:)",
        id="duplicate-name-route-vs-global",
    ),
    pytest.param(
        """\
        rate_limit:
          limits:
            - {name: per-ip, limit: 100, window_s: 10}
            - {name: per-ip, limit: 1000, window_s: 3600}  #<
        """,
        "rate_limit.limits[1]",
        "duplicate limit name 'per-ip' (give each limit a name:)",
        id="duplicate-name-global",
    ),
    pytest.param(
        """\
        trusted_proxies: [10.0.0.0/8, 10.0.0.1/8]  #<
        """,
        "trusted_proxies",
        "trusted network 1 ('10.0.0.1/8') has host bits set: did you mean '10.0.0.0/8'?",
        id="cidr-host-bits",
    ),
    pytest.param(
        """\
        trusted_proxies: [192.168.0.0/16, not-a-network]  #<
        """,
        "trusted_proxies",
        "trusted network 1 ('not-a-network') is not an IP address or CIDR network",
        id="cidr-garbage",
    ),
    pytest.param(
        """\
        trusted_proxies: ['10.0.0.0/33']  #<
        """,
        "trusted_proxies",
        "trusted network 0 ('10.0.0.0/33') is not an IP address or CIDR network",
        id="cidr-prefix-too-long",
    ),
    pytest.param(
        """\
        rate_limit:
          limits:
            - name: zero
              limit: 0  #<
              window_s: 10
        """,
        "rate_limit.limits[0].limit",
        "Input should be greater than or equal to 1",
        id="limit-zero",
    ),
    pytest.param(
        route_with("""\
            - algorithm: token_bucket
              rate_per_s: -2  #<
              burst: 5
            """),
        "routes[0].rate_limits[0].rate_per_s",
        "Input should be greater than 0",
        id="negative-rate",
    ),
    pytest.param(
        route_with("""\
            - algorithm: token_bucket
              rate_per_s: 2
              burst: 0  #<
            """),
        "routes[0].rate_limits[0].burst",
        "Input should be greater than or equal to 1",
        id="burst-zero",
    ),
    pytest.param(
        route_with("""\
            - limit: 3
              window_s: 0  #<
            """),
        "routes[0].rate_limits[0].window_s",
        "Input should be greater than 0",
        id="window-zero",
    ),
    pytest.param(
        route_with("""\
            - algorithm: leaky_bucket  #<
              limit: 3
            """),
        "routes[0].rate_limits[0].algorithm",
        "Input should be 'sliding_window', 'token_bucket' or 'concurrency'",
        id="unknown-algorithm",
    ),
    pytest.param(
        route_with("""\
            - limit: 3
              window_s: 1
              on_missing_key: allow  #<
            """),
        "routes[0].rate_limits[0].on_missing_key",
        "Input should be 'skip' or 'fallback'",
        id="bad-on-missing-key",
    ),
    pytest.param(
        route_with("""\
            - limit: 3
              windows: 10  #<
            """),
        "routes[0].rate_limits[0].windows",
        "unknown key",
        id="misspelt-field",
    ),
    pytest.param(
        route_with("""\
            - limit: 3  #<
              window_s: 1
              key: [source]
              sources: [cart]
              except_sources: [cart]
            """),
        "routes[0].rate_limits[0]",
        "a service is in both sources and except_sources",
        id="source-in-both-lists",
    ),
    pytest.param(
        route_with("""\
            - limit: 3
              window_s: 1
              sources: []  #<
            """),
        "routes[0].rate_limits[0].sources",
        "List should have at least 1 item",
        id="empty-sources",
    ),
    pytest.param(
        """\
        rate_limit:
          headers: draft  #<
        """,
        "rate_limit.headers",
        "Input should be 'seed', 'ietf', 'both' or 'none'",
        id="bad-headers-mode",
    ),
    pytest.param(
        """\
        rate_limit:
          max_local_keys: 0  #<
        """,
        "rate_limit.max_local_keys",
        "Input should be greater than or equal to 1",
        id="max-local-keys-zero",
    ),
    pytest.param(
        """\
        rate_limit:
          redis:
            url: redis://127.0.0.1:6379/0
            timeout_s: 0  #<
        """,
        "rate_limit.redis.timeout_s",
        "Input should be greater than 0",
        id="redis-timeout-zero",
    ),
]


@pytest.mark.parametrize(("snippet", "key", "message"), ERRORS)
def test_error_with_file_line_and_key(snippet: str, key: str, message: str) -> None:
    text = doc(snippet)
    found = problems_of(text)
    assert len(found) == 1, found
    prefix = f"gw.yaml:{marked_line(text)}: {key}: "
    assert found[0].startswith(prefix + message), (found[0], prefix + message)


def test_every_problem_is_reported_at_once() -> None:
    text = doc(
        """\
        trusted_proxies: [nope]
        rate_limit:
          limits:
            - {limit: 0, window_s: 10}
        routes:
          - path: /x
            upstream: a
            rate_limits:
              - {limit: 2, window_s: 1, key: [bogus]}
              - {algorithm: token_bucket, rate_per_s: 1}
        """
    )
    found = problems_of(text)
    lines = sorted(int(p.split(":")[1]) for p in found)
    assert lines == [4, 7, 12, 13], found


def test_cross_checks_report_every_route() -> None:
    # (checked once the models are valid, like the other reference checks)
    text = doc(
        """\
        rate_limit:
          limits:
            - {name: shared, limit: 100, window_s: 10}
        routes:
          - path: /x
            upstream: a
            rate_limits:
              - {name: shared, limit: 2, window_s: 1}
          - path: /y
            upstream: a
            rate_limits:
              - {name: hourly, limit: 2, window_s: 3600, backend: redis}
              - {name: shared, algorithm: concurrency, limit: 1}
        """
    )
    assert problems_of(text) == [
        "gw.yaml:11: routes[0].rate_limits[0]: duplicate limit name 'shared' "
        "(give each limit a name:)",
        "gw.yaml:15: routes[1].rate_limits[0].backend: backend: redis needs rate_limit.redis",
        "gw.yaml:16: routes[1].rate_limits[1]: duplicate limit name 'shared' "
        "(give each limit a name:)",
    ]


def test_docs_example_is_valid_and_normalised() -> None:
    text = dedent(
        """\
        upstreams:
          - name: api
            instances: [{host: 127.0.0.1, port: 9001}]
        trusted_proxies: [10.0.0.0/8, 2001:db8::/32, 192.0.2.7, '::ffff:10.1.0.0/112']
        rate_limit:
          headers: seed
          max_local_keys: 100000
          redis:
            url: redis://127.0.0.1:6379/0
            timeout_s: 0.1
            connect_timeout_s: 1
            max_connections: 64
            key_prefix: meshgate:rl
            fail_open: true
          limits:
            - name: per-ip
              limit: 100
              window_s: 10
              key: [ip]
        routes:
          - path: /api/*
            upstream: api
            rate_limits:
              - name: per-user-burst
                algorithm: token_bucket
                rate_per_s: 5
                burst: 20
                key: [header:X-User-Id]
                on_missing_key: fallback
              - name: per-user-hourly
                limit: 1000
                window_s: 3600
                key: [header:x-user-id, route]
                backend: redis
              - algorithm: concurrency
                limit: 4
                key: [ip, jwt:sub, cookie:Session, query:Page, param:id, consumer, source]
        """
    )
    config, _ = parse_config(text, "gw.yaml")
    limits = config.routes[0].rate_limits
    assert [lim.label for lim in limits] == [
        "per-user-burst",
        "per-user-hourly",
        "ip+jwt:sub+cookie:Session+query:Page+param:id+consumer+source",
    ]
    assert limits[0].key == ["header:x-user-id"]  # header names are case-insensitive
    assert limits[2].key[2:4] == ["cookie:Session", "query:Page"]  # these are not
    assert (limits[2].backend, limits[2].on_missing_key) == ("local", "skip")
    assert config.rate_limit.limits[0].algorithm == "sliding_window"
