"""Cluster manager: an upstream's hosts, their pools, the balancer and the
resilience state shared by every route to it (breaker, outlier detector,
retry budget, concurrency thresholds)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Collection
from typing import Any

from meshgate.config.models import UpstreamConfig
from meshgate.config.resilience import RetryBudgetConfig
from meshgate.core.balancer import Balancer, make_balancer
from meshgate.core.breaker import BreakerState, CircuitBreaker
from meshgate.core.outlier import OutlierDetector
from meshgate.core.resources import ResourceLimits
from meshgate.core.retry import RetryBudget, WindowedRetryBudget
from meshgate.io.upstream import Pool

log = logging.getLogger("meshgate.cluster")


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

        self.limits = ResourceLimits.build(
            max_connections=config.limits.max_connections,
            max_pending_requests=config.limits.max_pending_requests,
            max_requests=config.limits.max_requests,
            max_retries=config.limits.max_retries,
        )
        # Open connections are counted by the pools; the other thresholds by `limits`.
        self.max_connections = config.limits.max_connections
        self.budget = Budget(config.retry_budget)
        cb = config.circuit_breaker
        self.breaker: CircuitBreaker | None = None
        if cb is not None:
            self.breaker = CircuitBreaker.build(
                failure_threshold=cb.failure_threshold,
                success_threshold=cb.success_threshold,
                reset_timeout_s=cb.reset_timeout_s,
                window_s=cb.window_s,
                failure_rate_percent=cb.failure_rate_percent,
                min_requests=cb.min_requests,
                half_open_max_probes=cb.half_open_max_probes,
                on_transition=self._breaker_moved,
            )
        od = config.outlier_detection
        self.outliers: OutlierDetector | None = None
        if od is not None:
            self.outliers = OutlierDetector.build(
                consecutive_5xx=od.consecutive_5xx,
                consecutive_gateway_errors=od.consecutive_gateway_errors,
                base_ejection_s=od.base_ejection_s,
                max_ejection_percent=od.max_ejection_percent,
            )
            for host in self.hosts:
                self.outliers.add_host(host.key)

    def pick(self, exclude: Collection[UpstreamHost] = ()) -> UpstreamHost:
        """A host for the next attempt: not ejected, and not one in ``exclude`` (the
        hosts a retry already tried) while another remains."""
        hosts = self.hosts
        outliers = self.outliers
        if outliers is not None:
            now = time.monotonic()
            live = [h for h in hosts if not outliers.ejected(h.key, now)]
            hosts = live or hosts
        if exclude:
            fresh = [h for h in hosts if h not in exclude]
            hosts = fresh or hosts
        if len(hosts) == 1:
            return hosts[0]
        host = self.balancer.pick(hosts)
        assert isinstance(host, UpstreamHost)
        return host

    def open_connections(self) -> int:
        return sum(h.pool.open for h in self.hosts)

    def _breaker_moved(self, old: BreakerState, new: BreakerState, reason: str) -> None:
        log.warning("circuit breaker of %s: %s -> %s (%s)", self.name, old.name, new.name, reason)

    def snapshot(self) -> dict[str, Any]:
        """Breaker, budget, limits and ejections, for the admin API."""
        now = time.monotonic()
        return {
            "name": self.name,
            "hosts": [h.key for h in self.hosts],
            "open_connections": self.open_connections(),
            "breaker": self.breaker.snapshot(now) if self.breaker is not None else None,
            "outliers": self.outliers.snapshot(now) if self.outliers is not None else None,
            "limits": self.limits.snapshot(),
            "retry_budget": self.budget.snapshot(),
        }

    def close(self) -> None:
        for host in self.hosts:
            host.pool.close()


class Budget:
    """The upstream's retry budget, in either model, behind one interface."""

    __slots__ = ("concurrent", "windowed")

    def __init__(self, config: RetryBudgetConfig) -> None:
        self.concurrent: RetryBudget | None = None
        self.windowed: WindowedRetryBudget | None = None
        if config.model == "concurrent":
            self.concurrent = RetryBudget(config.budget_percent, config.min_retry_concurrency)
        else:
            self.windowed = WindowedRetryBudget(
                config.budget_percent / 100.0, config.min_per_s, config.ttl_s
            )

    def request_started(self) -> None:
        if self.concurrent is not None:
            self.concurrent.request_started()
        else:
            assert self.windowed is not None
            self.windowed.record_request(time.monotonic())

    def request_finished(self) -> None:
        if self.concurrent is not None:
            self.concurrent.request_finished()

    def try_retry(self) -> bool:
        if self.concurrent is not None:
            return self.concurrent.try_start_retry()
        assert self.windowed is not None
        return self.windowed.try_retry(time.monotonic())

    def retry_finished(self) -> None:
        if self.concurrent is not None:
            self.concurrent.retry_finished()

    @property
    def exhausted(self) -> int:
        budget = self.concurrent or self.windowed
        assert budget is not None
        return budget.exhausted

    def snapshot(self) -> dict[str, Any]:
        if self.concurrent is not None:
            b = self.concurrent
            return {
                "model": "concurrent",
                "active": b.active,
                "retries_active": b.retries_active,
                "exhausted": b.exhausted,
            }
        assert self.windowed is not None
        return {"model": "windowed", "exhausted": self.windowed.exhausted}
