"""``meshgate explain``: what the gateway would do with one request, without sending it.

It builds the same runtime the gateway serves with (router, compiled chains,
rewrites, splits) and walks the request through the decisions only: which
route matches and why, the chain in order, the rewritten target and headers,
the upstream or split choice, mirroring, faults and redirects. Middleware
objects that have an ``explain(ctx)`` method (returning lines of text) add
their own lines, e.g. which rate-limit key or auth rule applies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import urlsplit

from meshgate.config.loader import LocatedDocument
from meshgate.config.models import GatewayConfig, RouteConfig
from meshgate.core.fault import FAULT_HEADER
from meshgate.core.router import Match, MethodNotAllowed, Router
from meshgate.http.messages import BytesBody, Headers, Request
from meshgate.http.paths import normalize_target
from meshgate.pipeline.app import choose_request_id
from meshgate.pipeline.context import RequestContext
from meshgate.pipeline.runtime import CompiledRoute, Runtime, build_runtime

MAX_CANDIDATES = 3


class ExplainError(ValueError):
    """The request given to explain is malformed (URL or header)."""


def make_request(method: str, url: str, header_lines: Sequence[str]) -> Request:
    """A request as the server would build it from ``METHOD URL`` and ``-H 'k: v'`` lines."""
    headers: list[tuple[str, str]] = []
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or name != name.strip():
            raise ExplainError(f"header {line!r}: expected 'name: value'")
        headers.append((name.lower(), value.strip()))
    parts = urlsplit(url)
    if parts.scheme and parts.scheme not in ("http", "https"):
        raise ExplainError(f"URL {url!r}: scheme must be http or https")
    if not parts.scheme and not url.startswith("/"):
        raise ExplainError(f"URL {url!r}: give http://host/path or /path")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = next((v for n, v in headers if n == "host"), None)
    if host is None:
        host = parts.netloc or "localhost"
        headers.insert(0, ("host", host))
    return Request(
        method.upper(),
        normalize_target(target),
        Headers.from_lower(headers),
        BytesBody(b""),
        scheme=parts.scheme or "http",
        host=host,
    )


def explain(runtime: Runtime, request: Request, doc: LocatedDocument | None = None) -> list[str]:
    """The report for one request, as lines of text."""
    found = runtime.router.match(
        request.method,
        request.path,
        request.host,
        request.headers.raw(),
        request.query_string,
    )
    lines = [f"request: {request.method} {request.target} (host {request.host})"]
    if isinstance(found, Match):
        lines += _matched(runtime, found.route, found.params, request, doc)
        return lines
    if isinstance(found, MethodNotAllowed):
        lines.append(f"answer: 405 method not allowed (Allow: {', '.join(found.allowed)})")
    else:
        lines.append("answer: 404 no route matches")
    lines += _candidates(runtime, request, doc)
    return lines


def _where(runtime: Runtime, route: CompiledRoute, doc: LocatedDocument | None) -> str:
    """``users (routes[1], gw.yaml:14)``, or ``routes[1] (gw.yaml:14)`` for an unnamed route."""
    index = runtime.routes.index(route)
    at = [f"routes[{index}]"] if route.name != f"routes[{index}]" else []
    if doc is not None:
        at.append(f"{doc.filename}:{doc.line_of(('routes', index))}")
    return f"{route.name} ({', '.join(at)})" if at else route.name


def _path_text(config: RouteConfig) -> str:
    if config.path_prefix is not None:
        return f"path_prefix {config.path_prefix}"
    if config.path_regex is not None:
        return f"path_regex {config.path_regex}"
    return f"path {config.path}"


def _matched(
    runtime: Runtime,
    route: CompiledRoute,
    params: dict[str, str],
    request: Request,
    doc: LocatedDocument | None,
) -> list[str]:
    config = route.config
    lines = [f"route: {_where(runtime, route, doc)}"]
    why = [_path_text(config)]
    if params:
        why.append("params " + ", ".join(f"{k}={v!r}" for k, v in params.items()))
    why.append(f"methods {', '.join(config.methods) if config.methods else 'any'}")
    why.append(f"hosts {', '.join(config.hosts) if config.hosts else 'any'}")
    lines.append("  matched: " + "; ".join(why))
    if route.guard is not None:
        lines += [f"  condition met: {d}" for d in route.guard.describe()]
    ctx = RequestContext(
        request,
        route,
        params,
        choose_request_id(request),
        deadline=None,
    )
    middleware = route.middleware
    names = [*route.front_names, *(_name(m) for m in middleware), *route.stage_names]
    lines.append("chain: " + " -> ".join(names))
    hooked = False
    named = list(zip(route.front_names, route.front, strict=True))
    named += [(_name(m), m) for m in middleware]
    named += list(zip(route.stage_names, route.stages, strict=True))
    for name, m in named:
        hook = getattr(m, "explain", None)
        if callable(hook):
            hooked = True
            lines += [f"  {name}: {text}" for text in hook(ctx)]
    if not hooked:
        lines.append("  (no middleware in the chain applies rate limits or auth rules)")
    if route.fault is not None:
        lines.append(f"fault: {route.fault.describe()}")
        header = request.headers.get(FAULT_HEADER)
        if header is not None:
            decision = route.fault.decide(1.0 - 1e-9, 1.0 - 1e-9, header)
            lines.append(
                f"  {FAULT_HEADER}: {header!r} -> delay {decision.delay_s or 0:g}s, "
                f"abort {decision.abort_status or 'none'}"
            )
    if route.redirect is not None:
        try:
            location = route.redirect.location(request.scheme, request.host, request.target)
            lines.append(f"answer: {route.redirect.status} redirect to {location}")
        except ValueError as exc:
            lines.append(f"answer: 400 ({exc})")
        return lines
    if route.request_headers is not None:
        route.request_headers.apply(request.headers, ctx)
        lines += [f"request header: {d}" for d in route.request_headers.describe()]
    if route.rewrite is not None:
        before = request.target
        request.set_target(route.rewrite.target(request.path, request.query_string))
        host = f"; Host {route.rewrite.host}" if route.rewrite.host is not None else ""
        lines.append(f"rewrite: {before} -> {request.target}{host}")
    if route.split is not None:
        lines.append(f"split: {route.split.describe()}")
        key = route.split.sticky_key(request.headers)
        if key is not None:
            chosen = route.split.weights.pick_sticky(key)
            lines.append(f"  sticky key {key!r} -> {chosen.name}")
    elif route.cluster is not None:
        cluster = route.cluster
        hosts = ", ".join(h.key for h in cluster.hosts)
        lines.append(
            f"upstream: {cluster.name} ({cluster.config.load_balancer} over {hosts}); "
            f"timeout {route.timeout_s:g}s"
        )
    if route.mirror is not None:
        m = route.mirror
        lines.append(
            f"mirror: {m.cluster.name}, {m.percent:g}% of requests "
            f"(bodies up to {m.max_body_bytes} bytes, at most {m.max_concurrent} in flight)"
        )
    if route.response_headers is not None:
        lines += [f"response header: {d}" for d in route.response_headers.describe()]
    sent = [f"{n}: {v}" for n, v in request.headers.raw() if n != "host" or route.preserve_host]
    lines.append("request headers after transforms: " + ("; ".join(sent) if sent else "(none)"))
    return lines


def _name(fn: object) -> str:
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def _candidates(runtime: Runtime, request: Request, doc: LocatedDocument | None) -> list[str]:
    """The routes closest to matching, each with the reasons it did not."""
    scored: list[tuple[int, int, int, CompiledRoute, list[str]]] = []
    for index, route in enumerate(runtime.routes):
        reasons = _failures(route, request)
        path_failed = int(any(r.startswith("path") for r in reasons))
        scored.append((path_failed, len(reasons), index, route, reasons))
    scored.sort(key=lambda item: item[:3])
    lines = ["closest routes:" if scored else "no routes are configured"]
    for _, _, _, route, reasons in scored[:MAX_CANDIDATES]:
        lines.append(f"  {_where(runtime, route, doc)}: {_path_text(route.config)}")
        lines += [f"    - {r}" for r in reasons]
    return lines


def _failures(route: CompiledRoute, request: Request) -> list[str]:
    config = route.config
    reasons = []
    alone: Router[str] = Router()
    if config.path_regex is not None:
        alone.add_regex(config.path_regex, "r")
    else:
        pattern = config.path or (str(config.path_prefix).rstrip("/") + "/*")
        alone.add(pattern, "r")
    if not isinstance(alone.match(request.method, request.path), Match):
        reasons.append(f"path {request.path} does not match {_path_text(config)}")
    methods = config.methods
    if (
        methods is not None
        and request.method not in methods
        and not (request.method == "HEAD" and "GET" in methods)
    ):
        reasons.append(f"method {request.method} not in {', '.join(methods)}")
    if config.hosts:
        hosts: Router[str] = Router()
        hosts.add("/*", "r", hosts=config.hosts)
        if not isinstance(hosts.match("GET", "/", request.host), Match):
            reasons.append(f"host {request.host!r} not in {', '.join(config.hosts)}")
    if route.guard is not None:
        reasons += route.guard.failures(request.headers.raw(), request.query_string)
    return reasons


def run_explain(
    config: GatewayConfig, doc: LocatedDocument | None, method: str, url: str, headers: list[str]
) -> list[str]:
    """Build the runtime (in a private event loop) and explain one request."""
    request = make_request(method, url, headers)

    async def go() -> list[str]:
        runtime = build_runtime(config, doc)
        try:
            return explain(runtime, request, doc)
        finally:
            await runtime.aclose()

    return asyncio.run(go())
