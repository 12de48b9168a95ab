"""Keys that verify JWT signatures: an HMAC secret, a PEM public key, a JWKS (file or URL).

A `KeySet` holds `VerificationKey`s indexed by key id (`kid`). Each key knows the
algorithms it may verify: those its type supports (HMAC secret: HS*; RSA: RS*, PS*;
EC: the ES* of its curve; Ed25519/Ed448: EdDSA), narrowed to the provider's list and,
for a JWK with an `alg` member, to that one algorithm. A token is only checked with a
key whose algorithms include the token's `alg`, so an RSA public key is never used as
an HMAC secret (key confusion) and an HMAC secret never verifies an RS token.

Key material is checked when loaded (`KeySetError` names the file or URL and what is
wrong): an HMAC secret is at least as long as the hash output of the strongest HS*
algorithm listed (RFC 7518 3.2) and does not look like a PEM or SSH public key; RSA
keys have at least 2048 bits. In a JWKS, keys whose `use` is not "sig" (or whose
`key_ops` lack "verify") are ignored, as are keys no listed algorithm can use; broken,
weak or private keys are skipped with a warning. A JWKS without a usable key is an error.

`RemoteJwks` keeps the key set of a JWKS URL fresh (see its docstring).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK
from jwt.algorithms import HMACAlgorithm
from jwt.exceptions import PyJWTError

log = logging.getLogger("meshgate.auth")

# HS* algorithm -> the shortest secret (bytes) it may use: its hash output (RFC 7518 3.2)
HMAC_ALGORITHMS = {"HS256": 32, "HS384": 48, "HS512": 64}
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
# ES* algorithm -> the curve (cryptography's name) of its keys
EC_ALGORITHMS = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
ALGORITHMS = frozenset({*HMAC_ALGORITHMS, *RSA_ALGORITHMS, *EC_ALGORITHMS, "EdDSA"})
MIN_RSA_BITS = 2048

# The background refresh retries a failed fetch no sooner than this, even when
# refresh_min_s is 0 (early refreshes on unknown kids then follow refresh_min_s alone).
_RETRY_MIN_S = 1.0

PublicKey = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey


class KeySetError(ValueError):
    """Key material is missing, unreadable, weak, or cannot verify the listed algorithms."""


class VerificationKey:
    """One key: `key` (HMAC secret bytes or a public key), its `kid` (None: none given),
    and the `algorithms` it may verify (never empty)."""

    __slots__ = ("algorithms", "key", "kid")

    def __init__(self, key: bytes | PublicKey, kid: str | None, algorithms: frozenset[str]):
        self.key = key
        self.kid = kid
        self.algorithms = algorithms


class KeySet:
    """Keys by `kid`; keys without a kid are candidates for any token (see `lookup`).
    `source` says where the keys come from (for messages; never key material)."""

    __slots__ = ("_anonymous", "_by_kid", "source")

    def __init__(self, keys: Iterable[VerificationKey], source: str) -> None:
        self.source = source
        self._by_kid: dict[str, VerificationKey] = {}
        anonymous: list[VerificationKey] = []
        for key in keys:
            if key.kid is None:
                anonymous.append(key)
            else:
                self._by_kid.setdefault(key.kid, key)
        self._anonymous = tuple(anonymous)

    def __len__(self) -> int:
        return len(self._by_kid) + len(self._anonymous)

    def lookup(self, kid: str | None) -> tuple[VerificationKey, ...]:
        """The key with id `kid` if there is one, else the keys without a kid (possibly
        none). A secret or a PEM key has no kid, so it is tried whatever the token's kid."""
        if kid is not None:
            key = self._by_kid.get(kid)
            if key is not None:
                return (key,)
        return self._anonymous


def key_algorithms(key: object) -> frozenset[str]:
    """The algorithms a key of this type verifies; empty for other types (private keys too)."""
    if isinstance(key, bytes):
        return frozenset(HMAC_ALGORITHMS)
    if isinstance(key, RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, EllipticCurvePublicKey):
        return frozenset(a for a, curve in EC_ALGORITHMS.items() if curve == key.curve.name)
    if isinstance(key, Ed25519PublicKey | Ed448PublicKey):
        return frozenset({"EdDSA"})
    return frozenset()


