"""What a sidecar knows about the mesh: every service's instances and the policies,
kept from the control plane's watch (or read from static files).

`MeshState` is plain data with one entry point per change (`apply`, `replace`);
it tells its listener which services' instances changed and whether the policies
did, so the sidecar pushes instance lists to its clusters (no reload) and
rebuilds the outbound routes only when the set of services or an upstream policy
changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from meshgate.config.models import InstanceConfig
from meshgate.control.policy import (
    AuthzPolicy,
    ServiceDefaults,
    UpstreamPolicy,
    parse_policy,
)

log = logging.getLogger("meshgate.mesh")

INSTANCES = "instances/"
POLICIES = "policies/"
BUNDLE = "bundle"


@dataclass(frozen=True, slots=True)
class ServiceKey:
    namespace: str
    service: str

    @property
    def upstream(self) -> str:
        """The outbound upstream's (and route's) name: ``service.namespace``."""
        return f"{self.service}.{self.namespace}"


@dataclass(slots=True)
class Changes:
    """What one batch of events changed."""

    services: set[ServiceKey] = field(default_factory=set)  # instance lists changed
    services_added_or_gone: bool = False  # a service appeared or lost its last instance
    authz: bool = False  # authz or defaults policies
    upstream: bool = False  # upstream policies
    bundle: list[str] | None = None  # new trust bundle roots

    def __bool__(self) -> bool:
        return bool(
            self.services
            or self.services_added_or_gone
            or self.authz
            or self.upstream
            or self.bundle is not None
        )


class MeshState:
    def __init__(self) -> None:
        # service -> instance id -> InstanceConfig (of the peer sidecar's inbound port)
        self.instances: dict[ServiceKey, dict[str, InstanceConfig]] = {}
        self.authz: dict[str, AuthzPolicy] = {}
        self.defaults: dict[str, ServiceDefaults] = {}
        self.upstreams: dict[str, UpstreamPolicy] = {}
        self.revision: int | None = None
        self.authz_version = 0  # moves whenever authz or defaults policies change

    # -- reading -------------------------------------------------------------------
    def instance_list(self, key: ServiceKey) -> list[InstanceConfig]:
        return [self.instances[key][i] for i in sorted(self.instances.get(key, {}))]

    def services(self) -> list[ServiceKey]:
        """Services with at least one instance, sorted."""
        return sorted(
            (k for k, v in self.instances.items() if v),
            key=lambda k: (k.namespace, k.service),
        )

    def upstream_policy(self, key: ServiceKey) -> UpstreamPolicy | None:
        """The upstream policy for ``key``'s service (by name: the first one sorted)."""
        for name in sorted(self.upstreams):
            if self.upstreams[name].service == key.service:
                return self.upstreams[name]
        return None

    # -- changing ------------------------------------------------------------------
    def replace(self, items: Iterable[dict[str, Any]]) -> Changes:
        """A snapshot: ``items`` of ``{key, value}`` replace everything."""
        before_services = set(self.services())
        old_instances = {k: dict(v) for k, v in self.instances.items()}
        old_policies = (dict(self.authz), dict(self.defaults), dict(self.upstreams))
        self.instances, self.authz, self.defaults, self.upstreams = {}, {}, {}, {}
        changes = Changes()
        for item in items:
            self._put(item["key"], item["value"], changes)
        keys = set(old_instances) | set(self.instances)
        changes.services = {k for k in keys if old_instances.get(k) != self.instances.get(k)}
        changes.services_added_or_gone = set(self.services()) != before_services
        changes.authz = (old_policies[0], old_policies[1]) != (self.authz, self.defaults)
        changes.upstream = old_policies[2] != self.upstreams
        if changes.authz:
            self.authz_version += 1
        return changes

    def apply(self, events: Iterable[dict[str, Any]]) -> Changes:
        """Watch events (``{type: put|delete, key, value}``) in order."""
        before_services = set(self.services())
        changes = Changes()
        for event in events:
            if event["type"] == "delete":
                self._delete(event["key"], changes)
            else:
                self._put(event["key"], event["value"], changes)
        changes.services_added_or_gone = set(self.services()) != before_services
        if changes.authz:
            self.authz_version += 1
        return changes

    def _put(self, key: str, value: Any, changes: Changes) -> None:
        if key == BUNDLE:
            roots = value.get("roots") if isinstance(value, dict) else None
            if isinstance(roots, list) and roots:
                changes.bundle = [str(r) for r in roots]
            return
        try:
            if key.startswith(INSTANCES):
                skey, instance_id = _instance_key(key)
                inst = InstanceConfig(
                    host=value["address"],
                    port=value["port"],
                    weight=value.get("weight", 1),
                    metadata=value.get("metadata") or {},
                )
                self.instances.setdefault(skey, {})[instance_id] = inst
                changes.services.add(skey)
            elif key.startswith(POLICIES):
                kind = key[len(POLICIES) :].partition("/")[0]
                policy = parse_policy(kind, value)
                if isinstance(policy, AuthzPolicy):
                    self.authz[policy.name] = policy
                    changes.authz = True
                elif isinstance(policy, ServiceDefaults):
                    self.defaults[policy.service] = policy
                    changes.authz = True
                elif isinstance(policy, UpstreamPolicy):
                    self.upstreams[policy.name] = policy
                    changes.upstream = True
                # route policies are for gateways: a sidecar routes by service name
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            log.warning("ignoring %s from the control plane: %s", key, exc)

    def _delete(self, key: str, changes: Changes) -> None:
        if key.startswith(INSTANCES):
            try:
                skey, instance_id = _instance_key(key)
            except ValueError:
                return
            if self.instances.get(skey, {}).pop(instance_id, None) is not None:
                changes.services.add(skey)
        elif key.startswith(POLICIES):
            kind, _, name = key[len(POLICIES) :].partition("/")
            tables: dict[str, dict[str, Any]] = {
                "authz": self.authz,
                "defaults": self.defaults,
                "upstream": self.upstreams,
            }
            table = tables.get(kind)
            if table is not None and table.pop(name, None) is not None:
                if kind == "upstream":
                    changes.upstream = True
                else:
                    changes.authz = True


def _instance_key(key: str) -> tuple[ServiceKey, str]:
    parts = key[len(INSTANCES) :].split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"malformed instance key {key!r}")
    return ServiceKey(parts[0], parts[1]), parts[2]
