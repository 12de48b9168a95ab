"""The control plane's operations over a `Store`: admission (join tokens, CSRs,
renewals), the registry with leases, policies, the CA and its rotation, watches.

Errors callers cause raise `Refused` with an HTTP status and a message that says
what is wrong; the API turns them into JSON answers. Secrets (join tokens, keys)
are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from meshgate.control.ca import (
    CAError,
    CAState,
    CertificateAuthority,
    CSRRejected,
    IdentityRejected,
    SpiffeId,
    check_name,
    generate_root,
    load_signer,
    prune,
    rotate,
)
from meshgate.control.config import ControlPlaneConfig
from meshgate.control.kinds import KINDS
from meshgate.control.policy import parse_policy, policy_json, policy_key
from meshgate.control.store import Entry, Store, StoreUnavailable, watched
from meshgate.control.watch import Event
from meshgate.core.registry import Instance, RegistryError

log = logging.getLogger("meshgate.control")

CA_KEY = "ca/state"
BUNDLE_KEY = "bundle"
TOKEN_PREFIX = "tokens/"
INSTANCE_PREFIX = "instances/"
TOKEN_MARK = "mgjt_"
CONTROL_PLANE_SERVICE = "meshgate-control-plane"
CONTROL_PLANE_NAMESPACE = "meshgate-system"
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
PRUNE_INTERVAL_S = 30.0


class Refused(Exception):
    """A request the control plane turns down: ``status`` and a clear ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    service: str
    namespace: str
    expires_at: float
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "namespace": self.namespace,
            "expires_at": self.expires_at,
            "created_at": self.created_at,
        }


def _instance_json(entry: Entry) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(entry.value)
    data["revision"] = entry.revision
    return data


