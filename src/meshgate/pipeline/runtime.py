"""Everything built from one config: route table, compiled chains, clusters.

A `Runtime` is built aside and swapped in one assignment (hot reload); the
old one keeps serving the requests that already hold it.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshgate.config.loader import ConfigError, ConfigProblem, LocatedDocument, key_path
from meshgate.config.models import GatewayConfig, MiddlewareRef, RouteConfig
from meshgate.core.router import Router
from meshgate.pipeline.compose import Handler, compose
from meshgate.pipeline.context import Middleware
from meshgate.pipeline.plugins import PluginError, load_middleware
from meshgate.pipeline.proxy import proxy
from meshgate.upstream.cluster import Cluster


class CompiledRoute:
    """A route ready to serve: its chain is composed once, here."""

    __slots__ = (
        "cluster",
        "config",
        "handler",
        "path",
        "preserve_host",
        "remove_request_headers",
        "timeout_s",
    )

    def __init__(
        self,
        config: RouteConfig,
        cluster: Cluster,
        middlewares: Sequence[Middleware],
        timeout_s: float,
    ) -> None:
        self.config = config
        self.path = config.path
        self.cluster = cluster
        self.timeout_s = timeout_s
        self.preserve_host = config.preserve_host
        self.remove_request_headers = frozenset(config.remove_request_headers)
        self.handler: Handler = compose([*middlewares, proxy])

    def __repr__(self) -> str:
        return f"<CompiledRoute {self.path} -> {self.cluster.name}>"


class Runtime:
    def __init__(
        self, config: GatewayConfig, router: Router[CompiledRoute], clusters: dict[str, Cluster]
    ) -> None:
        self.config = config
        self.router = router
        self.clusters = clusters

    def close(self) -> None:
        """Close idle upstream connections; busy ones close when their exchange ends."""
        for cluster in self.clusters.values():
            cluster.close()


def _chain(
    refs: Sequence[MiddlewareRef],
    loc: tuple[str | int, ...],
    doc: LocatedDocument | None,
    problems: list[ConfigProblem],
) -> list[Middleware]:
    out: list[Middleware] = []
    for i, ref in enumerate(refs):
        if ref.name == "proxy":
            if i != len(refs) - 1:
                _problem(doc, (*loc, i, "name"), "'proxy' must be the last middleware", problems)
            continue
        try:
            out.append(load_middleware(ref))
        except PluginError as exc:
            _problem(doc, (*loc, i, *exc.loc), str(exc), problems)
    return out


def _problem(
    doc: LocatedDocument | None,
    loc: tuple[str | int, ...],
    message: str,
    problems: list[ConfigProblem],
) -> None:
    if doc is not None:
        problems.append(doc.problem(loc, message))
    else:
        problems.append(ConfigProblem("<config>", 0, key_path(loc), message))


def build_runtime(config: GatewayConfig, doc: LocatedDocument | None = None) -> Runtime:
    """Resolve plugins, compose chains and build the router; raise `ConfigError`.

    Must run inside the event loop that will serve (pools bind to it).
    """
    problems: list[ConfigProblem] = []
    default_chain = _chain(config.middleware, ("middleware",), doc, problems)
    chains = [
        default_chain
        if route.middleware is None
        else _chain(route.middleware, ("routes", i, "middleware"), doc, problems)
        for i, route in enumerate(config.routes)
    ]
    if problems:
        raise ConfigError(problems)
    clusters = {up.name: Cluster(up) for up in config.upstreams}
    router: Router[CompiledRoute] = Router()
    for i, (route, chain) in enumerate(zip(config.routes, chains, strict=True)):
        compiled = CompiledRoute(
            route, clusters[route.upstream], chain, route.timeout_s or config.timeout_s
        )
        try:
            router.add(route.path, compiled, route.methods, route.hosts)
        except ValueError as exc:
            _problem(doc, ("routes", i, "path"), str(exc), problems)
    if problems:
        for cluster in clusters.values():
            cluster.close()
        raise ConfigError(problems)
    return Runtime(config, router, clusters)
