"""Prometheus metrics: cheap counters on the hot path, read by a collector on scrape.

The request path only does one dict increment (keyed by ``(route, method, status)``)
and one list increment (the duration bucket, found with `bisect`) per request, in
`RequestStats`. Everything else (upstream hosts, breakers, overflow, rate-limit
decisions) already lives in the runtime as plain counters; `GatewayCollector`
turns all of it into metric families when Prometheus scrapes ``/metrics``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from meshgate.pipeline.runtime import Runtime

# Upper bounds (seconds) of the request duration histogram's buckets (+Inf implied).
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

NO_ROUTE: Final = "(none)"  # route label of requests no route matched (404, 405)

_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> str:
    index = status // 100 - 1
    return _CLASSES[index] if 0 <= index < len(_CLASSES) else "other"


class RequestStats:
    """Per-request counters kept by `GatewayApp`; they survive reloads."""

    __slots__ = ("counts", "durations")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}  # (route, method, status)
        # route -> per-bucket counts (not cumulative, then one for +Inf) and, last, the sum
        self.durations: dict[str, list[float]] = {}

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        hist = self.durations.get(route)
        if hist is None:
            hist = self.durations[route] = new_histogram()
        hist[bisect_left(DURATION_BUCKETS, seconds)] += 1
        hist[-1] += seconds


class TunnelStats:
    """WebSocket tunnels of a listener (kept by the server): open now, opened, and
    their bytes each way (added when a tunnel closes)."""

    __slots__ = ("bytes_from_client", "bytes_to_client", "open", "total")

    def __init__(self) -> None:
        self.open = 0
        self.total = 0
        self.bytes_to_client = 0
        self.bytes_from_client = 0


def new_histogram() -> list[float]:
    """Per-bucket counts (not cumulative), one for +Inf, then the sum."""
    return [0] * (len(DURATION_BUCKETS) + 2)


class UpstreamStats:
    """Per-upstream attempt counters kept by its cluster (they live as long as the
    cluster, so a reload that keeps the upstream keeps them)."""

    __slots__ = ("durations", "errors", "retries")

    def __init__(self) -> None:
        self.durations = new_histogram()  # attempt: connection pick to response head (or failure)
        self.errors: dict[str, int] = {}  # kind: connect-failure, reset, timeout, 5xx
        self.retries = 0  # attempts after the first

    def attempt(self, seconds: float, failure: str | None, status: int) -> None:
        """Count one attempt the upstream answered (or failed) after ``seconds``."""
        hist = self.durations
        hist[bisect_left(DURATION_BUCKETS, seconds)] += 1
        hist[-1] += seconds
        kind = failure if failure is not None else ("5xx" if status >= 500 else None)
        if kind is not None:
            self.errors[kind] = self.errors.get(kind, 0) + 1


class GatewayCollector(Collector):
    """Reads the gateway's counters and runtime on every scrape."""

    def __init__(
        self,
        stats: Callable[[], RequestStats | None],
        runtime: Callable[[], Runtime | None],
        connections: Callable[[], int],
        tunnels: Callable[[], TunnelStats | None] | None = None,
    ) -> None:
        self._stats = stats
        self._runtime = runtime
        self._connections = connections
        self._tunnels = tunnels

    def describe(self) -> Iterable[Metric]:
        return ()  # nothing to check at registration; families come from collect()

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is not None:
            yield from _request_families(stats)
        conns = GaugeMetricFamily(
            "meshgate_client_connections", "Open client connections on the data listener."
        )
        conns.add_metric([], self._connections())
        yield conns
        tunnels = self._tunnels() if self._tunnels is not None else None
        if tunnels is not None:
            yield from _tunnel_families(tunnels)
        runtime = self._runtime()
        if runtime is not None:
            yield from _upstream_families(runtime)
            yield _ratelimit_family(runtime)
            yield from _cache_families(runtime)


def _tunnel_families(tunnels: TunnelStats) -> Iterator[Metric]:
    open_ = GaugeMetricFamily("meshgate_websocket_tunnels_open", "WebSocket tunnels open now.")
    open_.add_metric([], tunnels.open)
    yield open_
    total = CounterMetricFamily(
        "meshgate_websocket_tunnels", "WebSocket tunnels opened (upgrades answered 101)."
    )
    total.add_metric([], tunnels.total)
    yield total
    moved = CounterMetricFamily(
        "meshgate_websocket_bytes",
        "Bytes through closed WebSocket tunnels, by direction (to or from the client).",
        labels=["direction"],
    )
    moved.add_metric(["to_client"], tunnels.bytes_to_client)
    moved.add_metric(["from_client"], tunnels.bytes_from_client)
    yield moved


