"""Route stages for traffic management, built from a route's config.

Each stage is a middleware added to a route's chain only when the route
configures it, in this order, after the route's own middleware:

    fault -> request_headers -> rewrite -> split -> mirror -> response_headers -> proxy

A redirect route ends its chain with the redirect answer instead of the
proxy (fault and response_headers still apply). The decisions themselves
(matching, weights, rewrites, fault odds) are sans-IO classes in `core/`;
this module only applies them to a `RequestContext`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from meshgate.config.models import HeaderTransformConfig, RewriteConfig
from meshgate.core.fault import FAULT_HEADER, FaultPolicy
from meshgate.core.matchers import parse_query
from meshgate.core.rewrite import PathRewrite, QueryRewrite, Redirect, RewriteError
from meshgate.core.split import WeightedSplit
from meshgate.core.template import compile_template
from meshgate.http.messages import Headers, Response, cookie_value
from meshgate.pipeline.context import Middleware, Next, RequestContext
from meshgate.upstream.cluster import Cluster

log = logging.getLogger("meshgate.traffic")

Random = Callable[[], float]


# --- header templates -----------------------------------------------------------


def resolver(ctx: RequestContext) -> Callable[[str, str], str | None]:
    """Values of template variables (``${request_id}``, ``${param.id}``...) for one request."""
    req = ctx.request

    def resolve(root: str, key: str) -> str | None:
        if root == "header":
            return req.headers.get(key)
        if root == "param":
            return ctx.params.get(key)
        if root == "query":
            values = parse_query(req.query_string).get(key)
            return values[0] if values else None
        if root == "jwt":  # claims put there by an auth middleware
            claims = ctx.state.get("jwt")
            value = claims.get(key) if isinstance(claims, dict) else None
            return None if value is None else str(value)
        if root == "request_id":
            return ctx.request_id
        if root == "remote_addr":
            return req.client_ip
        if root == "route":
            return ctx.route.name if ctx.route is not None else None
        if root == "method":
            return req.method
        if root == "path":
            return req.path
        if root == "host":
            return req.host
        if root == "scheme":
            return req.scheme
        return None

    return resolve


class HeaderTransform:
    """``remove``, then ``set``, then ``add``, with values rendered per request."""

    __slots__ = ("add", "remove", "set")

    def __init__(self, config: HeaderTransformConfig) -> None:
        self.remove = tuple(config.remove)
        self.set = tuple((name, compile_template(v)) for name, v in config.set.items())
        self.add = tuple((name, compile_template(v)) for name, v in config.add.items())

    def apply(self, headers: Headers, ctx: RequestContext) -> None:
        resolve: Callable[[str, str], str | None] | None = None
        for name in self.remove:
            headers.remove(name)
        for edits, setter in ((self.set, headers.set), (self.add, headers.add)):
            for name, template in edits:
                value = template.constant
                if value is None:
                    if resolve is None:
                        resolve = resolver(ctx)
                    value = template.render(resolve)
                setter(name, value)

    def describe(self) -> list[str]:
        return (
            [f"remove {n}" for n in self.remove]
            + [f"set {n}: {t.text}" for n, t in self.set]
            + [f"add {n}: {t.text}" for n, t in self.add]
        )


def request_headers_stage(transform: HeaderTransform) -> Middleware:
    async def request_headers(ctx: RequestContext, call_next: Next) -> None:
        transform.apply(ctx.request.headers, ctx)
        await call_next()

    return request_headers


def response_headers_stage(transform: HeaderTransform) -> Middleware:
    async def response_headers(ctx: RequestContext, call_next: Next) -> None:
        await call_next()
        if ctx.response is not None:
            transform.apply(ctx.response.headers, ctx)

    return response_headers


# --- rewrite and redirect ---------------------------------------------------------


class Rewrite:
    """Path, query and Host changes made to the request before it is forwarded."""

    __slots__ = ("host", "path", "query")

    def __init__(self, config: RewriteConfig) -> None:
        replace = config.replace_prefix
        regex = config.regex
        path = PathRewrite.build(
            strip_prefix=config.strip_prefix,
            replace_prefix=(replace.from_, replace.to) if replace is not None else None,
            regex=(regex.pattern, regex.replacement) if regex is not None else None,
        )
        self.path = None if path.empty else path
        query = config.query
        q = QueryRewrite(query.set, query.remove) if query is not None else None
        self.query = None if q is None or q.empty else q
        self.host = config.host

    def target(self, path: str, query: str) -> str:
        """The rewritten request target (path plus query)."""
        if self.path is not None:
            path = self.path.apply(path)
        if self.query is not None:
            query = self.query.apply(query)
        return f"{path}?{query}" if query else path

    def describe(self) -> list[str]:
        out = []
        if self.path is not None:
            out.append(self.path.describe())
        if self.query is not None:
            out.append(self.query.describe())
        if self.host is not None:
            out.append(f"host {self.host}")
        return out


def rewrite_stage(rewrite: Rewrite) -> Middleware:
    async def rewrite_request(ctx: RequestContext, call_next: Next) -> None:
        req = ctx.request
        req.set_target(rewrite.target(req.path, req.query_string))
        if rewrite.host is not None:
            req.headers.set("host", rewrite.host)
        await call_next()

    return rewrite_request


def redirect_stage(redirect: Redirect) -> Middleware:
    """The end of a redirect route's chain: answer, never forward."""

    async def redirect_request(ctx: RequestContext, call_next: Next) -> None:
        req = ctx.request
        try:
            location = redirect.location(req.scheme, req.host, req.target)
        except RewriteError as exc:
            ctx.error(400, str(exc))
            return
        ctx.response = Response(redirect.status, {"location": location})

    return redirect_request


# --- fault injection ---------------------------------------------------------------


def fault_stage(policy: FaultPolicy, random: Random) -> Middleware:
    async def fault(ctx: RequestContext, call_next: Next) -> None:
        decision = policy.decide(random(), random(), ctx.request.headers.get(FAULT_HEADER))
        if decision.delay_s is not None:
            await asyncio.sleep(decision.delay_s)
        if decision.abort_status is not None:
            ctx.error(decision.abort_status, "fault injected")
            return
        await call_next()

    return fault


# --- weighted split -----------------------------------------------------------------


class Split:
    """Which upstream of a split takes a request, optionally sticky by header or cookie."""

    __slots__ = ("cookie", "header", "random", "weights")

    def __init__(
        self,
        weights: WeightedSplit[Cluster],
        random: Random,
        *,
        header: str | None = None,
        cookie: str | None = None,
    ) -> None:
        self.weights = weights
        self.random = random
        self.header = header
        self.cookie = cookie

    def sticky_key(self, headers: Headers) -> str | None:
        if self.header is not None:
            return headers.get(self.header)
        if self.cookie is not None:
            return cookie_value(headers, self.cookie)
        return None

    def choose(self, headers: Headers) -> Cluster:
        key = self.sticky_key(headers)
        if key is not None:
            return self.weights.pick_sticky(key)
        return self.weights.pick(self.random())

    def describe(self) -> str:
        shares = ", ".join(f"{c.name} {share * 100:g}%" for c, share in self.weights.shares())
        if self.header is not None:
            return f"{shares} (sticky by header {self.header})"
        if self.cookie is not None:
            return f"{shares} (sticky by cookie {self.cookie})"
        return shares


def split_stage(split: Split) -> Middleware:
    async def choose_upstream(ctx: RequestContext, call_next: Next) -> None:
        ctx.cluster = split.choose(ctx.request.headers)
        await call_next()

    return choose_upstream
