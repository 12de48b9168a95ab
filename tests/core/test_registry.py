"""Tests of the service registry (meshgate.core.registry)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core.registry import Changes, Instance, Registry, RegistryError, select


def inst(
    id: str,
    port: int = 0,
    service: str = "users",
    weight: int = 1,
    metadata: dict[str, str] | None = None,
) -> Instance:
    """Instance `id` at 10.0.0.1, on port 8000 + the number ending its id unless
    `port` is given."""
    number = int(id.lstrip("abcdefghijklmnopqrstuvwxyz") or 0)
    return Instance(id, service, "10.0.0.1", port or 8000 + number, weight, metadata or {})


Event = tuple[str, Changes]


def watched() -> tuple[Registry, list[Event]]:
    """A registry that logs every notification into the returned list."""
    registry = Registry()
    log: list[Event] = []
    registry.subscribe(lambda service, changes: log.append((service, changes)))
    return registry, log


def ids(instances: tuple[Instance, ...]) -> list[str]:
    return [instance.id for instance in instances]


# --------------------------------------------------------------------------- instances


def test_instance_key_and_defaults() -> None:
    i = Instance("a", "users", "10.0.0.1", 8080)
    assert (i.key, i.weight, dict(i.metadata)) == ("10.0.0.1:8080", 1, {})
    assert Instance("b", "users", "::1", 8080).key == "[::1]:8080"
    assert Instance("c", "users", "api.internal", 443).key == "api.internal:443"


def test_instance_metadata_is_a_frozen_copy() -> None:
    given_metadata = {"version": "v1"}
    i = Instance("a", "users", "h", 80, metadata=given_metadata)
    given_metadata["version"] = "v2"
    assert i.metadata == {"version": "v1"}
    with pytest.raises(TypeError):
        i.metadata["zone"] = "a"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        i.weight = 5  # type: ignore[misc]


def test_instances_compare_and_hash_by_value() -> None:
    one = Instance("a", "users", "h", 80, 2, {"v": "1"})
    same = Instance("a", "users", "h", 80, 2, {"v": "1"})
    assert one == same and hash(one) == hash(same)
    assert one != Instance("a", "users", "h", 80, 2, {"v": "2"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id": ""}, r"instance '' of service 'users': id must be a non-empty string, got ''"),
        ({"service": ""}, r"instance 'a' of service '': service must be a non-empty string"),
        ({"host": ""}, r"instance 'a' of service 'users': host must be a non-empty string"),
        ({"host": "[::1]"}, r"host must be a name or an address, without brackets.*'\[::1\]'"),
        ({"host": "a b"}, r"host must be .* got 'a b'"),
        ({"host": "user@h"}, r"host must be .* got 'user@h'"),
        (
            {"port": 0},
            r"instance 'a' of service 'users': port must be an integer in 1..65535, got 0",
        ),
        ({"port": 65536}, r"port must be an integer in 1..65535, got 65536"),
        ({"port": True}, r"port must be an integer in 1..65535, got True"),
        ({"port": "80"}, r"port must be an integer in 1..65535, got '80'"),
        ({"weight": 0}, r"instance 'a' of service 'users': weight must be an integer in 1..1000"),
        ({"weight": 1001}, r"weight must be an integer in 1..1000, got 1001"),
        ({"metadata": {"v": 2}}, r"metadata keys and values must be strings, got 'v': 2"),
        ({"metadata": [("v", "2")]}, r"metadata must be a mapping of strings"),
    ],
)
def test_bad_instances_are_refused_saying_which(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"id": "a", "service": "users", "host": "h", "port": 80}
    with pytest.raises(RegistryError, match=message):
        Instance(**{**fields, **kwargs})  # type: ignore[arg-type]
    assert issubclass(RegistryError, ValueError)


@pytest.mark.parametrize("weight", [1, 1000])
@pytest.mark.parametrize("port", [1, 65535])
def test_bounds_are_accepted(port: int, weight: int) -> None:
    assert Instance("a", "users", "h", port, weight).port == port


# --------------------------------------------------------------------------- register


def test_register_adds_in_order_and_notifies() -> None:
    registry, log = watched()
    a, b = inst("a1"), inst("b2")
    assert registry.register(a) == Changes(added=(a,))
    registry.register(b)
    assert registry.instances("users") == (a, b)
    assert registry.services() == ("users",)
    assert registry.version("users") == 2
    assert log == [("users", Changes(added=(a,))), ("users", Changes(added=(b,)))]


def test_register_with_a_known_id_replaces_in_place() -> None:
    registry, log = watched()
    for i in (inst("a1"), inst("b2"), inst("c3")):
        registry.register(i)
    heavier = inst("b2", weight=5)
    assert registry.register(heavier) == Changes(updated=(heavier,))
    assert registry.instances("users") == (inst("a1"), heavier, inst("c3"))
    assert log[-1] == ("users", Changes(updated=(heavier,)))


def test_moving_to_another_address_is_a_removal_and_an_addition() -> None:
    registry, log = watched()
    old = inst("a1")
    registry.register(old)
    moved = inst("a1", port=9000)
    assert registry.register(moved) == Changes(added=(moved,), removed=(old,))
    assert registry.instances("users") == (moved,)
    assert log[-1] == ("users", Changes(added=(moved,), removed=(old,)))


def test_registering_an_equal_instance_changes_nothing() -> None:
    registry, log = watched()
    registry.register(inst("a1", metadata={"v": "1"}))
    snapshot = registry.instances("users")
    changes = registry.register(inst("a1", metadata={"v": "1"}))
    assert not changes and changes == Changes()
    assert registry.instances("users") is snapshot
    assert registry.version("users") == 1
    assert len(log) == 1


def test_two_instances_may_not_share_an_address() -> None:
    registry, log = watched()
    registry.register(inst("a1", port=80))
    with pytest.raises(
        RegistryError,
        match=r"cannot register instance 'b' of service 'users': "
        r"instance 'a1' already has the address 10.0.0.1:80",
    ):
        registry.register(inst("b", port=80))
    registry.register(inst("b", port=81))
    with pytest.raises(RegistryError, match=r"already has the address 10\.0\.0\.1:81"):
        registry.register(inst("a1", port=81))
    assert ids(registry.instances("users")) == ["a1", "b"]
    assert len(log) == 2


def test_services_are_separate() -> None:
    registry = Registry()
    registry.register(inst("a1", service="users"))
    registry.register(inst("a1", service="orders"))  # same id and address, other service
    assert registry.services() == ("orders", "users")
    assert registry.version("users") == registry.version("orders") == 1
    assert registry.instances("nobody") == () and registry.version("nobody") == 0


# --------------------------------------------------------------------------- update, deregister


def test_update_changes_weight_and_metadata() -> None:
    registry, log = watched()
    registry.register(inst("a1", metadata={"version": "v1", "zone": "a"}))
    changes = registry.update("users", "a1", weight=7)
    (new,) = changes.updated
    assert (new.weight, dict(new.metadata)) == (7, {"version": "v1", "zone": "a"})
    registry.update("users", "a1", metadata={"version": "v2"})  # replaced, not merged
    (new,) = registry.instances("users")
    assert (new.weight, dict(new.metadata)) == (7, {"version": "v2"})
    assert registry.version("users") == 3 and len(log) == 3
    assert not registry.update("users", "a1", weight=7)
    assert registry.version("users") == 3


def test_update_validates_and_refuses_unknown_instances() -> None:
    registry = Registry()
    registry.register(inst("a1"))
    with pytest.raises(RegistryError, match=r"instance 'a1' of service 'users': weight .* got 0"):
        registry.update("users", "a1", weight=0)
    with pytest.raises(RegistryError, match=r"cannot update instance 'zz' of service 'users'"):
        registry.update("users", "zz", weight=2)
    assert registry.instances("users") == (inst("a1"),)


def test_deregister_removes_and_is_idempotent() -> None:
    registry, log = watched()
    a, b = inst("a1"), inst("b2")
    registry.register(a)
    registry.register(b)
    assert registry.deregister("users", "a1") == Changes(removed=(a,))
    assert registry.instances("users") == (b,)
    assert not registry.deregister("users", "a1")
    assert not registry.deregister("nobody", "a1")
    assert registry.version("users") == 3 and len(log) == 3
    registry.deregister("users", "b2")
    assert registry.instances("users") == () and registry.services() == ()
    assert log[-1] == ("users", Changes(removed=(b,)))


def test_the_version_keeps_growing_after_a_service_empties() -> None:
    registry = Registry()
    registry.register(inst("a1"))
    registry.deregister("users", "a1")
    registry.register(inst("a1"))
    assert registry.version("users") == 3


# --------------------------------------------------------------------------- replace_all


def test_replace_all_reports_the_diff() -> None:
    registry, log = watched()
    a, b, c, d = inst("a1"), inst("b2"), inst("c3"), inst("d4")
    registry.replace_all("users", [a, b, c])
    assert log == [("users", Changes(added=(a, b, c)))]
    b_heavier = inst("b2", weight=3)
    c_moved = inst("c3", port=9003)
    changes = registry.replace_all("users", [d, c_moved, b_heavier])
    assert changes == Changes(added=(c_moved, d), removed=(a, c), updated=(b_heavier,))
    assert log[-1] == ("users", changes)
    # Known instances keep their places; new ones follow in the order delivered.
    assert registry.instances("users") == (b_heavier, c_moved, d)
    assert registry.version("users") == 2


def test_replace_all_with_the_same_instances_in_another_order_changes_nothing() -> None:
    registry, log = watched()
    registry.replace_all("users", [inst("a1"), inst("b2"), inst("c3")])
    snapshot = registry.instances("users")
    assert not registry.replace_all("users", [inst("c3"), inst("a1"), inst("b2")])
    assert registry.instances("users") is snapshot
    assert registry.version("users") == 1 and len(log) == 1


def test_replace_all_with_nothing_removes_everything() -> None:
    registry, log = watched()
    registry.replace_all("users", [inst("a1"), inst("b2")])
    assert registry.replace_all("users", []) == Changes(removed=(inst("a1"), inst("b2")))
    assert registry.instances("users") == () and registry.services() == ()
    assert not registry.replace_all("users", [])
    assert len(log) == 2


def test_replace_all_may_swap_addresses_at_once() -> None:
    registry = Registry()
    registry.replace_all("users", [inst("a", port=80), inst("b", port=81)])
    registry.replace_all("users", [inst("a", port=81), inst("b", port=80)])
    assert [i.key for i in registry.instances("users")] == ["10.0.0.1:81", "10.0.0.1:80"]


@pytest.mark.parametrize(
    ("delivered", "message"),
    [
        (
            [inst("a1"), inst("b2", service="orders")],
            r"cannot replace the instances of service 'users' with "
            r"instance 'b2' of service 'orders'",
        ),
        ([inst("a1"), inst("a1", port=9)], r"service 'users': id 'a1' given twice"),
        (
            [inst("a", port=80), inst("b", port=80)],
            r"service 'users': instances 'a' and 'b' share the address 10.0.0.1:80",
        ),
    ],
)
def test_replace_all_refuses_bad_lists_whole(delivered: list[Instance], message: str) -> None:
    registry, log = watched()
    registry.replace_all("users", [inst("z9")])
    with pytest.raises(RegistryError, match=message):
        registry.replace_all("users", delivered)
    assert registry.instances("users") == (inst("z9"),)
    assert registry.version("users") == 1 and len(log) == 1


# --------------------------------------------------------------------------- snapshots


def test_snapshots_are_the_same_object_until_the_service_changes() -> None:
    registry = Registry()
    registry.register(inst("a1"))
    registry.register(inst("a1", service="orders"))
    first = registry.instances("users")
    assert registry.instances("users") is first
    registry.register(inst("b2", service="orders"))  # another service
    registry.deregister("users", "zz")  # nothing to remove
    registry.update("users", "a1", weight=1)  # no difference
    assert registry.instances("users") is first
    registry.update("users", "a1", weight=2)
    assert registry.instances("users") is not first
    assert first == (inst("a1"),)  # an old snapshot never changes


def test_subscribers_see_the_new_snapshot() -> None:
    registry = Registry()
    seen: list[tuple[tuple[str, ...], int]] = []
    registry.subscribe(
        lambda service, _: seen.append(
            (tuple(ids(registry.instances(service))), registry.version(service))
        )
    )
    registry.register(inst("a1"))
    registry.register(inst("b2"))
    registry.deregister("users", "a1")
    assert seen == [(("a1",), 1), (("a1", "b2"), 2), (("b2",), 3)]


def test_registry_snapshot_for_the_admin_api() -> None:
    registry = Registry()
    registry.register(inst("a1", weight=3, metadata={"version": "v2"}))
    registry.register(inst("a1", service="orders"))
    assert registry.snapshot() == {
        "orders": {
            "version": 1,
            "instances": [{"id": "a1", "address": "10.0.0.1:8001", "weight": 1, "metadata": {}}],
        },
        "users": {
            "version": 1,
            "instances": [
                {
                    "id": "a1",
                    "address": "10.0.0.1:8001",
                    "weight": 3,
                    "metadata": {"version": "v2"},
                }
            ],
        },
    }


# --------------------------------------------------------------------------- subscriptions


def test_unsubscribe_stops_notifications_and_is_idempotent() -> None:
    registry = Registry()
    first: list[str] = []
    second: list[str] = []
    stop_first = registry.subscribe(lambda service, _: first.append(service))
    registry.subscribe(lambda service, _: second.append(service))
    registry.register(inst("a1"))
    stop_first()
    stop_first()
    registry.register(inst("b2"))
    assert (first, second) == (["users"], ["users", "users"])


def test_subscribers_run_in_order_and_may_unsubscribe_while_notified() -> None:
    registry = Registry()
    order: list[str] = []

    def once(service: str, changes: Changes) -> None:
        order.append("once")
        stop()

    stop = registry.subscribe(once)
    registry.subscribe(lambda service, changes: order.append("always"))
    registry.register(inst("a1"))
    registry.register(inst("b2"))
    assert order == ["once", "always", "always"]


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    registry = Registry()
    seen: list[str] = []

    def broken(service: str, changes: Changes) -> None:
        raise RuntimeError("subscriber bug")

    registry.subscribe(broken)
    registry.subscribe(lambda service, changes: seen.append(service))
    with pytest.raises(RuntimeError, match="subscriber bug"):
        registry.register(inst("a1"))
    assert seen == ["users"]
    assert registry.instances("users") == (inst("a1"),)  # the change stays made
    registry.subscribe(broken)
    with pytest.raises(ExceptionGroup) as raised:
        registry.register(inst("b2"))
    assert len(raised.value.exceptions) == 2
    assert seen == ["users", "users"]


# --------------------------------------------------------------------------- select


def test_select_keeps_instances_with_every_given_key_and_value() -> None:
    a = inst("a1", metadata={"version": "v1", "zone": "eu"})
    b = inst("b2", metadata={"version": "v2", "zone": "eu"})
    c = inst("c3", metadata={"version": "v2", "zone": "us"})
    d = inst("d4")
    everyone = (a, b, c, d)
    assert select(everyone, {"version": "v2"}) == (b, c)
    assert select(everyone, {"version": "v2", "zone": "eu"}) == (b,)
    assert select(everyone, {"zone": "eu"}) == (a, b)
    assert select(everyone, {"version": "v3"}) == ()
    assert select(everyone, {"canary": ""}) == ()  # a missing key never matches
    assert select(everyone, {}) == everyone


# --------------------------------------------------------------------------- model


ops = st.lists(
    st.tuples(
        st.sampled_from(["register", "update", "deregister", "replace_all"]),
        st.lists(
            st.tuples(st.sampled_from("abcd"), st.integers(1, 3), st.integers(1, 2)),
            min_size=0,
            max_size=4,
            unique_by=lambda t: t[0],
        ),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_notifications_replay_to_the_registry_contents(
    steps: list[tuple[str, list[tuple[str, int, int]]]],
) -> None:
    """Applying every notification to a copy keyed by id rebuilds the registry's
    contents, and the version counts the non-empty changes."""
    registry, log = watched()
    copy: dict[str, Instance] = {}
    changes_made = 0
    for op, items in steps:
        made = [Instance(id, "users", "10.0.0.1", 8000 + port, w) for id, port, w in items]
        before = len(log)
        try:
            if op == "register":
                for i in made:
                    changes_made += bool(registry.register(i))
            elif op == "update":
                for id, _, weight in items:
                    if any(i.id == id for i in registry.instances("users")):
                        changes_made += bool(registry.update("users", id, weight=weight))
            elif op == "deregister":
                for id, _, _ in items:
                    changes_made += bool(registry.deregister("users", id))
            else:
                changes_made += bool(registry.replace_all("users", made))
        except RegistryError:
            pass  # a shared address: refused, nothing changed by that call
        for _, changes in log[before:]:
            for i in changes.removed:
                assert copy.pop(i.id) == i
            for i in (*changes.added, *changes.updated):
                copy[i.id] = i
        assert {i.id: i for i in registry.instances("users")} == copy
        assert len({i.key for i in registry.instances("users")}) == len(copy)
    assert registry.version("users") == changes_made == len(log)