def _request_families(stats: RequestStats) -> Iterator[Metric]:
    totals: dict[tuple[str, str, str], int] = {}
    for (route, method, status), n in list(stats.counts.items()):
        key = (route, method, status_class(status))
        totals[key] = totals.get(key, 0) + n
    requests = CounterMetricFamily(
        "meshgate_requests",
        "Requests answered, by route, method and status class.",
        labels=["route", "method", "status_class"],
    )
    for labels, n in sorted(totals.items()):
        requests.add_metric(list(labels), n)
    yield requests
    hist = HistogramMetricFamily(
        "meshgate_request_duration_seconds",
        "Time from request head to response head, by route.",
        labels=["route"],
    )
    for route, values in sorted(stats.durations.items()):
        add_histogram(hist, [route], values)
    yield hist


def add_histogram(family: HistogramMetricFamily, labels: list[str], values: list[float]) -> None:
    """Add one labelled histogram kept as per-bucket counts, +Inf, then the sum."""
    values = list(values)
    cumulative: list[tuple[str, float]] = []
    running = 0.0
    for bound, count in zip(DURATION_BUCKETS, values, strict=False):
        running += count
        cumulative.append((repr(float(bound)), running))
    running += values[len(DURATION_BUCKETS)]
    cumulative.append(("+Inf", running))
    family.add_metric(labels, cumulative, values[-1])


def _upstream_families(runtime: Runtime) -> Iterator[Metric]:
    healthy = GaugeMetricFamily(
        "meshgate_upstream_hosts_healthy",
        "1 when the instance passes health checks (or has none), else 0.",
        labels=["upstream", "host"],
    )
    active = GaugeMetricFamily(
        "meshgate_upstream_active_requests",
        "Requests in flight to the instance.",
        labels=["upstream", "host"],
    )
    open_conns = GaugeMetricFamily(
        "meshgate_upstream_open_connections",
        "Connections open or being opened to the upstream's instances.",
        labels=["upstream"],
    )
    pool = GaugeMetricFamily(
        "meshgate_upstream_pool_connections",
        "Pooled connections to the upstream's instances: in use (active) or idle.",
        labels=["upstream", "state"],
    )
    durations = HistogramMetricFamily(
        "meshgate_upstream_request_duration_seconds",
        "Per attempt: from taking a connection to the upstream's response head (or failure).",
        labels=["upstream"],
    )
    errors = CounterMetricFamily(
        "meshgate_upstream_errors",
        "Attempts that failed, by kind: connect-failure, reset, timeout, 5xx (a 5xx answer).",
        labels=["upstream", "kind"],
    )
    retries = CounterMetricFamily(
        "meshgate_upstream_retries",
        "Retries made (attempts after the first).",
        labels=["upstream"],
    )
    breaker_open = GaugeMetricFamily(
        "meshgate_circuit_breaker_open",
        "1 while the upstream's circuit breaker is open, else 0.",
        labels=["upstream"],
    )
    breaker_state = GaugeMetricFamily(
        "meshgate_circuit_breaker_state",
        "1 for the breaker's current state (closed, open, half-open), 0 for the others.",
        labels=["upstream", "state"],
    )
    overflow = CounterMetricFamily(
        "meshgate_overflow",
        "Requests refused because an upstream resource limit was full, by kind.",
        labels=["upstream", "kind"],
    )
    exhausted = CounterMetricFamily(
        "meshgate_retry_budget_exhausted",
        "Retries not made because the upstream's retry budget was spent.",
        labels=["upstream"],
    )
    ejections = CounterMetricFamily(
        "meshgate_outlier_ejections",
        "Instances ejected by outlier detection.",
        labels=["upstream"],
    )
    ejected = GaugeMetricFamily(
        "meshgate_outlier_ejected_hosts",
        "Instances currently ejected by outlier detection.",
        labels=["upstream"],
    )
    panic = CounterMetricFamily(
        "meshgate_upstream_panic_picks",
        "Instances picked in panic mode (too few healthy: every instance considered).",
        labels=["upstream"],
    )
    no_healthy = CounterMetricFamily(
        "meshgate_upstream_no_healthy",
        "Requests answered 503 because the upstream had no healthy instance.",
        labels=["upstream"],
    )
    for name, cluster in sorted(runtime.clusters.items()):
        snap: dict[str, Any] = cluster.snapshot()
        for host in snap["hosts"]:
            healthy.add_metric([name, host["key"]], 0 if host["healthy"] is False else 1)
            active.add_metric([name, host["key"]], host["active_requests"])
        open_conns.add_metric([name], snap["open_connections"])
        idle = sum(len(h.pool.idle) for h in cluster.hosts)
        opened = sum(h.pool.open for h in cluster.hosts)
        pool.add_metric([name, "active"], opened - idle)
        pool.add_metric([name, "idle"], idle)
        stats = cluster.stats
        add_histogram(durations, [name], stats.durations)
        for kind, n in sorted(stats.errors.items()):
            errors.add_metric([name, kind], n)
        retries.add_metric([name], stats.retries)
        breaker = snap["breaker"]
        if breaker is not None:
            state = breaker["state"]
            breaker_open.add_metric([name], 1 if state == "open" else 0)
            for s in ("closed", "open", "half-open"):
                breaker_state.add_metric([name, s], 1 if s == state else 0)
        for kind, limit in sorted(snap["limits"].items()):
            overflow.add_metric([name, kind], limit["overflow"])
        exhausted.add_metric([name], snap["retry_budget"]["exhausted"])
        outliers = snap["outliers"]
        if outliers is not None:
            ejections.add_metric([name], outliers["ejections"])
            ejected.add_metric([name], outliers["ejected"])
        panic.add_metric([name], snap["panic_picks"])
        no_healthy.add_metric([name], snap["no_healthy"])
    yield from (healthy, active, open_conns, pool, durations, errors, retries)
    yield from (breaker_open, breaker_state, overflow)
    yield from (exhausted, ejections, ejected, panic, no_healthy)


