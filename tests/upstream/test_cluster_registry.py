"""A cluster follows its service in the registry (the plug-in point of discovery
sources and the control plane)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from meshgate.config.models import InstanceConfig, UpstreamConfig
from meshgate.core.registry import Instance, Registry
from meshgate.upstream.cluster import Cluster


def upstream(name: str, *ports: int) -> UpstreamConfig:
    return UpstreamConfig(
        name=name, instances=[InstanceConfig(host="127.0.0.1", port=p) for p in ports]
    )


async def test_registry_changes_reach_only_their_cluster() -> None:
    registry = Registry()
    users = Cluster(upstream("users", 9001), registry=registry)
    orders = Cluster(upstream("orders", 9101), registry=registry)
    first = users.hosts[0]
    registry.register(Instance("127.0.0.1:9002", "users", "127.0.0.1", 9002, weight=3))
    assert [h.key for h in users.hosts] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert users.hosts[0] is first  # kept: same pool and counters
    assert users.hosts[1].weight == 3
    assert [h.key for h in orders.hosts] == ["127.0.0.1:9101"]
    registry.update("users", "127.0.0.1:9001", weight=5, metadata={"version": "v2"})
    assert users.hosts[0] is first and first.weight == 5 and first.metadata == {"version": "v2"}
    registry.deregister("users", "127.0.0.1:9001")
    assert [h.key for h in users.hosts] == ["127.0.0.1:9002"]
    assert first.pool.closed  # drained
    await users.aclose()
    await orders.aclose()


async def test_a_refused_list_keeps_the_previous_one(caplog: pytest.LogCaptureFixture) -> None:
    cluster = Cluster(upstream("users", 9001))
    same = InstanceConfig(host="127.0.0.1", port=9002)
    with caplog.at_level(logging.ERROR):
        cluster.set_instances([same, same])
    assert [h.key for h in cluster.hosts] == ["127.0.0.1:9001"]
    assert "instance list refused" in caplog.text
    await cluster.aclose()


async def test_panic_mode_and_no_healthy_are_counted() -> None:
    from meshgate.config.discovery import HealthCheckConfig
    from meshgate.upstream.cluster import NoHealthyUpstream

    config = UpstreamConfig(
        name="users",
        instances=[InstanceConfig(host="127.0.0.1", port=p) for p in (9001, 9002, 9003)],
        health_check=HealthCheckConfig(unhealthy_threshold=1, healthy_threshold=1),
    )
    cluster = Cluster(config)
    assert cluster.health is not None
    for key in ("127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"):
        cluster.health.add(key)
    cluster.health.record("127.0.0.1:9001", False, 0.0)
    assert cluster.pick().key != "127.0.0.1:9001"  # 2 of 3 healthy: no panic
    assert cluster.snapshot()["panic_picks"] == 0
    cluster.health.record("127.0.0.1:9002", False, 0.0)
    picked = {cluster.pick().key for _ in range(9)}  # 1 of 3: panic, all used
    assert picked == {"127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"}
    assert cluster.snapshot()["panic_picks"] == 9
    cluster.health.record("127.0.0.1:9003", False, 0.0)
    with pytest.raises(NoHealthyUpstream):
        cluster.pick()
    assert cluster.snapshot()["no_healthy"] == 1
    await cluster.aclose()


def _up(name: str, ports: range, **extra: object) -> UpstreamConfig:
    return UpstreamConfig.model_validate(
        {
            "name": name,
            "instances": [{"host": "127.0.0.1", "port": p} for p in ports],
            **extra,
        }
    )


async def test_an_ejection_takes_the_host_out_until_it_ends() -> None:
    config = _up(
        "users",
        range(9001, 9004),
        outlier_detection={
            "consecutive_5xx": 1,
            "base_ejection_s": 0.2,
            "max_ejection_percent": 50,
        },
    )
    cluster = Cluster(config)
    bad = cluster.hosts[0]
    assert bad in {cluster.pick() for _ in range(6)}
    cluster.record(bad, time.monotonic(), 503, None)  # ejected for 0.2 s
    assert bad not in {cluster.pick() for _ in range(30)}
    await asyncio.sleep(0.25)
    assert bad in {cluster.pick() for _ in range(6)}  # back without any other event
    await cluster.aclose()


async def test_least_connections_follows_started_and_finished_requests() -> None:
    config = UpstreamConfig.model_validate(
        {
            "name": "users",
            "load_balancer": "least_connections",
            "instances": [
                {"host": "127.0.0.1", "port": p, "metadata": {"zone": "a"}}
                for p in range(9001, 9004)
            ],
        }
    )
    cluster = Cluster(config)
    a, b, c = cluster.hosts
    assert [cluster.pick() for _ in range(3)] == [a, b, c]  # ties take turns
    cluster.started(a)
    cluster.started(b)
    assert {cluster.pick() for _ in range(4)} == {c}
    cluster.finished(a)
    assert {cluster.pick() for _ in range(4)} == {a, c}
    # a subset route has its own view, told about the same requests
    zone = {"zone": "a"}
    assert cluster.pick(subset=zone) is a  # a 0, b 1, c 0: a comes first
    cluster.started(c)
    assert {cluster.pick(subset=zone) for _ in range(3)} == {a}
    cluster.finished(b)
    cluster.finished(c)
    assert {cluster.pick(subset=zone) for _ in range(3)} == {a, b, c}
    await cluster.aclose()


async def test_consistent_hash_ring_for_a_new_instance_is_built_between_requests() -> None:
    ports = range(9001, 9011)
    cluster = Cluster(
        _up("users", ports, load_balancer="consistent_hash", hash_key={"header": "x-user"})
    )
    keys = [f"user-{i}" for i in range(3000)]
    before = {k: cluster.pick(key=k).key for k in keys}
    cluster.set_instances([InstanceConfig(host="127.0.0.1", port=p) for p in [*ports, 9011]])
    # right after the change the old ring answers: nothing moved, nothing waited
    assert {k: cluster.pick(key=k).key for k in keys} == before
    for _ in range(500):  # the build runs in steps on the loop
        await asyncio.sleep(0)
        if cluster._ring_builds is not None and cluster._ring_builds.done():
            break
    after = {k: cluster.pick(key=k).key for k in keys}
    moved = [k for k in keys if after[k] != before[k]]
    assert all(after[k] == "127.0.0.1:9011" for k in moved)
    assert 0.05 < len(moved) / len(keys) < 0.14  # about 1/11
    await cluster.aclose()
