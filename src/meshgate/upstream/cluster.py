"""Cluster manager: an upstream's hosts, their pools, the balancer and the
resilience state shared by every route to it (breaker, outlier detector,
retry budget, concurrency thresholds)."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from meshgate.config.models import InstanceConfig, UpstreamConfig
from meshgate.config.resilience import RetryBudgetConfig
from meshgate.core.balancer import Balancer, ConsistentHash, make_balancer
from meshgate.core.breaker import BreakerState
from meshgate.core.health import HealthPolicy, HealthTable, routable
from meshgate.core.matchers import parse_query
from meshgate.core.registry import Changes, Instance, Registry, RegistryError, select
from meshgate.core.resources import ResourceLimits
from meshgate.core.retry import Failure, RetryBudget, WindowedRetryBudget
from meshgate.http.errors import HTTPError
from meshgate.http.messages import Request, cookie_value
from meshgate.io.h2client import AutoPool, H2Pool
from meshgate.io.health import HealthChecker, grpc_probe, http_probe, tcp_probe
from meshgate.io.tls import ALPN_H2, ALPN_H2_ONLY, ClientTls
from meshgate.io.upstream import Pool
from meshgate.observability.metrics import UpstreamStats
from meshgate.upstream.discovery import DiscoveryError, FileSource

if TYPE_CHECKING:
    from meshgate.upstream.control_plane import ControlPlaneSource
    from meshgate.upstream.dnssource import DnsSource

log = logging.getLogger("meshgate.cluster")


# A plain Python class in the compiled build too (scripts/compile_hot.py): as a native
# class its status/reason overrides were instance defaults that HTTPError's __init__
# never set, so it answered 500. A no-op in pure Python.
@mypyc_attr(native_class=False)
class NoHealthyUpstream(HTTPError):
    """Every instance is unhealthy (or there is none): the seed's 503."""

    status = 503
    reason = "No healthy upstream instances"


