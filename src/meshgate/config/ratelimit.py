"""Config models of rate limiting: the limits, their keys, the Redis backend."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshgate.config.common import TOKEN, redis_url
from meshgate.config.common import Model as _Model

# Key parts: a plain name, or "kind:name".
KEY_PARTS = ("ip", "route", "method", "path", "consumer", "source")
KEY_KINDS = ("header", "param", "query", "jwt", "cookie")


def check_key_part(part: str) -> str:
    """Validate one key part (``ip``, ``header:x-user``...); return it normalised."""
    if part in KEY_PARTS:
        return part
    kind, colon, name = part.partition(":")
    if not colon or kind not in KEY_KINDS:
        raise ValueError(
            f"unknown key part {part!r}; use one of {', '.join(KEY_PARTS)} "
            f"or {', '.join(k + ':NAME' for k in KEY_KINDS)}"
        )
    if not name or not TOKEN.match(name):
        raise ValueError(f"key part {part!r}: {kind}: needs a name of token characters")
    return f"{kind}:{name.lower()}" if kind == "header" else part


class LimitConfig(_Model):
    """One limit: an algorithm, its numbers and what it counts by."""

    name: str | None = Field(
        None, min_length=1, description="Shown in logs, metrics and explain; default from the key."
    )
    algorithm: Literal["sliding_window", "token_bucket", "concurrency"] = "sliding_window"
    limit: int | None = Field(
        None, ge=1, description="sliding_window: requests per window; concurrency: in flight."
    )
    window_s: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="sliding_window: window length."
    )
    rate_per_s: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="token_bucket: sustained rate."
    )
    burst: int | None = Field(None, ge=1, description="token_bucket: requests at once.")
    key: list[str] = Field(
        default_factory=lambda: ["ip"],
        description="What is counted together; parts are joined: [ip, route] = per client per "
        "route.",
    )
    on_missing_key: Literal["skip", "fallback"] = Field(
        "skip",
        description="When a key part has no value: skip this limit, or count all such "
        "requests in one shared bucket.",
    )
    backend: Literal["local", "redis"] = Field(
        "local", description="local: per worker process; redis: shared by every gateway."
    )
    sources: list[str] | None = Field(
        None,
        min_length=1,
        description="Mesh inbound (sidecar): only requests from these calling services, as "
        "the sidecar verified them from the caller's certificate.",
    )
    except_sources: list[str] = Field(
        default_factory=list,
        description="Mesh inbound (sidecar): not requests from these calling services.",
    )

    @field_validator("key")
    @classmethod
    def _valid_key(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("key must name at least one part, e.g. [ip]")
        return [check_key_part(p) for p in v]

    @model_validator(mode="after")
    def _numbers_for_algorithm(self) -> LimitConfig:
        need = {
            "sliding_window": ("limit", "window_s"),
            "token_bucket": ("rate_per_s", "burst"),
            "concurrency": ("limit",),
        }[self.algorithm]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{self.algorithm} needs {' and '.join(missing)}")
        extra = [
            f
            for f in ("limit", "window_s", "rate_per_s", "burst")
            if f not in need and getattr(self, f) is not None
        ]
        if extra:
            raise ValueError(f"{self.algorithm} does not use {', '.join(extra)}")
        if self.sources is not None and set(self.sources) & set(self.except_sources):
            raise ValueError("a service is in both sources and except_sources")
        if self.algorithm == "concurrency" and self.backend == "redis":
            raise ValueError("concurrency limits are local only (backend: local)")
        return self

    @property
    def label(self) -> str:
        return self.name or "+".join(self.key)


class RedisConfig(_Model):
    """The Redis server shared by every gateway for `backend: redis` limits."""

    url: str = Field("redis://127.0.0.1:6379/0", description="redis:// or rediss:// URL.")
    timeout_s: float = Field(
        0.1, gt=0, description="Per-check deadline; past it the check counts as a failure."
    )
    connect_timeout_s: float = Field(1.0, gt=0)
    max_connections: int = Field(64, ge=1, description="Connection pool size per worker.")
    key_prefix: str = Field("meshgate:rl", min_length=1)
    fail_open: bool = Field(
        True, description="Redis down or slow: let requests through (false: answer 503)."
    )

    _url = field_validator("url")(redis_url)


class RateLimitConfig(_Model):
    """Top-level ``rate_limit``: limits for every route, headers, backends."""

    limits: list[LimitConfig] = Field(
        default_factory=list, description="Applied to every route, before the route's own."
    )
    headers: Literal["seed", "ietf", "both", "none"] = Field(
        "seed",
        description="seed: x-ratelimit-limit/remaining/reset; ietf: RateLimit-Policy and "
        "RateLimit; both; none. Retry-After on 429 in every case.",
    )
    max_local_keys: int = Field(
        100_000, ge=1, description="Per limit and worker; idle keys are evicted first."
    )
    redis: RedisConfig | None = None
