"""The control plane's HTTP API (JSON over TLS), served by meshgate's own HTTP engine.

Who may call what:

* anyone reaching the port: ``GET /healthz``, ``GET /v1/bundle``, ``POST /v1/join``
  (the join token in the body is the credential);
* workloads, by their mesh certificate (mTLS): renew, register, heartbeat, deregister;
* workloads or operators (``Authorization: Bearer <admin token>``): reads and watch;
* operators only: tokens, policy changes, the CA (rotate, show).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from meshgate.control.ca import SpiffeId
from meshgate.control.service import ControlPlane, Refused, admin_token_ok
from meshgate.control.store import StoreUnavailable
from meshgate.http.errors import HTTPError
from meshgate.http.messages import Request, Response

log = logging.getLogger("meshgate.control.api")

MAX_BODY_BYTES = 64 * 1024
DEFAULT_WATCH_WAIT_S = 30.0


class Caller:
    __slots__ = ("admin", "workload")

    def __init__(self, workload: SpiffeId | None, admin: bool) -> None:
        self.workload = workload
        self.admin = admin

    def need_workload(self) -> SpiffeId:
        if self.workload is None:
            raise Refused(401, "a workload certificate (mTLS) is required")
        return self.workload

    def need_admin(self) -> None:
        if not self.admin:
            raise Refused(401, "the admin token (Authorization: Bearer ...) is required")

    def need_any(self) -> None:
        if self.workload is None and not self.admin:
            raise Refused(401, "a workload certificate (mTLS) or the admin token is required")


Handler = Callable[[Request, Caller, list[str]], Awaitable[Any]]


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        raw = await request.body.read_all(MAX_BODY_BYTES)
    except HTTPError as exc:
        raise Refused(exc.status, exc.detail) from None
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(400, f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Refused(400, "body must be a JSON object")
    return data


def _number(query: dict[str, str], name: str, default: float | None) -> float | None:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise Refused(400, f"query parameter {name} must be a number, got {text!r}")
    return value


class ControlPlaneApp:
    """``async (Request) -> Response`` for the control plane's listener."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        # (method, path segments with '*' for a parameter) -> handler
        self._routes: list[tuple[str, tuple[str, ...], Handler]] = [
            ("GET", ("healthz",), self.healthz),
            ("GET", ("v1", "bundle"), self.bundle),
            ("POST", ("v1", "join"), self.join),
            ("POST", ("v1", "renew"), self.renew),
            ("POST", ("v1", "instances"), self.register),
            ("GET", ("v1", "instances"), self.instances),
            ("POST", ("v1", "instances", "*", "heartbeat"), self.heartbeat),
            ("DELETE", ("v1", "instances", "*"), self.deregister),
            ("GET", ("v1", "services"), self.services),
            ("GET", ("v1", "policies"), self.policies),
            ("PUT", ("v1", "policies", "*"), self.put_policy),
            ("DELETE", ("v1", "policies", "*", "*"), self.delete_policy),
            ("GET", ("v1", "watch"), self.watch),
            ("POST", ("v1", "tokens"), self.create_token),
            ("GET", ("v1", "tokens"), self.list_tokens),
            ("DELETE", ("v1", "tokens", "*"), self.delete_token),
            ("GET", ("v1", "ca"), self.ca),
            ("POST", ("v1", "ca", "rotate"), self.rotate),
        ]

    def _match(self, method: str, path: str) -> tuple[Handler, list[str]] | str | None:
        parts = [p for p in path.split("/") if p]
        allowed = []
        for m, pattern, handler in self._routes:
            if len(pattern) != len(parts):
                continue
            params = []
            for want, got in zip(pattern, parts, strict=True):
                if want == "*":
                    params.append(got)
                elif want != got:
                    break
            else:
                if m == method:
                    return handler, params
                allowed.append(m)
        return ", ".join(allowed) if allowed else None

    async def __call__(self, request: Request) -> Response:
        found = self._match(request.method, request.path)
        if found is None:
            return Response.json(404, {"error": f"no such endpoint: {request.path}"})
        if isinstance(found, str):
            return Response.json(
                405, {"error": f"method {request.method} not allowed"}, {"allow": found}
            )
        handler, params = found
        try:
            caller = Caller(
                self.cp.identify(_client_der(request)),
                admin_token_ok(self.cp.config, request.headers.get("authorization")),
            )
            result = await handler(request, caller, params)
        except Refused as exc:
            return Response.json(exc.status, {"error": exc.message})
        except StoreUnavailable as exc:
            log.warning("store unavailable: %s", exc)
            return Response.json(503, {"error": f"storage unavailable: {exc}"})
        if isinstance(result, Response):
            return result
        return Response.json(200, result)

    # -- handlers --------------------------------------------------------------------
    async def healthz(self, _r: Request, _c: Caller, _p: list[str]) -> Any:
        return {"status": "ok", "revision": self.cp.store.log.revision}

    async def bundle(self, _r: Request, _c: Caller, _p: list[str]) -> Any:
        return self.cp.bundle()

    async def join(self, request: Request, _c: Caller, _p: list[str]) -> Any:
        body = await _json_body(request)
        ttl = body.get("ttl_s")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
            raise Refused(400, "ttl_s must be a number")
        return await self.cp.join(body.get("token", ""), body.get("csr", ""), ttl)

    async def renew(self, request: Request, caller: Caller, _p: list[str]) -> Any:
        sid = caller.need_workload()
        body = await _json_body(request)
        ttl = body.get("ttl_s")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
            raise Refused(400, "ttl_s must be a number")
        return self.cp.renew(sid, body.get("csr", ""), ttl)

    async def register(self, request: Request, caller: Caller, _p: list[str]) -> Any:
        sid = caller.need_workload()
        return await self.cp.register(sid, await _json_body(request))

    async def heartbeat(self, _r: Request, caller: Caller, params: list[str]) -> Any:
        return await self.cp.heartbeat(caller.need_workload(), params[0])

    async def deregister(self, _r: Request, caller: Caller, params: list[str]) -> Any:
        if not await self.cp.deregister(caller.need_workload(), params[0]):
            raise Refused(404, f"instance {params[0]!r} is not registered")
        return {"deregistered": params[0]}

    async def instances(self, request: Request, caller: Caller, _p: list[str]) -> Any:
        caller.need_any()
        return {"instances": await self.cp.instances(request.query.get("service") or None)}

    async def services(self, _r: Request, caller: Caller, _p: list[str]) -> Any:
        caller.need_any()
        return {"services": await self.cp.services()}

    async def policies(self, request: Request, caller: Caller, _p: list[str]) -> Any:
        caller.need_any()
        return {"policies": await self.cp.policies(request.query.get("kind") or None)}

    async def put_policy(self, request: Request, caller: Caller, params: list[str]) -> Any:
        caller.need_admin()
        return await self.cp.put_policy(params[0], await _json_body(request))

    async def delete_policy(self, _r: Request, caller: Caller, params: list[str]) -> Any:
        caller.need_admin()
        if not await self.cp.delete_policy(params[0], params[1]):
            raise Refused(404, f"no {params[0]} policy {params[1]!r}")
        return {"deleted": f"policies/{params[0]}/{params[1]}"}

    async def watch(self, request: Request, caller: Caller, _p: list[str]) -> Any:
        caller.need_any()
        query = request.query
        since = _number(query, "since", None)
        wait = _number(query, "timeout_s", DEFAULT_WATCH_WAIT_S)
        assert wait is not None
        wait = max(0.0, min(wait, self.cp.config.watch.max_wait_s))
        prefixes = tuple(p for p in (query.get("prefix") or "").split(",") if p)
        return await self.cp.watch(None if since is None else int(since), wait, prefixes)

    async def create_token(self, request: Request, caller: Caller, _p: list[str]) -> Any:
        caller.need_admin()
        body = await _json_body(request)
        ttl = body.get("ttl_s", 3600)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise Refused(400, "ttl_s must be a number")
        token, record = await self.cp.create_token(
            str(body.get("service", "")), str(body.get("namespace", "default")), float(ttl)
        )
        return {"token": token, **record.to_json()}

    async def list_tokens(self, _r: Request, caller: Caller, _p: list[str]) -> Any:
        caller.need_admin()
        return {"tokens": await self.cp.list_tokens()}

    async def delete_token(self, _r: Request, caller: Caller, params: list[str]) -> Any:
        caller.need_admin()
        if not await self.cp.delete_token(params[0]):
            raise Refused(404, f"no token with id {params[0]!r}")
        return {"deleted": params[0]}

    async def ca(self, _r: Request, caller: Caller, _p: list[str]) -> Any:
        caller.need_admin()
        return self.cp.ca_info()

    async def rotate(self, request: Request, caller: Caller, _p: list[str]) -> Any:
        caller.need_admin()
        body = await _json_body(request)
        overlap = body.get("overlap_s")
        if overlap is not None and (
            isinstance(overlap, bool) or not isinstance(overlap, int | float)
        ):
            raise Refused(400, "overlap_s must be a number")
        provided = None
        if "cert_pem" in body or "key_pem" in body:
            parts = [body.get(k, "") for k in ("cert_pem", "key_pem", "chain_pem")]
            if not all(isinstance(p, str) for p in parts) or not parts[0] or not parts[1]:
                raise Refused(400, "cert_pem and key_pem (PEM text) are both required")
            provided = (parts[0], parts[1], parts[2])
        return await self.cp.rotate_root(overlap, provided)


def _client_der(request: Request) -> bytes | None:
    """The DER of the client certificate the TLS handshake verified, if any."""
    tls = request.tls
    cert = tls.client_certificate if tls is not None else None
    return cert.der if cert is not None and cert.der else None
