"""What the config tests share: parse a snippet and collect its located problems
(``file:line: key.path: problem``), and find the line a snippet marks with ``#<``."""

from __future__ import annotations

from textwrap import dedent

import pytest

from meshgate.config.loader import ConfigError, parse_config

# One upstream "a" for snippets whose routes need one.
HEAD = dedent(
    """\
    upstreams:
      - name: a
        instances: [{host: 127.0.0.1, port: 9001}]
    """
)


def doc(text: str) -> str:
    """``text`` (dedented) after `HEAD`."""
    return HEAD + dedent(text)


def marked_line(text: str) -> int:
    """The number of the one line ending with ``#<``."""
    lines = [i for i, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith("#<")]
    assert len(lines) == 1, "mark exactly one line with #<"
    return lines[0]


def problems_of(text: str) -> list[str]:
    """The problems parsing ``text`` as ``gw.yaml`` reports (it must be refused)."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "gw.yaml")
    return [str(p) for p in info.value.problems]
