"""Pydantic models of every gateway.yaml key, with defaults and units in names."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from meshgate.core.balancer import BALANCERS
from meshgate.core.router import PatternError, parse_pattern, validate_host_pattern

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

PositiveSeconds = Annotated[float, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    host: str
    port: int = Field(ge=1, le=65535, strict=True)
    weight: int = Field(1, ge=1, le=1000)


class UpstreamConfig(_Model):
    """A named group of instances the routes send traffic to."""

    name: str = Field(min_length=1)
    instances: list[InstanceConfig] = Field(min_length=1)
    load_balancer: str = Field("round_robin", description=f"One of: {', '.join(BALANCERS)}.")
    connect_timeout_s: PositiveSeconds = Field(5.0, description="TCP connect timeout.")
    read_timeout_s: PositiveSeconds = Field(
        60.0,
        description="Longest pause between two pieces of a response body (as nginx's "
        "proxy_read_timeout); the client's response is then aborted.",
    )
    pool: PoolConfig = PoolConfig()

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


class RouteConfig(_Model):
    """One route: which requests it takes and where they go."""

    path: str = Field(description="Pattern with ':param' segments and a final '*'.")
    methods: list[str] | None = Field(None, description="Allowed methods; omitted = any.")
    hosts: list[str] | None = Field(
        None, description="Host patterns ('api.example.com', '*.example.com'); omitted = any."
    )
    upstream: str = Field(description="Name of an entry in 'upstreams'.")
    middleware: list[MiddlewareRef] | None = Field(
        None, description="This route's chain; omitted = the top-level 'middleware' list."
    )
    timeout_s: PositiveSeconds | None = Field(
        None, description="Time to the upstream response head; omitted = top-level timeout_s."
    )
    preserve_host: bool = Field(
        True, description="Send the client's Host upstream (false: the instance's host:port)."
    )
    remove_request_headers: list[str] = Field(
        default_factory=list,
        description="Headers stripped before forwarding, e.g. [cookie] as in the seed.",
    )

    @field_validator("middleware", mode="before")
    @classmethod
    def _names_as_refs(cls, v: Any) -> Any:
        return _coerce_middleware(v)

    @field_validator("path")
    @classmethod
    def _valid_path(cls, v: str) -> str:
        try:
            parse_pattern(v)
        except PatternError as exc:
            raise ValueError(str(exc)) from None
        return v

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
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
        return [n.lower() for n in v]


class GatewayConfig(_Model):
    """Top level of gateway.yaml."""

    listener: ListenerConfig = ListenerConfig()
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
    upstreams: list[UpstreamConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)

    @field_validator("middleware", mode="before")
    @classmethod
    def _names_as_refs(cls, v: Any) -> Any:
        return _coerce_middleware(v)


def reference_errors(config: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Cross-field problems (unknown or duplicate names), each with its key path."""
    errors: list[tuple[tuple[str | int, ...], str]] = []
    names: set[str] = set()
    for i, up in enumerate(config.upstreams):
        if up.name in names:
            errors.append((("upstreams", i, "name"), f"duplicate upstream name {up.name!r}"))
        names.add(up.name)
    for i, route in enumerate(config.routes):
        if route.upstream not in names:
            defined = ", ".join(sorted(names)) or "none"
            errors.append(
                (
                    ("routes", i, "upstream"),
                    f"unknown upstream {route.upstream!r}; defined: {defined}",
                )
            )
    return errors
