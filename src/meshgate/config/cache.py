"""Config models of the response cache: a route's `cache:` and the top-level store."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meshgate.config.common import Model as _Model
from meshgate.config.common import redis_url
from meshgate.core.cache import CacheError, CachePolicy


class RouteCacheConfig(_Model):
    """A route's response cache (docs/cache.md); `cache: {}` takes every default."""

    ttl_s: float = Field(
        300.0,
        ge=0,
        allow_inf_nan=False,
        description="Freshness of responses without Cache-Control s-maxage/max-age or Expires.",
    )
    methods: list[str] = Field(
        default_factory=lambda: ["GET", "HEAD"],
        description="Methods answered from the cache (HEAD is answered from GET's entries).",
    )
    statuses: list[int] = Field(
        default_factory=lambda: [200, 301, 404], description="Response statuses stored."
    )
    max_object_bytes: int = Field(
        1024 * 1024, ge=0, description="Larger bodies are streamed to the client, not stored."
    )
    key_query: list[str] | None = Field(
        None,
        description="Query parameters in the key: null = the whole query string as sent, "
        "[] = none, else these (sorted by name).",
    )
    key_headers: list[str] = Field(
        default_factory=list, description="Request headers whose values are in the key."
    )
    cache_set_cookie: bool = Field(
        False, description="Store responses with Set-Cookie (the cookie goes to everybody)."
    )
    public: bool = Field(
        False,
        description="The content is the same for every caller: requests with Authorization "
        "are answered from and stored in the cache (else they bypass it).",
    )
    stale_while_revalidate_s: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="Stale window served while refreshing in the background, for responses "
        "whose Cache-Control names none.",
    )
    stale_if_error_s: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="Stale window served when the upstream fails, for responses whose "
        "Cache-Control names none.",
    )
    lock_timeout_s: float = Field(
        5.0,
        gt=0,
        allow_inf_nan=False,
        description="How long concurrent misses wait for the one upstream request of their "
        "key before asking the upstream themselves.",
    )
    max_waiters: int = Field(
        1000, ge=0, description="Misses waiting per key; beyond it they go upstream themselves."
    )

    @field_validator("methods", "statuses", "key_headers", "key_query")
    @classmethod
    def _valid_part(cls, v: list[str] | list[int] | None, info: ValidationInfo) -> object:
        """Each list checked alone, so that a mistake is reported at its own key."""
        try:
            CachePolicy.build(**{info.field_name: v})  # type: ignore[arg-type]
        except CacheError as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _valid_policy(self) -> RouteCacheConfig:
        try:
            self.policy()
        except CacheError as exc:
            raise ValueError(str(exc)) from None
        return self

    def policy(self) -> CachePolicy:
        return CachePolicy.build(
            default_ttl_s=self.ttl_s,
            methods=self.methods,
            statuses=self.statuses,
            max_object_bytes=self.max_object_bytes,
            key_query=self.key_query,
            key_headers=self.key_headers,
            cache_set_cookie=self.cache_set_cookie,
            public_with_authorization=self.public,
            stale_while_revalidate_s=self.stale_while_revalidate_s,
            stale_if_error_s=self.stale_if_error_s,
        )


class CacheRedisConfig(_Model):
    """The Redis server a fleet of gateways shares its cache in (`store: redis`)."""

    url: str = Field("redis://127.0.0.1:6379/0", description="redis:// or rediss:// URL.")
    timeout_s: float = Field(
        0.25,
        gt=0,
        allow_inf_nan=False,
        description="Per-operation deadline; past it the request bypasses the cache.",
    )
    connect_timeout_s: float = Field(1.0, gt=0, allow_inf_nan=False)
    max_connections: int = Field(64, ge=1, description="Connection pool size per worker.")
    key_prefix: str = Field("meshgate:cache", min_length=1)

    _url = field_validator("url")(redis_url)


class CacheConfig(_Model):
    """Top-level `cache`: where the routes' cached responses are kept."""

    store: Literal["memory", "redis"] = Field(
        "memory", description="memory: per worker process; redis: shared by every gateway."
    )
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="memory: total size of the entries (bodies, headers and a fixed "
        "overhead each); least recently used entries are evicted.",
    )
    redis: CacheRedisConfig | None = None

    @model_validator(mode="after")
    def _redis_given(self) -> CacheConfig:
        if self.store == "redis" and self.redis is None:
            raise ValueError("store: redis needs cache.redis (at least {url: ...})")
        return self
