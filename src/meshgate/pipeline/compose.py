"""Onion (Koa-style) composition of middleware, compiled once per route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from meshgate.pipeline.context import Middleware, RequestContext

Handler = Callable[[RequestContext], Awaitable[None]]


class NextCalledTwice(RuntimeError):
    """A middleware awaited ``call_next()`` more than once."""


class _Dispatch:
    """Per-request position in the chain (no closures, so no reference cycles)."""

    __slots__ = ("chain", "ctx", "index")

    def __init__(self, chain: tuple[Middleware, ...], ctx: RequestContext) -> None:
        self.chain = chain
        self.ctx = ctx
        self.index = -1

    async def call(self, i: int) -> None:
        if i <= self.index:
            mw = self.chain[i - 1]
            name = getattr(mw, "__name__", None) or repr(mw)
            raise NextCalledTwice(f"middleware {name} called call_next() more than once")
        self.index = i
        if i < len(self.chain):
            await self.chain[i](self.ctx, partial(self.call, i + 1))


def compose(middlewares: Sequence[Middleware]) -> Handler:
    """Chain ``middlewares`` so each wraps the rest.

    ``call_next()`` past the last middleware does nothing; calling it twice
    from the same middleware raises `NextCalledTwice`.
    """
    chain = tuple(middlewares)

    async def run(ctx: RequestContext) -> None:
        await _Dispatch(chain, ctx).call(0)

    return run
