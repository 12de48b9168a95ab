"""`MeshState`: the sidecar's copy of the registry and policies (no sockets)."""

from __future__ import annotations

from typing import Any

from meshgate.mesh.state import Changes, MeshState, ServiceKey

USERS = ServiceKey("default", "users")
CART = ServiceKey("default", "cart")
USERS_SHOP = ServiceKey("shop", "users")


def inst(ns: str, svc: str, iid: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "key": f"instances/{ns}/{svc}/{iid}",
        "value": {"address": "10.0.0.1", "port": port, **extra},
    }


def put(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "put", **item}


def delete(key: str) -> dict[str, Any]:
    return {"type": "delete", "key": key, "value": None}


AUTHZ = {
    "key": "policies/authz/users-from-orders",
    "value": {"name": "users-from-orders", "to": "users", "from": ["orders"]},
}
DEFAULTS = {
    "key": "policies/defaults/users",
    "value": {"service": "users", "default_action": "deny"},
}
UPSTREAM = {
    "key": "policies/upstream/users",
    "value": {"name": "users", "service": "users", "timeout_s": 3, "retries": 4},
}
ROUTE = {
    "key": "policies/route/api",
    "value": {"name": "api", "path": "/api/", "service": "users"},
}


def test_snapshot_replaces_everything_and_says_what_changed() -> None:
    state = MeshState()
    ch = state.replace(
        [
            inst("default", "users", "b", 2),
            inst("default", "users", "a", 1, weight=3, metadata={"zone": "z1"}),
            inst("shop", "users", "a", 5),
            AUTHZ,
            UPSTREAM,
            ROUTE,
        ]
    )
    assert ch.services == {USERS, USERS_SHOP}
    assert ch.services_added_or_gone and ch.authz and ch.upstream and ch.bundle is None
    assert state.services() == [USERS, USERS_SHOP]
    # Instances sorted by id; weight and metadata kept.
    users = state.instance_list(USERS)
    assert [(i.port, i.weight, i.metadata) for i in users] == [(1, 3, {"zone": "z1"}), (2, 1, {})]
    assert USERS.upstream == "users.default"
    assert list(state.authz) == ["users-from-orders"]
    assert state.upstream_policy(USERS) is not None
    assert state.upstream_policy(USERS).retries == 4  # type: ignore[union-attr]
    assert state.upstream_policy(CART) is None
    assert state.authz_version == 1

    # The same snapshot again: nothing changed, the authz version stays.
    again = state.replace(
        [
            inst("default", "users", "a", 1, weight=3, metadata={"zone": "z1"}),
            inst("default", "users", "b", 2),
            inst("shop", "users", "a", 5),
            AUTHZ,
            UPSTREAM,
        ]
    )
    assert not again
    assert state.authz_version == 1

    # A snapshot without users/shop and the policies: all of it goes.
    gone = state.replace([inst("default", "users", "a", 1, weight=3, metadata={"zone": "z1"})])
    assert gone.services == {USERS, USERS_SHOP}
    assert gone.services_added_or_gone and gone.authz and gone.upstream
    assert state.services() == [USERS]
    assert state.authz == {} and state.upstreams == {}
    assert state.authz_version == 2


def test_events_put_and_delete() -> None:
    state = MeshState()
    state.replace([inst("default", "users", "a", 1)])

    ch = state.apply([put(inst("default", "users", "b", 2))])
    assert ch.services == {USERS} and not ch.services_added_or_gone
    assert not ch.authz and not ch.upstream
    assert [i.port for i in state.instance_list(USERS)] == [1, 2]

    ch = state.apply([put(inst("default", "cart", "x", 7))])
    assert ch.services == {CART} and ch.services_added_or_gone

    ch = state.apply([delete("instances/default/users/a")])
    assert ch.services == {USERS} and not ch.services_added_or_gone
    ch = state.apply([delete("instances/default/users/b")])
    assert ch.services == {USERS} and ch.services_added_or_gone
    assert state.services() == [CART]
    assert state.instance_list(USERS) == []

    # Deleting what is not there changes nothing.
    assert not state.apply([delete("instances/default/users/b")])
    assert not state.apply([delete("instances/bad")])
    assert not state.apply([delete("policies/authz/none")])
    assert not state.apply([delete("policies/unknown-kind/x")])

    # Put then delete in one batch: the service came and went.
    ch = state.apply([put(inst("default", "users", "c", 3)), delete("instances/default/users/c")])
    assert ch.services == {USERS} and not ch.services_added_or_gone


