"""Pydantic models of every gateway.yaml key, with defaults and units in names."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

from pydantic import (
    BaseModel,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meshgate.config.cache import CacheConfig, RouteCacheConfig
from meshgate.config.common import TOKEN, token
from meshgate.config.common import Model as _Model
from meshgate.config.compress import CompressConfig
from meshgate.config.discovery import DiscoveryConfig, HashKeyConfig, HealthCheckConfig
from meshgate.config.ratelimit import LimitConfig, RateLimitConfig
from meshgate.config.resilience import (
    CircuitBreakerConfig,
    OutlierDetectionConfig,
    RetryBudgetConfig,
    RetryConfig,
    UpstreamLimitsConfig,
)
from meshgate.config.security import (
    API_KEY_PROVIDER,
    ApiKeyConsumerConfig,
    AuthConfig,
    CorsConfig,
    IpRulesConfig,
    RouteAuthConfig,
)
from meshgate.config.tls import ListenerTlsConfig, UpstreamTlsConfig, WebSocketConfig, tls_errors
from meshgate.config.tracing import TracingConfig
from meshgate.core.balancer import BALANCERS
from meshgate.core.clientip import parse_networks
from meshgate.core.fault import FaultPolicy
from meshgate.core.matchers import HeaderMatch, MatcherError, QueryMatch
from meshgate.core.rewrite import PathRewrite, QueryRewrite, Redirect, RewriteError
from meshgate.core.router import PatternError, parse_pattern, validate_host_pattern
from meshgate.core.template import TemplateError, compile_template

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)

PositiveSeconds = Annotated[float, Field(gt=0)]

AccessLogField = Literal[
    "time",
    "request_id",
    "client_ip",
    "method",
    "path",
    "protocol",
    "route",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream",
    "upstream_ms",
    "attempts",
    "trace_id",
]
# Keys an access log line may have (access_log.fields), in the default order.
ACCESS_LOG_FIELDS: tuple[AccessLogField, ...] = get_args(AccessLogField)


class ListenerConfig(_Model):
    """Where the gateway accepts clients and how long it waits for them."""

    host: str = Field("127.0.0.1", description="Address to bind (use 0.0.0.0 or :: for all).")
    port: int = Field(
        8080, ge=0, le=65535, strict=True, description="TCP port; 0 picks a free one."
    )
    backlog: int = Field(2048, ge=1, description="listen() backlog.")
    header_timeout_s: PositiveSeconds = Field(
        10.0, description="Time allowed to receive a whole request head (slowloris guard)."
    )
    body_timeout_s: PositiveSeconds = Field(
        30.0, description="Longest pause between two pieces of a request body."
    )
    idle_timeout_s: PositiveSeconds = Field(
        60.0, description="Keep-alive: close a connection idle this long between requests."
    )
    send_timeout_s: PositiveSeconds = Field(
        60.0,
        description="A client that accepts no response bytes for this long is disconnected.",
    )
    max_header_bytes: int = Field(
        32768, ge=1024, description="Request line plus headers larger than this get 431."
    )
    max_pipelined_requests: int = Field(
        16, ge=1, description="Requests parsed ahead of the one being answered."
    )
    tls: ListenerTlsConfig | None = Field(
        None, description="Terminate TLS (HTTPS) on this listener; see docs/tls.md."
    )
    http2: bool | None = Field(
        None,
        description=(
            "Serve HTTP/2 (docs/http2.md). null: h2 on a TLS listener (offered by ALPN), "
            "HTTP/1.1 only on a plaintext one; true: also h2c with prior knowledge on a "
            "plaintext listener; false: HTTP/1.1 only."
        ),
    )
    http2_max_concurrent_streams: int = Field(
        100,
        ge=1,
        le=2**31 - 1,
        strict=True,
        description="HTTP/2 streams a client may have open at once on one connection.",
    )

    @property
    def serves_http2(self) -> bool:
        """Whether this listener speaks HTTP/2 (the default: when it terminates TLS)."""
        return self.tls is not None if self.http2 is None else self.http2


class PoolConfig(_Model):
    """Keep-alive connections kept per upstream instance."""

    max_idle: int = Field(64, ge=0, description="Idle connections kept per instance.")
    idle_timeout_s: PositiveSeconds = Field(
        4.0,
        description=(
            "Close pooled connections idle this long; keep it below the upstream's own "
            "keep-alive timeout (Node 5 s, uvicorn 5 s, nginx 75 s)."
        ),
    )


class InstanceConfig(_Model):
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535, strict=True)
    weight: int = Field(1, ge=1, le=1000)
    metadata: dict[str, str] = Field(
        default_factory=dict, description="e.g. {version: v2, zone: a}, for route subsets."
    )


class UpstreamConfig(_Model):
    """A named group of instances the routes send traffic to."""

    name: str = Field(min_length=1)
    instances: list[InstanceConfig] = Field(
        default_factory=list, description="Static instances (with discovery: the fallback)."
    )
    load_balancer: str = Field("round_robin", description=f"One of: {', '.join(BALANCERS)}.")
    connect_timeout_s: PositiveSeconds = Field(5.0, description="TCP connect timeout.")
    read_timeout_s: PositiveSeconds = Field(
        60.0,
        description="Longest pause between two pieces of a response body (as nginx's "
        "proxy_read_timeout); the client's response is then aborted.",
    )
    pool: PoolConfig = PoolConfig()
    tls: UpstreamTlsConfig | None = Field(
        None, description="Connect to the instances with TLS (HTTPS); see docs/tls.md."
    )
    protocol: Literal["http1", "h2", "h2c", "auto"] = Field(
        "http1",
        description="How requests reach the instances: http1 (HTTP/1.1, one request per "
        "pooled connection), h2 (HTTP/2 over TLS, ALPN h2; needs tls) or h2c (HTTP/2 "
        "with prior knowledge over plain TCP); http2 is h2 with tls, else h2c; auto "
        "(needs tls) asks each instance by ALPN once and uses what it picks. HTTP/2 "
        "multiplexes the requests on few connections, and is what gRPC upstreams need. "
        "See docs/http2.md.",
    )

    @model_validator(mode="before")
    @classmethod
    def _http2_alias(cls, data: Any) -> Any:
        """``protocol: http2`` is h2 when the upstream has tls, else h2c."""
        if isinstance(data, dict) and data.get("protocol") == "http2":
            tls = data.get("tls")
            on = tls is not None and (
                tls.get("enabled", True) if isinstance(tls, dict) else getattr(tls, "enabled", True)
            )
            data = {**data, "protocol": "h2" if on else "h2c"}
        return data

    limits: UpstreamLimitsConfig = UpstreamLimitsConfig()
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
    circuit_breaker: CircuitBreakerConfig | None = Field(
        None, description="Off unless set ({} for the defaults)."
    )
    outlier_detection: OutlierDetectionConfig | None = Field(
        None, description="Off unless set ({} for the defaults)."
    )
    health_check: HealthCheckConfig | None = Field(
        None, description="Active checks of every instance; off unless set."
    )
    discovery: DiscoveryConfig | None = Field(
        None, description="Instances from a watched file or DNS (instances: is the fallback)."
    )
    hash_key: HashKeyConfig | None = Field(
        None, description="consistent_hash: what is hashed (header, cookie, query or source)."
    )

    @model_validator(mode="after")
    def _some_instances(self) -> UpstreamConfig:
        if not self.instances and self.discovery is None:
            raise ValueError(f"upstream {self.name!r}: list instances or set discovery")
        if self.load_balancer == "consistent_hash" and self.hash_key is None:
            raise ValueError(f"upstream {self.name!r}: consistent_hash needs hash_key")
        tls = self.tls is not None and self.tls.enabled
        if self.protocol == "auto" and not tls:
            raise ValueError(
                f"upstream {self.name!r}: protocol auto picks HTTP/2 or HTTP/1.1 by ALPN, "
                "which needs tls; use http1 or h2c for plain TCP"
            )
        if self.protocol == "h2" and not tls:
            raise ValueError(
                f"upstream {self.name!r}: protocol h2 is HTTP/2 over TLS: enable tls, "
                "or use h2c for HTTP/2 over plain TCP"
            )
        hc = self.health_check
        if hc is not None and hc.type == "grpc" and self.protocol in ("http1", "auto"):
            raise ValueError(
                f"upstream {self.name!r}: health_check type grpc needs protocol h2 or h2c"
            )
        if self.protocol == "h2c" and tls:
            raise ValueError(
                f"upstream {self.name!r}: protocol h2c is HTTP/2 over plain TCP: use h2 with tls"
            )
        seen: set[tuple[str, int]] = set()
        for inst in self.instances:
            if (inst.host, inst.port) in seen:
                raise ValueError(
                    f"upstream {self.name!r}: instance {inst.host}:{inst.port} is listed twice"
                )
            seen.add((inst.host, inst.port))
        return self

    @field_validator("load_balancer")
    @classmethod
    def _known_balancer(cls, v: str) -> str:
        v = v.replace("-", "_")
        if v not in BALANCERS:
            raise ValueError(f"unknown load balancer {v!r}; expected one of {', '.join(BALANCERS)}")
        return v


class MiddlewareRef(_Model):
    """A middleware: a built-in name or a dotted path to an ``async def``."""

    name: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)


def _coerce_middleware(v: Any) -> Any:
    if isinstance(v, list):
        return [{"name": item} if isinstance(item, str) else item for item in v]
    return v


def _header_name(name: str) -> str:
    return token(name, "header name").lower()


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    return pattern


def _one_of(model: BaseModel, fields: tuple[str, ...], what: str) -> None:
    given = [f for f in fields if getattr(model, f) is not None]
    if len(given) != 1:
        names = ", ".join(fields)
        if given:
            raise ValueError(f"{what}: give only one of {names} (got {', '.join(given)})")
        raise ValueError(f"{what}: give one of {names}")


class _FieldMatchConfig(_Model):
    name: str = Field(min_length=1)
    exact: str | None = None
    regex: str | None = Field(None, description="Must match the whole value.")
    present: bool | None = Field(None, description="true: must be sent; false: must be absent.")

    @model_validator(mode="after")
    def _one_condition(self) -> Self:
        _one_of(self, ("exact", "regex", "present"), f"{self._what} matcher {self.name!r}")
        try:
            self.build()
        except MatcherError as exc:
            raise ValueError(str(exc)) from None
        return self

    _what: ClassVar[str]

    def build(self) -> HeaderMatch | QueryMatch:
        raise NotImplementedError


class HeaderMatchConfig(_FieldMatchConfig):
    """A condition on a request header: ``exact``, ``regex`` (whole value) or ``present``."""

    _what = "header"
    _name = field_validator("name")(_header_name)

    def build(self) -> HeaderMatch:
        return HeaderMatch.build(
            self.name, exact=self.exact, regex=self.regex, present=self.present
        )


class QueryMatchConfig(_FieldMatchConfig):
    """A condition on a query parameter: ``exact``, ``regex`` (whole value) or ``present``."""

    _what = "query"

    def build(self) -> QueryMatch:
        return QueryMatch.build(self.name, exact=self.exact, regex=self.regex, present=self.present)


class SplitConfig(_Model):
    """One upstream of a weighted traffic split."""

    upstream: str = Field(min_length=1)
    weight: float = Field(
        ge=0, allow_inf_nan=False, description="Relative weight; 0 takes no traffic."
    )


class StickyConfig(_Model):
    """Keep one client on one split choice, keyed by a header or a cookie."""

    header: str | None = None
    cookie: str | None = Field(None, min_length=1)

    _header = field_validator("header")(lambda v: v if v is None else _header_name(v))

    @model_validator(mode="after")
    def _one_key(self) -> StickyConfig:
        _one_of(self, ("header", "cookie"), "sticky")
        return self


class MirrorConfig(_Model):
    """Copy a share of the route's requests to a shadow upstream; its answers are dropped."""

    upstream: str = Field(min_length=1)
    percent: float = Field(100.0, ge=0, le=100, description="Share of requests mirrored.")
    max_body_bytes: int = Field(
        65536, ge=0, description="Requests with larger (or unknown-length) bodies are not mirrored."
    )
    max_concurrent: int = Field(
        32, ge=1, description="Mirrored requests in flight per route; beyond it, skipped."
    )
    timeout_s: PositiveSeconds = Field(5.0, description="A mirrored exchange is cut after this.")