def _kind(key: object) -> str:
    if isinstance(key, RSAPublicKey):
        return f"RSA {key.key_size}-bit public key"
    if isinstance(key, EllipticCurvePublicKey):
        return f"EC {key.curve.name} public key"
    if isinstance(key, Ed25519PublicKey | Ed448PublicKey):
        return f"{'Ed25519' if isinstance(key, Ed25519PublicKey) else 'Ed448'} public key"
    return type(key).__name__


def _check_algorithms(algorithms: Collection[str]) -> None:
    unknown = sorted(set(algorithms) - ALGORITHMS)
    if unknown or not algorithms:
        raise ValueError(
            f"unsupported JWT algorithm(s) {', '.join(unknown) or '(none listed)'}; "
            f"use some of {', '.join(sorted(ALGORITHMS))}"
        )


def secret_key_set(secret: bytes, algorithms: Collection[str], source: str) -> KeySet:
    """One HMAC key for `algorithms` (all HS*). `source` names it in errors ("inline secret",
    "secret file /path"); the secret itself is never part of a message."""
    _check_algorithms(algorithms)
    others = sorted(set(algorithms) - set(HMAC_ALGORITHMS))
    if others:
        raise KeySetError(f"{source}: an HMAC secret cannot verify {', '.join(others)}")
    need = max(HMAC_ALGORITHMS[a] for a in algorithms)
    if len(secret) < need:
        strongest = max(algorithms, key=HMAC_ALGORITHMS.__getitem__)
        raise KeySetError(
            f"{source}: the secret has {len(secret)} bytes; {strongest} needs at least "
            f"{need} (RFC 7518 section 3.2)"
        )
    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except PyJWTError:
        raise KeySetError(
            f"{source}: the secret looks like a PEM or SSH public key; give public-key "
            "material as public_key_file or a JWKS, never as an HMAC secret"
        ) from None
    return KeySet([VerificationKey(secret, None, frozenset(algorithms))], source)


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeySetError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None


def load_secret_file(path: str | Path, algorithms: Collection[str]) -> KeySet:
    """The HMAC secret in file `path`: its bytes, without one trailing newline (LF or CRLF)."""
    data = _read(path, "secret file")
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    return secret_key_set(data, algorithms, f"secret file {path}")


def load_public_key_file(path: str | Path, algorithms: Collection[str]) -> KeySet:
    """The PEM public key (RSA >= 2048 bits, EC P-256/384/521, Ed25519, Ed448) in file
    `path`, which must be able to verify every algorithm in `algorithms`."""
    _check_algorithms(algorithms)
    source = f"public key file {path}"
    data = _read(path, "public key file")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeySetError(
            f"{source}: not a PEM public key (expected -----BEGIN PUBLIC KEY-----)"
        ) from None
    weakness = _weakness(key)
    if weakness is not None:
        raise KeySetError(f"{source}: {weakness}")
    usable = key_algorithms(key)
    missing = sorted(set(algorithms) - usable)
    if missing:
        raise KeySetError(f"{source}: its key ({_kind(key)}) cannot verify {', '.join(missing)}")
    assert isinstance(key, PublicKey)  # key_algorithms is empty for every other type
    return KeySet([VerificationKey(key, None, frozenset(algorithms))], source)


def _weakness(key: object) -> str | None:
    if isinstance(key, RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return f"an RSA key of {key.key_size} bits is too weak (at least {MIN_RSA_BITS})"
    return None


def load_jwks_file(path: str | Path, algorithms: Collection[str]) -> KeySet:
    """The usable signing keys of the JWKS (JSON) in file `path` (see `parse_jwks`)."""
    data = _read(path, "JWKS file")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise KeySetError(f"JWKS file {path}: not valid JSON") from None
    return parse_jwks(document, algorithms, f"JWKS file {path}")


def parse_jwks(document: object, algorithms: Collection[str], source: str) -> KeySet:
    """The keys of a JWKS document (``{"keys": [JWK, ...]}``) that can verify one of
    `algorithms`. Ignored: keys not for signatures (`use` other than "sig", `key_ops`
    without "verify") and keys no listed algorithm can use. Skipped with a warning:
    unparseable, weak and private keys, a kid that is not a string or appears twice.
    Raises KeySetError when no key is left."""
    _check_algorithms(algorithms)
    keys_value = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys_value, list):
        raise KeySetError(f"{source}: not a JWKS (expected an object with a 'keys' list)")
    allowed = frozenset(algorithms)
    keys: list[VerificationKey] = []
    kids: set[str] = set()
    ignored = 0
    for i, jwk in enumerate(keys_value):
        problem, key = _parse_jwk(jwk, allowed)
        if key is None:
            if problem is None:
                ignored += 1
            else:
                log.warning("%s: key #%d skipped: %s", source, i, problem)
            continue
        if key.kid is not None:
            if key.kid in kids:
                log.warning("%s: key #%d skipped: duplicate kid %r", source, i, key.kid)
                continue
            kids.add(key.kid)
        keys.append(key)
    if not keys:
        raise KeySetError(
            f"{source}: no usable signing key for {', '.join(sorted(allowed))} "
            f"({len(keys_value)} key(s), {ignored} not for signatures or these algorithms)"
        )
    return KeySet(keys, source)


