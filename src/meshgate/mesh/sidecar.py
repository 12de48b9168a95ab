"""`Sidecar`: a service's proxy in the mesh, built from two gateways.

* **inbound** (``inbound.port``, 15006): TLS with a client certificate required
  and verified against the mesh bundle; `InboundGuard` (identity headers,
  authorization), per-source rate limits, then the local app on loopback.
* **outbound** (``outbound.port``, 15001, plus one port per entry of
  ``outbound.ports``): plain HTTP from the app (an HTTP proxy: absolute-form
  ``http://orders/...``, or ``Host: orders``); one route and one upstream per
  service in the registry, with balancing, retries within the retry budget,
  circuit breaker and outlier detection; mTLS to the destination's inbound port,
  verifying its SPIFFE ID.
* **admin** (``admin.port``, 15000): ``/ready``, ``/healthz``, ``/metrics``,
  ``/certs``, ``/clusters``.

The control plane feeds it: identity (`IdentityManager`), one watch for instances,
policies and the bundle (`MeshState`), and this instance's registration. Instance
changes are pushed to the outbound clusters (no reload); a new or vanished
service, or a changed upstream policy, rebuilds the outbound routes (a reload:
clusters of unchanged services are kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from meshgate.config.models import GatewayConfig, InstanceConfig, ListenerConfig
from meshgate.control.client import ControlPlaneError, Registration
from meshgate.control.policy import (
    RoutePolicy,
    UpstreamPolicy,
    parse_policy,
    policy_key,
    read_policy_file,
)
from meshgate.gateway import Gateway
from meshgate.http.messages import Request, Response
from meshgate.io.server import HttpServer
from meshgate.mesh.config import SidecarConfig
from meshgate.mesh.identity import IdentityError, IdentityManager
from meshgate.mesh.inbound import InboundGuard, OutboundTag
from meshgate.mesh.metrics import MeshStats
from meshgate.mesh.state import BUNDLE, INSTANCES, POLICIES, Changes, MeshState, ServiceKey
from meshgate.observability.accesslog import AccessEntry

log = logging.getLogger("meshgate.mesh")

WATCH_WAIT_S = 30.0
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0
CLIENT_TLS_RELOAD_CHECK_S = 1.0
LOCAL_APP = "local-app"
PROTOCOL = "protocol"  # instance metadata: what the instance's sidecar wants from callers
DEREGISTER_TIMEOUT_S = 2.0  # stopping does not wait longer for an unreachable control plane
DEREGISTER_GRACE_S = 1.0  # after deregistering, before the listeners stop accepting


class SidecarError(Exception):
    """The sidecar cannot start (says why)."""


# ---------------------------------------------------------------------------
# Generated gateway configs
# ---------------------------------------------------------------------------


def inbound_config(config: SidecarConfig, identity: IdentityManager) -> GatewayConfig:
    """The inbound gateway: mTLS listener, per-source limits, one route to the app."""
    inbound, app = config.inbound, config.app
    assert app is not None, "an egress-only sidecar has no inbound listener"
    limits: list[dict[str, Any]] = []
    named = [r.source for r in inbound.rate_limits if r.source != "*"]
    for rule in inbound.rate_limits:
        limit: dict[str, Any] = {
            "name": f"source-{'any' if rule.source == '*' else rule.source}",
            "algorithm": "token_bucket",
            "rate_per_s": rule.requests_per_second,
            "burst": rule.burst or max(1, int(rule.requests_per_second)),
            "key": ["source"],
            "on_missing_key": "fallback",
            "backend": inbound.rate_limit_backend,
        }
        if rule.source == "*":
            if named:
                limit["except_sources"] = named
        else:
            limit["sources"] = [rule.source]
        limits.append(limit)
    rate_limit: dict[str, Any] = {"limits": limits}
    if config.redis is not None:
        rate_limit["redis"] = {
            "url": config.redis.url,
            "key_prefix": f"meshgate:mesh:{config.service}",
        }
    return GatewayConfig.model_validate(
        {
            "listener": {
                "host": inbound.host,
                "port": inbound.port,
                "tls": {
                    "certificates": [
                        {"cert_file": identity.cert_file, "key_file": identity.key_file}
                    ],
                    "min_version": inbound.min_tls_version,
                    "client_ca_file": identity.bundle_file,
                    "client_auth": "require",
                    "reload_check_s": CLIENT_TLS_RELOAD_CHECK_S,
                },
            },
            "admin": {"enabled": False},
            "access_log": config.access_log.model_dump(),
            "tracing": config.tracing.model_dump(),
            "timeout_s": inbound.timeout_s,
            "drain_timeout_s": config.drain_timeout_s,
            "rate_limit": rate_limit,
            "upstreams": [
                {
                    "name": LOCAL_APP,
                    "instances": [{"host": app.host, "port": app.port}],
                    "connect_timeout_s": app.connect_timeout_s,
                    "protocol": app.protocol,
                }
            ],
            "routes": [{"name": "inbound", "path": "/*", "upstream": LOCAL_APP}],
        }
    )


def mesh_protocol(instances: list[InstanceConfig]) -> str:
    """How callers' sidecars reach a service: ``h2`` (HTTP/2 over mTLS) when its
    sidecars registered ``protocol: h2`` (their app speaks HTTP/2, e.g. gRPC: trailers
    need HTTP/2 end to end), else HTTP/1.1."""
    return "h2" if any(i.metadata.get(PROTOCOL) == "h2" for i in instances) else "http1"


def _hosts(key: ServiceKey, own_namespace: str) -> list[str]:
    """Host names the app may use for a service: ``svc.ns`` (and ``svc.ns.svc``),
    plus the bare ``svc`` in the sidecar's own namespace."""
    hosts = [key.upstream, f"{key.upstream}.svc", f"{key.upstream}.svc.cluster.local"]
    if key.namespace == own_namespace:
        hosts.insert(0, key.service)
    return hosts