class PrefixReplaceConfig(_Model):
    from_: str = Field(alias="from", description="Path prefix (whole segments).")
    to: str


class RegexRewriteConfig(_Model):
    pattern: str = Field(description="Applied to the whole path (fullmatch).")
    replacement: str = Field(description="May use \\1 and \\g<name> group references.")


class QueryRewriteConfig(_Model):
    set: dict[str, str] = Field(default_factory=dict, description="Parameters set (replaced).")
    remove: list[str] = Field(default_factory=list)


class RewriteConfig(_Model):
    """Changes to the request before it is forwarded (after matching)."""

    strip_prefix: str | None = None
    replace_prefix: PrefixReplaceConfig | None = None
    regex: RegexRewriteConfig | None = None
    host: str | None = Field(None, description="Host header sent upstream.")
    query: QueryRewriteConfig | None = None

    @model_validator(mode="after")
    def _valid_rewrite(self) -> RewriteConfig:
        given = [f for f in ("strip_prefix", "replace_prefix", "regex") if getattr(self, f)]
        if len(given) > 1:
            raise ValueError("rewrite: give only one of strip_prefix, replace_prefix, regex")
        replace, regex, query = self.replace_prefix, self.regex, self.query
        try:
            PathRewrite.build(
                strip_prefix=self.strip_prefix,
                replace_prefix=(replace.from_, replace.to) if replace is not None else None,
                regex=(regex.pattern, regex.replacement) if regex is not None else None,
            )
            if query is not None:
                QueryRewrite(query.set, query.remove)
        except RewriteError as exc:
            raise ValueError(str(exc)) from None
        if self.host is not None:
            try:
                validate_host_pattern(self.host)
            except PatternError as exc:
                raise ValueError(f"rewrite host: {exc}") from None
            if self.host.startswith("*.") or any(c in self.host for c in "\r\n\0"):
                raise ValueError(f"rewrite host {self.host!r} must be a plain host[:port]")
        return self


