"""An example auth plugin: requests signed with a shared secret (HMAC-SHA256).

A client signs ``METHOD\\nPATH\\nX-DATE`` with its secret and sends::

    x-client-id: billing
    x-date: 1764230400            (Unix seconds; must be within max_age_s of now)
    x-signature: <hex HMAC-SHA256>

The plugin verifies the signature in constant time, refuses stale dates
(replays), and on success names the caller as the consumer so rate limits
(`key: [consumer]`) and header templates can use it. Load it from gateway.yaml::

    middleware:
      - request_id
      - name: examples.plugins.signed_requests:signed_requests
        config:
          clients: {billing: "s3cret-from-a-vault"}
          max_age_s: 300
"""

from __future__ import annotations

import hashlib
import hmac
import time

from pydantic import BaseModel, Field

from meshgate.pipeline.context import Next, RequestContext


class SignedRequests(BaseModel):
    """Validated when the gateway loads gateway.yaml."""

    clients: dict[str, str] = Field(min_length=1, description="client id -> shared secret")
    max_age_s: float = Field(300.0, gt=0, description="Oldest x-date accepted, either way.")


def signature(secret: str, method: str, path: str, date: str) -> str:
    """What a client puts in x-signature."""
    message = f"{method}\n{path}\n{date}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


async def signed_requests(ctx: RequestContext, call_next: Next, config: SignedRequests) -> None:
    headers = ctx.request.headers
    client = headers.get("x-client-id")
    date = headers.get("x-date")
    sent = headers.get("x-signature")
    secret = config.clients.get(client or "")
    if secret is None or date is None or sent is None:
        ctx.error(401, "signed request required", {"www-authenticate": 'HMAC realm="api"'})
        return
    try:
        age_s = abs(time.time() - float(date))
    except ValueError:
        age_s = float("inf")
    expected = signature(secret, ctx.request.method, ctx.request.path, date)
    if age_s > config.max_age_s or not hmac.compare_digest(expected, sent):
        ctx.error(401, "bad or stale signature", {"www-authenticate": 'HMAC realm="api"'})
        return
    ctx.state["consumer"] = client
    for name in ("x-signature", "x-date"):
        headers.remove(name)  # the upstream needs only who is calling
    await call_next()