class ControlPlane:
    """One control-plane process's view of the shared store."""

    def __init__(
        self,
        config: ControlPlaneConfig,
        store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.ca: CertificateAuthority | None = None
        self.on_ca_change: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._pruner: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        await self.store.open()
        self.store.listeners.append(self._on_store_event)
        state = await self._load_or_create_ca()
        self._set_ca(state)
        await self._publish_bundle()
        self._pruner = asyncio.create_task(self._prune_loop(), name="ca-pruner")

    async def close(self) -> None:
        tasks = [t for t in (self._pruner, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()

    async def _load_or_create_ca(self) -> CAState:
        entry = await self.store.get(CA_KEY)
        if entry is None:
            state = self._initial_ca_state()
            if not await self.store.create(CA_KEY, json.dumps(state.to_json())):
                entry = await self.store.get(CA_KEY)  # another control plane was first
            else:
                log.info("CA initialised for trust domain %s", state.trust_domain)
                return state
        assert entry is not None
        state = CAState.from_json(json.loads(entry.value))
        if state.trust_domain != self.config.trust_domain:
            raise CAError(
                f"the store's CA serves trust domain {state.trust_domain!r}, the config says "
                f"{self.config.trust_domain!r}"
            )
        return state

    def _initial_ca_state(self) -> CAState:
        cfg = self.config.ca
        if cfg.cert_file is not None and cfg.key_file is not None:
            try:
                cert = open(cfg.cert_file, encoding="ascii").read()  # noqa: SIM115
                key = open(cfg.key_file, encoding="ascii").read()  # noqa: SIM115
                chain = (
                    open(cfg.chain_file, encoding="ascii").read()  # noqa: SIM115
                    if cfg.chain_file
                    else ""
                )
            except OSError as exc:
                raise CAError(f"ca: cannot read {exc.filename}: {exc.strerror}") from None
            signer = load_signer(cert, key, chain)
        else:
            signer = generate_root(
                self.config.trust_domain, self.clock(), self.config.ca.root_validity_s
            )
        return CAState(self.config.trust_domain, (signer,))

    def _set_ca(self, state: CAState) -> None:
        self.ca = CertificateAuthority(
            state,
            self.clock,
            workload_ttl_s=self.config.ca.workload_ttl_s,
            backdate_s=self.config.ca.backdate_s,
        )
        for callback in self.on_ca_change:
            callback()

    def _on_store_event(self, event: Event) -> None:
        """Another control plane changed the CA: sign with what it wrote (and keep
        ``bundle_file`` current)."""
        if event.key == BUNDLE_KEY and event.value is not None and self.config.bundle_file:
            roots = json.loads(event.value)["roots"]
            task = asyncio.create_task(self._write_bundle_file(roots), name="bundle-file")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if event.key == CA_KEY and event.value is not None:
            try:
                state = CAState.from_json(json.loads(event.value))
            except (CAError, ValueError, KeyError) as exc:
                log.error("ignoring an unusable CA state in the store: %s", exc)
                return
            if self.ca is None or state != self.ca.state:
                self._set_ca(state)

    @property
    def authority(self) -> CertificateAuthority:
        if self.ca is None:
            raise Refused(503, "control plane is starting")
        return self.ca

    async def _publish_bundle(self) -> None:
        roots = self.authority.bundle()
        text = json.dumps({"trust_domain": self.authority.trust_domain, "roots": roots})
        current = await self.store.get(BUNDLE_KEY)
        if current is None or current.value != text:
            await self.store.put(BUNDLE_KEY, text)
        await self._write_bundle_file(roots)

    async def _write_bundle_file(self, roots: list[str]) -> None:
        if not self.config.bundle_file:
            return
        path = Path(self.config.bundle_file)
        try:
            await asyncio.to_thread(path.write_text, "".join(roots), "ascii")
        except OSError as exc:
            log.error("cannot write bundle_file %s: %s", path, exc.strerror)

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL_S)
            try:
                await self.prune_roots()
            except (StoreUnavailable, OSError) as exc:
                log.warning("could not prune retired roots: %s", exc)

    async def prune_roots(self) -> bool:
        """Drop signers whose overlap ended; whether anything changed."""
        ca = self.authority
        pruned = prune(ca.state, self.clock())
        if pruned == ca.state:
            return False
        await self.store.put(CA_KEY, json.dumps(pruned.to_json()))
        self._set_ca(pruned)
        await self._publish_bundle()
        return True

    # -- CA ----------------------------------------------------------------------
    def bundle(self) -> dict[str, Any]:
        return {"trust_domain": self.authority.trust_domain, "roots": self.authority.bundle()}

    async def rotate_root(
        self, overlap_s: float | None, provided: tuple[str, str, str] | None = None
    ) -> dict[str, Any]:
        """A new issuing CA: generated, or ``provided`` as PEM (certificate, key, chain
        above it; e.g. a new intermediate of an external root)."""
        overlap = self.config.ca.rotation_overlap_s if overlap_s is None else overlap_s
        if overlap < 0:
            raise Refused(400, "overlap_s must be >= 0")
        ca = self.authority
        if provided is not None:
            try:
                new = load_signer(*provided)
            except (CAError, ValueError) as exc:
                raise Refused(400, f"the new CA is unusable: {exc}") from None
            if new.not_after <= self.clock():
                raise Refused(400, "the new CA certificate has expired")
        else:
            new = generate_root(ca.trust_domain, self.clock(), self.config.ca.root_validity_s)
        state = rotate(ca.state, new, self.clock(), overlap)
        await self.store.put(CA_KEY, json.dumps(state.to_json()))
        self._set_ca(state)
        await self._publish_bundle()
        log.info("CA rotated; the previous ones stay trusted for %g s", overlap)
        return self.ca_info()

    def ca_info(self) -> dict[str, Any]:
        ca = self.authority
        out = []
        for i, s in enumerate(ca.state.signers):
            out.append(
                {
                    "subject": s.cert.subject.rfc4514_string(),
                    "not_after": s.not_after,
                    "retire_at": s.retire_at,
                    "issuing": i == len(ca.state.signers) - 1,
                    "serial": f"{s.cert.serial_number:x}",
                }
            )
        return {
            "trust_domain": ca.trust_domain,
            "signers": out,
            "workload_ttl_s": ca.workload_ttl_s,
        }

    def issue_server_cert(self, public_key: Any) -> tuple[str, float, float]:
        """The control plane's serving certificate chain, with not_before and not_after."""
        sid = SpiffeId(self.authority.trust_domain, CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE)
        issued = self.authority.issue_server(public_key, sid, self.config.server_names)
        return issued.chain_pem, issued.not_before, issued.not_after

    # -- admission ---------------------------------------------------------------
    async def create_token(
        self, service: str, namespace: str, ttl_s: float
    ) -> tuple[str, TokenRecord]:
        try:
            check_name(service, "service")
            check_name(namespace, "namespace")
        except ValueError as exc:
            raise Refused(400, str(exc)) from None
        if not 60 <= ttl_s <= self.config.max_token_ttl_s:
            raise Refused(400, f"ttl_s must be 60..{self.config.max_token_ttl_s:g}")
        token = TOKEN_MARK + secrets.token_urlsafe(32)
        digest = token_hash(token)
        now = self.clock()
        record = TokenRecord(digest[:12], service, namespace, now + ttl_s, now)
        await self.store.put(TOKEN_PREFIX + digest, json.dumps(record.to_json()))
        log.info("join token %s created for %s/%s", record.id, namespace, service)
        return token, record

    async def list_tokens(self) -> list[dict[str, Any]]:
        entries, _ = await self.store.list(TOKEN_PREFIX)
        now = self.clock()
        out = []
        for e in entries:
            data = json.loads(e.value)
            data["expired"] = data["expires_at"] <= now
            out.append(data)
        return out

    async def delete_token(self, token_id: str) -> bool:
        entries, _ = await self.store.list(TOKEN_PREFIX)
        for e in entries:
            if e.key[len(TOKEN_PREFIX) :].startswith(token_id) and len(token_id) >= 8:
                return await self.store.delete(e.key)
        return False

    async def _token_identity(self, token: str) -> SpiffeId:
        if not isinstance(token, str) or not token.startswith(TOKEN_MARK):
            raise Refused(401, "join token missing or malformed")
        entry = await self.store.get(TOKEN_PREFIX + token_hash(token))
        if entry is None:
            raise Refused(401, "join token unknown or revoked")
        data = json.loads(entry.value)
        if data["expires_at"] <= self.clock():
            raise Refused(401, f"join token {data['id']} expired")
        return SpiffeId(self.authority.trust_domain, data["namespace"], data["service"])

    async def join(self, token: str, csr: str, ttl_s: float | None = None) -> dict[str, Any]:
        """First certificate: the token decides the identity; the CSR must ask for it."""
        sid = await self._token_identity(token)
        out = self._sign(csr, sid, ttl_s)
        log.info("joined: %s", sid)
        return out

    def renew(self, caller: SpiffeId, csr: str, ttl_s: float | None = None) -> dict[str, Any]:
        """A new certificate for the identity the caller's current certificate proves."""
        return self._sign(csr, caller, ttl_s)

    def _sign(self, csr: str, sid: SpiffeId, ttl_s: float | None) -> dict[str, Any]:
        if not isinstance(csr, str) or not csr:
            raise Refused(400, "csr (PEM text) is required")
        try:
            issued = self.authority.sign_csr(csr, sid, ttl_s)
        except IdentityRejected as exc:
            raise Refused(403, f"CSR rejected: {exc}") from None
        except CSRRejected as exc:
            raise Refused(400, f"CSR rejected: {exc}") from None
        except CAError as exc:
            raise Refused(503, str(exc)) from None
        return {
            "spiffe_id": sid.uri,
            "certificate": issued.cert_pem,
            "chain": issued.chain_pem,
            "not_before": issued.not_before,
            "not_after": issued.not_after,
            "bundle": self.authority.bundle(),
        }

    def identify(self, peer_cert: bytes | None) -> SpiffeId | None:
        """The workload identity a TLS client certificate proves (None: no certificate)."""
        if peer_cert is None:
            return None
        try:
            return self.authority.verify_peer(peer_cert)
        except ValueError as exc:
            raise Refused(401, str(exc)) from None

    # -- registry ----------------------------------------------------------------
    @staticmethod
    def _instance_key(sid: SpiffeId, instance_id: str) -> str:
        return f"{INSTANCE_PREFIX}{sid.namespace}/{sid.service}/{instance_id}"

    async def register(self, caller: SpiffeId, body: dict[str, Any]) -> dict[str, Any]:
        reg = self.config.registry
        host: Any = body.get("address", body.get("host"))
        port: Any = body.get("port")
        instance_id = body.get("id") or f"{host}-{port}"
        if not isinstance(instance_id, str) or not _INSTANCE_ID.match(instance_id):
            raise Refused(400, "id must be 1-128 letters, digits, '.', '_', ':' or '-'")
        ttl = body.get("ttl_s", reg.default_ttl_s)
        if (
            isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not (1 <= ttl <= reg.max_ttl_s)
        ):
            raise Refused(400, f"ttl_s must be a number 1..{reg.max_ttl_s:g}")
        try:
            inst = Instance(
                id=instance_id,
                service=caller.service,
                host=host,
                port=port,
                weight=body.get("weight", 1),
                metadata=body.get("metadata") or {},
            )
        except RegistryError as exc:
            raise Refused(400, str(exc)) from None
        key = self._instance_key(caller, instance_id)
        old = await self.store.get(key)
        lease = await self.store.grant(float(ttl))
        value = {
            "id": inst.id,
            "service": inst.service,
            "namespace": caller.namespace,
            "address": inst.host,
            "port": inst.port,
            "weight": inst.weight,
            "metadata": dict(inst.metadata),
            "spiffe_id": caller.uri,
            "lease": lease,
            "ttl_s": float(ttl),
        }
        try:
            revision = await self.store.put(key, json.dumps(value), lease=lease)
        except KeyError:  # the lease expired between grant and put (a very short ttl_s)
            raise Refused(503, "the new lease expired before use: register again") from None
        if old is not None and old.lease is not None and old.lease != lease:
            with contextlib.suppress(StoreUnavailable):
                await self.store.revoke(old.lease)
        return {"instance": value, "revision": revision}

    async def heartbeat(self, caller: SpiffeId, instance_id: str) -> dict[str, Any]:
        entry = await self.store.get(self._instance_key(caller, instance_id))
        if entry is None or entry.lease is None or not await self.store.keepalive(entry.lease):
            raise Refused(
                404, f"instance {instance_id!r} of {caller.service} is not registered "
                "(its lease expired?): register again",
            )  # fmt: skip
        return {"id": instance_id, "ttl_s": json.loads(entry.value)["ttl_s"]}

    async def deregister(self, caller: SpiffeId, instance_id: str) -> bool:
        key = self._instance_key(caller, instance_id)
        entry = await self.store.get(key)
        if entry is None:
            return False
        await self.store.delete(key)
        if entry.lease is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.store.revoke(entry.lease)
        return True

    async def instances(self, service: str | None = None) -> list[dict[str, Any]]:
        entries, _ = await self.store.list(INSTANCE_PREFIX)
        out = [_instance_json(e) for e in entries]
        return [i for i in out if service is None or i["service"] == service]

    async def services(self) -> list[dict[str, Any]]:
        counts: dict[tuple[str, str], int] = {}
        for inst in await self.instances():
            k = (inst["namespace"], inst["service"])
            counts[k] = counts.get(k, 0) + 1
        return [
            {"namespace": ns, "service": svc, "instances": n}
            for (ns, svc), n in sorted(counts.items())
        ]

    # -- policies ----------------------------------------------------------------
    async def put_policy(self, kind: str, data: object) -> dict[str, Any]:
        if kind not in KINDS:
            raise Refused(404, f"unknown policy kind {kind!r}: one of {', '.join(KINDS)}")
        try:
            policy = parse_policy(kind, data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: "
                f"{e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors(include_url=False)
            )
            raise Refused(400, f"invalid {kind} policy: {problems}") from None
        key = policy_key(policy)
        revision = await self.store.put(key, policy_json(policy))
        return {"key": key, "revision": revision}

    async def delete_policy(self, kind: str, name: str) -> bool:
        if kind not in KINDS:
            raise Refused(404, f"unknown policy kind {kind!r}: one of {', '.join(KINDS)}")
        return await self.store.delete(f"policies/{kind}/{name}")

    async def policies(self, kind: str | None = None) -> list[dict[str, Any]]:
        prefix = f"policies/{kind}/" if kind else "policies/"
        entries, _ = await self.store.list(prefix)
        return [
            {"key": e.key, "revision": e.revision, "policy": json.loads(e.value)} for e in entries
        ]

    # -- watch -------------------------------------------------------------------
    async def watch(
        self, since: int | None, timeout_s: float, prefixes: tuple[str, ...]
    ) -> dict[str, Any]:
        """Changes after ``since`` (waiting up to ``timeout_s`` for one), or a snapshot
        when ``since`` is None, compacted away, or from another store's history."""

        def wanted(key: str) -> bool:
            return watched(key) and (not prefixes or key.startswith(prefixes))

        if (
            since is not None
            and since > self.store.log.revision
            and since > await self.store.revision()
        ):
            since = None  # a revision this store never had (store reset)
        if since is not None and since >= 0:
            deadline = asyncio.get_running_loop().time() + timeout_s
            while True:
                events = self.store.log.since(since)
                if events is None:
                    break  # compacted: snapshot
                mine = [e for e in events if wanted(e.key)]
                remaining = deadline - asyncio.get_running_loop().time()
                if mine or remaining <= 0 or self.store.closing:
                    return {
                        "revision": max(since, self.store.log.revision),
                        "events": [_event_json(e) for e in mine],
                    }
                await self.store.wait_after(max(since, self.store.log.revision), remaining)
        entries, revision = await self.store.list("")
        items = [
            {"key": e.key, "revision": e.revision, "value": json.loads(e.value)}
            for e in entries
            if wanted(e.key)
        ]
        return {"revision": revision, "snapshot": True, "items": items}


def _event_json(e: Event) -> dict[str, Any]:
    return {
        "revision": e.revision,
        "type": "delete" if e.value is None else "put",
        "key": e.key,
        "value": None if e.value is None else json.loads(e.value),
    }


def admin_token_ok(config: ControlPlaneConfig, authorization: str | None) -> bool:
    if not authorization or not authorization.lower().startswith("bearer "):
        return False
    token = authorization[7:].strip()
    digest = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    return hmac.compare_digest(digest, config.admin_token_hash)
