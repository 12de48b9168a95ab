"""Config models of service discovery, active health checks and hash keys."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meshgate.config.common import TOKEN
from meshgate.config.common import FiniteModel as _Model
from meshgate.core.health import HealthPolicy


class HealthCheckConfig(_Model):
    """Active health checks of every instance of an upstream."""

    type: Literal["http", "tcp", "grpc"] = Field(
        "http",
        description="http: GET path over HTTP/1.1; tcp: connect (and TLS handshake); "
        "grpc: grpc.health.v1.Health/Check over HTTP/2 (upstreams with protocol h2/h2c).",
    )
    path: str = Field("/health", description="http: the path requested (GET).")
    host: str | None = Field(
        None, description="http: Host header; grpc: :authority (default: host:port)."
    )
    service: str = Field(
        "", description="grpc: the service asked about ('' = the server as a whole)."
    )
    expected_statuses: list[int] = Field(
        default_factory=lambda: list(range(200, 400)), description="http: healthy answers."
    )
    interval_s: float = Field(10.0, gt=0)
    timeout_s: float = Field(5.0, gt=0)
    unhealthy_threshold: int = Field(3, ge=1, description="Consecutive failures (the seed's 3).")
    healthy_threshold: int = Field(2, ge=1, description="Consecutive successes to return.")
    jitter_percent: float = Field(10.0, ge=0, le=50, description="± on the interval.")
    max_concurrent: int = Field(32, ge=1, description="Checks running at once per upstream.")
    panic_threshold_percent: float = Field(
        50.0, ge=0, le=100, description="Below this healthy share, all instances get traffic."
    )

    @model_validator(mode="after")
    def _path(self) -> HealthCheckConfig:
        if not self.path.startswith("/"):
            raise ValueError(f"health check path {self.path!r} must start with '/'")
        for what, text in (("path", self.path), ("host", self.host or "")):
            if any(c.isspace() or ord(c) < 0x21 or ord(c) == 0x7F for c in text):
                raise ValueError(f"health check {what} {text!r} has spaces or control characters")
        if not self.expected_statuses:
            raise ValueError("expected_statuses must list at least one status")
        bad = [c for c in self.expected_statuses if not 100 <= c <= 599]
        if bad:
            raise ValueError(f"expected_statuses: {bad[0]} is not an HTTP status")
        HealthPolicy.build(  # the core's own checks
            interval_s=self.interval_s,
            timeout_s=self.timeout_s,
            unhealthy_threshold=self.unhealthy_threshold,
            healthy_threshold=self.healthy_threshold,
            jitter_percent=self.jitter_percent,
        )
        return self


DNS_RECORDS = ("A", "AAAA", "A+AAAA", "SRV")
_DNS_KEYS = (
    "name",
    "record",
    "port",
    "nameservers",
    "interval_s",
    "min_interval_s",
    "timeout_s",
)

_CONTROL_PLANE_KEYS = (
    "url",
    "ca_bundle_file",
    "admin_token_file",
    "identity_dir",
    "service",
    "namespace",
)


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"127.0.0.1:5353"``, ``"10.0.0.2"`` (port 53), ``"[::1]:5353"`` or ``"::1"``
    as (IP address, port); ValueError otherwise."""
    text = text.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"nameserver {text!r}: expected [IPv6]:port")
        port = rest[1:] if rest else "53"
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"nameserver {text!r}: expected an IP address with an optional port "
            "(127.0.0.1:5353, [::1]:5353)"
        ) from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"nameserver {text!r}: port must be 1-65535")
    return str(address), int(port)


