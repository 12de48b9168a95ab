"""Authorization policies: validation and the allow/deny decision."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from meshgate.control.ca import SpiffeId
from meshgate.control.policy import (
    AuthzPolicy,
    ServiceDefaults,
    UpstreamPolicy,
    decide,
    parse_policy,
    policy_key,
)

PAYMENTS = SpiffeId("mesh.test", "default", "payments")
ADMIN_SA = SpiffeId("mesh.test", "ops", "admin")


def authz(**kw: object) -> AuthzPolicy:
    return AuthzPolicy.model_validate({"name": "p", "to": "orders", **kw})


def test_no_policy_means_the_default_action() -> None:
    assert decide([], None, "orders", PAYMENTS, "/", "GET") == "allow"
    deny = ServiceDefaults(service="orders", default_action="deny")
    assert decide([], deny, "orders", PAYMENTS, "/", "GET") == "deny"


def test_allow_policies_deny_everything_else() -> None:
    policies = [authz(**{"from": ["payments"], "paths": ["/orders/*"], "methods": ["get"]})]
    assert decide(policies, None, "orders", PAYMENTS, "/orders/7", "GET") == "allow"
    assert decide(policies, None, "orders", PAYMENTS, "/orders/7", "DELETE") == "deny"
    assert decide(policies, None, "orders", PAYMENTS, "/admin", "GET") == "deny"
    assert decide(policies, None, "orders", ADMIN_SA, "/orders/7", "GET") == "deny"
    assert decide(policies, None, "orders", None, "/orders/7", "GET") == "deny"  # no identity
    # policies of other services do not count
    assert decide(policies, None, "users", ADMIN_SA, "/", "GET") == "allow"


def test_deny_wins_and_sources_by_id_namespace_or_wildcard() -> None:
    policies = [
        authz(name="all", **{"from": ["*"]}),
        authz(name="no-admin", action="deny", paths=["/admin/*"], **{"from": ["ops/admin"]}),
        authz(name="pay", to="billing", **{"from": [PAYMENTS.uri]}),
    ]
    assert decide(policies, None, "orders", ADMIN_SA, "/admin/x", "POST") == "deny"
    assert decide(policies, None, "orders", ADMIN_SA, "/orders", "POST") == "allow"
    assert decide(policies, None, "billing", PAYMENTS, "/", "GET") == "allow"
    assert decide(policies, None, "billing", ADMIN_SA, "/", "GET") == "deny"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"from": []}, "at least 1 item"),
        ({"from": ["Pay Ments"]}, "service 'Pay Ments'"),
        ({"from": ["spiffe://x/y"]}, "not a workload SPIFFE ID"),
        ({"from": ["*"], "paths": ["admin"]}, "must start with '/'"),
        ({"from": ["*"], "methods": ["G E T"]}, "not an HTTP method"),
        ({"from": ["*"], "action": "maybe"}, "'allow' or 'deny'"),
        ({"from": ["*"], "colour": "red"}, "Extra inputs"),
    ],
)
def test_invalid_policies_say_what_is_wrong(data: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        authz(**data)


def test_keys_and_other_kinds() -> None:
    assert policy_key(authz(**{"from": ["*"]})) == "policies/authz/p"
    assert policy_key(ServiceDefaults(service="orders")) == "policies/defaults/orders"
    up = parse_policy("upstream", {"name": "orders", "service": "orders", "timeout_s": 2})
    assert isinstance(up, UpstreamPolicy) and policy_key(up) == "policies/upstream/orders"
    with pytest.raises(ValidationError, match="connect_timeout_s is above timeout_s"):
        parse_policy(
            "upstream", {"name": "o", "service": "orders", "timeout_s": 1, "connect_timeout_s": 2}
        )
    route = parse_policy(
        "route", {"name": "api", "path": "/api/", "host": "API.example", "service": "orders",
                  "methods": ["get", "post"]},
    )  # fmt: skip
    assert policy_key(route) == "policies/route/api"
    assert route.model_dump()["host"] == "api.example"
    assert route.model_dump()["methods"] == ["GET", "POST"]
    with pytest.raises(ValidationError, match="must start with '/'"):
        parse_policy("route", {"name": "x", "path": "api", "service": "orders"})
    with pytest.raises(ValueError, match="unknown policy kind 'routes'"):
        parse_policy("routes", {})
