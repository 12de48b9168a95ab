"""The response cache in Redis, shared by every gateway (and worker) using the server.

Each entry (`meshgate.core.cache.encode_entry`: status, headers, body, freshness)
is one string value under ``<key_prefix>:<cache key>``, written with an expiry
(``SET ... PX``) so Redis drops it once it can no longer be served or
revalidated. Purging a prefix walks the keyspace with ``SCAN MATCH`` (never
``KEYS``) and removes what it finds with ``UNLINK``.

Every operation has a deadline; any failure (refused, reset, timeout, odd
reply) raises `CacheUnavailable`, and the caller answers without the cache.
The client is made by `meshgate.io.ratelimit_redis.make_client` (RESP2, a
bounded pool, no retries): the same settings as the rate-limit backend.
"""

from __future__ import annotations

import asyncio
import math

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from meshgate.core.cache import CacheError, Entry, decode_entry, encode_entry
from meshgate.pipeline.cache import CacheUnavailable

PURGE_TIMEOUT_S = 30.0  # a purge walks the whole keyspace: longer than one operation
SCAN_COUNT = 1000  # keys examined per SCAN step
_GLOB_SPECIAL = frozenset("*?[]\\")


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join(f"\\{c}" if c in _GLOB_SPECIAL else c for c in text)


class RedisCacheStore:
    """Cache entries in Redis under ``key_prefix:``, each operation within ``timeout_s``."""

    __slots__ = ("client", "key_prefix", "timeout_s")

    def __init__(self, client: aioredis.Redis, *, key_prefix: str, timeout_s: float) -> None:
        self.client = client
        self.key_prefix = f"{key_prefix}:"
        self.timeout_s = timeout_s

    async def get(self, key: str) -> Entry | None:
        """The entry of ``key``; None when there is none (or it is not readable)."""
        name = self.key_prefix + key
        try:
            async with asyncio.timeout(self.timeout_s):
                data = await self.client.get(name)
        except TimeoutError as exc:
            raise CacheUnavailable(f"redis GET: no answer within {self.timeout_s} s") from exc
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(f"redis GET failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(data, bytes):
            return None
        try:
            return decode_entry(data)
        except CacheError:
            return None  # written by something else: a miss, overwritten by the next fill

    async def put(self, key: str, entry: Entry, keep_s: float) -> bool:
        """Store ``entry`` under ``key`` for ``keep_s`` seconds (at least 1 ms)."""
        name = self.key_prefix + key
        ttl_ms = max(1, math.ceil(keep_s * 1000))
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.set(name, encode_entry(entry), px=ttl_ms)
        except TimeoutError as exc:
            raise CacheUnavailable(f"redis SET: no answer within {self.timeout_s} s") from exc
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(f"redis SET failed: {type(exc).__name__}: {exc}") from exc
        return True

    async def purge_prefix(self, prefix: str) -> int:
        """Remove every entry whose key starts with ``prefix``; how many were removed."""
        pattern = glob_escape(self.key_prefix + prefix) + "*"
        removed = 0
        try:
            async with asyncio.timeout(PURGE_TIMEOUT_S):
                batch: list[bytes] = []
                async for name in self.client.scan_iter(match=pattern, count=SCAN_COUNT):
                    batch.append(name)
                    if len(batch) >= SCAN_COUNT:
                        removed += int(await self.client.unlink(*batch))
                        batch = []
                if batch:
                    removed += int(await self.client.unlink(*batch))
        except TimeoutError as exc:
            raise CacheUnavailable(
                f"redis purge: not done within {PURGE_TIMEOUT_S} s ({removed} removed)"
            ) from exc
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(f"redis purge failed: {type(exc).__name__}: {exc}") from exc
        return removed

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self.client.aclose()
