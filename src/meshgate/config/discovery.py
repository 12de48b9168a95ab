"""Config models of service discovery, active health checks and hash keys."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthCheckConfig(_Model):
    """Active health checks of every instance of an upstream."""

    type: Literal["http", "tcp"] = "http"
    path: str = Field("/health", description="http: the path requested (GET).")
    host: str | None = Field(None, description="http: Host header (default: host:port).")
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
        return self


class DiscoveryConfig(_Model):
    """Where an upstream's instances come from besides its static list."""

    type: Literal["file"] = Field(
        "file", description="file: a YAML/JSON list of instances, reloaded when it changes."
    )
    path: str = Field(description="The instances file: [{host, port, weight?, metadata?}].")


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
        return self