class RedirectConfig(_Model):
    """Answer with a redirect instead of forwarding."""

    status: int = Field(302, description="301, 302, 303, 307 or 308.")
    scheme: str | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    path: str | None = None
    strip_query: bool = False

    @model_validator(mode="after")
    def _valid_redirect(self) -> RedirectConfig:
        try:
            self.build()
        except RewriteError as exc:
            raise ValueError(str(exc)) from None
        return self

    def build(self) -> Redirect:
        return Redirect.build(
            status=self.status,
            scheme=self.scheme,
            host=self.host,
            port=self.port,
            path=self.path,
            strip_query=self.strip_query,
        )


class HeaderTransformConfig(_Model):
    """Header edits; values may use ${request_id}, ${param.id}, ${header.x}... variables."""

    set: dict[str, str] = Field(default_factory=dict, description="Replace (or add) fields.")
    add: dict[str, str] = Field(default_factory=dict, description="Append fields.")
    remove: list[str] = Field(default_factory=list)

    @field_validator("set", "add")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for name, value in v.items():
            try:
                compile_template(value)
            except TemplateError as exc:
                raise ValueError(f"{name}: {exc}") from None
            out[_header_name(name)] = value
        return out

    @field_validator("remove")
    @classmethod
    def _removed(cls, v: list[str]) -> list[str]:
        return [_header_name(n) for n in v]


