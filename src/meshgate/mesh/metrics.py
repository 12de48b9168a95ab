"""Mesh request counters by source and destination service, and the Prometheus
families of a sidecar: the gateway families of both listeners (with a
``direction`` label) plus these."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from meshgate.observability.metrics import (
    DURATION_BUCKETS,
    GatewayCollector,
    add_histogram,
    new_histogram,
    status_class,
)


class MeshStats:
    """(direction, source, destination) -> counts by status class and a histogram."""

    __slots__ = ("counts", "durations")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str, str], int] = {}
        self.durations: dict[tuple[str, str, str], list[float]] = {}

    def record(
        self, direction: str, source: str, destination: str, status: int, seconds: float
    ) -> None:
        key = (direction, source, destination, status_class(status))
        self.counts[key] = self.counts.get(key, 0) + 1
        hkey = key[:3]
        hist = self.durations.get(hkey)
        if hist is None:
            hist = self.durations[hkey] = new_histogram()
        hist[bisect_left(DURATION_BUCKETS, seconds)] += 1
        hist[-1] += seconds


class SidecarCollector(Collector):
    """Both listeners' gateway families, each sample labelled with its direction,
    then the mesh families and the certificate's expiry."""

    def __init__(
        self,
        listeners: dict[str, GatewayCollector],
        stats: MeshStats,
        cert_expiry: Callable[[], float | None],
    ) -> None:
        self._listeners = listeners
        self._stats = stats
        self._cert_expiry = cert_expiry

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for direction, collector in self._listeners.items():
            for family in collector.collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for s in family.samples:
                    labels = {"direction": direction, **s.labels}
                    out.add_sample(s.name, labels, s.value, s.timestamp, s.exemplar)
        yield from merged.values()
        yield from self._mesh_families()

    def _mesh_families(self) -> Iterator[Metric]:
        labels = ["direction", "source", "destination"]
        requests = CounterMetricFamily(
            "meshgate_mesh_requests",
            "Requests through the sidecar by direction, calling and called service, and "
            "status class.",
            labels=[*labels, "status_class"],
        )
        for key, n in sorted(self._stats.counts.items()):
            requests.add_metric(list(key), n)
        yield requests
        hist = HistogramMetricFamily(
            "meshgate_mesh_request_duration_seconds",
            "Time from request head to response head through the sidecar.",
            labels=labels,
        )
        for hkey, values in sorted(self._stats.durations.items()):
            add_histogram(hist, list(hkey), values)
        yield hist
        expiry = self._cert_expiry()
        if expiry is not None:
            gauge = GaugeMetricFamily(
                "meshgate_mesh_certificate_expiry_timestamp_seconds",
                "When the sidecar's workload certificate expires (Unix time).",
            )
            gauge.add_metric([], expiry)
            yield gauge
