"""The sidecar's admin listener (``admin.port``, 15000, loopback): readiness,
Prometheus metrics of both listeners, the workload certificate, the clusters."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from meshgate.gateway import Gateway
from meshgate.http.messages import Request, Response
from meshgate.mesh.metrics import SidecarCollector
from meshgate.observability.metrics import GatewayCollector

if TYPE_CHECKING:
    from meshgate.mesh.sidecar import Sidecar

log = logging.getLogger("meshgate.mesh.admin")


def _collector(gateway: Gateway | None) -> GatewayCollector:
    def stats() -> Any:
        return gateway.app.stats if gateway is not None and gateway.app is not None else None

    return GatewayCollector(
        stats,
        lambda: gateway.current_runtime if gateway is not None else None,
        lambda: gateway.client_connections() if gateway is not None else 0,
        lambda: gateway.tunnel_stats() if gateway is not None else None,
    )


class SidecarAdmin:
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(
            SidecarCollector(
                {
                    "inbound": _collector(sidecar.inbound),
                    "outbound": _collector(sidecar.outbound),
                },
                sidecar.stats,
                lambda: sidecar.identity.cert.not_after if sidecar.identity.cert else None,
            )
        )

    async def __call__(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        handler = {
            "/ready": self.ready,
            "/healthz": self.healthz,
            "/metrics": self.metrics,
            "/certs": self.certs,
            "/clusters": self.clusters,
        }.get(path)
        if handler is None:
            return Response.json(404, {"error": "not found", "path": request.path})
        if request.method not in ("GET", "HEAD"):
            return Response.json(405, {"error": "method not allowed"}, {"allow": "GET"})
        try:
            return handler()
        except Exception:
            log.exception("sidecar admin %s failed", path)
            return Response.json(500, {"error": "internal error"})

    def healthz(self) -> Response:
        return Response.json(200, {"status": "ok"})

    def ready(self) -> Response:
        ok, why = self.sidecar.ready()
        return Response.json(200 if ok else 503, {"status": why})

    def metrics(self) -> Response:
        body = generate_latest(self.registry)
        return Response(200, {"content-type": CONTENT_TYPE_LATEST}, body)

    def certs(self) -> Response:
        sidecar = self.sidecar
        ident = sidecar.identity
        cert = ident.cert
        body: dict[str, Any] = {"identity": None}
        if cert is not None:
            now = ident.clock()
            body = {
                "identity": cert.spiffe_id.uri,
                "serial": f"{cert.serial:x}",
                "not_before": cert.not_before,
                "not_after": cert.not_after,
                "expires_in_s": round(cert.not_after - now, 3),
                "expired": now >= cert.not_after,
                "renew_at": ident.renew_at() if ident.client is not None else None,
                "renewals": ident.renewals,
                "last_error": ident.last_error,
                "cert_file": ident.cert_file,
                "bundle_file": ident.bundle_file,
                "control_plane": ident.client is not None,
            }
        return Response.json(200, body)

    def clusters(self) -> Response:
        sidecar = self.sidecar
        out = sidecar.outbound
        runtime = out.current_runtime if out is not None else None
        clusters = runtime.clusters if runtime is not None else {}
        return Response.json(
            200,
            {
                "revision": sidecar.state.revision,
                "last_sync": sidecar.last_sync,
                "clusters": [clusters[name].snapshot() for name in sorted(clusters)],
            },
        )
