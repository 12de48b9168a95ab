"""The Redis cache store against a real redis-server: entries round-trip with their
expiry, purges walk the keyspace (glob characters taken literally), every failure is
CacheUnavailable, quickly, also when Redis hangs."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from meshgate.core.cache import CachePolicy, StoredResponse, VaryIndex, stored_headers
from meshgate.io.cache_redis import CacheUnavailable, RedisCacheStore, glob_escape
from meshgate.io.ratelimit_redis import make_client
from tests.redis_server import RedisServer, redis_server_fixture

shared_redis = redis_server_fixture("shared_redis", scope="module")
HUNG = r"no answer within 0\.3 s|purge failed: TimeoutError"  # asyncio's or the socket's
redis_server = redis_server_fixture()


def _store(server: RedisServer, timeout_s: float = 5.0, prefix: str = "") -> RedisCacheStore:
    client = make_client(
        server.url, connect_timeout_s=timeout_s, timeout_s=timeout_s, max_connections=8
    )
    return RedisCacheStore(
        client, key_prefix=prefix or f"t:{uuid.uuid4().hex}", timeout_s=timeout_s
    )


@pytest.fixture
async def store(shared_redis: RedisServer) -> AsyncIterator[RedisCacheStore]:
    s = _store(shared_redis)  # its own key prefix: tests share the server
    yield s
    await s.aclose()


def entry(body: bytes = b"hello", status: int = 200) -> StoredResponse:
    fields = stored_headers([("Content-Type", "text/plain"), ("ETag", '"1"')])
    freshness = CachePolicy.build().freshness(fields, time.time(), time.time())
    return StoredResponse(status, fields, body, freshness, "route@1")


async def test_round_trip_with_expiry(store: RedisCacheStore) -> None:
    e = entry(b"\x00binary\xff" * 1000)
    assert await store.put("h/a\nGET", e, keep_s=30)
    assert await store.get("h/a\nGET") == e
    assert await store.get("h/other\nGET") is None
    ttl_ms = await store.client.pttl(store.key_prefix + "h/a\nGET")
    assert 29_000 < ttl_ms <= 30_000
    index = VaryIndex(("accept-language",), "route@1")
    await store.put("h/v\nGET", index, keep_s=0.0001)  # at least 1 ms
    assert await store.client.pttl(store.key_prefix + "h/v\nGET") in (-2, 0, 1)


async def test_unreadable_values_are_misses(store: RedisCacheStore) -> None:
    await store.client.set(store.key_prefix + "junk", b"not an entry")
    assert await store.get("junk") is None


async def test_purge_prefix(store: RedisCacheStore) -> None:
    keys = ["h/a\nGET", "h/a?x=1\nGET", "h/ab\nGET", "h/[x]*?\\\nGET", "h/[x]y\nGET", "g/a\nGET"]
    for key in keys:
        await store.put(key, entry(), keep_s=60)
    # 2500 more under one prefix: several SCAN steps and UNLINK batches
    pipe = store.client.pipeline(transaction=False)
    for i in range(2500):
        pipe.set(f"{store.key_prefix}h/many/{i}\nGET", b"x", px=60_000)
    await pipe.execute()
    assert await store.purge_prefix("h/many/") == 2500
    assert await store.purge_prefix("h/[x]*") == 1  # taken literally, not as a pattern
    assert await store.purge_prefix("h/a\n") == 1
    assert await store.purge_prefix("h/") == 3
    assert await store.purge_prefix("g/") == 1
    assert [k async for k in store.client.scan_iter(match=store.key_prefix + "*")] == []


def test_glob_escape() -> None:
    assert glob_escape("a*b?c[d]e\\f") == "a\\*b\\?c\\[d\\]e\\\\f"


async def test_failures_are_cache_unavailable(redis_server: RedisServer) -> None:
    store = _store(redis_server, timeout_s=0.3)
    try:
        assert await store.put("k", entry(), keep_s=10)
        with redis_server.paused():
            start = time.monotonic()
            for op in (
                store.get("k"),
                store.put("k", entry(), keep_s=10),
                store.purge_prefix("k"),
            ):
                with pytest.raises(CacheUnavailable, match=HUNG):
                    await op
            assert time.monotonic() - start < 3
        redis_server.kill()
        with pytest.raises(CacheUnavailable, match="failed: ConnectionError"):
            await store.get("k")
        with pytest.raises(CacheUnavailable, match="purge failed"):
            await store.purge_prefix("k")
        redis_server.restart()
        assert await store.get("k") is None  # the same client recovers (empty: no persistence)
    finally:
        await store.aclose()


async def test_keys_are_namespaced(shared_redis: RedisServer) -> None:
    store = _store(shared_redis, prefix="meshgate:cache")
    client: aioredis.Redis = store.client
    try:
        await store.put("h/ns\nGET", entry(), keep_s=10)
        assert await client.exists("meshgate:cache:h/ns\nGET") == 1
        assert await store.purge_prefix("h/ns") == 1
    finally:
        await store.aclose()