class DiscoveryConfig(_Model):
    """Where an upstream's instances come from besides its static list."""

    type: Literal["file", "dns", "control_plane"] = Field(
        "file",
        description="file: a YAML/JSON list of instances, reloaded when it changes; "
        "dns: A/AAAA or SRV records, re-resolved on their TTL; "
        "control_plane: the instances registered with meshgate's control plane (watched).",
    )
    path: str | None = Field(
        None, description="file: the instances file: [{host, port, weight?, metadata?}]."
    )
    name: str | None = Field(
        None, description="dns: the name resolved (absolute; no search list), e.g. users.svc."
    )
    record: Literal["A", "AAAA", "A+AAAA", "SRV"] = Field(
        "A+AAAA", description="dns: A, AAAA, A+AAAA (both) or SRV (ports and weights too)."
    )
    port: int | None = Field(
        None, ge=1, le=65535, strict=True, description="dns A/AAAA: the instances' port."
    )
    nameservers: list[str] | None = Field(
        None,
        description='dns: ["127.0.0.1:5353", "[::1]"] (default port 53); '
        "default: the system resolver (/etc/resolv.conf).",
    )
    interval_s: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="dns: re-resolve at min(TTL, interval_s) at the latest.",
    )
    min_interval_s: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="dns: never re-resolve sooner than this (TTL 0, short TTLs).",
    )
    timeout_s: float = Field(
        2.0, gt=0, allow_inf_nan=False, description="dns: one resolution's time limit."
    )
    url: str | None = Field(
        None, description="control_plane: its URL, e.g. https://127.0.0.1:15012."
    )
    ca_bundle_file: str | None = Field(
        None, description="control_plane: the trust bundle (PEM) to verify it with."
    )
    admin_token_file: str | None = Field(
        None,
        description="control_plane: file with the operators' token (read access); "
        "or give identity_dir.",
    )
    identity_dir: str | None = Field(
        None,
        description="control_plane: a workload identity (cert.pem, key.pem) to "
        "authenticate with instead of the admin token.",
    )
    service: str | None = Field(None, description="control_plane: the service's name there.")
    namespace: str = Field("default", description="control_plane: the service's namespace.")

    @field_validator("record", mode="before")
    @classmethod
    def _record_upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("path")
    @classmethod
    def _path_is_file(cls, v: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("type")
        if v is not None and kind == "dns":
            raise ValueError("path is for type: file; type: dns resolves name")
        if v is not None and kind == "control_plane":
            raise ValueError("path is for type: file; type: control_plane watches service")
        return v

    @field_validator(*_DNS_KEYS)
    @classmethod
    def _dns_only(cls, v: object, info: ValidationInfo) -> object:
        assert info.field_name is not None
        kind = info.data.get("type")
        if kind != "dns" and v != cls.model_fields[info.field_name].default:
            raise ValueError(f"{info.field_name} is for type: dns (this discovery is type: {kind})")
        return v

    @field_validator(*_CONTROL_PLANE_KEYS)
    @classmethod
    def _control_plane_only(cls, v: object, info: ValidationInfo) -> object:
        assert info.field_name is not None
        kind = info.data.get("type")
        if kind != "control_plane" and v != cls.model_fields[info.field_name].default:
            raise ValueError(
                f"{info.field_name} is for type: control_plane (this discovery is type: {kind})"
            )
        return v

    @field_validator("name")
    @classmethod
    def _dns_name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        import dns.exception  # dnspython loads only for configs with DNS discovery
        import dns.name

        try:
            dns.name.from_text(v)
        except dns.exception.DNSException as exc:
            raise ValueError(f"name {v!r} is not a valid DNS name: {exc}") from None
        if not v.strip(".") or " " in v:
            raise ValueError(f"name {v!r} is not a valid DNS name")
        return v

    @field_validator("port")
    @classmethod
    def _srv_port(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("record") == "SRV":
            raise ValueError("SRV records carry each instance's port: remove port")
        return v

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("nameservers: list at least one, or leave it out for the system's")
        for ns in v:
            parse_nameserver(ns)
        return v

    @model_validator(mode="after")
    def _complete(self) -> DiscoveryConfig:
        if self.type == "control_plane":
            missing = [k for k in ("url", "ca_bundle_file", "service") if not getattr(self, k)]
            if missing:
                raise ValueError(f"discovery type control_plane needs {', '.join(missing)}")
            if (self.admin_token_file is None) == (self.identity_dir is None):
                raise ValueError(
                    "discovery type control_plane needs one of admin_token_file, identity_dir"
                )
            if not self.url or not self.url.startswith("https://"):
                raise ValueError(f"url {self.url!r} must start with https://")
            return self
        if self.type == "file":
            if self.path is None:
                raise ValueError("discovery type file needs path")
            return self
        if self.name is None:
            raise ValueError("discovery type dns needs name")
        if self.record != "SRV" and self.port is None:
            raise ValueError(
                f"discovery record {self.record} needs port (only SRV records carry ports)"
            )
        if self.min_interval_s > self.interval_s:
            raise ValueError(
                f"min_interval_s ({self.min_interval_s}) is above interval_s ({self.interval_s})"
            )
        return self

    def nameserver_addresses(self) -> list[tuple[str, int]]:
        """The nameservers as (IP address, port), [] for the system resolver."""
        return [parse_nameserver(ns) for ns in self.nameservers or ()]


class HashKeyConfig(_Model):
    """What a consistent_hash balancer hashes: one of header, cookie, query, path, ip."""

    header: str | None = None
    cookie: str | None = None
    query: str | None = None
    source: Literal["ip", "path"] | None = None

    @model_validator(mode="after")
    def _one(self) -> HashKeyConfig:
        given = [f for f in ("header", "cookie", "query", "source") if getattr(self, f)]
        if len(given) != 1:
            raise ValueError("hash_key: give exactly one of header, cookie, query, source")
        if self.header is not None and not TOKEN.match(self.header):
            raise ValueError(f"hash_key: {self.header!r} is not a valid header name")
        return self
