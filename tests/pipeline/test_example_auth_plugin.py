"""The example auth plugin, tested as a plugin author would: in process, no sockets."""

from __future__ import annotations

import time

import pytest
from examples.plugins.signed_requests import SignedRequests, signature, signed_requests
from pydantic import ValidationError

from meshgate.http.messages import Response
from meshgate.pipeline.context import RequestContext
from meshgate.testing import make_context, run_middleware

CONFIG = SignedRequests(clients={"billing": "s3cret"}, max_age_s=300)


def signed(path: str = "/invoices", *, secret: str = "s3cret", age_s: float = 0) -> RequestContext:
    date = str(int(time.time() - age_s))
    return make_context(
        path=path,
        headers={
            "x-client-id": "billing",
            "x-date": date,
            "x-signature": signature(secret, "GET", path, date),
        },
    )


async def test_signed_request_passes_as_the_consumer_without_its_signature() -> None:
    seen: dict[str, object] = {}

    async def upstream(ctx: RequestContext) -> Response:
        seen["headers"] = dict(ctx.request.headers.items())
        return Response(200, body=b"ok")

    ctx = await run_middleware(signed_requests, signed(), upstream=upstream, config=CONFIG)
    assert ctx.response is not None and ctx.response.status == 200
    assert ctx.state["consumer"] == "billing"
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert "x-signature" not in headers and headers["x-client-id"] == "billing"


@pytest.mark.parametrize(
    "ctx",
    [
        signed(secret="wrong"),
        signed(age_s=3600),
        make_context(path="/invoices"),
        make_context(path="/invoices", headers={"x-client-id": "nobody", "x-date": "1"}),
    ],
    ids=["bad-signature", "stale", "unsigned", "unknown-client"],
)
async def test_refused_requests_never_reach_the_upstream(ctx: RequestContext) -> None:
    ctx = await run_middleware(signed_requests, ctx, config=CONFIG)
    assert ctx.response is not None and ctx.response.status == 401
    assert ctx.response.headers["www-authenticate"] == 'HMAC realm="api"'
    assert ctx.state["upstream_calls"] == 0


def test_config_is_validated() -> None:
    with pytest.raises(ValidationError):
        SignedRequests(clients={})


def test_example_config_validates() -> None:
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run(
        [sys.executable, "-m", "meshgate", "validate", "examples/signed.yaml"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ok (1 routes, 1 upstreams)" in result.stdout
