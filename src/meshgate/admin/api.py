"""The admin API: a small JSON app served on its own listener (see docs/admin.md).

Read-only views of the running gateway (config, routes, upstreams, breakers,
rate limits, Prometheus metrics) plus three operations: ``POST /reload``,
``POST /drain`` and ``POST /cache/purge``. It never runs on the data port.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshgate.config.loader import ConfigError
from meshgate.config.models import GatewayConfig
from meshgate.http.errors import HTTPError
from meshgate.http.messages import Request, Response
from meshgate.observability.metrics import GatewayCollector, make_registry
from meshgate.pipeline.cache import CacheUnavailable, purge

if TYPE_CHECKING:
    from meshgate.gateway import Gateway

log = logging.getLogger("meshgate.admin")

REDACTED = "[redacted]"
_SECRET_KEYS = frozenset({"secret", "token", "password"})
_URL_WITH_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^/@]*:[^/@]*@")
MAX_PURGE_BODY_BYTES = 16 * 1024


def redact_config(config: GatewayConfig) -> dict[str, Any]:
    """The config as JSON-ready data with secrets replaced: JWT secrets, the admin
    token, API key hashes, the values of the trace exporter's headers and the password
    of any URL (e.g. the Redis URL)."""
    data = config.model_dump(mode="json")
    out = _redact(data)
    assert isinstance(out, dict)
    api_keys = (out.get("auth") or {}).get("api_keys")
    if isinstance(api_keys, dict):
        for consumer in api_keys.get("consumers") or []:
            if isinstance(consumer, dict) and isinstance(consumer.get("keys"), list):
                consumer["keys"] = [REDACTED for _ in consumer["keys"]]
    tracing = out.get("tracing")
    if isinstance(tracing, dict) and isinstance(tracing.get("headers"), dict):
        tracing["headers"] = {name: REDACTED for name in tracing["headers"]}
    return out


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (REDACTED if k in _SECRET_KEYS and v is not None else _redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, str) and _URL_WITH_PASSWORD.match(value):
        return _redact_url(value)
    return value


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))


Handler = Callable[[Request], Awaitable[Response]]


class AdminApp:
    """``async (Request) -> Response`` for the admin listener of one `Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.registry = make_registry(
            GatewayCollector(
                lambda: gateway.app.stats if gateway.app is not None else None,
                lambda: gateway.current_runtime,
                gateway.client_connections,
                gateway.tunnel_stats,
            )
        )
        self._routes: dict[str, dict[str, Handler]] = {
            "/healthz": {"GET": self.healthz},
            "/ready": {"GET": self.ready},
            "/metrics": {"GET": self.metrics},
            "/config": {"GET": self.config},
            "/routes": {"GET": self.routes},
            "/upstreams": {"GET": self.upstreams},
            "/breakers": {"GET": self.breakers},
            "/ratelimits": {"GET": self.ratelimits},
            "/reload": {"POST": self.reload},
            "/drain": {"POST": self.drain},
            "/cache/purge": {"POST": self.cache_purge},
        }

    async def __call__(self, request: Request) -> Response:
        methods = self._routes.get(request.path.rstrip("/") or "/")
        if not self._authorized(request):
            return Response.json(
                401, {"error": "admin token required"}, {"www-authenticate": "Bearer"}
            )
        if methods is None:
            return Response.json(404, {"error": "not found", "path": request.path})
        handler = methods.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = methods.get("GET")
        if handler is None:
            allow = ", ".join(methods)
            return Response.json(405, {"error": "method not allowed"}, {"allow": allow})
        try:
            return await handler(request)
        except Exception:
            log.exception("admin %s %s failed", request.method, request.path)
            return Response.json(500, {"error": "internal error"})

    def _authorized(self, request: Request) -> bool:
        token = self.gateway.config.admin.token
        if token is None:
            return True
        given = request.headers.get("authorization") or ""
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), token.encode())

    async def healthz(self, _request: Request) -> Response:
        return Response.json(200, {"status": "ok"})

    async def ready(self, _request: Request) -> Response:
        gw = self.gateway
        if gw.draining:
            return Response.json(503, {"status": "draining"})
        if not gw.started:
            return Response.json(503, {"status": "starting"})
        return Response.json(200, {"status": "ready"})

    async def metrics(self, _request: Request) -> Response:
        body = generate_latest(self.registry)
        return Response(200, {"content-type": CONTENT_TYPE_LATEST}, body)

    async def config(self, _request: Request) -> Response:
        return Response.json(200, redact_config(self.gateway.config))

    async def routes(self, _request: Request) -> Response:
        runtime = self.gateway.runtime
        default = [m.name for m in runtime.config.middleware]
        out = []
        for route in runtime.routes:
            c = route.config
            middleware = default if c.middleware is None else [m.name for m in c.middleware]
            match: dict[str, Any] = {
                k: v
                for k, v in (
                    ("path", c.path),
                    ("path_prefix", c.path_prefix),
                    ("path_regex", c.path_regex),
                )
                if v is not None
            }
            if c.headers:
                match["headers"] = [h.model_dump(mode="json") for h in c.headers]
            if c.query:
                match["query"] = [q.model_dump(mode="json") for q in c.query]
            out.append(
                {
                    "name": route.name,
                    "match": match,
                    "methods": c.methods,
                    "hosts": c.hosts,
                    "upstream": c.upstream,
                    "split": (
                        [{"upstream": t.upstream, "weight": t.weight} for t in c.split]
                        if c.split is not None
                        else None
                    ),
                    "timeout_s": route.timeout_s,
                    "stages": [*route.front_names, *middleware, *route.stage_names],
                }
            )
        return Response.json(200, {"routes": out})

    async def upstreams(self, _request: Request) -> Response:
        clusters = self.gateway.runtime.clusters
        return Response.json(
            200, {"upstreams": [clusters[name].snapshot() for name in sorted(clusters)]}
        )

    async def breakers(self, _request: Request) -> Response:
        clusters = self.gateway.runtime.clusters
        out = {}
        for name in sorted(clusters):
            breaker = clusters[name].snapshot()["breaker"]
            out[name] = breaker
        return Response.json(200, {"breakers": out})

    async def ratelimits(self, _request: Request) -> Response:
        out = []
        for route in self.gateway.runtime.routes:
            stage = route.rate_limit
            if stage is None:
                continue
            limits = [
                {
                    "label": label,
                    "allowed": s.allowed,
                    "limited": s.limited,
                    "skipped": s.skipped,
                    "backend_errors": s.backend_errors,
                }
                for label, s in stage.stats.items()
            ]
            out.append({"route": route.name, "limits": limits})
        return Response.json(200, {"routes": out})

    async def reload(self, _request: Request) -> Response:
        gw = self.gateway
        if gw.config_path is None:
            return Response.json(409, {"error": "the gateway was not started from a config file"})
        try:
            await gw.reload_from_file()
        except ConfigError as exc:
            log.error("reload refused, keeping the running config:\n%s", exc)
            problems = [
                {"file": p.file, "line": p.line, "key": p.key, "message": p.message}
                for p in exc.problems
            ]
            return Response.json(400, {"error": "invalid config", "problems": problems})
        config = gw.config
        return Response.json(
            200,
            {
                "status": "reloaded",
                "file": str(gw.config_path),
                "routes": len(config.routes),
                "upstreams": len(config.upstreams),
            },
        )

    async def drain(self, _request: Request) -> Response:
        self.gateway.start_drain()
        return Response.json(200, {"status": "draining"})

    async def cache_purge(self, request: Request) -> Response:
        """Remove cached responses: ``{"key": "host/path?query"}`` (every method and
        variant of that URL) or ``{"prefix": "host/path"}``; answers ``{"purged": n}``."""
        store = self.gateway.runtime.cache_store
        if store is None:
            return Response.json(409, {"error": "no route has a cache"})
        try:
            data = json.loads(await request.body.read_all(MAX_PURGE_BODY_BYTES))
        except HTTPError as exc:
            return Response.json(exc.status, {"error": exc.detail})
        except ValueError:
            return Response.json(400, {"error": "body must be JSON"})
        if not isinstance(data, dict):
            return Response.json(400, {"error": "body must be a JSON object"})
        given = [k for k in ("key", "prefix") if k in data]
        if len(given) != 1 or len(data) != 1:
            return Response.json(400, {"error": 'give one of "key" or "prefix", alone'})
        what = given[0]
        value = data[what]
        if not isinstance(value, str) or not value:
            return Response.json(400, {"error": f'"{what}" must be a non-empty string'})
        try:
            purged = await purge(store, **{what: value})
        except CacheUnavailable as exc:
            log.warning("cache purge failed: %s", exc)
            return Response.json(503, {"error": f"cache store unavailable: {exc}"})
        log.info("cache purge of %s %r: %d entries", what, value, purged)
        return Response.json(200, {"purged": purged})
