"""``cp.yaml``: the control plane's config, validated like gateway.yaml (errors as
``file:line: key.path: problem``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshgate.config.common import FiniteModel as _Model
from meshgate.config.loader import parse_model, read_model
from meshgate.control.ca import check_trust_domain


class ListenConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(15012, ge=0, le=65535, description="0: any free port (tests).")


class CAConfig(_Model):
    """Where the signing CA comes from. With no files, a root is generated on first
    start and kept in the store (so every control plane on one etcd shares it)."""

    cert_file: str | None = Field(None, description="PEM CA certificate (root or intermediate).")
    key_file: str | None = Field(None, description="Its unencrypted PEM private key.")
    chain_file: str | None = Field(
        None, description="Intermediate: the certificates above it, the external root last."
    )
    workload_ttl_s: float = Field(86400.0, ge=60, le=7 * 86400)
    backdate_s: float = Field(300.0, ge=0, le=3600, description="not_before = now - this.")
    root_validity_s: float = Field(10 * 365 * 86400.0, ge=86400)
    rotation_overlap_s: float = Field(
        86400.0,
        ge=0,
        description="After a root rotation the old root stays trusted this long "
        "(at least one workload certificate lifetime).",
    )

    @model_validator(mode="after")
    def _pair(self) -> CAConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file, or neither (generated root)")
        if self.chain_file is not None and self.cert_file is None:
            raise ValueError("chain_file needs cert_file and key_file")
        return self


class StorageConfig(_Model):
    type: Literal["sqlite", "etcd"] = "sqlite"
    path: str = Field("meshgate-cp.db", description="sqlite: the database file.")
    endpoints: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:2379"], description="etcd: host:port of members."
    )
    prefix: str = Field("/meshgate/", description="etcd: every key lives under this prefix.")
    timeout_s: float = Field(5.0, gt=0, le=60, description="etcd: one request's time limit.")

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one etcd endpoint")
        for ep in v:
            host, sep, port = ep.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"etcd endpoint {ep!r} must be host:port")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/") or not v.endswith("/"):
            raise ValueError("prefix must start and end with '/'")
        return v

    def endpoint_pairs(self) -> list[tuple[str, int]]:
        out = []
        for ep in self.endpoints:
            host, _, port = ep.rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out


class RegistryConfig(_Model):
    default_ttl_s: float = Field(30.0, ge=1, le=3600, description="Instance lease TTL.")
    max_ttl_s: float = Field(300.0, ge=1, le=3600)


class WatchConfig(_Model):
    history: int = Field(10_000, ge=1, description="Changes kept for resuming watchers.")
    max_wait_s: float = Field(60.0, gt=0, le=600, description="Longest long-poll.")


class ControlPlaneConfig(_Model):
    trust_domain: str = "cluster.local"
    listen: ListenConfig = ListenConfig()
    server_names: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1"],
        description="DNS names and IPs in the control plane's serving certificate.",
    )
    admin_token_hash: str = Field(
        description="sha256:<hex> of the operators' bearer token (meshgate hash-key)."
    )
    bundle_file: str | None = Field(
        None, description="Write the trust bundle (PEM) here on start and on every change."
    )
    ca: CAConfig = CAConfig()
    storage: StorageConfig = StorageConfig()
    registry: RegistryConfig = RegistryConfig()
    watch: WatchConfig = WatchConfig()
    max_token_ttl_s: float = Field(30 * 86400.0, ge=60, description="Longest join token.")

    @field_validator("trust_domain")
    @classmethod
    def _td(cls, v: str) -> str:
        return check_trust_domain(v)

    @field_validator("admin_token_hash")
    @classmethod
    def _hash(cls, v: str) -> str:
        prefix = "sha256:"
        hexpart = v[len(prefix) :]
        if (
            not v.startswith(prefix)
            or len(hexpart) != 64
            or not all(c in "0123456789abcdef" for c in hexpart)
        ):
            raise ValueError(
                "admin_token_hash must be sha256:<64 hex digits> (make one: meshgate hash-key)"
            )
        return v


def parse_control_config(text: str, filename: str = "<cp.yaml>") -> ControlPlaneConfig:
    return parse_model(ControlPlaneConfig, text, filename)


def load_control_config(path: str | Path) -> ControlPlaneConfig:
    return read_model(ControlPlaneConfig, path)
