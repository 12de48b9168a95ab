"""Cluster manager: an upstream's hosts, their pools and the balancer."""

from __future__ import annotations

import random

from meshgate.config.models import UpstreamConfig
from meshgate.core.balancer import Balancer, make_balancer
from meshgate.io.upstream import Pool


class UpstreamHost:
    """One instance of an upstream, with its connection pool."""

    __slots__ = ("active_requests", "host", "key", "pool", "port", "weight")

    def __init__(self, host: str, port: int, weight: int, pool: Pool) -> None:
        self.host = host
        self.port = port
        self.weight = weight
        self.key = f"{host}:{port}"
        self.pool = pool
        self.active_requests = 0


class Cluster:
    """A named upstream: pick a host for each request."""

    def __init__(self, config: UpstreamConfig, rng: random.Random | None = None) -> None:
        self.name = config.name
        self.config = config
        rng = rng or random.Random()
        self.balancer: Balancer = make_balancer(config.load_balancer, rng.random)
        self.hosts = [
            UpstreamHost(
                inst.host,
                inst.port,
                inst.weight,
                Pool(
                    inst.host,
                    inst.port,
                    max_idle=config.pool.max_idle,
                    idle_timeout_s=config.pool.idle_timeout_s,
                    connect_timeout_s=config.connect_timeout_s,
                    read_timeout_s=config.read_timeout_s,
                ),
            )
            for inst in config.instances
        ]

    def pick(self) -> UpstreamHost:
        hosts = self.hosts
        if len(hosts) == 1:
            return hosts[0]
        host = self.balancer.pick(hosts)
        assert isinstance(host, UpstreamHost)
        return host

    def close(self) -> None:
        for host in self.hosts:
            host.pool.close()
