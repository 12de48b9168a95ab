"""``sidecar.yaml``: the sidecar's config, validated like gateway.yaml (errors as
``file:line: key.path: problem``). See docs/mesh.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from meshgate.config.common import FiniteModel as _Model
from meshgate.config.common import redis_url
from meshgate.config.loader import read_model
from meshgate.config.models import AccessLogConfig, InstanceConfig
from meshgate.config.resilience import (
    CircuitBreakerConfig,
    OutlierDetectionConfig,
    RetryBudgetConfig,
)
from meshgate.config.tracing import TracingConfig
from meshgate.control.ca import check_name

Port = Annotated[int, Field(ge=0, le=65535, strict=True)]
PositiveSeconds = Annotated[float, Field(gt=0)]


def _service_name(value: str) -> str:
    return check_name(value, "service")


class AppConfig(_Model):
    """The local application the sidecar stands beside (plain HTTP on loopback)."""

    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(ge=1, le=65535, strict=True, description="The app's own port.")
    connect_timeout_s: PositiveSeconds = 2.0
    protocol: Literal["http1", "h2c"] = Field(
        "http1",
        description="What the app speaks: h2c (HTTP/2 without TLS, e.g. a gRPC server) makes "
        "callers' sidecars use HTTP/2 over mTLS to this one (registered as protocol: h2).",
    )


class SourceLimit(_Model):
    """The seed's ``RateLimitRule``: requests per second from one calling service."""

    source: str = Field(
        description="Calling service name ('*': every service without its own rule)."
    )
    requests_per_second: float = Field(gt=0)
    burst: int | None = Field(None, ge=1, description="Default: requests_per_second, at least 1.")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return v if v == "*" else _service_name(v)


class InboundConfig(_Model):
    """The mTLS listener other services' sidecars call."""

    host: str = Field(
        "0.0.0.0",
        min_length=1,
        description="Address to listen on (mTLS only: other hosts reach the service here).",
    )
    port: Port = Field(15006, description="0: a free port (tests).")
    min_tls_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.3"
    timeout_s: PositiveSeconds = Field(30.0, description="The app's time to a response head.")
    rate_limits: list[SourceLimit] = Field(
        default_factory=list, description="Per calling service (token bucket)."
    )
    rate_limit_backend: Literal["local", "redis"] = Field(
        "local", description="redis: counts shared by every replica's sidecar (redis.url)."
    )

    @field_validator("rate_limits")
    @classmethod
    def _unique_sources(cls, v: list[SourceLimit]) -> list[SourceLimit]:
        seen = [r.source for r in v]
        dupes = sorted({s for s in seen if seen.count(s) > 1})
        if dupes:
            raise ValueError(f"more than one rule for {', '.join(dupes)}")
        return v


class OutboundConfig(_Model):
    """The plain-HTTP listener the local app calls other services through."""

    host: str = Field("127.0.0.1", min_length=1, description="Keep it on loopback.")
    port: Port = Field(15001, description="HTTP proxy port (HTTP_PROXY=http://127.0.0.1:15001).")
    ports: dict[str, Port] = Field(
        default_factory=dict,
        description="Per-service local ports: {orders: 9101} makes 127.0.0.1:9101 reach orders.",
    )
    timeout_s: PositiveSeconds = Field(15.0, description="Whole request, retries included.")
    connect_timeout_s: PositiveSeconds = 2.0
    retries: int = Field(2, ge=0, le=10, description="Retries of idempotent requests.")
    per_try_timeout_s: PositiveSeconds | None = Field(
        None, description="Each attempt's time to a response head (default: timeout_s)."
    )
    retry_budget: RetryBudgetConfig = RetryBudgetConfig(
        model="windowed", budget_percent=20.0, min_per_s=3.0
    )
    circuit_breaker: CircuitBreakerConfig | None = Field(
        None,
        description="Off unless set ({} for the defaults). One breaker per destination "
        "service, over all its instances, counting attempts: 5 fast connect failures to "
        "one dead instance of several open it for the whole service. A dead or failing "
        "instance is outlier detection's (per instance).",
    )
    outlier_detection: OutlierDetectionConfig | None = OutlierDetectionConfig()
    load_balancer: Literal["round_robin", "least_request", "random"] = "least_request"
    max_connections: int = Field(1024, ge=1, description="Per destination service.")

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: dict[str, int]) -> dict[str, int]:
        for name in v:
            service, _, namespace = name.partition(".")
            _service_name(service)
            if namespace:
                check_name(namespace, "namespace")
        used = [p for p in v.values() if p]
        if len(used) != len(set(used)):
            raise ValueError("two services share one local port")
        return v