def _ratelimit_family(runtime: Runtime) -> Metric:
    decisions = CounterMetricFamily(
        "meshgate_ratelimit_decisions",
        "Rate-limit decisions by route, limit label and decision "
        "(allowed, limited, skipped, backend_error); reset on reload.",
        labels=["route", "limit", "decision"],
    )
    for route in runtime.routes:
        stage = route.rate_limit
        if stage is None:
            continue
        for label, s in stage.stats.items():
            decisions.add_metric([route.name, label, "allowed"], s.allowed)
            decisions.add_metric([route.name, label, "limited"], s.limited)
            decisions.add_metric([route.name, label, "skipped"], s.skipped)
            decisions.add_metric([route.name, label, "backend_error"], s.backend_errors)
    return decisions


def _cache_families(runtime: Runtime) -> Iterator[Metric]:
    """The response cache: answers by x-cache result, entries written and store
    failures per route (reset on reload); the memory store's size and evictions."""
    requests = CounterMetricFamily(
        "meshgate_cache_requests",
        "Requests on cached routes by route and result (hit, miss, bypass, stale, "
        "revalidated: the x-cache value); reset on reload.",
        labels=["route", "result"],
    )
    stored = CounterMetricFamily(
        "meshgate_cache_stored", "Responses written to the cache store.", labels=["route"]
    )
    errors = CounterMetricFamily(
        "meshgate_cache_store_errors",
        "Cache store operations that failed (the request bypassed the cache).",
        labels=["route"],
    )
    for route in runtime.routes:
        stage = route.cache
        if stage is None:
            continue
        for result, n in stage.stats.results.items():
            requests.add_metric([route.name, result.lower()], n)
        stored.add_metric([route.name], stage.stats.stored)
        errors.add_metric([route.name], stage.stats.store_errors)
    yield from (requests, stored, errors)
    lru = getattr(runtime.cache_store, "lru", None)  # the memory store's LruBytes
    if lru is not None:
        entries = GaugeMetricFamily("meshgate_cache_entries", "Entries in the memory cache.")
        entries.add_metric([], len(lru))
        size = GaugeMetricFamily(
            "meshgate_cache_bytes", "Bytes the memory cache's entries are counted as."
        )
        size.add_metric([], lru.bytes_used)
        evictions = CounterMetricFamily(
            "meshgate_cache_evictions",
            "Entries evicted from the memory cache to stay within cache.max_bytes.",
        )
        evictions.add_metric([], lru.evictions)
        yield from (entries, size, evictions)


def make_registry(collector: GatewayCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