def _parse_jwk(jwk: object, allowed: frozenset[str]) -> tuple[str | None, VerificationKey | None]:
    """(None, key) for a usable key, (None, None) for one to ignore silently, or
    (problem, None) for one to skip with a warning."""
    if not isinstance(jwk, dict):
        return "not a JSON object", None
    if jwk.get("use", "sig") != "sig":
        return None, None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None, None
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        return "kid is not a string", None
    alg = jwk.get("alg")
    if alg is not None and alg not in ALGORITHMS:
        return None, None  # e.g. an encryption algorithm, or one meshgate never accepts
    if alg is not None and alg not in allowed:
        return None, None
    if jwk.get("d") is not None:
        return "holds private key material (publish public keys only)", None
    try:
        material: Any = PyJWK(jwk).key
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        return f"unusable {jwk.get('kty')!r} key ({type(exc).__name__})", None
    usable = key_algorithms(material) & allowed
    if alg is not None:
        usable &= {alg}
    if not usable:
        return None, None  # e.g. an EC key for an RS256-only provider, or an HMAC key
    weakness = _weakness(material)
    if weakness is not None:
        return weakness, None
    return None, VerificationKey(material, kid, usable)


class RemoteJwks:
    """The key set of a JWKS URL, fetched with httpx and kept fresh.

    `start` fetches once (a failure is logged, not raised: until a fetch succeeds
    there are no keys and tokens are refused) and then refreshes in a background task:
    `cache_s` after the last successful fetch, or, while fetches fail, every
    `refresh_min_s` (at least 1 s). `get` looks a kid up; when nothing matches it
    refreshes early, at most once per `refresh_min_s` (counted from the last early
    refresh, on the injected `clock`), so a rotated-in key is picked up without a
    restart while random kids cannot make the gateway hammer the endpoint. A fetch
    already in flight is shared by every caller that needs one (one request, however
    many tokens with a new kid arrive at once).

    A fetch fails on a network error, no complete answer within `fetch_timeout_s`, a
    status other than 200 (redirects are not followed), or a body that is not a JWKS
    with a usable key; the last good key set is then kept and one warning logged per
    failed fetch. When a fetched set differs from the one in use, it replaces it and
    `on_change` is called (the JWT provider drops its verified tokens, so a removed
    key stops working at once).
    """

    __slots__ = (
        "_algorithms",
        "_client",
        "_clock",
        "_document",
        "_fetched_at",
        "_keys",
        "_last_attempt",
        "_last_early",
        "_ok",
        "_refreshing",
        "_task",
        "cache_s",
        "fetch_timeout_s",
        "on_change",
        "refresh_min_s",
        "url",
    )

    def __init__(
        self,
        url: str,
        *,
        algorithms: Collection[str],
        cache_s: float = 600.0,
        refresh_min_s: float = 30.0,
        fetch_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        _check_algorithms(algorithms)
        try:
            scheme = httpx.URL(url).scheme
        except httpx.InvalidURL:
            scheme = ""
        if scheme not in ("http", "https"):
            raise ValueError(f"JWKS URL {url!r} must be an http(s) URL")
        for what, value, low in (
            ("cache_s", cache_s, 0.0),
            ("fetch_timeout_s", fetch_timeout_s, 0.0),
        ):
            if not low < value < math.inf:
                raise ValueError(f"JWKS {what} must be a finite number > 0, got {value!r}")
        if not 0.0 <= refresh_min_s < math.inf:
            raise ValueError(
                f"JWKS refresh_min_s must be a finite number >= 0, got {refresh_min_s!r}"
            )
        self.url = url
        self.cache_s = cache_s
        self.refresh_min_s = refresh_min_s
        self.fetch_timeout_s = fetch_timeout_s
        self.on_change = on_change
        self._algorithms = frozenset(algorithms)
        self._clock = clock
        self._client = httpx.AsyncClient(timeout=fetch_timeout_s)
        self._keys: KeySet | None = None
        self._document: object = None  # the JWKS JSON of _keys
        self._ok = False  # whether the last fetch succeeded
        self._fetched_at = -math.inf  # clock reading when _keys was last confirmed
        self._last_attempt = -math.inf
        self._last_early = -math.inf
        self._refreshing: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def keys(self) -> KeySet | None:
        """The key set in use; None until a fetch has succeeded."""
        return self._keys

    def describe(self) -> str:
        """E.g. "JWKS https://idp/jwks (2 keys, refreshed every 600s)"."""
        held = "no keys yet" if self._keys is None else f"{len(self._keys)} key(s)"
        return f"JWKS {self.url} ({held}, refreshed every {self.cache_s:g}s)"

    async def start(self) -> None:
        """Fetch the key set (a failure is logged) and start the background refresh."""
        await self.refresh()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"JWKS refresh {self.url}"
            )

    async def aclose(self) -> None:
        """Stop the background refresh and any fetch in flight; close the HTTP client."""
        tasks = [t for t in (self._task, self._refreshing) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    async def get(self, kid: str | None) -> tuple[VerificationKey, ...]:
        """The keys to try for a token with this kid (see `KeySet.lookup`); when there are
        none, after an early refresh if one is allowed now. Empty: no key."""
        keys = self._keys
        if keys is not None:
            found = keys.lookup(kid)
            if found:
                return found
        if self._refreshing is None:
            now = self._clock()
            if now - self._last_early < self.refresh_min_s:
                return ()
            self._last_early = now
        await self.refresh()
        keys = self._keys
        return () if keys is None else keys.lookup(kid)

    async def refresh(self) -> None:
        """Fetch the JWKS now, or wait for the fetch already in flight. Never raises
        for a failed fetch (it is logged and the last good set kept)."""
        task = self._refreshing
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch())
            self._refreshing = task
        # shielded: a caller that gives up (client gone) does not cancel the shared fetch
        await asyncio.shield(task)

    async def _run(self) -> None:
        while True:
            if self._ok:
                due = self._last_attempt + self.cache_s
            else:
                due = self._last_attempt + max(self.refresh_min_s, _RETRY_MIN_S)
            delay = due - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await self.refresh()

    async def _fetch(self) -> None:
        self._last_attempt = started = self._clock()
        try:
            document, keys = await self._download()
        except _FetchFailed as exc:
            self._ok = False
            if self._keys is None:
                kept = "no keys yet: tokens are refused until a fetch succeeds"
            else:
                age = started - self._fetched_at
                kept = f"keeping the last good key set (fetched {age:.0f}s ago)"
            log.warning("JWKS %s: fetch failed (%s); %s", self.url, exc, kept)
            return
        finally:
            self._refreshing = None
        self._ok = True
        self._fetched_at = started
        if keys is not None:
            changed = self._keys is not None
            self._keys = keys
            self._document = document
            if changed and self.on_change is not None:
                self.on_change()

    async def _download(self) -> tuple[object, KeySet | None]:
        """The JWKS document and its key set (None: the document did not change)."""
        try:
            async with asyncio.timeout(self.fetch_timeout_s):
                response = await self._client.get(self.url)
        except TimeoutError:
            raise _FetchFailed(f"no answer within {self.fetch_timeout_s:g}s") from None
        except (httpx.HTTPError, OSError) as exc:
            raise _FetchFailed(f"{type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise _FetchFailed(f"HTTP status {response.status_code}")
        try:
            document = json.loads(response.content)
        except (ValueError, RecursionError):
            raise _FetchFailed("the body is not JSON") from None
        if document == self._document:
            return document, None
        try:
            return document, parse_jwks(document, self._algorithms, f"JWKS {self.url}")
        except KeySetError as exc:
            raise _FetchFailed(str(exc)) from None


class _FetchFailed(Exception):
    """A JWKS fetch failed; the message says why (for the log)."""
