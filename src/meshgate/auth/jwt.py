"""JWT verification for one provider (issuer): algorithms, keys, claims, a verified-token cache.

`JwtProvider.verify` checks a compact JWS token and returns its claims, or raises
`TokenError`, whose `description` is short, fixed text (never token content) fit for
``WWW-Authenticate: Bearer error="invalid_token", error_description="..."``.

Order of checks: the header is parsed first, by this module; its `alg` must be one of
the provider's algorithms (``none``, in any casing, never is) before any key is looked
at. The key is chosen by `kid` among the keys able to verify that `alg` (see
`meshgate.auth.jwks`), and PyJWT checks the signature with ``algorithms=[alg]``, then
`iss`, `aud` (when audiences are configured: the token's aud, string or list, must
contain one of them) and the required claims. `exp`, `nbf` and `iat` (numbers) are
checked here against the provider's injected clock, with `clock_skew_s` of leeway:
expired when ``exp <= now - skew``, refused when ``nbf`` or ``iat > now + skew``.
PyJWT's own time checks are off because PyJWT reads the system clock, which would make
the cache and the checks disagree under an injected clock.

Verified tokens are cached (LRU, at most `cache_size`, keyed by the token string): an
entry lasts until the token's `exp` (not exp + skew: after exp the token is checked
again) and at most `CACHE_MAX_AGE_S`, and all entries are dropped when a JWKS URL
serves a different key set, so a removed key stops working at its next refresh. A hot
token then costs a dict lookup and a clock reading.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jwt
from jwt.exceptions import (
    DecodeError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)

from meshgate.auth.jwks import (
    ALGORITHMS,
    HMAC_ALGORITHMS,
    KeySet,
    KeySetError,
    RemoteJwks,
    load_jwks_file,
    load_public_key_file,
    load_secret_file,
    secret_key_set,
)
from meshgate.auth.tokens import TokenError

if TYPE_CHECKING:
    from jwt.types import Options

CACHE_MAX_AGE_S = 300.0  # a verified token is checked again at least this often

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed token: expected three dot-separated parts")
    segment = parts[0]
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise TokenError("malformed token: the header is not base64url")
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise TokenError("malformed token: the header is not JSON") from None
    if not isinstance(header, dict):
        raise TokenError("malformed token: the header is not a JSON object")
    return header


def _time_claim(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"malformed token: {name} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        raise TokenError(f"malformed token: {name} is out of range") from None
    if math.isnan(number):
        raise TokenError(f"malformed token: {name} is not a number")
    return number


class JwtProvider:
    """Verifies the tokens of one issuer; build it with `build` (see the module docstring).

    `clock` gives Unix seconds (the time `exp`, `nbf` and `iat` are compared with).
    """

    __slots__ = (
        "_audiences",
        "_cache",
        "_clock",
        "_keys",
        "_options",
        "_remote",
        "algorithms",
        "cache_size",
        "clock_skew_s",
        "issuer",
        "name",
        "required_claims",
    )

    def __init__(
        self,
        *,
        name: str,
        algorithms: Iterable[str],
        keys: KeySet | RemoteJwks,
        issuer: str | None = None,
        audiences: Sequence[str] | None = None,
        clock_skew_s: float = 60.0,
        required_claims: Iterable[str] = ("exp",),
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Checks the settings (ValueError); `keys` must suit `algorithms` (`build` does that)."""
        self.name = name
        self.algorithms = _algorithms(algorithms, name)
        if isinstance(audiences, str):
            audiences = (audiences,)
        if audiences is not None and (
            not audiences or not all(isinstance(a, str) and a for a in audiences)
        ):
            raise ValueError(f"jwt provider {name!r}: audiences must be non-empty strings")
        if not 0.0 <= clock_skew_s < math.inf:
            raise ValueError(f"jwt provider {name!r}: clock_skew_s must be >= 0")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"jwt provider {name!r}: cache_size must be an integer >= 0")
        self.issuer = issuer
        self._audiences = None if audiences is None else list(audiences)
        self.clock_skew_s = clock_skew_s
        self.required_claims = tuple(required_claims)
        self.cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._options: Options = {
            "verify_signature": True,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_iss": issuer is not None,
            "verify_aud": audiences is not None,
            "require": list(self.required_claims),
        }
        if isinstance(keys, RemoteJwks):
            self._keys: KeySet | None = None
            self._remote: RemoteJwks | None = keys
            keys.on_change = self._cache.clear
        else:
            self._keys = keys
            self._remote = None

    @classmethod
    def build(
        cls,
        *,
        name: str,
        algorithms: Iterable[str],
        issuer: str | None = None,
        audiences: Sequence[str] | None = None,
        clock_skew_s: float = 60.0,
        secret: str | None = None,
        secret_file: str | None = None,
        public_key_file: str | None = None,
        jwks_file: str | None = None,
        jwks_url: str | None = None,
        jwks_cache_s: float = 600.0,
        jwks_refresh_min_s: float = 30.0,
        jwks_timeout_s: float = 5.0,
        required_claims: Iterable[str] = ("exp",),
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> JwtProvider:
        """A provider with keys from exactly one source. HS* algorithms need `secret`
        (UTF-8) or `secret_file`, and the other sources only take the other algorithms:
        an HMAC secret and a public key are never interchangeable. Files are read now
        (`KeySetError` on bad key material); a JWKS URL is fetched by `start`."""
        algs = _algorithms(algorithms, name)
        sources = {
            "secret": secret,
            "secret_file": secret_file,
            "public_key_file": public_key_file,
            "jwks_file": jwks_file,
            "jwks_url": jwks_url,
        }
        given = [k for k, v in sources.items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"jwt provider {name!r}: give exactly one of {', '.join(sources)}"
                f" (got {', '.join(given) or 'none'})"
            )
        hmac = given[0] in ("secret", "secret_file")
        if hmac != (algs[0] in HMAC_ALGORITHMS):
            raise ValueError(
                f"jwt provider {name!r}: {given[0]} cannot verify {', '.join(algs)}; HS* "
                "algorithms need secret or secret_file and the others a public key or JWKS "
                "(an HMAC secret and a public key must never stand for each other)"
            )
        keys: KeySet | RemoteJwks
        if jwks_url is not None:
            keys = RemoteJwks(
                jwks_url,
                algorithms=algs,
                cache_s=jwks_cache_s,
                refresh_min_s=jwks_refresh_min_s,
                fetch_timeout_s=jwks_timeout_s,
            )
        else:
            try:
                if secret is not None:
                    keys = secret_key_set(secret.encode(), algs, "inline secret")
                elif secret_file is not None:
                    keys = load_secret_file(secret_file, algs)
                elif public_key_file is not None:
                    keys = load_public_key_file(public_key_file, algs)
                else:
                    assert jwks_file is not None  # exactly one source is given
                    keys = load_jwks_file(jwks_file, algs)
            except KeySetError as exc:
                raise KeySetError(f"jwt provider {name!r}: {exc}") from None
        return cls(
            name=name,
            algorithms=algs,
            keys=keys,
            issuer=issuer,
            audiences=audiences,
            clock_skew_s=clock_skew_s,
            required_claims=required_claims,
            cache_size=cache_size,
            clock=clock,
        )

    async def start(self) -> None:
        """Fetch a JWKS URL's keys and keep them fresh (nothing for other sources)."""
        if self._remote is not None:
            await self._remote.start()

    async def aclose(self) -> None:
        """Stop refreshing a JWKS URL (nothing for other sources)."""
        if self._remote is not None:
            await self._remote.aclose()

    def describe(self) -> str:
        """One line for `meshgate explain`, without key material."""
        if self._remote is not None:
            source = self._remote.describe()
        else:
            assert self._keys is not None
            source = self._keys.source
        parts = [f"jwt provider {self.name!r}: {', '.join(self.algorithms)} from {source}"]
        if self.issuer is not None:
            parts.append(f"issuer {self.issuer}")
        if self._audiences is not None:
            parts.append(f"audiences {', '.join(self._audiences)}")
        if self.required_claims:
            parts.append(f"requires {', '.join(self.required_claims)}")
        parts.append(f"clock skew {self.clock_skew_s:g}s")
        parts.append(f"caches {self.cache_size} tokens" if self.cache_size else "no token cache")
        return "; ".join(parts)

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token (a new dict each call), else TokenError."""
        cache = self._cache
        entry = cache.get(token)
        if entry is not None:
            if entry[0] > self._clock():
                cache.move_to_end(token)
                return dict(entry[1])
            del cache[token]
        claims = await self._verify(token)
        if self.cache_size:
            now = self._clock()
            exp = claims.get("exp")
            until = now + CACHE_MAX_AGE_S if exp is None else min(now + CACHE_MAX_AGE_S, exp)
            if until > now:
                cache[token] = (until, claims)
                if len(cache) > self.cache_size:
                    cache.popitem(last=False)
        return dict(claims)

    async def _verify(self, token: str) -> dict[str, Any]:
        header = _header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise TokenError("malformed token: no alg in the header")
        if alg.lower() == "none":
            raise TokenError("unsigned tokens (alg none) are not accepted")
        if alg not in self.algorithms:
            raise TokenError("token algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("malformed token: kid is not a string")
        if self._remote is not None:
            keys = await self._remote.get(kid)
            if not keys and self._remote.keys is None:
                raise TokenError("no keys available (the JWKS could not be fetched yet)")
        else:
            assert self._keys is not None
            keys = self._keys.lookup(kid)
        if not keys:
            raise TokenError("unknown key id" if kid is not None else "token has no key id")
        candidates = [k.key for k in keys if alg in k.algorithms]
        if not candidates:
            raise TokenError("token algorithm does not match the key")
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    options=self._options,
                    issuer=self.issuer,
                    audience=self._audiences,
                )
            except InvalidSignatureError:
                continue
            except PyJWTError as exc:
                raise _refusal(exc) from None
            self._check_times(claims)
            return claims
        raise TokenError("invalid signature")

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        skew = self.clock_skew_s
        exp = _time_claim(claims, "exp")
        if exp is not None and exp <= now - skew:
            raise TokenError("token expired")
        nbf = _time_claim(claims, "nbf")
        if nbf is not None and nbf > now + skew:
            raise TokenError("token not yet valid (nbf)")
        iat = _time_claim(claims, "iat")
        if iat is not None and iat > now + skew:
            raise TokenError("token issued in the future (iat)")


def _algorithms(algorithms: Iterable[str], name: str) -> list[str]:
    """The listed algorithms, checked: known, never none, not HS* mixed with others."""
    algs = list(dict.fromkeys(algorithms))
    where = f"jwt provider {name!r}: "
    if not algs:
        raise ValueError(f"{where}list at least one algorithm")
    for alg in algs:
        if not isinstance(alg, str) or alg.lower() == "none":
            raise ValueError(f"{where}algorithm {alg!r} is never accepted")
        if alg not in ALGORITHMS:
            raise ValueError(
                f"{where}unknown algorithm {alg!r}; use some of {', '.join(sorted(ALGORITHMS))}"
            )
    if len({alg in HMAC_ALGORITHMS for alg in algs}) > 1:
        raise ValueError(
            f"{where}HS* algorithms cannot be mixed with public-key ones (key confusion)"
        )
    return algs


def _refusal(exc: PyJWTError) -> TokenError:
    """PyJWT's verdict as a fixed description (PyJWT's messages are not used)."""
    if isinstance(exc, MissingRequiredClaimError):
        return TokenError(f"token lacks the required claim {exc.claim}")
    if isinstance(exc, InvalidIssuerError):
        return TokenError("wrong issuer")
    if isinstance(exc, InvalidAudienceError):
        return TokenError("wrong audience")
    if isinstance(exc, DecodeError):
        return TokenError("malformed token")
    return TokenError("invalid token")
