"""Limits for some calling services only (``sources``, ``except_sources``): the
sidecar's per-source rules. The key says which bucket; None skips the limit."""

from __future__ import annotations

import pytest

from meshgate.config.ratelimit import LimitConfig, RateLimitConfig
from meshgate.pipeline.ratelimit import Limit
from meshgate.testing import make_context


def _limit(**fields: object) -> Limit:
    config = LimitConfig.model_validate(
        {"algorithm": "token_bucket", "rate_per_s": 1, "burst": 1, "key": ["source"], **fields}
    )
    return Limit(config, "global", RateLimitConfig(), None)


def _key(limit: Limit, source: str | None) -> str | None:
    ctx = make_context()
    if source is not None:
        ctx.state["source_service"] = source
    return limit.key(ctx)


@pytest.mark.parametrize(
    ("fields", "source", "key"),
    [
        ({"sources": ["cart"]}, "cart", "cart"),
        ({"sources": ["cart"]}, "orders", None),
        ({"sources": ["cart"]}, None, None),
        ({"except_sources": ["cart"]}, "cart", None),
        ({"except_sources": ["cart"]}, "orders", "orders"),
        ({"except_sources": ["cart"], "on_missing_key": "fallback"}, "cart", None),
        ({}, "orders", "orders"),
    ],
)
def test_limit_applies_to_its_sources_only(
    fields: dict[str, object], source: str | None, key: str | None
) -> None:
    assert _key(_limit(**fields), source) == key