class AdminListenConfig(_Model):
    host: str = Field("127.0.0.1", min_length=1)
    port: Port = 15000


class ControlPlaneLink(_Model):
    """Where the sidecar gets its identity, the registry and the policies."""

    url: str = Field(min_length=1, description="https://host:15012")
    ca_bundle_file: str = Field(
        min_length=1, description="PEM roots to trust the control plane (its bundle_file)."
    )
    token_file: str | None = Field(
        None,
        description="File holding the join token (else $MESHGATE_JOIN_TOKEN); needed only "
        "when identity_dir has no valid certificate yet.",
    )
    identity_dir: str = Field(
        "meshgate-identity",
        min_length=1,
        description="Where the key (mode 0600), certificate and bundle are kept.",
    )
    cert_ttl_s: PositiveSeconds | None = Field(
        None, description="Ask for certificates this long (default: the control plane's)."
    )
    instance_ttl_s: PositiveSeconds = Field(
        15.0, description="Registration lease; heartbeats every third of it."
    )
    register_instance: bool = Field(True, description="Register this instance in the registry.")
    timeout_s: PositiveSeconds = Field(10.0, description="Each control plane request.")


class StaticMesh(_Model):
    """A mesh without a control plane: files an operator maintains."""

    cert_file: str = Field(min_length=1, description="This workload's certificate (SPIFFE ID).")
    key_file: str = Field(min_length=1)
    bundle_file: str = Field(min_length=1, description="PEM roots of the mesh.")
    services: dict[str, list[InstanceConfig]] = Field(
        default_factory=dict,
        description="Destination service -> its sidecars' inbound addresses "
        "({users: [{host: 10.0.0.7, port: 15006}]}); keys are 'service' or 'service.namespace'.",
    )
    policies_file: str | None = Field(
        None, description="authz/defaults/upstream policies (the `meshgate ctl policy` format)."
    )


class RedisLink(_Model):
    url: str = "redis://127.0.0.1:6379/0"
    _url = field_validator("url")(redis_url)


class SidecarConfig(_Model):
    """Top level of sidecar.yaml."""

    service: str = Field(description="This workload's service name.")
    namespace: str = "default"
    trust_domain: str | None = Field(
        None, description="Static mode: the mesh's trust domain (default: the certificate's)."
    )
    app: AppConfig | None = Field(
        None,
        description="The local app; none: an egress-only sidecar (e.g. beside a gateway) with "
        "no inbound listener and no registration.",
    )
    advertise_host: str = Field(
        "127.0.0.1", min_length=1, description="Address other sidecars reach the inbound port at."
    )
    inbound: InboundConfig = InboundConfig()
    outbound: OutboundConfig = OutboundConfig()
    admin: AdminListenConfig = AdminListenConfig()
    control_plane: ControlPlaneLink | None = None
    static: StaticMesh | None = None
    redis: RedisLink | None = None
    tracing: TracingConfig = TracingConfig()
    access_log: AccessLogConfig = AccessLogConfig()
    drain_timeout_s: PositiveSeconds = 5.0

    _service = field_validator("service")(_service_name)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return check_name(v, "namespace")

    @field_validator("static")
    @classmethod
    def _not_both(cls, v: StaticMesh | None, info: ValidationInfo) -> StaticMesh | None:
        # Here, not in _one_source, so that the error points at the `static` key.
        if v is not None and info.data.get("control_plane") is not None:
            raise ValueError("give control_plane or static, not both")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> SidecarConfig:
        if (self.control_plane is None) == (self.static is None):
            raise ValueError("give one of control_plane (identity from the CA) or static")
        if self.inbound.rate_limit_backend == "redis" and self.redis is None:
            raise ValueError("inbound.rate_limit_backend: redis needs redis.url")
        return self


def load_sidecar_config(path: str | Path) -> SidecarConfig:
    return read_model(SidecarConfig, path)