class FaultDelayConfig(_Model):
    percent: float = Field(ge=0, le=100)
    duration_s: float = Field(ge=0)


class FaultAbortConfig(_Model):
    percent: float = Field(ge=0, le=100)
    status: int = Field(ge=400, le=599)


class FaultConfig(_Model):
    """Injected delays and aborts, for testing how clients cope."""

    max_delay_s: PositiveSeconds = Field(
        10.0, description="Longest delay, configured or asked by header."
    )
    delay: FaultDelayConfig | None = None
    abort: FaultAbortConfig | None = None
    header_trigger: bool = Field(
        False,
        description="Only requests with x-meshgate-fault get faults; 'abort=503' or "
        "'delay=0.5' in it apply exactly that.",
    )

    @field_validator("delay")
    @classmethod
    def _delay_within_cap(
        cls, v: FaultDelayConfig | None, info: ValidationInfo
    ) -> FaultDelayConfig | None:
        cap = info.data.get("max_delay_s")
        if v is not None and cap is not None and v.duration_s > cap:
            raise ValueError(f"duration_s {v.duration_s:g} is above max_delay_s {cap:g}")
        return v

    @model_validator(mode="after")
    def _does_something(self) -> FaultConfig:
        delay, abort = self.delay, self.abort
        delays = delay is not None and delay.percent > 0 and delay.duration_s > 0
        aborts = abort is not None and abort.percent > 0
        if not (delays or aborts or self.header_trigger):
            raise ValueError(
                "fault does nothing: give delay (percent > 0 and duration_s > 0), "
                "abort (percent > 0) or header_trigger: true"
            )
        return self

    def build(self) -> FaultPolicy:
        delay, abort = self.delay, self.abort
        return FaultPolicy.build(
            delay_s=delay.duration_s if delay is not None else None,
            delay_percent=delay.percent if delay is not None else 0.0,
            abort_status=abort.status if abort is not None else None,
            abort_percent=abort.percent if abort is not None else 0.0,
            header_trigger=self.header_trigger,
            max_delay_s=self.max_delay_s,
        )


