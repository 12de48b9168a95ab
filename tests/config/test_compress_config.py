"""Compression config checked where it is written: every mistake is reported with
file:line and the key path, and valid settings reach the route's chain.

Each snippet marks the line the problem must point at with a ``#<`` comment.
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent, indent

import pytest

from meshgate.config.loader import parse_config
from meshgate.pipeline.runtime import build_runtime
from tests.config.located import doc, marked_line, problems_of


def route_with(compress: str) -> str:
    """One route whose compress block is the YAML mapping ``compress``."""
    return "routes:\n  - path: /x\n    upstream: a\n    compress:\n" + indent(
        dedent(compress), "      "
    )


ERRORS = [
    pytest.param(
        route_with("""\
            encodings: [br, deflate]  #<
            """),
        "routes[0].compress.encodings[1]",
        "Input should be 'br', 'zstd' or 'gzip'",
        id="unknown-encoding",
    ),
    pytest.param(
        route_with("""\
            encodings:
              - gzip
              - brotli  #<
            """),
        "routes[0].compress.encodings[1]",
        "Input should be 'br', 'zstd' or 'gzip'",
        id="encoding-spelt-out",
    ),
    pytest.param(
        route_with("""\
            encodings: [gzip, br, gzip]  #<
            """),
        "routes[0].compress.encodings",
        "listed twice: gzip",
        id="duplicate-encoding",
    ),
    pytest.param(
        route_with("""\
            encodings: []  #<
            """),
        "routes[0].compress.encodings",
        "list at least one of br, zstd, gzip (or enabled: false)",
        id="no-encoding",
    ),
    pytest.param(
        route_with("""\
            min_size_bytes: -1  #<
            """),
        "routes[0].compress.min_size_bytes",
        "Input should be greater than or equal to 0",
        id="negative-min-size",
    ),
    pytest.param(
        route_with("""\
            min_size_bytes: 1kb  #<
            """),
        "routes[0].compress.min_size_bytes",
        "Input should be a valid integer",
        id="min-size-with-unit",
    ),
    pytest.param(
        route_with("""\
            content_types:
              - text/*
              - '*/*'  #<
            """),
        "routes[0].compress.content_types[1]",
        "'*/*' is not a media type (type/subtype)",
        id="any-type",
    ),
    pytest.param(
        route_with("""\
            content_types: [application/json, json]  #<
            """),
        "routes[0].compress.content_types[1]",
        "'json' is not a media type (type/subtype)",
        id="type-without-subtype",
    ),
    pytest.param(
        route_with("""\
            content_types: [application/*json]  #<
            """),
        "routes[0].compress.content_types[0]",
        "'application/*json': use type/subtype, type/* or type/*+suffix",
        id="partial-wildcard",
    ),
    pytest.param(
        route_with("""\
            content_types: []  #<
            """),
        "routes[0].compress.content_types",
        "list at least one media type (or enabled: false)",
        id="no-types",
    ),
    pytest.param(
        route_with("""\
            gzip_level: 10  #<
            """),
        "routes[0].compress.gzip_level",
        "Input should be less than or equal to 9",
        id="gzip-level-too-high",
    ),
    pytest.param(
        route_with("""\
            gzip_level: 0  #<
            """),
        "routes[0].compress.gzip_level",
        "Input should be greater than or equal to 1",
        id="gzip-level-zero",
    ),
    pytest.param(
        route_with("""\
            br_quality: 12  #<
            """),
        "routes[0].compress.br_quality",
        "Input should be less than or equal to 11",
        id="br-quality-too-high",
    ),
    pytest.param(
        route_with("""\
            zstd_level: 22  #<
            """),
        "routes[0].compress.zstd_level",
        "Input should be less than or equal to 19",
        id="zstd-ultra-level",
    ),
    pytest.param(
        route_with("""\
            level: 5  #<
            """),
        "routes[0].compress.level",
        "unknown key",
        id="misspelt-key",
    ),
    pytest.param(
        """\
        routes:
          - path: /x
            upstream: a
            compress: gzip  #<
        """,
        "routes[0].compress",
        "Input should be a valid dictionary",
        id="scalar-instead-of-mapping",
    ),
    pytest.param(
        """\
        compress:
          encodings: [gzip]
          min_size_bytes: many  #<
        """,
        "compress.min_size_bytes",
        "Input should be a valid integer",
        id="top-level",
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
        compress: {gzip_level: 11}
        routes:
          - path: /x
            upstream: a
            compress:
              encodings: [lz4]
              content_types: [text/*, nope]
        """
    )
    lines = sorted(int(p.split(":")[1]) for p in problems_of(text))
    assert lines == [4, 9, 10]


async def test_route_and_top_level_settings_reach_the_chain() -> None:
    text = doc(
        """\
        compress: {encodings: [gzip], min_size_bytes: 10}
        routes:
          - {name: inherits, path: /a, upstream: a}
          - {name: own, path: /b, upstream: a, compress: {encodings: [zstd, br], zstd_level: 7}}
          - {name: switched-off, path: /c, upstream: a, compress: false}
          - {name: defaults, path: /d, upstream: a, compress: true}
          - {name: disabled, path: /e, upstream: a, compress: {enabled: false}}
          - name: with-faults
            path: /f
            upstream: a
            fault: {header_trigger: true}
            response_headers: {set: {x-a: "1"}}
        """
    )
    config, located = parse_config(text, "gw.yaml")
    runtime = build_runtime(config, located)
    try:
        routes = {r.name: r for r in runtime.routes}
        for name in ("switched-off", "disabled"):
            assert "compress" not in routes[name].stage_names
        inherited = routes["inherits"].compress
        assert inherited is not None
        assert inherited.policy.codings == ("gzip",)
        assert inherited.policy.min_size_bytes == 10
        own = routes["own"].compress
        assert own is not None
        assert own.policy.codings == ("zstd", "br")
        assert own.policy.min_size_bytes == 1024  # a route's block replaces the top-level one
        assert own.config.level("zstd") == 7
        defaults = routes["defaults"].compress
        assert defaults is not None
        assert defaults.policy.codings == ("br", "zstd", "gzip")
        assert defaults.policy.types.matches("application/json; charset=utf-8")
        # after fault (where a cache goes), before the header stages and the proxy
        assert routes["with-faults"].stage_names == (
            "fault",
            "compress",
            "response_headers",
            "proxy",
        )
    finally:
        await runtime.aclose()


def test_docs_example_is_valid() -> None:
    """The first YAML block of docs/compression.md parses, with its upstreams defined."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "compression.md").read_text()
    example = page.split("```yaml\n", 1)[1].split("```", 1)[0]
    upstreams = "upstreams:\n" + "".join(
        f"  - {{name: {n}, instances: [{{host: 127.0.0.1, port: 9001}}]}}\n"
        for n in ("api", "files", "docs")
    )
    config, _ = parse_config(upstreams + example, "compression.md")
    assert config.compress is not None and config.compress.encodings == ["gzip"]
    own, off, defaults = (r.compress for r in config.routes)
    assert own is not None and own.encodings == ["br", "zstd", "gzip"]
    assert off is not None and not off.enabled
    assert defaults is not None and defaults.enabled and defaults.br_quality == 4
