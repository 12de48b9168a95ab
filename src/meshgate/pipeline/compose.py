"""Onion (Koa-style) composition of middleware, compiled once per route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from meshgate.pipeline.context import Middleware, RequestContext

Handler = Callable[[RequestContext], Awaitable[None]]


class NextCalledTwice(RuntimeError):
    """A middleware awaited ``call_next()`` more than once."""


class _Next:
    """``call_next`` of one layer: starts the next layer's coroutine, once."""

    __slots__ = ("called", "ctx", "fn", "next", "owner")

    def __init__(self, fn: Middleware | None, ctx: RequestContext, nxt: _Next | None) -> None:
        self.fn = fn
        self.ctx = ctx
        self.next = nxt
        self.called = False
        self.owner: Middleware | None = None  # the layer this is the call_next of

    def __call__(self) -> Awaitable[None]:
        if self.called:
            name = getattr(self.owner, "__name__", None) or repr(self.owner)
            raise NextCalledTwice(f"middleware {name} called call_next() more than once")
        self.called = True
        if self.fn is None:
            return _done()
        assert self.next is not None
        return self.fn(self.ctx, self.next)


async def _done() -> None:
    return None


def compose(middlewares: Sequence[Middleware]) -> Handler:
    """Chain ``middlewares`` so each wraps the rest.

    ``call_next()`` past the last middleware does nothing; calling it twice
    from the same middleware raises `NextCalledTwice`. Per request this costs
    one small object per layer and no extra coroutine frames.
    """
    chain = tuple(reversed(middlewares))

    async def run(ctx: RequestContext) -> None:
        nxt = _Next(None, ctx, None)
        for fn in chain:
            nxt.owner = fn
            nxt = _Next(fn, ctx, nxt)
        await nxt()

    return run
