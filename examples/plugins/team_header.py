"""An example meshgate plugin: tag requests with the owning team, deny a blocked path.

Load it from gateway.yaml (run meshgate from the folder that holds `examples/`,
or install it as a package)::

    middleware:
      - request_id
      - name: examples.plugins.team_header:team_header
        config: {team: payments, deny_prefix: /internal}
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from meshgate.pipeline.context import Next, RequestContext


class TeamHeader(BaseModel):
    """The plugin's config: validated when the gateway loads gateway.yaml."""

    team: str = Field(min_length=1)
    deny_prefix: str | None = None


async def team_header(ctx: RequestContext, call_next: Next, config: TeamHeader) -> None:
    if config.deny_prefix and ctx.request.path.startswith(config.deny_prefix):
        ctx.error(403, "this path is not exposed")  # short-circuit: the upstream is not called
        return
    ctx.request.headers.set("x-team", config.team)  # the upstream sees it
    await call_next()
    if ctx.response is not None:
        ctx.response.headers.set("x-served-by-team", config.team)  # the client sees it