class RouteConfig(_Model):
    """One route: which requests it takes and where they go."""

    name: str | None = Field(
        None, min_length=1, description="Unique name (logs, explain, ${route}); default routes[i]."
    )
    path: str | None = Field(
        None, description="Exact path, or a pattern with ':param' segments and a final '*'."
    )
    path_prefix: str | None = Field(
        None, description="Path prefix on whole segments: '/api' takes /api and /api/..."
    )
    path_regex: str | None = Field(
        None, description="Regex the whole path must match; named groups become params."
    )
    methods: list[str] | None = Field(None, description="Allowed methods; omitted = any.")
    hosts: list[str] | None = Field(
        None, description="Host patterns ('api.example.com', '*.example.com'); omitted = any."
    )
    headers: list[HeaderMatchConfig] = Field(
        default_factory=list, description="Header conditions, all required."
    )
    query: list[QueryMatchConfig] = Field(
        default_factory=list, description="Query parameter conditions, all required."
    )
    upstream: str | None = Field(None, description="Name of an entry in 'upstreams'.")
    subset: dict[str, str] | None = Field(
        None, description="Only instances whose metadata has these values, e.g. {version: v2}."
    )
    split: list[SplitConfig] | None = Field(
        None, description="Weighted split across upstreams (instead of 'upstream')."
    )
    sticky: StickyConfig | None = Field(
        None, description="With 'split': keep a client on one upstream by header or cookie."
    )
    mirror: MirrorConfig | None = None
    rewrite: RewriteConfig | None = None
    redirect: RedirectConfig | None = Field(
        None, description="Answer with a redirect (instead of 'upstream' or 'split')."
    )
    request_headers: HeaderTransformConfig | None = None
    response_headers: HeaderTransformConfig | None = None
    fault: FaultConfig | None = None
    cache: RouteCacheConfig | None = Field(
        None, description="Response cache of this route (docs/cache.md); {} = the defaults."
    )
    rate_limits: list[LimitConfig] = Field(
        default_factory=list,
        description="This route's limits, checked after the top-level rate_limit.limits.",
    )
    auth: RouteAuthConfig | None = Field(None, description="Credentials this route requires.")
    retry: RetryConfig = Field(
        default_factory=RetryConfig,
        description="Retries of failed attempts (default: 1 retry of idempotent requests).",
    )
    cors: CorsConfig | None = Field(
        None, description="This route's CORS policy; omitted = the top-level one; false = none."
    )
    ip_rules: IpRulesConfig | None = Field(
        None, description="Checked in addition to the top-level ip_rules."
    )
    compress: CompressConfig | None = Field(
        None,
        description="Response compression; omitted = the top-level compress; false = none.",
    )
    middleware: list[MiddlewareRef] | None = Field(
        None, description="This route's chain; omitted = the top-level 'middleware' list."
    )
    timeout_s: PositiveSeconds | None = Field(
        None, description="Time to the upstream response head; omitted = top-level timeout_s."
    )
    preserve_host: bool = Field(
        True, description="Send the client's Host upstream (false: the instance's host:port)."
    )
    websocket: WebSocketConfig | None = Field(
        None, description="Tunnel WebSocket upgrades to the upstream; see docs/websocket.md."
    )
    remove_request_headers: list[str] = Field(
        default_factory=list,
        description="Headers stripped before forwarding, e.g. [cookie] as in the seed.",
    )

    @field_validator("middleware", mode="before")
    @classmethod
    def _names_as_refs(cls, v: Any) -> Any:
        return _coerce_middleware(v)

    @field_validator("path", "path_prefix")
    @classmethod
    def _valid_path(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            parse_pattern(v)
        except PatternError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("path_prefix")
    @classmethod
    def _plain_prefix(cls, v: str | None) -> str | None:
        if v is not None and ("*" in v or "/:" in v):
            raise ValueError(f"path_prefix {v!r}: no ':param' or '*' here; use 'path'")
        return v

    @field_validator("path_regex")
    @classmethod
    def _valid_path_regex(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not v:
            raise ValueError("path_regex is empty")
        return _check_regex(v)

    @model_validator(mode="after")
    def _one_match_and_action(self) -> RouteConfig:
        _one_of(self, ("path", "path_prefix", "path_regex"), "route")
        _one_of(self, ("upstream", "split", "redirect"), "route")
        if self.redirect is not None:
            extra = [
                f
                for f in ("mirror", "rewrite", "request_headers", "sticky", "cache", "websocket")
                if getattr(self, f) is not None
            ]
            if extra:
                raise ValueError(
                    f"a redirect route answers without forwarding: remove {', '.join(extra)}"
                )
        if self.sticky is not None and self.split is None:
            raise ValueError("sticky needs 'split'")
        if self.websocket is not None and self.cache is not None:
            raise ValueError("a websocket route is not cached: remove cache (or split the route)")
        self._check_params()
        return self

    @field_validator("split")
    @classmethod
    def _split_weights(cls, v: list[SplitConfig] | None) -> list[SplitConfig] | None:
        if v is not None:
            if not v:
                raise ValueError("split must list at least one upstream")
            if sum(t.weight for t in v) <= 0:
                raise ValueError("split weights sum to 0: give one upstream a weight > 0")
        return v

    def captured_params(self) -> set[str] | None:
        """Names the path captures (``*`` for a wildcard or prefix); None = cannot tell."""
        if self.path_regex is not None:
            return set(re.compile(self.path_regex).groupindex)
        if self.path_prefix is not None:
            return {"*"}
        assert self.path is not None
        return {s[1:] if s.startswith(":") else s for s in self.path.split("/") if s[:1] in ":*"}

    def _check_params(self) -> None:
        """``${param.x}`` in a header template must name something the path captures."""
        captured = self.captured_params()
        for key in ("request_headers", "response_headers"):
            transform = getattr(self, key)
            if transform is None or captured is None:
                continue
            for kind in ("set", "add"):
                for name, value in getattr(transform, kind).items():
                    for root, param in compile_template(value).variables:
                        if root == "param" and param not in captured:
                            have = ", ".join(sorted(captured)) or "none"
                            raise ValueError(
                                f"{key}.{kind}.{name}: ${{param.{param}}} is not captured by "
                                f"the route's path (params: {have})"
                            )

    @property
    def upstream_names(self) -> list[str]:
        """Every upstream this route forwards to."""
        if self.split is not None:
            return [t.upstream for t in self.split]
        return [self.upstream] if self.upstream is not None else []

    @field_validator("methods")
    @classmethod
    def _valid_methods(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("methods must not be empty; omit it to allow any method")
        out = []
        for m in v:
            up = m.upper()
            if up not in HTTP_METHODS:
                raise ValueError(f"unknown HTTP method {m!r}")
            if up not in out:
                out.append(up)
        return out

    @field_validator("hosts")
    @classmethod
    def _valid_hosts(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        try:
            return [validate_host_pattern(h) for h in v]
        except PatternError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("remove_request_headers")
    @classmethod
    def _valid_header_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not TOKEN.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
        return [n.lower() for n in v]


class AdminConfig(_Model):
    """The admin listener: health, readiness, metrics, config and operations (docs/admin.md)."""

    enabled: bool = Field(True, description="Start the admin listener (see docs/admin.md).")
    host: str = Field("127.0.0.1", description="Address to bind; keep it off public networks.")
    port: int = Field(9901, ge=0, le=65535, strict=True, description="TCP port; 0 picks one.")
    token: str | None = Field(
        None,
        min_length=1,
        description="When set, every admin request needs 'Authorization: Bearer <token>'.",
    )


class AccessLogConfig(_Model):
    """One JSON line per request (docs/access-log.md)."""

    enabled: bool = Field(False, description="Write the access log.")
    path: str | None = Field(
        None, min_length=1, description="File the lines are appended to; null = stdout."
    )
    fields: list[AccessLogField] = Field(
        default_factory=lambda: list(ACCESS_LOG_FIELDS),
        min_length=1,
        description="Keys of each line, in this order.",
    )
    buffer_lines: int = Field(
        1024,
        ge=1,
        strict=True,
        description="Lines queued for the writer thread; when full, lines are dropped.",
    )

    @field_validator("fields")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({f for f in v if v.count(f) > 1})
        if dup:
            raise ValueError(f"duplicate field(s): {', '.join(dup)}")
        return v


class GatewayConfig(_Model):
    """Top level of gateway.yaml."""

    listener: ListenerConfig = ListenerConfig()
    admin: AdminConfig = AdminConfig()
    access_log: AccessLogConfig = AccessLogConfig()
    timeout_s: PositiveSeconds = Field(
        15.0, description="Default route timeout: request start to upstream response head."
    )
    max_request_body_bytes: int | None = Field(
        10 * 1024 * 1024, ge=0, description="Larger bodies get 413; null = no limit."
    )
    drain_timeout_s: PositiveSeconds = Field(
        30.0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    middleware: list[MiddlewareRef] = Field(
        default_factory=lambda: [
            MiddlewareRef(name="request_id"),
            MiddlewareRef(name="response_time"),
        ],
        description="Chain used by routes that do not set their own.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="CIDRs of proxies in front of the gateway: only from these peers is "
        "X-Forwarded-For believed (client ip for rate limits and IP rules).",
    )
    rate_limit: RateLimitConfig = RateLimitConfig()
    cache: CacheConfig = Field(
        default_factory=CacheConfig,
        description="Where routes with `cache` keep responses (docs/cache.md).",
    )
    auth: AuthConfig = AuthConfig()
    cors: CorsConfig | None = Field(None, description="CORS policy of routes without their own.")
    ip_rules: IpRulesConfig | None = Field(None, description="Client addresses for every route.")
    compress: CompressConfig | None = Field(
        None, description="Response compression of routes without their own."
    )
    tracing: TracingConfig = TracingConfig()
    upstreams: list[UpstreamConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)

    @field_validator("middleware", mode="before")
    @classmethod
    def _names_as_refs(cls, v: Any) -> Any:
        return _coerce_middleware(v)

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        parse_networks(v)
        return v


def _auth_errors(config: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Unique provider and consumer names, unique key hashes, and route auth naming
    configured providers."""
    errors: list[tuple[tuple[str | int, ...], str]] = []
    seen: dict[str, int] = {}
    for j, provider in enumerate(config.auth.jwt):
        loc = ("auth", "jwt", j, "name")
        if provider.name == API_KEY_PROVIDER:
            errors.append((loc, f"{API_KEY_PROVIDER!r} is reserved for auth.api_keys"))
        elif provider.name in seen:
            first = seen[provider.name]
            errors.append(
                (loc, f"duplicate jwt provider name {provider.name!r} (also jwt[{first}])")
            )
        seen.setdefault(provider.name, j)
    if config.auth.api_keys is not None:
        errors += _consumer_errors(config.auth.api_keys.consumers)
    known = [p.name for p in config.auth.jwt]
    if config.auth.api_keys is not None:
        known.append(API_KEY_PROVIDER)
    for i, route in enumerate(config.routes):
        auth = route.auth
        if auth is None:
            continue
        if not known:
            problem = "no providers: configure auth.jwt or auth.api_keys"
            errors.append((("routes", i, "auth"), problem))
            continue
        for j, name in enumerate(auth.providers or ()):
            if name not in known:
                errors.append(
                    (
                        ("routes", i, "auth", "providers", j),
                        f"unknown auth provider {name!r}; configured: {', '.join(known)}",
                    )
                )
    return errors


def _consumer_errors(
    consumers: list[ApiKeyConsumerConfig],
) -> list[tuple[tuple[str | int, ...], str]]:
    errors: list[tuple[tuple[str | int, ...], str]] = []
    names: dict[str, int] = {}
    owners: dict[str, str] = {}
    for j, consumer in enumerate(consumers):
        loc: tuple[str | int, ...] = ("auth", "api_keys", "consumers", j)
        if consumer.name in names:
            first = names[consumer.name]
            errors.append(
                (
                    (*loc, "name"),
                    f"duplicate consumer name {consumer.name!r} (also consumers[{first}])",
                )
            )
        names.setdefault(consumer.name, j)
        for k, stored in enumerate(consumer.keys):
            digest = stored.strip().lower()
            owner = owners.get(digest)
            if owner is not None and owner != consumer.name:
                errors.append(((*loc, "keys", k), f"the same key hash as consumer {owner!r}"))
            owners.setdefault(digest, consumer.name)
    return errors


def _rate_limit_errors(config: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Redis limits need rate_limit.redis; limit names are unique on each route."""
    errors: list[tuple[tuple[str | int, ...], str]] = []
    scopes: list[tuple[tuple[str | int, ...], list[LimitConfig]]] = [
        (("rate_limit", "limits"), config.rate_limit.limits)
    ] + [(("routes", i, "rate_limits"), r.rate_limits) for i, r in enumerate(config.routes)]
    global_labels = {limit.label for limit in config.rate_limit.limits}
    for loc, limits in scopes:
        seen: set[str] = set() if loc[0] == "rate_limit" else set(global_labels)
        for j, limit in enumerate(limits):
            if limit.backend == "redis" and config.rate_limit.redis is None:
                errors.append(((*loc, j, "backend"), "backend: redis needs rate_limit.redis"))
            if limit.label in seen:
                errors.append(
                    (
                        (*loc, j),
                        f"duplicate limit name {limit.label!r} (give each limit a name:)",
                    )
                )
            seen.add(limit.label)
    return errors


def route_name(route: RouteConfig, index: int) -> str:
    return route.name or f"routes[{index}]"


def reference_errors(config: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Cross-field problems (unknown or duplicate names), each with its key path."""
    errors: list[tuple[tuple[str | int, ...], str]] = []
    names: set[str] = set()
    for i, up in enumerate(config.upstreams):
        if up.name in names:
            errors.append((("upstreams", i, "name"), f"duplicate upstream name {up.name!r}"))
        names.add(up.name)
    defined = ", ".join(sorted(names)) or "none"

    def check(loc: tuple[str | int, ...], name: str) -> None:
        if name not in names:
            errors.append((loc, f"unknown upstream {name!r}; defined: {defined}"))

    errors += _rate_limit_errors(config)
    errors += _auth_errors(config)
    errors += tls_errors(config.listener.tls, list(enumerate(u.tls for u in config.upstreams)))
    route_names: dict[str, int] = {}
    for i, route in enumerate(config.routes):
        if route.name is not None:
            if route.name in route_names:
                first = route_names[route.name]
                errors.append(
                    (
                        ("routes", i, "name"),
                        f"duplicate route name {route.name!r} (also routes[{first}])",
                    )
                )
            route_names.setdefault(route.name, i)
        if route.upstream is not None:
            check(("routes", i, "upstream"), route.upstream)
        for j, target in enumerate(route.split or ()):
            check(("routes", i, "split", j, "upstream"), target.upstream)
        if route.mirror is not None:
            check(("routes", i, "mirror", "upstream"), route.mirror.upstream)
            if route.mirror.upstream in route.upstream_names:
                errors.append(
                    (
                        ("routes", i, "mirror", "upstream"),
                        f"the mirror {route.mirror.upstream!r} is the route's own upstream",
                    )
                )
    return errors


def _tree_pattern(route: RouteConfig) -> str | None:
    """The radix-tree pattern a route is registered under (None for regex routes)."""
    if route.path_prefix is not None:
        return route.path_prefix.rstrip("/") + "/*"
    if route.path is None:
        return None
    segments = [":" if s.startswith(":") else s for s in route.path.split("/") if s]
    return "/" + "/".join(segments)


def _covers(wide: list[str] | None, narrow: list[str] | None) -> bool:
    """Whether every value ``narrow`` allows, ``wide`` allows too (None = anything)."""
    return wide is None or (narrow is not None and set(narrow) <= set(wide))


def _same_host_trees(first: list[str] | None, later: list[str] | None) -> bool:
    """Whether ``later``'s routes sit only in host trees ``first`` is in too.

    Host-specific trees are tried before the any-host one, so an any-host
    route never shadows a route with hosts.
    """
    if first is None or later is None:
        return first is None and later is None
    return set(later) <= set(first)


def _shadows(first: RouteConfig, later: RouteConfig) -> bool:
    """Whether ``first`` takes every request ``later`` could match (so it never does)."""
    if not (_covers(first.methods, later.methods) and _same_host_trees(first.hosts, later.hosts)):
        return False
    # first's conditions must be a subset of later's: then whatever later accepts, so does first
    if not set(map(repr, first.headers)) <= set(map(repr, later.headers)):
        return False
    if not set(map(repr, first.query)) <= set(map(repr, later.query)):
        return False
    first_tree, later_tree = _tree_pattern(first), _tree_pattern(later)
    if later_tree is None:  # regex routes come after the whole tree, in order
        return first_tree == "/*" or (first.path_regex == later.path_regex)
    return first_tree == later_tree


def route_warnings(config: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Routes that can never match (shadowed by an earlier one), with their key path."""
    warnings: list[tuple[tuple[str | int, ...], str]] = []
    for j, later in enumerate(config.routes):
        for i, first in enumerate(config.routes[:j]):
            if _shadows(first, later):
                warnings.append(
                    (
                        ("routes", j),
                        f"route {route_name(later, j)!r} never matches: "
                        f"{route_name(first, i)!r} (routes[{i}]) takes all its requests",
                    )
                )
                break
    return warnings
