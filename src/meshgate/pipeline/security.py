"""Edge security stages: IP rules, CORS, authentication and authorization.

They run first in a route's chain, in that order, before the route's own
middleware: a denied address never reaches CORS or auth; a CORS-enabled
route adds its headers to every answer, 401s included (a browser can only
read an error that carries them); the auth stage puts the caller's identity
in ``ctx.state`` (``"jwt"``: claims, ``"consumer"``: who, ``"auth_provider"``)
for the middleware, rate-limit keys and header templates (``${jwt.sub}``)
that follow. Decisions are made by the sans-IO classes in `core/` and
`meshgate.auth`; this module reads requests and writes answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from meshgate.auth.tokens import TokenError, scopes_of
from meshgate.config.security import (
    API_KEY_PROVIDER,
    ApiKeysConfig,
    CredentialSource,
    JwtProviderConfig,
    RouteAuthConfig,
)
from meshgate.core.clientip import client_ip
from meshgate.core.cors import CorsPolicy
from meshgate.core.ipfilter import IpRules
from meshgate.core.matchers import parse_query
from meshgate.core.rewrite import QueryRewrite
from meshgate.http.messages import Request, cookie_value
from meshgate.pipeline.context import Middleware, Next, RequestContext

if TYPE_CHECKING:
    from meshgate.auth.jwt import JwtProvider  # PyJWT + cryptography: loaded by config

log = logging.getLogger("meshgate.auth")

REALM = "meshgate"


# --- IP rules ---------------------------------------------------------------------


class IpGuard:
    """The ip_rules stage: 403 for clients the rules refuse (global rules first, then
    the route's). Also consulted for CORS preflights, which skip the chain."""

    __slots__ = ("rules", "trusted")

    def __init__(self, rules: Sequence[IpRules], trusted: Sequence[Any]) -> None:
        self.rules = tuple(rules)
        self.trusted = tuple(trusted)

    def address(self, request: Request) -> str:
        if not self.trusted:
            return request.client_ip
        forwarded = request.headers.get_all("x-forwarded-for")
        return client_ip(request.client_ip, forwarded, self.trusted)

    def permits(self, request: Request) -> bool:
        addr = self.address(request)
        return all(rule.permits(addr) for rule in self.rules)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        if not self.permits(ctx.request):
            refuse_address(ctx)
            return
        await call_next()


def refuse_address(ctx: RequestContext) -> None:
    log.info("client refused by ip rules (request id %s)", ctx.request_id)
    ctx.error(403, "client address not allowed")


# --- CORS -------------------------------------------------------------------------


def cors_stage(policy: CorsPolicy) -> Middleware:
    """CORS headers on every answer of the route (preflights are answered by the app)."""

    async def cors(ctx: RequestContext, call_next: Next) -> None:
        origin = ctx.request.headers.get("origin")
        await call_next()
        resp = ctx.response
        if resp is not None:
            fields = policy.response_headers(origin)
            if fields:
                vary = [v for n, v in fields if n == "vary"]
                resp.headers.set_fields([(n, v) for n, v in fields if n != "vary"])
                for value in vary:
                    _add_vary(resp.headers.get_all("vary"), value, resp.headers.add)

    return cors


def _add_vary(existing: list[str], value: str, add: Callable[[str, str], None]) -> None:
    have = {t.strip().lower() for line in existing for t in line.split(",")}
    if value.lower() not in have and "*" not in have:
        add("vary", value)


# --- credentials ----------------------------------------------------------------------


Reader = Callable[[Request], str | None]


def credential_reader(source: CredentialSource) -> Reader:
    """Read a token or key from where ``source`` says (None when absent)."""
    if source.header is not None:
        name = source.header.lower()
        prefix = source.prefix.lower() if source.prefix is not None else None

        def from_header(request: Request) -> str | None:
            value = request.headers.get(name)
            if not value:
                return None
            if prefix is None:
                return value.strip() or None
            scheme, _, rest = value.strip().partition(" ")
            return rest.strip() or None if scheme.lower() == prefix else None

        return from_header
    if source.cookie is not None:
        cookie = source.cookie
        return lambda request: cookie_value(request.headers, cookie) or None
    assert source.query is not None
    param = source.query

    def from_query(request: Request) -> str | None:
        values = parse_query(request.query_string).get(param)
        return values[0] if values else None

    return from_query


def strip_credential(request: Request, source: CredentialSource) -> None:
    """Remove the credential ``source`` names from the request before it goes upstream."""
    if source.header is not None:
        request.headers.remove(source.header)
    elif source.cookie is not None:
        name = source.cookie
        kept = []
        for line in request.headers.get_all("cookie"):
            pairs = [p for p in line.split(";") if p.strip().partition("=")[0] != name]
            if any(p.strip() for p in pairs):
                kept.append(";".join(pairs).strip())
        request.headers.remove("cookie")
        for line in kept:
            request.headers.add("cookie", line)
    elif source.query is not None:
        query = QueryRewrite({}, [source.query]).apply(request.query_string)
        request.set_target(f"{request.path}?{query}" if query else request.path)


class JwtAuth:
    """One configured JWT provider with where its tokens come from."""

    __slots__ = ("config", "provider", "readers")

    def __init__(self, config: JwtProviderConfig, provider: JwtProvider) -> None:
        self.config = config
        self.provider = provider
        self.readers = tuple((s, credential_reader(s)) for s in config.token_from)


class KeyAuth:
    """The API-key consumers with where keys come from."""

    __slots__ = ("config", "keys", "readers", "scopes")

    def __init__(self, config: ApiKeysConfig) -> None:
        self.config = config
        self.keys = config.build()
        self.scopes = {c.name: frozenset(c.scopes) for c in config.consumers}
        self.readers = tuple((s, credential_reader(s)) for s in config.key_from)


def build_jwt(config: JwtProviderConfig) -> JwtAuth:
    return JwtAuth(config, config.build())


# --- the auth stage -----------------------------------------------------------------------


class AuthStage:
    """Authenticate with the route's providers, then check scopes and claims."""

    __slots__ = ("claims", "forwarded", "jwt", "keys", "required", "scopes", "scopes_all")

    def __init__(
        self, config: RouteAuthConfig, jwt: Sequence[JwtAuth], keys: KeyAuth | None
    ) -> None:
        names = config.providers
        self.jwt = tuple(j for j in jwt if names is None or j.config.name in names)
        use_keys = names is None or API_KEY_PROVIDER in names
        self.keys = keys if use_keys else None
        self.required = config.required
        self.scopes = frozenset(config.scopes)
        self.scopes_all = config.scopes_mode == "all"
        self.claims = {
            k: frozenset([v] if isinstance(v, str) else v) for k, v in config.claims.items()
        }
        # Headers the gateway fills from claims: a client's own copy never passes,
        # whoever the caller turns out to be (anonymous, API key, another provider).
        self.forwarded = tuple({h for j in self.jwt for h in j.config.forward_claims.values()})

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        request = ctx.request
        for header in self.forwarded:
            request.headers.remove(header)
        found = False
        failure: TokenError | None = None
        for auth in self.jwt:
            for _, read in auth.readers:
                token = read(request)
                if token is None:
                    continue
                found = True
                try:
                    claims = await auth.provider.verify(token)
                except TokenError as exc:
                    failure = failure or exc
                    continue
                if not self._authorized(ctx, scopes_of(claims, auth.config.scope_claims), claims):
                    return
                self._admit_jwt(ctx, auth, claims)
                return await call_next()
        keys = self.keys
        if keys is not None:
            for source, read in keys.readers:
                presented = read(request)
                if presented is None:
                    continue
                found = True
                consumer = keys.keys.lookup(presented)
                if consumer is None:
                    self._unauthorized(ctx, "invalid API key", 'Key realm="meshgate"')
                    return
                if not self._authorized(ctx, keys.scopes.get(consumer, frozenset()), {}):
                    return
                ctx.state["consumer"] = consumer
                ctx.state["auth_provider"] = API_KEY_PROVIDER
                if not keys.config.forward_key:
                    strip_credential(request, source)
                return await call_next()
        if failure is not None:
            challenge = (
                f'Bearer realm="{REALM}", error="invalid_token", '
                f'error_description="{_quoted(failure.description)}"'
            )
            self._unauthorized(ctx, f"invalid token: {failure.description}", challenge)
            return
        if found or self.required:
            self._unauthorized(ctx, "missing credentials", self._challenge())
            return
        await call_next()  # optional auth, anonymous caller

    def _challenge(self) -> str:
        return f'Bearer realm="{REALM}"' if self.jwt else f'Key realm="{REALM}"'

    def _unauthorized(self, ctx: RequestContext, reason: str, challenge: str) -> None:
        log.info("401 %s (request id %s)", reason, ctx.request_id)
        ctx.error(401, reason, {"www-authenticate": challenge})

    def _authorized(
        self, ctx: RequestContext, scopes: frozenset[str] | set[str], claims: dict[str, Any]
    ) -> bool:
        """Scopes (any/all) and required claim values; answers 403 when not."""
        wanted = self.scopes
        if wanted:
            ok = wanted <= scopes if self.scopes_all else bool(wanted & scopes)
            if not ok:
                need = " ".join(sorted(wanted))
                log.info("403 insufficient scope (request id %s)", ctx.request_id)
                ctx.error(
                    403,
                    "insufficient scope",
                    {
                        "www-authenticate": f'Bearer realm="{REALM}", '
                        f'error="insufficient_scope", scope="{_quoted(need)}"'
                    },
                )
                return False
        for name, allowed in self.claims.items():
            value = claims.get(name)
            values = value if isinstance(value, list) else [value]
            if not any(isinstance(v, str | int | float) and str(v) in allowed for v in values):
                log.info("403 claim %s not allowed (request id %s)", name, ctx.request_id)
                ctx.error(403, f"claim {name} not allowed")
                return False
        return True

    def _admit_jwt(self, ctx: RequestContext, auth: JwtAuth, claims: dict[str, Any]) -> None:
        state = ctx.state
        state["jwt"] = claims
        state["auth_provider"] = auth.config.name
        sub = claims.get("sub")
        if sub is not None:
            state["consumer"] = str(sub)
        headers = ctx.request.headers
        for claim, header in auth.config.forward_claims.items():
            value = claims.get(claim)
            if value is not None:
                headers.set(header, _claim_text(value))
        if not auth.config.forward_authorization:
            for source, _ in auth.readers:
                strip_credential(ctx.request, source)


def _claim_text(value: object) -> str:
    text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text.replace("\r", "").replace("\n", "").replace("\0", "")


def _quoted(text: str) -> str:
    """Safe inside a quoted-string of WWW-Authenticate."""
    return "".join(c for c in text if c >= " " and c not in '"\\\x7f')
