"""Onion (Koa-style) composition of middleware, compiled once per route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from mypy_extensions import mypyc_attr

from meshgate.pipeline.context import Middleware, RequestContext

Handler = Callable[[RequestContext], Awaitable[None]]


# A plain Python class in the compiled build too (scripts/compile_hot.py): mypyc does
# not compile a native subclass of RuntimeError. A no-op in pure Python.
@mypyc_attr(native_class=False)
class NextCalledTwice(RuntimeError):
    """A middleware awaited ``call_next()`` more than once."""


class _Position:
    """How far one request has gone down its chain."""

    __slots__ = ("chain", "ctx", "index")

    def __init__(self, chain: tuple[Middleware, ...], ctx: RequestContext) -> None:
        self.chain = chain
        self.ctx = ctx
        self.index = 0


def _enter(pos: _Position, i: int) -> Awaitable[None]:
    """``call_next`` of layer ``i - 1``: start layer ``i`` (a plain function, no frame)."""
    if pos.index >= i:
        layer = pos.chain[i - 1]
        name = getattr(layer, "__name__", None) or repr(layer)
        raise NextCalledTwice(f"middleware {name} called call_next() more than once")
    pos.index = i
    chain = pos.chain
    if i < len(chain):
        return chain[i](pos.ctx, partial(_enter, pos, i + 1))
    return _done()


async def _done() -> None:
    return None


def _past_end() -> Awaitable[None]:
    raise RuntimeError("a terminal stage called call_next()")


def terminal(stage: Middleware) -> Handler:
    """The handler of a chain whose only layer is a terminal stage (one that answers
    and never calls ``call_next``, like the proxy): no position bookkeeping."""

    def run(ctx: RequestContext) -> Awaitable[None]:
        return stage(ctx, _past_end)

    return run


def compose(middlewares: Sequence[Middleware]) -> Handler:
    """Chain ``middlewares`` so each wraps the rest.

    ``call_next()`` past the last middleware does nothing; calling it twice
    from the same middleware raises `NextCalledTwice`. Per request this costs
    one position object and a `partial` per layer, and no extra coroutine frames.
    """
    chain = tuple(middlewares)
    if not chain:
        return _empty

    first = chain[0]

    def run(ctx: RequestContext) -> Awaitable[None]:
        pos = _Position(chain, ctx)
        return first(ctx, partial(_enter, pos, 1))

    return run


async def _empty(ctx: RequestContext) -> None:
    return None