def test_policy_events_and_authz_version() -> None:
    state = MeshState()
    assert state.authz_version == 0
    ch = state.apply([put(AUTHZ)])
    assert ch.authz and not ch.upstream and not ch.services
    assert state.authz_version == 1
    ch = state.apply([put(DEFAULTS)])
    assert ch.authz and state.defaults["users"].default_action == "deny"
    assert state.authz_version == 2
    ch = state.apply([put(UPSTREAM)])
    assert ch.upstream and not ch.authz
    assert state.authz_version == 2  # upstream policies are not authorization
    # Route policies are for gateways: stored nowhere, no change.
    assert not state.apply([put(ROUTE)])
    ch = state.apply([delete("policies/defaults/users")])
    assert ch.authz and "users" not in state.defaults
    ch = state.apply([delete("policies/upstream/users")])
    assert ch.upstream and state.upstreams == {}
    ch = state.apply([delete("policies/authz/users-from-orders")])
    assert ch.authz and state.authz == {}
    assert state.authz_version == 4


def test_bad_values_are_ignored() -> None:
    state = MeshState()
    state.replace([inst("default", "users", "a", 1), AUTHZ])
    version = state.authz_version
    bad = [
        {"key": "instances/default/users/b", "value": {"port": 2}},  # no address
        {"key": "instances/default/users/c", "value": {"address": "h", "port": "x"}},
        {"key": "instances/default/users/d", "value": {"address": "h", "port": 70000}},
        {"key": "instances/default/users/e", "value": None},
        {"key": "instances/default/users", "value": {"address": "h", "port": 1}},  # no id
        {"key": "instances/default//f", "value": {"address": "h", "port": 1}},
        {"key": "policies/authz/broken", "value": {"name": "broken"}},  # no `to`
        {"key": "policies/defaults/users", "value": {"service": "users", "default_action": "x"}},
        {"key": "policies/upstream/u", "value": {"name": "u", "service": "users", "retries": -1}},
        {"key": "policies/nonsense/x", "value": {}},
        {"key": "bundle", "value": {"roots": []}},
        {"key": "bundle", "value": "not a dict"},
        {"key": "something/else", "value": 1},
    ]
    ch = state.apply([put(b) for b in bad])
    assert not ch, ch
    assert [i.port for i in state.instance_list(USERS)] == [1]
    assert list(state.authz) == ["users-from-orders"] and state.defaults == {}
    assert state.upstreams == {}
    assert state.authz_version == version
    # Good events in the same batch still apply.
    ch = state.apply([put(bad[0]), put(inst("default", "users", "g", 9))])
    assert ch.services == {USERS}
    assert [i.port for i in state.instance_list(USERS)] == [1, 9]


def test_bundle_event() -> None:
    state = MeshState()
    ch = state.apply([put({"key": "bundle", "value": {"roots": ["PEM1", "PEM2"]}})])
    assert ch and ch.bundle == ["PEM1", "PEM2"]
    assert not ch.services and not ch.authz
    snap = state.replace([{"key": "bundle", "value": {"roots": ["PEM3"]}}])
    assert snap.bundle == ["PEM3"]


def test_changes_truthiness() -> None:
    assert not Changes()
    assert Changes(services={USERS})
    assert Changes(services_added_or_gone=True)
    assert Changes(authz=True)
    assert Changes(upstream=True)
    assert Changes(bundle=[])


def test_upstream_policy_is_picked_by_service_first_name_sorted() -> None:
    state = MeshState()
    state.replace(
        [
            {"key": "policies/upstream/z", "value": {"name": "z", "service": "users"}},
            {
                "key": "policies/upstream/a",
                "value": {"name": "a", "service": "users", "retries": 3},
            },
            {"key": "policies/upstream/c", "value": {"name": "c", "service": "cart"}},
        ]
    )
    users = state.upstream_policy(USERS)
    assert users is not None and users.name == "a" and users.retries == 3
    cart = state.upstream_policy(CART)
    assert cart is not None and cart.name == "c"
