"""The example plugin, tested the way a plugin author would: in-process, no sockets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from examples.plugins.team_header import TeamHeader, team_header

from meshgate.http.messages import Response
from meshgate.testing import make_context, run_middleware

REPO = Path(__file__).resolve().parents[2]


async def test_tags_request_and_response():
    seen: dict[str, str | None] = {}

    async def upstream(ctx):
        seen["x-team"] = ctx.request.headers.get("x-team")
        return Response(200, body=b"ok")

    ctx = await run_middleware(
        team_header,
        make_context(path="/api/v1/users/1"),
        upstream=upstream,
        config=TeamHeader(team="identity"),
    )
    assert seen["x-team"] == "identity"
    assert ctx.response is not None and ctx.response.headers["x-served-by-team"] == "identity"
    assert ctx.state["upstream_calls"] == 1


async def test_denied_prefix_never_reaches_the_upstream():
    ctx = await run_middleware(
        team_header,
        make_context(path="/internal/x"),
        config=TeamHeader(team="identity", deny_prefix="/internal"),
    )
    assert ctx.response is not None and ctx.response.status == 403
    assert ctx.state["upstream_calls"] == 0


def test_example_config_validates():
    result = subprocess.run(
        [sys.executable, "-m", "meshgate", "validate", "examples/plugin.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "ok (1 routes, 1 upstreams)" in result.stdout
