"""Resolve middleware names from config: built-ins or dotted paths to ``async def``.

A plugin is a plain function::

    async def add_header(ctx: RequestContext, call_next: Next, config: AddHeader) -> None

``config`` is optional; when present its annotation must be a pydantic model,
and the YAML ``config:`` mapping is validated against it at load time.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from meshgate.config.models import MiddlewareRef
from meshgate.pipeline import builtins
from meshgate.pipeline.context import Middleware

BUILTINS: dict[str, Middleware] = {
    "request_id": builtins.request_id,
    "response_time": builtins.response_time,
}


class PluginError(Exception):
    """A middleware entry cannot be loaded; ``loc`` is relative to the entry."""

    def __init__(self, message: str, loc: tuple[str | int, ...] = ("name",)) -> None:
        super().__init__(message)
        self.loc = loc


def _import(path: str) -> Any:
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise PluginError(
            f"{path!r} is neither a built-in ({', '.join(sorted(BUILTINS))}) "
            "nor a dotted path like 'package.module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a plugin's import may fail in any way: report, don't crash
        raise PluginError(
            f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def config_model(fn: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic model of a plugin's ``config`` parameter, if it has one."""
    params = list(inspect.signature(fn).parameters.values())
    if len(params) == 2:
        return None
    if len(params) == 3 and params[2].name == "config":
        model = params[2].annotation
        if isinstance(model, str):  # postponed annotation: evaluate only this one
            try:
                model = eval(model, getattr(fn, "__globals__", {}))
            except Exception as exc:
                raise PluginError(
                    f"{fn.__qualname__}: cannot resolve the 'config' annotation {model!r}: {exc}"
                ) from None
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model
        raise PluginError(
            f"{fn.__qualname__}: the 'config' parameter must be annotated with a pydantic model"
        )
    raise PluginError(
        f"{fn.__qualname__}: signature must be (ctx, call_next) or (ctx, call_next, config)"
    )


def load_middleware(ref: MiddlewareRef) -> Middleware:
    """Turn one config entry into a ready-to-call middleware."""
    fn: Any = BUILTINS.get(ref.name)
    if fn is None:
        fn = _import(ref.name)
    if not callable(fn) or not inspect.iscoroutinefunction(fn):
        raise PluginError(f"{ref.name!r} is not an 'async def' function")
    model = config_model(fn)
    if model is None:
        if ref.config:
            raise PluginError(f"{ref.name!r} takes no config", ("config",))
        plain: Middleware = fn
        return plain
    try:
        cfg = model.model_validate(ref.config)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ("config", *first["loc"])
        raise PluginError(first["msg"], loc) from None
    bound: Middleware = functools.partial(fn, config=cfg)
    return bound
