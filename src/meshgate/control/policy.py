"""What the control plane distributes besides endpoints: authorization policies,
per-service default actions and upstream (route) policies; plus `decide`, the
authorization check a sidecar runs on each inbound request.

Stored under ``policies/authz/<name>``, ``policies/defaults/<service>``,
``policies/upstream/<name>`` and ``policies/route/<name>``; every change is a store
change with its own revision.

Evaluation (`decide`), as in Istio: a matching ``deny`` policy wins; then a matching
``allow`` policy allows; when the service has allow policies and none matched, the
request is denied; otherwise the service's default action applies (allow unless set).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from meshgate.config.common import FiniteModel as _Model
from meshgate.config.loader import ConfigError, ConfigProblem, LocatedDocument
from meshgate.control.ca import SpiffeId, check_name
from meshgate.control.kinds import KINDS

_POLICY_NAME = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,61}[a-z0-9])?$")
_METHOD = re.compile(r"^[A-Z]+$")


def _policy_name(value: str) -> str:
    if not _POLICY_NAME.match(value):
        raise ValueError(f"name {value!r} must be 1-63 lower-case letters, digits, '.' or '-'")
    return value


def _check_methods(v: object) -> object:
    """Method names upper-cased; ValueError for one that is not an HTTP token."""
    if isinstance(v, list):
        v = [m.upper() if isinstance(m, str) else m for m in v]
        for m in v:
            if not isinstance(m, str) or (m != "*" and not _METHOD.match(m)):
                raise ValueError(f"method {m!r} is not an HTTP method")
    return v


def _source(value: str) -> str:
    """A source is ``*``, a service name, ``<namespace>/<service>`` or a SPIFFE ID."""
    if value == "*":
        return value
    if value.startswith("spiffe://"):
        SpiffeId.parse(value)
        return value
    ns, sep, service = value.partition("/")
    if sep:
        check_name(ns, "namespace")
        check_name(service, "service")
    else:
        check_name(value, "service")
    return value


class AuthzPolicy(_Model):
    """Who may call ``to``, on which paths and methods."""

    name: str
    to: str = Field(description="The service receiving the requests.")
    from_: list[str] = Field(
        alias="from",
        min_length=1,
        description="Callers: '*', a service name, 'namespace/service' or a SPIFFE ID.",
    )
    paths: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Exact paths, or prefixes ending in '*' ('/admin/*'); '*' is any path.",
    )
    methods: list[str] = Field(default_factory=lambda: ["*"], description="'*' is any method.")
    action: Literal["allow", "deny"] = "allow"

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _policy_name(v)

    @field_validator("to")
    @classmethod
    def _to(cls, v: str) -> str:
        return check_name(v, "service")

    @field_validator("from_")
    @classmethod
    def _from(cls, v: list[str]) -> list[str]:
        return [_source(s) for s in v]

    @field_validator("paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        for p in v:
            if p != "*" and not p.startswith("/"):
                raise ValueError(f"path {p!r} must start with '/' (or be '*')")
        return v

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v: object) -> object:
        return _check_methods(v)

    def matches(self, source: SpiffeId | None, path: str, method: str) -> bool:
        return (
            _source_matches(self.from_, source)
            and any(_path_matches(p, path) for p in self.paths)
            and ("*" in self.methods or method.upper() in self.methods)
        )


class ServiceDefaults(_Model):
    """The action for requests to ``service`` that no policy decides."""

    service: str
    default_action: Literal["allow", "deny"] = "allow"

    @field_validator("service")
    @classmethod
    def _service(cls, v: str) -> str:
        return check_name(v, "service")


class UpstreamPolicy(_Model):
    """How sidecars and gateways call ``service``."""

    name: str
    service: str
    timeout_s: float = Field(15.0, gt=0, le=3600)
    retries: int = Field(1, ge=0, le=10)
    balancer: Literal["round_robin", "least_request", "random", "consistent_hash"] = "least_request"
    connect_timeout_s: float | None = Field(
        None, gt=0, le=600, description="Default: 5 s, or timeout_s when shorter."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _policy_name(v)

    @field_validator("service")
    @classmethod
    def _service(cls, v: str) -> str:
        return check_name(v, "service")

    @model_validator(mode="after")
    def _timeouts(self) -> UpstreamPolicy:
        if self.connect_timeout_s is not None and self.connect_timeout_s > self.timeout_s:
            raise ValueError("connect_timeout_s is above timeout_s")
        return self


class RoutePolicy(_Model):
    """Requests for ``host`` (any when None) under ``path`` go to ``service``: what a
    gateway or an outbound sidecar routes."""

    name: str
    path: str = Field("/", description="A path prefix ('/api/'); '/' is every path.")
    host: str | None = Field(None, description="Host header to match (None: any).")
    methods: list[str] = Field(default_factory=lambda: ["*"], description="'*' is any method.")
    service: str
    namespace: str = "default"
    timeout_s: float | None = Field(None, gt=0, le=3600)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _policy_name(v)

    @field_validator("service")
    @classmethod
    def _service(cls, v: str) -> str:
        return check_name(v, "service")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return check_name(v, "namespace")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c.isspace() for c in v):
            raise ValueError(f"path {v!r} must start with '/' and have no spaces")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c.isspace() or c in "/@" for c in v)):
            raise ValueError(f"host {v!r} must be a host name, without spaces, '/' or '@'")
        return v.lower() if v else v

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v: object) -> object:
        return _check_methods(v)


Policy = AuthzPolicy | ServiceDefaults | UpstreamPolicy | RoutePolicy


def parse_policy(kind: str, data: object) -> Policy:
    """The policy of ``kind`` in ``data`` (pydantic ValidationError or ValueError)."""
    if kind == "authz":
        return AuthzPolicy.model_validate(data)
    if kind == "defaults":
        return ServiceDefaults.model_validate(data)
    if kind == "upstream":
        return UpstreamPolicy.model_validate(data)
    if kind == "route":
        return RoutePolicy.model_validate(data)
    raise ValueError(f"unknown policy kind {kind!r}: one of {', '.join(KINDS)}")


def policy_key(policy: Policy) -> str:
    if isinstance(policy, AuthzPolicy):
        return f"policies/authz/{policy.name}"
    if isinstance(policy, ServiceDefaults):
        return f"policies/defaults/{policy.service}"
    if isinstance(policy, RoutePolicy):
        return f"policies/route/{policy.name}"
    return f"policies/upstream/{policy.name}"


def policy_json(policy: Policy) -> str:
    return policy.model_dump_json(by_alias=True)


def _source_matches(sources: list[str], source: SpiffeId | None) -> bool:
    for s in sources:
        if s == "*":
            return True
        if source is None:
            continue
        if s.startswith("spiffe://"):
            if s == source.uri:
                return True
        elif "/" in s:
            if s == f"{source.namespace}/{source.service}":
                return True
        elif s == source.service:
            return True
    return False


def _path_matches(pattern: str, path: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern


def decide(
    policies: Iterable[AuthzPolicy],
    defaults: ServiceDefaults | None,
    to: str,
    source: SpiffeId | None,
    path: str,
    method: str,
) -> Literal["allow", "deny"]:
    """Whether ``source`` (None: no verified identity) may call ``method path`` on ``to``."""
    mine = [p for p in policies if p.to == to]
    if any(p.action == "deny" and p.matches(source, path, method) for p in mine):
        return "deny"
    allows = [p for p in mine if p.action == "allow"]
    if any(p.matches(source, path, method) for p in allows):
        return "allow"
    if allows:
        return "deny"
    return defaults.default_action if defaults is not None else "allow"


def read_policy_file(path: str) -> list[tuple[str, dict[str, Any]]]:
    """``[{kind: authz|defaults|upstream|route, ...fields}]`` from YAML, checked locally so
    mistakes are reported as ``file:line: key: problem``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(path, 0, "(file)", exc.strerror or str(exc))]) from None
    doc = LocatedDocument(text, path)
    data = doc.data
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ConfigError([doc.problem((), "expected a policy or a list of policies")])
    out, problems = [], []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or item.get("kind") not in KINDS:
            problems.append(doc.problem((i, "kind"), f"kind must be one of {', '.join(KINDS)}"))
            continue
        fields = {k: v for k, v in item.items() if k != "kind"}
        try:
            parse_policy(item["kind"], fields)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                msg = err["msg"].removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    msg = "unknown key"
                problems.append(doc.problem((i, *err["loc"]), msg))
            continue
        out.append((item["kind"], fields))
    if problems:
        raise ConfigError(problems)
    return out
