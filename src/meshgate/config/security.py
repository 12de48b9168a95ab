"""Config models of edge security: JWT providers, API keys, route auth, CORS, IP rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from meshgate.auth.apikeys import ApiKeyError, ApiKeys
from meshgate.config.common import Model as _Model
from meshgate.config.common import token
from meshgate.core.cors import CorsError, CorsPolicy
from meshgate.core.ipfilter import IpRules

if TYPE_CHECKING:
    from meshgate.auth.jwt import JwtProvider

ALGORITHMS = (
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)

API_KEY_PROVIDER = "api_key"


class CredentialSource(_Model):
    """Where a token or key is read from: one of header (with an optional scheme
    prefix such as ``Bearer``), cookie or query parameter."""

    header: str | None = None
    prefix: str | None = Field(
        None, description="Scheme before the token in the header, e.g. 'Bearer' (any case)."
    )
    cookie: str | None = None
    query: str | None = None

    @model_validator(mode="after")
    def _one_place(self) -> CredentialSource:
        given = [f for f in ("header", "cookie", "query") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of header, cookie, query")
        if self.prefix is not None and self.header is None:
            raise ValueError("prefix only applies to a header")
        if self.header is not None:
            token(self.header, "header name")
        return self


class JwtProviderConfig(_Model):
    """Who issues the tokens a route accepts, and how to check them."""

    name: str = Field(min_length=1)
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256"], description=f"Allowed: {', '.join(ALGORITHMS)}."
    )
    issuer: str | None = Field(None, description="Required 'iss'; omitted = not checked.")
    audiences: list[str] | None = Field(
        None, description="'aud' must contain one of these; omitted = not checked."
    )
    clock_skew_s: float = Field(60.0, ge=0, le=3600)
    secret: str | None = Field(None, description="HMAC secret (HS* algorithms).")
    secret_file: str | None = None
    public_key_file: str | None = Field(None, description="PEM public key (RSA, EC, Ed25519).")
    jwks_file: str | None = None
    jwks_url: str | None = Field(None, description="Fetched in the background and cached.")
    jwks_cache_s: float = Field(600.0, gt=0)
    jwks_refresh_min_s: float = Field(
        30.0, ge=0, description="Early refresh on an unknown kid, at most this often."
    )
    jwks_timeout_s: float = Field(5.0, gt=0)
    token_from: list[CredentialSource] = Field(
        default_factory=lambda: [CredentialSource(header="authorization", prefix="Bearer")],
        description="Where the token is looked for, in order.",
    )
    scope_claims: list[str] = Field(
        default_factory=lambda: ["scope", "scp"],
        description="Claim holding the scopes (space-separated string or list), first found.",
    )
    forward_claims: dict[str, str] = Field(
        default_factory=dict,
        description="Claim -> request header sent upstream (client copies are removed).",
    )
    forward_authorization: bool = Field(
        True, description="false: strip the token's header/cookie/query before forwarding."
    )

    @field_validator("algorithms")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one algorithm")
        for alg in v:
            if alg not in ALGORITHMS:
                raise ValueError(
                    f"algorithm {alg!r} is not allowed; use some of {', '.join(ALGORITHMS)}"
                )
        return v

    @field_validator("forward_claims")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        return {claim: token(h, "header name").lower() for claim, h in v.items()}

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtProviderConfig:
        sources = ("secret", "secret_file", "public_key_file", "jwks_file", "jwks_url")
        given = [f for f in sources if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(
                f"jwt provider {self.name!r}: give exactly one of {', '.join(sources)}"
            )
        hmac_algs = [a for a in self.algorithms if a.startswith("HS")]
        if given[0] in ("secret", "secret_file"):
            if len(hmac_algs) != len(self.algorithms):
                raise ValueError(
                    f"jwt provider {self.name!r}: a secret verifies HS* algorithms only"
                )
        elif hmac_algs:
            raise ValueError(
                f"jwt provider {self.name!r}: {', '.join(hmac_algs)} needs a secret, not a "
                "public key (a public key used as an HMAC secret is the key-confusion attack)"
            )
        if self.jwks_url is not None and not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError(f"jwks_url {self.jwks_url!r} must be an http(s) URL")
        try:
            self.build()  # reads key files and checks key material; fetches nothing
        except ValueError as exc:
            raise ValueError(f"jwt provider {self.name!r}: {exc}") from None
        return self

    def build(self) -> JwtProvider:
        # PyJWT and cryptography (about 11 MB) load only when a JWT provider is configured.
        from meshgate.auth.jwt import JwtProvider

        return JwtProvider.build(
            name=self.name,
            algorithms=self.algorithms,
            issuer=self.issuer,
            audiences=self.audiences,
            clock_skew_s=self.clock_skew_s,
            secret=self.secret,
            secret_file=self.secret_file,
            public_key_file=self.public_key_file,
            jwks_file=self.jwks_file,
            jwks_url=self.jwks_url,
            jwks_cache_s=self.jwks_cache_s,
            jwks_refresh_min_s=self.jwks_refresh_min_s,
            jwks_timeout_s=self.jwks_timeout_s,
        )


class ApiKeyConsumerConfig(_Model):
    name: str = Field(min_length=1)
    keys: list[str] = Field(
        min_length=1, description="Key hashes ('sha256:...') from `meshgate hash-key`."
    )
    scopes: list[str] = Field(default_factory=list, description="For routes requiring scopes.")

    @model_validator(mode="after")
    def _valid_hashes(self) -> ApiKeyConsumerConfig:
        try:
            ApiKeys.build([(self.name, self.keys)])
        except ApiKeyError as exc:
            raise ValueError(str(exc)) from None
        return self


class ApiKeysConfig(_Model):
    """Consumers identified by API keys (stored hashed)."""

    key_from: list[CredentialSource] = Field(
        default_factory=lambda: [CredentialSource(header="x-api-key")]
    )
    consumers: list[ApiKeyConsumerConfig] = Field(default_factory=list)
    forward_key: bool = Field(False, description="Send the key upstream (default: strip it).")

    def build(self) -> ApiKeys:
        """The lookup table (names and hashes were checked: see config/models.py)."""
        return ApiKeys.build([(c.name, c.keys) for c in self.consumers])


class AuthConfig(_Model):
    """Top-level ``auth``: the providers routes can require."""

    jwt: list[JwtProviderConfig] = Field(default_factory=list)
    api_keys: ApiKeysConfig | None = None


class RouteAuthConfig(_Model):
    """A route's authentication and authorization."""

    @field_validator("providers")
    @classmethod
    def _some(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("list at least one provider (omit providers to accept every one)")
        return v

    required: bool = Field(True, description="false: anonymous requests pass (claims if any).")
    providers: list[str] | None = Field(
        None, description="JWT provider names and/or 'api_key'; omitted = every configured one."
    )
    scopes: list[str] = Field(default_factory=list)
    scopes_mode: Literal["any", "all"] = Field("any", description="any: the seed's semantics.")
    claims: dict[str, str | list[str]] = Field(
        default_factory=dict, description="Claim values required (a list: one of them)."
    )


class CorsConfig(_Model):
    """Cross-origin resource sharing for browsers (``cors: false`` on a route: none)."""

    enabled: bool = Field(True, description="false: no CORS for this route.")
    allow_origins: list[str] = Field(
        default_factory=list, description="Exact origins (scheme://host[:port]) or '*'."
    )
    allow_origin_regex: str | None = Field(None, description="Whole-origin regex.")
    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    )
    allow_headers: list[str] = Field(default_factory=list)
    expose_headers: list[str] = Field(default_factory=list)
    allow_credentials: bool = False
    max_age_s: int = Field(600, ge=0, le=86400)

    @model_validator(mode="before")
    @classmethod
    def _false_is_off(cls, v: object) -> object:
        return {"enabled": False} if v is False else v

    @model_validator(mode="after")
    def _valid_policy(self) -> CorsConfig:
        if not self.enabled:
            return self
        try:
            self.build()
        except CorsError as exc:
            raise ValueError(str(exc)) from None
        return self

    def build(self) -> CorsPolicy:
        return CorsPolicy.build(
            allow_origins=self.allow_origins,
            allow_origin_regex=self.allow_origin_regex,
            allow_methods=self.allow_methods,
            allow_headers=self.allow_headers,
            expose_headers=self.expose_headers,
            allow_credentials=self.allow_credentials,
            max_age_s=self.max_age_s,
        )


class IpRulesConfig(_Model):
    """Client addresses allowed or denied (CIDRs; deny wins)."""

    allow: list[str] = Field(default_factory=list, description="Empty: everyone not denied.")
    deny: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _valid_rules(self) -> IpRulesConfig:
        self.build()  # its ValueError names the list and the entry
        return self

    def build(self) -> IpRules:
        return IpRules.build(allow=self.allow, deny=self.deny)
