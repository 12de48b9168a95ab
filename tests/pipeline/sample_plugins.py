"""Plugins used by the pipeline tests, loaded by dotted path like a user's would be.

Dotted paths: ``tests.pipeline.sample_plugins:NAME`` or ``tests.pipeline.sample_plugins.NAME``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from meshgate.http.messages import BytesBody, Response
from meshgate.pipeline.context import Next, RequestContext

MODULE = __name__
NOT_CALLABLE = 42


class AddHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    value: str
    times: int = Field(1, ge=1)


class Defaults(BaseModel):
    greeting: str = "hello"


async def add_header(ctx: RequestContext, call_next: Next, config: AddHeader) -> None:
    """Adds a configured header to the response (after-phase)."""
    await call_next()
    if ctx.response is not None:
        ctx.response.headers.set(config.name, config.value * config.times)


async def passthrough(ctx: RequestContext, call_next: Next) -> None:
    ctx.state.setdefault("seen", []).append("passthrough")
    await call_next()


async def greet(ctx: RequestContext, call_next: Next, config: Defaults) -> None:
    ctx.response = Response(200, body=config.greeting)


async def short_circuit(ctx: RequestContext, call_next: Next) -> None:
    """Answers without calling the rest of the chain (so no upstream is contacted)."""
    ctx.response = Response.json(
        200,
        {
            "params": ctx.params,
            "request_id": ctx.request_id,
            "route": ctx.route.path if ctx.route is not None else None,
            "x_request_id_sent_upstream": ctx.request.headers.get("x-request-id"),
            "budget_s": (None if ctx.deadline is None else round(ctx.deadline - ctx.start_time, 6)),
        },
    )


async def boom(ctx: RequestContext, call_next: Next) -> None:
    raise RuntimeError("plugin exploded")


# What the bodies of boom_after_response held when closed (test_app.py). A subclass, not
# a monkeypatched BytesBody.aclose: in the compiled build the gateway calls the compiled
# method directly, past a patched class attribute.
closed_bodies: list[bytes] = []


class SpyBody(BytesBody):
    async def aclose(self) -> None:
        closed_bodies.append(self._data or b"")
        await super().aclose()


async def boom_after_response(ctx: RequestContext, call_next: Next) -> None:
    ctx.response = Response(200, body=SpyBody(b"partial"))
    raise RuntimeError("exploded after setting a response")


async def no_response(ctx: RequestContext, call_next: Next) -> None:
    """Neither answers nor calls the rest."""


async def read_body_limited(ctx: RequestContext, call_next: Next) -> None:
    """Buffers the request body with a small cap (as a body transform would)."""
    data = await ctx.request.body.read_all(4)
    ctx.response = Response(200, body=data)


def sync_function(ctx: RequestContext, call_next: Next) -> None:
    """Not async: must be rejected."""


async def one_param(ctx: RequestContext) -> None:
    """Bad signature."""


async def four_params(ctx: RequestContext, call_next: Next, config: AddHeader, extra: int) -> None:
    """Bad signature."""


async def third_not_config(ctx: RequestContext, call_next: Next, options: AddHeader) -> None:
    """The third parameter must be called 'config'."""


async def config_not_a_model(ctx: RequestContext, call_next: Next, config: dict) -> None:  # type: ignore[type-arg]
    """'config' must be annotated with a pydantic model."""


async def config_unannotated(ctx, call_next, config):  # type: ignore[no-untyped-def]
    """'config' has no annotation at all."""


class Namespace:
    @staticmethod
    async def nested(ctx: RequestContext, call_next: Next) -> None:
        ctx.state["nested"] = True
        await call_next()