def outbound_config(
    config: SidecarConfig,
    identity: IdentityManager,
    services: dict[ServiceKey, list[InstanceConfig]],
    policies: dict[ServiceKey, UpstreamPolicy | None],
) -> GatewayConfig:
    """The outbound gateway: one route and one upstream per destination service."""
    out = config.outbound
    upstreams = []
    routes = []
    for key in sorted(services, key=lambda k: (k.namespace, k.service)):
        policy = policies.get(key)
        timeout_s = policy.timeout_s if policy is not None else out.timeout_s
        connect_s = out.connect_timeout_s
        if policy is not None and policy.connect_timeout_s is not None:
            connect_s = policy.connect_timeout_s
        balancer = policy.balancer if policy is not None else out.load_balancer
        if balancer == "consistent_hash":
            balancer = "least_request"  # no hash key in an upstream policy
        upstream: dict[str, Any] = {
            "name": key.upstream,
            "protocol": mesh_protocol(services[key]),
            "instances": [i.model_dump() for i in services[key]],
            "load_balancer": balancer,
            "connect_timeout_s": min(connect_s, timeout_s),
            "tls": {
                "ca_file": identity.bundle_file,
                "cert_file": identity.cert_file,
                "key_file": identity.key_file,
                "spiffe_id": f"spiffe://{identity.spiffe_id.trust_domain}/ns/{key.namespace}"
                f"/sa/{key.service}",
                "reload_check_s": CLIENT_TLS_RELOAD_CHECK_S,
            },
            "retry_budget": out.retry_budget.model_dump(),
            # Retries are bounded by the retry budget (as Envoy's retry_budget replaces
            # max_retries), not also by the engine's default of 3 in flight: with 4
            # callers on an instance that just died, the 4th got its 503 unretried.
            "limits": {"max_connections": out.max_connections, "max_retries": out.max_connections},
        }
        if out.circuit_breaker is not None:
            upstream["circuit_breaker"] = out.circuit_breaker.model_dump()
        if out.outlier_detection is not None:
            upstream["outlier_detection"] = out.outlier_detection.model_dump()
        upstreams.append(upstream)
        retry: dict[str, Any] = {
            "max_retries": policy.retries if policy is not None else out.retries,
            "retry_on": ["connect-failure", "reset", "gateway-error"],
        }
        if out.per_try_timeout_s is not None:
            retry["per_try_timeout_s"] = min(out.per_try_timeout_s, timeout_s)
        routes.append(
            {
                "name": key.upstream,
                "hosts": _hosts(key, config.namespace),
                "path": "/*",
                "upstream": key.upstream,
                "timeout_s": timeout_s,
                "retry": retry,
            }
        )
    return GatewayConfig.model_validate(
        {
            # h2c with prior knowledge too: gRPC clients call the outbound ports.
            "listener": {"host": out.host, "port": out.port, "http2": True},
            "admin": {"enabled": False},
            "access_log": config.access_log.model_dump(),
            "tracing": config.tracing.model_dump(),
            "timeout_s": out.timeout_s,
            "drain_timeout_s": config.drain_timeout_s,
            "upstreams": upstreams,
            "routes": routes,
        }
    )


