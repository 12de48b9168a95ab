"""A cluster follows its service in the registry (the plug-in point of discovery
sources and the control plane)."""

from __future__ import annotations

import logging

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
