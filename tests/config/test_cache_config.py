"""Cache config checked where it is written: every mistake is reported with file:line
and the key path (`parse_config(text, "gw.yaml")`).

Each snippet marks the line the problem must point at with a ``#<`` comment.
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent, indent

import pytest

from meshgate.config.loader import parse_config
from tests.config.located import doc, marked_line, problems_of

REPO_ROOT = Path(__file__).resolve().parents[2]


def route_cache(body: str) -> str:
    """One route whose cache mapping is the YAML ``body``."""
    return "routes:\n  - path: /x\n    upstream: a\n    cache:\n" + indent(dedent(body), "      ")


ERRORS = [
    pytest.param(
        route_cache("""\
            ttl_s: -1  #<
            """),
        "routes[0].cache.ttl_s",
        "Input should be greater than or equal to 0",
        id="negative-ttl",
    ),
    pytest.param(
        route_cache("""\
            ttl_s: .inf  #<
            """),
        "routes[0].cache.ttl_s",
        "Input should be a finite number",
        id="infinite-ttl",
    ),
    pytest.param(
        route_cache("""\
            methods: [GET, "B AD"]  #<
            """),
        "routes[0].cache.methods",
        "methods 1 ('B AD') is not a valid method",
        id="bad-method",
    ),
    pytest.param(
        route_cache("""\
            methods: []  #<
            """),
        "routes[0].cache.methods",
        "methods must name at least one method",
        id="no-method",
    ),
    pytest.param(
        route_cache("""\
            ttl_s: 10
            statuses: [200, 99]  #<
            """),
        "routes[0].cache.statuses",
        "statuses 1 (99) is not an HTTP status",
        id="bad-status",
    ),
    pytest.param(
        route_cache("""\
            key_headers: [x-tenant, "x y"]  #<
            """),
        "routes[0].cache.key_headers",
        "key_headers 1 ('x y') is not a valid header name",
        id="bad-key-header",
    ),
    pytest.param(
        route_cache("""\
            key_query: ["a=b"]  #<
            """),
        "routes[0].cache.key_query",
        "key_query 0 ('a=b') is not a query parameter name",
        id="bad-key-query",
    ),
    pytest.param(
        route_cache("""\
            max_object_bytes: -5  #<
            """),
        "routes[0].cache.max_object_bytes",
        "Input should be greater than or equal to 0",
        id="negative-size",
    ),
    pytest.param(
        route_cache("""\
            stale_if_error_s: -1  #<
            """),
        "routes[0].cache.stale_if_error_s",
        "Input should be greater than or equal to 0",
        id="negative-stale-window",
    ),
    pytest.param(
        route_cache("""\
            lock_timeout_s: 0  #<
            """),
        "routes[0].cache.lock_timeout_s",
        "Input should be greater than 0",
        id="zero-lock-timeout",
    ),
    pytest.param(
        route_cache("""\
            ttl: 10  #<
            """),
        "routes[0].cache.ttl",
        "unknown key",
        id="unknown-key",
    ),
    pytest.param(
        """\
routes:
  - path: /x  #<
    redirect: {status: 301, scheme: https}
    cache: {}
""",
        "routes[0]",
        "a redirect route answers without forwarding: remove cache",
        id="redirect-route",
    ),
    pytest.param(
        """\
cache:  #<
  store: redis
""",
        "cache",
        "store: redis needs cache.redis (at least {url: ...})",
        id="redis-without-settings",
    ),
    pytest.param(
        """\
cache:
  store: disk  #<
""",
        "cache.store",
        "Input should be 'memory' or 'redis'",
        id="unknown-store",
    ),
    pytest.param(
        """\
cache:
  max_bytes: 0  #<
""",
        "cache.max_bytes",
        "Input should be greater than or equal to 1",
        id="zero-max-bytes",
    ),
    pytest.param(
        """\
cache:
  store: redis
  redis:
    url: http://127.0.0.1:6379  #<
""",
        "cache.redis.url",
        "redis url 'http://127.0.0.1:6379' must start with redis://, rediss:// or unix://",
        id="bad-redis-url",
    ),
    pytest.param(
        """\
cache:
  redis:
    timeout_s: 0  #<
""",
        "cache.redis.timeout_s",
        "Input should be greater than 0",
        id="zero-redis-timeout",
    ),
]


@pytest.mark.parametrize(("body", "key", "message"), ERRORS)
def test_bad_cache_config_is_located(body: str, key: str, message: str) -> None:
    text = doc(body)
    line = marked_line(text)
    assert problems_of(text) == [f"gw.yaml:{line}: {key}: {message}"]


def test_defaults() -> None:
    config, _ = parse_config(doc(route_cache("{}")), "gw.yaml")
    cache = config.routes[0].cache
    assert cache is not None
    assert (cache.ttl_s, cache.methods, cache.statuses) == (300.0, ["GET", "HEAD"], [200, 301, 404])
    assert (cache.max_object_bytes, cache.key_query, cache.key_headers) == (1048576, None, [])
    assert (cache.public, cache.cache_set_cookie) == (False, False)
    assert (cache.lock_timeout_s, cache.max_waiters) == (5.0, 1000)
    assert config.cache.store == "memory"
    assert config.cache.max_bytes == 64 * 1024 * 1024
    assert config.cache.redis is None
    assert config.routes[0].cache.policy().max_object_bytes == 1048576  # type: ignore[union-attr]


def test_redis_store_settings() -> None:
    config, _ = parse_config(
        doc("cache: {store: redis, redis: {url: 'redis://h:1/2'}}\n"), "gw.yaml"
    )
    redis = config.cache.redis
    assert redis is not None
    assert (redis.url, redis.timeout_s) == ("redis://h:1/2", 0.25)
    assert redis.key_prefix == "meshgate:cache"


def test_the_config_of_docs_cache_md_parses() -> None:
    text = (REPO_ROOT / "docs" / "cache.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    upstream = "upstreams:\n  - name: catalog\n    instances: [{host: 127.0.0.1, port: 9001}]\n"
    config, _ = parse_config(upstream + block, "cache.md")
    cache = config.routes[0].cache
    assert cache is not None and cache == type(cache)()  # the documented values are the defaults
    assert config.cache.redis is not None and config.cache.max_bytes == 64 * 1024 * 1024
