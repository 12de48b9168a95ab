"""Onion (Koa-style) composition of middleware, compiled once per route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from meshgate.pipeline.context import Middleware, RequestContext

Handler = Callable[[RequestContext], Awaitable[None]]


class NextCalledTwice(RuntimeError):
    """A middleware awaited ``call_next()`` more than once."""


def compose(middlewares: Sequence[Middleware]) -> Handler:
    """Chain ``middlewares`` so each wraps the rest.

    ``call_next()`` past the last middleware does nothing; calling it twice
    from the same middleware raises `NextCalledTwice`.
    """
    chain = tuple(middlewares)
    count = len(chain)

    async def run(ctx: RequestContext) -> None:
        index = -1

        async def dispatch(i: int) -> None:
            nonlocal index
            if i <= index:
                name = getattr(chain[i - 1], "__name__", repr(chain[i - 1]))
                raise NextCalledTwice(f"middleware {name} called call_next() more than once")
            index = i
            if i == count:
                return
            await chain[i](ctx, lambda: dispatch(i + 1))

        await dispatch(0)

    return run