class PinnedHost:
    """The outbound app behind a per-service local port: every request is for
    ``host`` (whatever Host the app sent)."""

    def __init__(self, gateway: Gateway, host: str) -> None:
        self.gateway = gateway
        self.host = host

    @property
    def access_log(self) -> Any:
        app = self.gateway.app
        return app.access_log if app is not None else None

    async def __call__(self, request: Request, entry: AccessEntry | None = None) -> Response:
        request.host = self.host
        request.headers.set("host", self.host)
        app = self.gateway.app
        assert app is not None, "the outbound gateway runs before its port map"
        return await app(request, entry)

    async def aclose(self) -> None:
        """Nothing: the outbound listener's server closes the app."""


# ---------------------------------------------------------------------------
# The sidecar
# ---------------------------------------------------------------------------


class Sidecar:
    def __init__(self, config: SidecarConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.identity = IdentityManager(config, clock=clock)
        self.state = MeshState()
        self.stats = MeshStats()
        self.inbound: Gateway | None = None
        self.outbound: Gateway | None = None
        self.port_map: dict[str, HttpServer] = {}
        self.admin: HttpServer | None = None
        self.registration: Registration | None = None
        self.started = False
        self.draining = False
        self.watch_errors = 0
        self.last_sync: float | None = None  # when the control plane last answered a watch
        self._rendered: dict[ServiceKey, list[InstanceConfig]] = {}  # first list of each
        self._tasks: list[asyncio.Task[None]] = []
        self._rebuild_lock = asyncio.Lock()
        self._routes_changed = asyncio.Event()  # set after each outbound rebuild

    # -- ports ---------------------------------------------------------------------
    @property
    def inbound_port(self) -> int:
        assert self.inbound is not None
        return self.inbound.port

    @property
    def outbound_port(self) -> int:
        assert self.outbound is not None
        return self.outbound.port

    @property
    def admin_port(self) -> int:
        assert self.admin is not None
        return self.admin.port

    def local_port(self, service: str) -> int:
        return self.port_map[service].port

    # -- start / stop --------------------------------------------------------------
    async def start(self) -> None:
        """Identity, first mesh state, listeners, registration; raise `SidecarError`."""
        try:
            await self.identity.start()
        except IdentityError as exc:
            raise SidecarError(str(exc)) from None
        self.identity.on_change = self._identity_changed
        try:
            await self._first_state()
            guard = InboundGuard(
                self.config.service,
                self.config.namespace,
                self.state,
                self.stats,
                lambda: self.identity.spiffe_id.trust_domain,
                self.identity.expired,
            )
            if self.config.app is not None:
                self.inbound = Gateway(
                    inbound_config(self.config, self.identity), front=[("mesh_inbound", guard)]
                )
                await self.inbound.start()
            tag = OutboundTag(f"{self.config.service}.{self.config.namespace}", self.stats)
            self.outbound = Gateway(self._outbound_config(), front=[("mesh_outbound", tag)])
            await self.outbound.start()
            await self._start_port_map()
            await self._start_admin()
        except BaseException:
            await self.stop()
            raise
        loop = asyncio.get_running_loop()
        if self.identity.client is not None:
            self._tasks.append(loop.create_task(self._watch(), name="mesh-watch"))
            link = self.config.control_plane
            assert link is not None
            if link.register_instance and self.inbound is not None:
                self._tasks.append(loop.create_task(self._keep_registered(), name="mesh-register"))
        self.started = True
        log.info(
            "sidecar %s (%s): inbound %s, outbound %d, admin %d",
            self.config.service,
            self.identity.spiffe_id,
            self.inbound.port if self.inbound is not None else "none (egress only)",
            self.outbound_port,
            self.admin_port,
        )

    async def _start_port_map(self) -> None:
        out = self.config.outbound
        assert self.outbound is not None
        for name, port in out.ports.items():
            service, _, namespace = name.partition(".")
            host = f"{service}.{namespace or self.config.namespace}"
            server = HttpServer(
                PinnedHost(self.outbound, host),
                ListenerConfig(host=out.host, port=port, http2=True),
                self.outbound.config.max_request_body_bytes,
            )
            await server.start()
            self.port_map[name] = server

    async def _start_admin(self) -> None:
        from meshgate.mesh.admin import SidecarAdmin

        admin = self.config.admin
        self.admin = HttpServer(
            SidecarAdmin(self), ListenerConfig(host=admin.host, port=admin.port), 64 * 1024
        )
        await self.admin.start()

    async def stop(self) -> None:
        """Deregister, drain the listeners (bounded by ``drain_timeout_s``), stop."""
        self.draining = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        client = self.identity.client
        if self.registration is not None and client is not None:
            with contextlib.suppress(ControlPlaneError, TimeoutError):
                async with asyncio.timeout(DEREGISTER_TIMEOUT_S):
                    await client.deregister(self.registration)
                # Peers' watches see the deregistration in milliseconds; until then
                # they may still open requests here: serve them before closing.
                await asyncio.sleep(min(DEREGISTER_GRACE_S, self.config.drain_timeout_s))
            self.registration = None
        for server in self.port_map.values():
            await server.shutdown(self.config.drain_timeout_s)
        self.port_map = {}
        for gateway in (self.inbound, self.outbound):
            if gateway is not None:
                await gateway.stop()
        if self.admin is not None:
            admin, self.admin = self.admin, None
            await admin.shutdown(1.0)
        await self.identity.aclose()
        self.started = False

    # -- mesh state ----------------------------------------------------------------
    async def _first_state(self) -> None:
        static = self.config.static
        if static is not None:
            self._load_static()
            return
        try:
            await self._poll(0.0)
        except ControlPlaneError as exc:
            # Serve anyway: the watch keeps trying; outbound knows no service until then.
            log.warning("no registry from the control plane yet (%s); retrying", exc)

    def _load_static(self) -> None:
        static = self.config.static
        assert static is not None
        items: list[dict[str, Any]] = []
        for name, instances in static.services.items():
            service, _, namespace = name.partition(".")
            for inst in instances:
                key = f"{INSTANCES}{namespace or self.config.namespace}/{service}/"
                items.append(
                    {
                        "key": f"{key}{inst.host}-{inst.port}",
                        "value": {
                            "address": inst.host,
                            "port": inst.port,
                            "weight": inst.weight,
                            "metadata": inst.metadata,
                        },
                    }
                )
        if static.policies_file is not None:
            items += _static_policies(static.policies_file)
        self.state.replace(items)

    async def _poll(self, timeout_s: float) -> Changes:
        client = self.identity.client
        assert client is not None
        result = await client.watch(
            self.state.revision, timeout_s=timeout_s, prefixes=(INSTANCES, POLICIES, BUNDLE)
        )
        self.last_sync = self.clock()
        if result.snapshot:
            changes = self.state.replace(result.events)
        else:
            changes = self.state.apply(result.events)
        self.state.revision = result.revision
        return changes

    async def _watch(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                changes = await self._poll(WATCH_WAIT_S)
            except ControlPlaneError as exc:
                self.watch_errors += 1
                log.warning("control plane watch failed (%s); keeping the current state", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_MIN_S
            if changes:
                await self._apply(changes)

    async def _apply(self, changes: Changes) -> None:
        if changes.bundle is not None:
            await self.identity.set_bundle(changes.bundle)
        if changes.services_added_or_gone or changes.upstream or self._protocol_moved(changes):
            await self._rebuild_outbound()
        elif changes.services:
            self._push_instances(changes.services)

    def _protocol_moved(self, changes: Changes) -> bool:
        """Whether a changed service now wants another protocol than its upstream has."""
        runtime = self.outbound.current_runtime if self.outbound is not None else None
        if runtime is None:
            return False
        for key in changes.services:
            cluster = runtime.clusters.get(key.upstream)
            instances = self.state.instance_list(key)
            if cluster and instances and cluster.config.protocol != mesh_protocol(instances):
                return True
        return False

    def _push_instances(self, services: set[ServiceKey]) -> None:
        outbound = self.outbound
        runtime = outbound.current_runtime if outbound is not None else None
        if runtime is None:
            return
        for key in services:
            cluster = runtime.clusters.get(key.upstream)
            instances = self.state.instance_list(key)
            if cluster is not None and instances:
                cluster.set_instances(instances)

    def _outbound_config(self) -> GatewayConfig:
        services: dict[ServiceKey, list[InstanceConfig]] = {}
        for key in self.state.services():
            # A cluster keeps its first list in its config (so that a rebuild keeps
            # it, with its state); the current list is pushed after the rebuild. A
            # service whose protocol moved gets a new cluster, from the current list.
            current = self.state.instance_list(key)
            first = self._rendered.get(key)
            if first is None or mesh_protocol(first) != mesh_protocol(current):
                first = self._rendered[key] = current
            services[key] = first
        self._rendered = {k: v for k, v in self._rendered.items() if k in services}
        policies = {key: self.state.upstream_policy(key) for key in services}
        return outbound_config(self.config, self.identity, services, policies)

    async def _rebuild_outbound(self) -> None:
        async with self._rebuild_lock:
            if self.outbound is None:
                return
            await self.outbound.reload(self._outbound_config())
            self._push_instances(set(self.state.services()))
            self._routes_changed.set()
            log.info("outbound routes: %s", ", ".join(k.upstream for k in self.state.services()))

    def routes_to(self) -> set[str]:
        """Destination services (``service.namespace``) the outbound side routes now."""
        runtime = self.outbound.current_runtime if self.outbound is not None else None
        return set(runtime.clusters) if runtime is not None else set()

    async def wait_for_services(self, names: set[str], timeout_s: float) -> None:
        """Until the outbound side routes every one of ``names`` (``service`` in this
        namespace, or ``service.namespace``); TimeoutError after ``timeout_s``."""
        wanted = {n if "." in n else f"{n}.{self.config.namespace}" for n in names}
        async with asyncio.timeout(timeout_s):
            while True:
                self._routes_changed.clear()
                if wanted <= self.routes_to():
                    return
                await self._routes_changed.wait()

    async def _identity_changed(self) -> None:
        if self.inbound is not None:
            await self.inbound.reload_tls()

    # -- registration --------------------------------------------------------------
    def _metadata(self) -> dict[str, str]:
        app = self.config.app
        h2 = app is not None and app.protocol == "h2c"
        return {"spiffe_id": self.identity.spiffe_id.uri, PROTOCOL: "h2" if h2 else "http1"}

    async def _keep_registered(self) -> None:
        link = self.config.control_plane
        client = self.identity.client
        assert link is not None and client is not None
        delay = RETRY_MIN_S
        while True:
            try:
                if self.registration is None:
                    self.registration = await client.register(
                        self.config.advertise_host,
                        self.inbound_port,
                        ttl_s=link.instance_ttl_s,
                        metadata=self._metadata(),
                    )
                    log.info(
                        "registered %s:%d as %s",
                        self.config.advertise_host,
                        self.inbound_port,
                        self.registration.id,
                    )
                else:
                    await client.heartbeat(self.registration)
                delay = RETRY_MIN_S
                await asyncio.sleep(self.registration.ttl_s / 3)
            except ControlPlaneError as exc:
                if exc.status == 404:  # the lease expired: register again
                    self.registration = None
                    continue
                log.warning("registration/heartbeat failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                # Within the lease: a control plane back from a restart (leases restored
                # with a full TTL) hears from this instance before its lease expires.
                delay = min(delay * 2, RETRY_MAX_S, link.instance_ttl_s / 3)

    # -- views (admin) ------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if not self.started:
            return False, "starting"
        if self.identity.expired():
            return False, "certificate expired"
        return True, "ready"


def _static_policies(path: str) -> list[dict[str, Any]]:
    """``{key, value}`` items of a policy file (the `meshgate ctl policy apply` format;
    `ConfigError` located in it); route policies are for gateways and left out."""
    items = []
    for kind, fields in read_policy_file(path):
        policy = parse_policy(kind, fields)
        if not isinstance(policy, RoutePolicy):
            items.append({"key": policy_key(policy), "value": policy.model_dump(by_alias=True)})
    return items