class UpstreamHost:
    """One instance of an upstream, with its connection pool."""

    __slots__ = ("active_requests", "host", "key", "metadata", "pool", "port", "weight")

    def __init__(
        self,
        host: str,
        port: int,
        weight: int,
        pool: Pool | H2Pool | AutoPool,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.weight = weight
        self.key = f"{host}:{port}"
        self.pool = pool
        self.metadata = dict(metadata or {})
        self.active_requests = 0

    def update(self, weight: int, metadata: Mapping[str, str]) -> None:
        """A new weight or metadata for the same instance (in place: requests in flight
        keep counting on this object)."""
        self.weight = weight
        self.metadata = dict(metadata)


SubsetKey = frozenset[tuple[str, str]] | None


class _View:
    """The hosts a pick chooses from, for the whole upstream or one metadata subset,
    and the balancer over them; recomputed when `Cluster.epoch` moves past it."""

    __slots__ = ("balancer", "epoch", "hosts", "members", "panic")

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer
        self.epoch = -1
        self.hosts: list[UpstreamHost] = []  # routable: healthy, not ejected (all in panic)
        self.members = 0  # hosts in the subset, routable or not
        self.panic = False


class Cluster:
    """A named upstream: pick a host for each request.

    Which hosts are routable (membership, active health, outlier ejection, panic)
    is worked out when one of those changes, not per request: every change bumps
    `epoch`, and the next pick refreshes its view (O(n)) and tells the balancer.
    An ejection's end is a change too, noticed by the first pick after it.
    A pick is then the balancer's O(1) or O(log n) choice.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        rng: random.Random | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        tls = config.tls
        # Built once: every pool (and health probe) of the upstream shares it; an
        # HTTP/2 upstream's offers ALPN h2 (gRPC probes use it too), its HTTP/1.1 and
        # TCP probes have their own.
        self.tls: ClientTls | None = None
        self.probe_tls: ClientTls | None = None
        self.auto_tls: ClientTls | None = None  # protocol auto: asks h2 or http/1.1
        self.h2_tls: ClientTls | None = None  # protocol auto: the instances that chose h2
        if tls is not None and tls.enabled:
            http2 = config.protocol == "h2"
            self.tls = ClientTls(tls, alpn=ALPN_H2_ONLY) if http2 else ClientTls(tls)
            self.probe_tls = ClientTls(tls) if http2 else self.tls
            if config.protocol == "auto":
                self.auto_tls = ClientTls(tls, alpn=ALPN_H2)
                self.h2_tls = ClientTls(tls, alpn=ALPN_H2_ONLY)
        self._rng = rng or random.Random()
        self.hosts: list[UpstreamHost] = []  # filled from the registry (end of __init__)
        self.epoch = 0  # moves when membership, health or an ejection changes
        self._valid_until = math.inf  # when an ejection ends: views are stale from then
        self._views: dict[SubsetKey, _View] = {}
        self._tracks_load = False  # the balancer wants started/finished (least connections)
        self._ring_builds: asyncio.Task[None] | None = None
        rng = self._rng
        hc = config.health_check
        self.health: HealthTable | None = None
        self.checker: HealthChecker | None = None
        self.panic_threshold_percent = 50.0
        self.panic_picks = 0  # hosts picked in panic mode (too few healthy: all used)
        self.no_healthy = 0  # requests answered 503: no healthy instance
        self.stats = UpstreamStats()  # attempts: durations, errors, retries (metrics)
        if hc is not None:
            self.health = HealthTable(
                HealthPolicy.build(
                    interval_s=hc.interval_s,
                    timeout_s=hc.timeout_s,
                    unhealthy_threshold=hc.unhealthy_threshold,
                    healthy_threshold=hc.healthy_threshold,
                    jitter_percent=hc.jitter_percent,
                ),
                rng.random,
                on_change=self.changed,
            )
            self.panic_threshold_percent = hc.panic_threshold_percent
        self.source: FileSource | DnsSource | ControlPlaneSource | None = None
        discovery = config.discovery
        if discovery is not None and discovery.type == "dns":
            from meshgate.upstream.dnssource import DnsSource  # dnspython: only for DNS

            self.source = DnsSource(discovery, self.set_instances)
        elif discovery is not None and discovery.type == "control_plane":
            from meshgate.upstream.control_plane import ControlPlaneSource

            self.source = ControlPlaneSource(discovery, self.set_instances)
        elif discovery is not None and discovery.path is not None:
            self.source = FileSource(discovery.path, self.set_instances)

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
        self.breaker = cb.build(self._breaker_moved) if cb is not None else None
        od = config.outlier_detection
        self.outliers = od.build() if od is not None else None
        self.connecting = 0  # connections being opened (max_connections counts them too)
        # The registry holds the instance list of every upstream (the static one first;
        # discovery sources and, later, the control plane replace it); this cluster
        # builds its hosts from its service's changes, these first ones included.
        self.registry = registry or Registry()
        self._unsubscribe = self.registry.subscribe(self._registry_changed)
        self._report = False  # the static list is not news
        self.registry.replace_all(self.name, [self._instance(i) for i in config.instances])
        self._report = True

    def _pool(self, host: str, port: int) -> Pool | H2Pool | AutoPool:
        config = self.config
        if config.protocol == "auto":
            assert self.auto_tls is not None, "the config model requires tls for auto"
            return AutoPool(
                host,
                port,
                self.auto_tls,
                config.connect_timeout_s,
                lambda h2: (
                    self._h2_pool(host, port, self.h2_tls) if h2 else self._h1_pool(host, port)
                ),
            )
        if config.protocol != "http1":
            return self._h2_pool(host, port, self.tls)
        return self._h1_pool(host, port)

    def _h2_pool(self, host: str, port: int, tls: ClientTls | None) -> H2Pool:
        config = self.config
        return H2Pool(
            host,
            port,
            idle_timeout_s=config.pool.idle_timeout_s,
            connect_timeout_s=config.connect_timeout_s,
            read_timeout_s=config.read_timeout_s,
            tls=tls,
        )

    def _h1_pool(self, host: str, port: int) -> Pool:
        config = self.config
        return Pool(
            host,
            port,
            max_idle=config.pool.max_idle,
            idle_timeout_s=config.pool.idle_timeout_s,
            connect_timeout_s=config.connect_timeout_s,
            read_timeout_s=config.read_timeout_s,
            tls=self.tls,
        )

    async def start(self) -> None:
        """Start health checks and the discovery source (its first list read now)."""
        if self.source is not None:
            try:
                if isinstance(self.source, FileSource):
                    self.set_instances(self.source.load())
                else:
                    self.set_instances(await self.source.load())
            except DiscoveryError as exc:
                log.error("%s; using the static instances of %s", exc, self.name)
            self.source.start()
        hc = self.config.health_check
        if hc is not None and self.health is not None:
            if hc.type == "http":
                probe = http_probe(
                    hc.path, hc.host, hc.expected_statuses, hc.timeout_s, tls=self.probe_tls
                )
            elif hc.type == "grpc":  # over HTTP/2, as the requests (ALPN h2 with TLS)
                probe = grpc_probe(hc.service, hc.host, hc.timeout_s, tls=self.tls)
            else:
                probe = tcp_probe(hc.timeout_s, tls=self.probe_tls)
            self.checker = HealthChecker(
                self.name,
                probe,
                self.health,
                max_concurrent=hc.max_concurrent,
            )
            for host in self.hosts:
                self.checker.add(host.key, host.host, host.port)

    def _instance(self, inst: InstanceConfig) -> Instance:
        key = f"{inst.host}:{inst.port}"
        return Instance(key, self.name, inst.host, inst.port, inst.weight, inst.metadata)

    def set_instances(self, instances: Sequence[InstanceConfig]) -> None:
        """Replace the instance list (from a discovery source) in the registry; the
        cluster follows through the registry's change notification. A list the
        registry refuses (e.g. one address twice) is logged and the old one kept."""
        try:
            self.registry.replace_all(self.name, [self._instance(i) for i in instances])
        except RegistryError as exc:
            log.error("%s: instance list refused (%s); keeping the previous one", self.name, exc)

    def _registry_changed(self, service: str, changes: Changes) -> None:
        if service != self.name:
            return
        instances = self.registry.instances(service)
        old = {h.key: h for h in self.hosts}
        hosts: list[UpstreamHost] = []
        for inst in instances:
            kept = old.pop(inst.id, None)
            if kept is not None:
                kept.update(inst.weight, inst.metadata)  # same pool, health, in-flight count
                hosts.append(kept)
                continue
            pool = self._pool(inst.host, inst.port)
            host = UpstreamHost(inst.host, inst.port, inst.weight, pool, inst.metadata)
            hosts.append(host)
            if self.outliers is not None:
                self.outliers.add_host(host.key)
            if self.checker is not None:
                self.checker.add(host.key, host.host, host.port)
        self.hosts = hosts  # one assignment: requests see the old list or the new one
        self.changed()
        for gone in old.values():
            gone.pool.close()  # idle connections now; busy ones when their exchange ends
            if self.outliers is not None:
                self.outliers.remove_host(gone.key)
            if self.checker is not None:
                self.checker.remove(gone.key)
        if not self._report:
            return
        log.info(
            "%s: %d instances (+%d -%d ~%d)",
            self.name,
            len(hosts),
            len(changes.added),
            len(changes.removed),
            len(changes.updated),
        )

    def hash_key(self, request: Request) -> str | None:
        """The value a consistent_hash balancer hashes for ``request`` (None: random)."""
        hk = self.config.hash_key
        if hk is None:
            return None
        if hk.header is not None:
            return request.headers.get(hk.header)
        if hk.cookie is not None:
            return cookie_value(request.headers, hk.cookie)
        if hk.query is not None:
            values = parse_query(request.query_string).get(hk.query)
            return values[0] if values else None
        return request.client_ip if hk.source == "ip" else request.path

    def changed(self) -> None:
        """Something that decides which hosts are routable moved: views are stale."""
        self.epoch += 1

    def pick(
        self,
        exclude: Collection[UpstreamHost] = (),
        key: str | None = None,
        subset: Mapping[str, str] | None = None,
    ) -> UpstreamHost:
        """A host for the next attempt: healthy and not ejected (all of them in panic
        mode: too few healthy), and not one in ``exclude`` (the hosts a retry already
        tried) while another remains. Raises `NoHealthyUpstream` (503) when none is."""
        subset_key = frozenset(subset.items()) if subset else None
        view = self._views.get(subset_key)
        if self._valid_until != math.inf and time.monotonic() >= self._valid_until:
            self._valid_until = math.inf
            self.epoch += 1  # an ejection is over
        if view is None or view.epoch != self.epoch:
            view = self._refresh(subset_key, subset)
        hosts = view.hosts
        if not hosts:
            if view.members:
                self.no_healthy += 1
            raise NoHealthyUpstream()
        if view.panic:
            self.panic_picks += 1
        if len(hosts) == 1:
            return hosts[0]
        host = view.balancer.pick(key, exclude)
        assert isinstance(host, UpstreamHost)
        return host

    def _refresh(self, subset_key: SubsetKey, subset: Mapping[str, str] | None) -> _View:
        """Work out a view's routable hosts again and hand them to its balancer."""
        view = self._views.get(subset_key)
        if view is None:
            balancer = make_balancer(self.config.load_balancer, self._rng.random, deferred=True)
            self._tracks_load = self._tracks_load or balancer.tracks_load
            view = self._views[subset_key] = _View(balancer)
        hosts = list(select(self.hosts, subset)) if subset else list(self.hosts)
        view.members = len(hosts)
        view.panic = False
        health = self.health
        outliers = self.outliers
        now = time.monotonic()
        if outliers is not None:
            back = outliers.next_return(now)
            if back is not None:
                self._valid_until = min(self._valid_until, back)
        if health is not None:

            def usable(h: UpstreamHost) -> bool:
                return health.healthy(h.key) and not (
                    outliers is not None and outliers.ejected(h.key, now)
                )

            hosts, view.panic = routable(hosts, usable, self.panic_threshold_percent)
        elif outliers is not None:
            hosts = [h for h in hosts if not outliers.ejected(h.key, now)] or hosts
        view.hosts = hosts
        view.epoch = self.epoch
        if hosts:
            view.balancer.update(hosts)
            if isinstance(view.balancer, ConsistentHash) and view.balancer.building:
                self._build_rings()
        return view

    def _build_rings(self) -> None:
        """Run pending consistent-hash ring builds in steps between requests."""
        if self._ring_builds is None or self._ring_builds.done():
            loop = asyncio.get_running_loop()  # clusters live on one (their pools do)
            self._ring_builds = loop.create_task(self._ring_build_steps())

    async def _ring_build_steps(self) -> None:
        while True:
            pending = [
                view.balancer
                for view in self._views.values()
                if isinstance(view.balancer, ConsistentHash) and view.balancer.building
            ]
            if not pending:
                return
            for balancer in pending:
                balancer.build_step()
            await asyncio.sleep(0)

    def started(self, host: UpstreamHost) -> None:
        """A request to ``host`` starts (its count, and the balancer if it tracks load)."""
        host.active_requests += 1
        if self._tracks_load:
            for view in self._views.values():
                view.balancer.started(host)

    def finished(self, host: UpstreamHost) -> None:
        """A request to ``host`` has its answer (or failed)."""
        host.active_requests -= 1
        if self._tracks_load:
            for view in self._views.values():
                view.balancer.finished(host)

    def record(self, host: UpstreamHost, now: float, status: int, failure: Failure | None) -> None:
        """Tell the outlier detector how an attempt at ``host`` went; an ejection makes
        the views stale."""
        outliers = self.outliers
        assert outliers is not None
        ejections = outliers.ejections
        outliers.record(host.key, now, status=status, failure=failure)
        if outliers.ejections != ejections:
            self.changed()

    def open_connections(self) -> int:
        """Connections open or being opened to the upstream's instances."""
        return sum(h.pool.open for h in self.hosts) + self.connecting

    def _breaker_moved(self, old: BreakerState, new: BreakerState, reason: str) -> None:
        log.warning("circuit breaker of %s: %s -> %s (%s)", self.name, old.name, new.name, reason)

    def snapshot(self) -> dict[str, Any]:
        """Breaker, budget, limits and ejections, for the admin API."""
        now = time.monotonic()
        return {
            "name": self.name,
            "hosts": [
                {
                    "key": h.key,
                    "weight": h.weight,
                    "metadata": h.metadata,
                    "active_requests": h.active_requests,
                    "healthy": self.health.healthy(h.key) if self.health is not None else None,
                }
                for h in self.hosts
            ],
            "health": self.health.snapshot() if self.health is not None else None,
            "panic_picks": self.panic_picks,
            "no_healthy": self.no_healthy,
            "open_connections": self.open_connections(),
            "breaker": self.breaker.snapshot(now) if self.breaker is not None else None,
            "outliers": self.outliers.snapshot(now) if self.outliers is not None else None,
            "limits": self.limits.snapshot(),
            "retry_budget": self.budget.snapshot(),
        }

    def move_to(self, registry: Registry) -> None:
        """Follow ``registry`` from now on (a reload kept this cluster: the new runtime
        has its own registry). The current instance list is copied over as is, so
        hosts, pools, health and outlier state stay; discovery now updates ``registry``."""
        if registry is self.registry:
            return
        instances = self.registry.instances(self.name)
        self._unsubscribe()
        registry.replace_all(self.name, instances)
        self.registry = registry
        self._unsubscribe = registry.subscribe(self._registry_changed)

    def close(self) -> None:
        for host in self.hosts:
            host.pool.close()

    async def aclose(self) -> None:
        """Stop health checks, discovery and ring builds, then close the pools."""
        self._unsubscribe()
        if self._ring_builds is not None:
            self._ring_builds.cancel()
        if self.checker is not None:
            await self.checker.aclose()
        if self.source is not None:
            await self.source.aclose()
        self.close()


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
