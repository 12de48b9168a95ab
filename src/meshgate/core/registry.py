"""Service registry (sans-IO): the instances of each service, and who to tell when they change.

Writers (discovery sources, the control plane, the admin API) call `register`,
`update`, `deregister` or `replace_all`, all on one thread (the event loop).
Readers on the hot path call `instances(service)`: an immutable tuple, the same
object until the service changes, swapped in whole on each change, so a reader
never locks and never sees half a change. `version(service)` grows by one on
every change, so a reader may cache what it derives from a snapshot (a metadata
subset, a hash ring) and rebuild it only when the version moves.

Every change is reported to the subscribers as `Changes` (added, removed and
updated instances) after the new snapshot is in place: pools drain the removed
addresses, health tables stop checking them, balancers reweigh.

Instances are identified by `id` within their service. Two instances of one
service never share an address (`key`, "host:port"), since pools, health and
outlier state are kept per address. Health is not part of an instance: it lives
in `meshgate.core.health`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol, TypeVar

_HOST_FORBIDDEN = frozenset("[]/@")


class RegistryError(ValueError):
    """An instance is malformed, or a change does not fit the registry's contents."""


def _check_text(instance: Instance, what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise RegistryError(f"{_who(instance)}: {what} must be a non-empty string, got {value!r}")


def _check_int(instance: Instance, what: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RegistryError(
            f"{_who(instance)}: {what} must be an integer in {low}..{high}, got {value!r}"
        )


def _who(instance: Instance) -> str:
    return f"instance {instance.id!r} of service {instance.service!r}"


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance of a service: where it listens, its weight and its metadata
    (e.g. version, zone), validated on creation.

    `metadata` is copied into a read-only mapping, so an instance never changes
    after creation. `key` is the address, "host:port", with an IPv6 address in
    brackets ("[::1]:8080"); pools, health and outlier state use it.
    """

    id: str
    service: str
    host: str
    port: int
    weight: int = 1
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_text(self, "id", self.id)
        _check_text(self, "service", self.service)
        _check_text(self, "host", self.host)
        if any(c.isspace() or c in _HOST_FORBIDDEN for c in self.host):
            raise RegistryError(
                f"{_who(self)}: host must be a name or an address, without brackets, "
                f"spaces, '/' or '@', got {self.host!r}"
            )
        _check_int(self, "port", self.port, 1, 65535)
        _check_int(self, "weight", self.weight, 1, 1000)
        if not isinstance(self.metadata, Mapping):
            raise RegistryError(
                f"{_who(self)}: metadata must be a mapping of strings, got {self.metadata!r}"
            )
        for name, value in self.metadata.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise RegistryError(
                    f"{_who(self)}: metadata keys and values must be strings, "
                    f"got {name!r}: {value!r}"
                )
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        host = f"[{self.host}]" if ":" in self.host else self.host
        object.__setattr__(self, "key", f"{host}:{self.port}")


@dataclass(frozen=True, slots=True)
class Changes:
    """What one change did to a service's instances.

    `updated` holds the new versions of instances that kept their id and their
    address (a new weight or new metadata). An instance that moves to another
    address is in `removed` (the old one) and in `added` (the new one), so that
    whoever keeps state per address drops the old address. Empty (false) when
    nothing changed.
    """

    added: tuple[Instance, ...] = ()
    removed: tuple[Instance, ...] = ()
    updated: tuple[Instance, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)


_NOTHING = Changes()

Subscriber = Callable[[str, Changes], None]
"""Called after each change with the service's name and what changed."""


class _HasMetadata(Protocol):
    @property
    def metadata(self) -> Mapping[str, str]: ...


M = TypeVar("M", bound=_HasMetadata)


def select(instances: Iterable[M], metadata: Mapping[str, str]) -> tuple[M, ...]:
    """The `instances` (anything with a ``metadata`` mapping: registry instances,
    a cluster's hosts) whose metadata holds every key of `metadata` with the same
    value, in their order (all of them for an empty `metadata`)."""
    wanted = metadata.items()
    return tuple(instance for instance in instances if wanted <= instance.metadata.items())


class Registry:
    """The instances of every service (see the module).

    A service's instances keep their order: a new instance goes last, a
    replaced one keeps its place, and `replace_all` adds the instances it does
    not know yet after the others, so a discovery source that delivers the same
    instances in another order (DNS rotating its answers) changes nothing.
    A service with no instances left is not listed by `services()`, but its
    version keeps growing if instances come back.
    """

    __slots__ = ("_instances", "_next_token", "_subscribers", "_versions")

    def __init__(self) -> None:
        self._instances: dict[str, tuple[Instance, ...]] = {}
        self._versions: dict[str, int] = {}
        self._subscribers: dict[int, Subscriber] = {}
        self._next_token = 0

    def services(self) -> tuple[str, ...]:
        """The names of the services with at least one instance, sorted."""
        return tuple(sorted(self._instances))

    def instances(self, service: str) -> tuple[Instance, ...]:
        """The instances of `service` (none for an unknown service): the same tuple
        object as long as the service does not change."""
        return self._instances.get(service, ())

    def version(self, service: str) -> int:
        """How many changes `service` has seen (0 for an unknown service)."""
        return self._versions.get(service, 0)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback` after every change, in the order of subscription, until
        the returned function is called (calling it again does nothing).

        A callback that raises does not stop the others: once all have run, the
        exception is raised again to the writer (in an ExceptionGroup if several
        callbacks raised); the change itself stays made.
        """
        token = self._next_token
        self._next_token += 1
        self._subscribers[token] = callback

        def unsubscribe() -> None:
            self._subscribers.pop(token, None)

        return unsubscribe

    def register(self, instance: Instance) -> Changes:
        """Add `instance`, or replace the instance of its service with its id (in
        its place). Registering an equal instance again changes nothing."""
        current = self._instances.get(instance.service, ())
        for index, old in enumerate(current):
            if old.id == instance.id:
                if old == instance:
                    return _NOTHING
                self._check_address(current, instance)
                updated = (*current[:index], instance, *current[index + 1 :])
                return self._commit(instance.service, updated, _replaced(old, instance))
        self._check_address(current, instance)
        return self._commit(instance.service, (*current, instance), Changes(added=(instance,)))

    def update(
        self,
        service: str,
        id: str,
        *,
        weight: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Changes:
        """Give instance `id` of `service` a new weight and/or new metadata (the
        whole mapping, not merged); an argument left None stays as it is."""
        old = self._find(service, id)
        if old is None:
            raise RegistryError(f"cannot update instance {id!r} of service {service!r}: unknown")
        new = replace(
            old,
            weight=old.weight if weight is None else weight,
            metadata=old.metadata if metadata is None else metadata,
        )
        return self.register(new)

    def deregister(self, service: str, id: str) -> Changes:
        """Remove instance `id` of `service`; an unknown instance changes nothing
        (a lease may expire after the instance said goodbye)."""
        removed = self._find(service, id)
        if removed is None:
            return _NOTHING
        kept = tuple(instance for instance in self._instances[service] if instance is not removed)
        return self._commit(service, kept, Changes(removed=(removed,)))

    def replace_all(self, service: str, instances: Iterable[Instance]) -> Changes:
        """Make `instances` the whole list of `service`, for sources that deliver
        the whole list each time; reports only the differences.

        Refused as a whole (nothing changes) if an instance belongs to another
        service, or two share an id or an address.
        """
        delivered = tuple(instances)
        ids: set[str] = set()
        keys: dict[str, str] = {}
        for instance in delivered:
            if instance.service != service:
                raise RegistryError(
                    f"cannot replace the instances of service {service!r} with {_who(instance)}"
                )
            if instance.id in ids:
                raise RegistryError(
                    f"cannot replace the instances of service {service!r}: "
                    f"id {instance.id!r} given twice"
                )
            ids.add(instance.id)
            other = keys.setdefault(instance.key, instance.id)
            if other != instance.id:
                raise RegistryError(
                    f"cannot replace the instances of service {service!r}: instances "
                    f"{other!r} and {instance.id!r} share the address {instance.key}"
                )
        fresh = {instance.id: instance for instance in delivered}
        kept: list[Instance] = []
        added: list[Instance] = []
        removed: list[Instance] = []
        updated: list[Instance] = []
        for old in self._instances.get(service, ()):
            new = fresh.pop(old.id, None)
            if new is None:
                removed.append(old)
                continue
            kept.append(new)
            if new == old:
                continue
            if new.key == old.key:
                updated.append(new)
            else:
                removed.append(old)
                added.append(new)
        kept.extend(fresh.values())
        added.extend(fresh.values())
        changes = Changes(tuple(added), tuple(removed), tuple(updated))
        if not changes:
            return _NOTHING
        return self._commit(service, tuple(kept), changes)

    def snapshot(self) -> dict[str, object]:
        """Every service's version and instances, for the admin API."""
        return {
            service: {
                "version": self.version(service),
                "instances": [
                    {
                        "id": instance.id,
                        "address": instance.key,
                        "weight": instance.weight,
                        "metadata": dict(instance.metadata),
                    }
                    for instance in instances
                ],
            }
            for service, instances in sorted(self._instances.items())
        }

    def _find(self, service: str, id: str) -> Instance | None:
        for instance in self._instances.get(service, ()):
            if instance.id == id:
                return instance
        return None

    @staticmethod
    def _check_address(current: tuple[Instance, ...], instance: Instance) -> None:
        for other in current:
            if other.key == instance.key and other.id != instance.id:
                raise RegistryError(
                    f"cannot register {_who(instance)}: instance {other.id!r} "
                    f"already has the address {instance.key}"
                )

    def _commit(self, service: str, instances: tuple[Instance, ...], changes: Changes) -> Changes:
        if instances:
            self._instances[service] = instances
        else:
            self._instances.pop(service, None)
        self._versions[service] = self._versions.get(service, 0) + 1
        errors: list[Exception] = []
        for callback in tuple(self._subscribers.values()):
            try:
                callback(service, changes)
            except Exception as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup(f"registry subscribers failed on service {service!r}", errors)
        return changes


def _replaced(old: Instance, new: Instance) -> Changes:
    """The changes of replacing `old` by `new` (same id)."""
    if old.key == new.key:
        return Changes(updated=(new,))
    return Changes(added=(new,), removed=(old,))
