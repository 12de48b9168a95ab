"""Key sets: JWKS files and PEM files, and JWKS URLs served by a real local HTTP server
(kid rotation picked up without a restart, early refreshes rate-limited and shared by
concurrent requests, last good keys kept while the endpoint fails, no keys until the
first fetch succeeds, background refresh)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from meshgate.auth.jwks import KeySetError, RemoteJwks, load_jwks_file, parse_jwks
from meshgate.auth.jwt import JwtProvider
from meshgate.auth.tokens import TokenError

_jti = itertools.count()


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class JwksServer:
    """A minimal HTTP/1.1 server on 127.0.0.1 answering every request with `body` and
    `status` (after `delay` seconds, or never while `hang`), counting requests."""

    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.status = 200
        self.delay = 0.0
        self.hang = False
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._release = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    def serve(self, *jwks: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(jwks)}).encode()
        self.status = 200

    async def start(self) -> None:
        self._release = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listening socket and every connection (refused from now on)."""
        assert self._server is not None
        self._server.close()
        self._release.set()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            if self.hang:
                await self._release.wait()
                return
            if self.delay:
                await asyncio.sleep(self.delay)
            head = (
                f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + self.body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[JwksServer]:
    s = JwksServer()
    await s.start()
    yield s
    if s._server is not None:
        await s.stop()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwk(private_key: Any, kid: str | None = None, **members: Any) -> dict[str, Any]:
    """The public JWK of a private key, with a kid and extra members."""
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        out = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        out = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        out = OKPAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        out["kid"] = kid
    return {**out, **members}


def token(key: Any, alg: str = "ES256", kid: str | None = None, **claims: Any) -> str:
    """A fresh token (unique jti) valid for ten minutes."""
    payload = {"sub": "alice", "exp": int(time.time()) + 600, "jti": str(next(_jti)), **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def remote_provider(
    server: JwksServer, clock: Clock, algorithms: tuple[str, ...] = ("ES256",), **kwargs: Any
) -> JwtProvider:
    keys = RemoteJwks(server.url, algorithms=algorithms, clock=clock, **kwargs)
    return JwtProvider(name="idp", algorithms=algorithms, keys=keys)


async def refused(provider: JwtProvider, tok: str) -> str:
    with pytest.raises(TokenError) as info:
        await provider.verify(tok)
    return info.value.description


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "meshgate.auth" and r.levelno == logging.WARNING
    ]


# --- JWKS URL --------------------------------------------------------------------------------


async def test_tokens_verify_with_keys_from_a_url(
    server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    ec1, ed = ec_key(), ed25519.Ed25519PrivateKey.generate()
    server.serve(jwk(rsa_key, "r1"), jwk(ec1, "e1"), jwk(ed, "d1"))
    algorithms = ("RS256", "PS256", "ES256", "EdDSA")
    provider = remote_provider(server, Clock(), algorithms)
    await provider.start()
    try:
        assert server.requests == 1
        for key, alg, kid in [
            (rsa_key, "RS256", "r1"),
            (rsa_key, "PS256", "r1"),
            (ec1, "ES256", "e1"),
            (ed, "EdDSA", "d1"),
        ]:
            assert (await provider.verify(token(key, alg, kid)))["sub"] == "alice"
        # a key only verifies its own kind of algorithm, whatever the kid says
        assert await refused(provider, token(ec1, "ES256", "r1")) == (
            "token algorithm does not match the key"
        )
        assert await refused(provider, token(ec_key(), "ES256", "e1")) == "invalid signature"
        assert server.requests == 1
        assert server.url in provider.describe() and "3 key(s)" in provider.describe()
    finally:
        await provider.aclose()


async def test_kid_rotation_is_picked_up_without_restart(server: JwksServer) -> None:
    old, new = ec_key(), ec_key()
    server.serve(jwk(old, "old"))
    clock = Clock()
    provider = remote_provider(server, clock)
    await provider.start()
    try:
        cached = token(old, kid="old")
        assert await provider.verify(cached)
        server.serve(jwk(new, "new"))  # the IdP rotates: the old key is gone
        assert await provider.verify(token(new, kid="new"))
        assert server.requests == 2  # one early refresh
        # the verified-token cache was dropped with the old key set
        assert await refused(provider, cached) == "unknown key id"
        assert server.requests == 2  # within refresh_min_s of the early refresh: no fetch
        assert await provider.verify(token(new, kid="new"))
        assert server.requests == 2
    finally:
        await provider.aclose()


async def test_unknown_kid_refreshes_at_most_once_per_refresh_min(server: JwksServer) -> None:
    key = ec_key()
    server.serve(jwk(key, "k1"))
    clock = Clock()
    provider = remote_provider(server, clock, refresh_min_s=30.0)
    await provider.start()
    try:
        stranger = token(ec_key(), kid="nobody")
        assert await refused(provider, stranger) == "unknown key id"
        assert server.requests == 2
        clock.now += 29
        assert await refused(provider, stranger) == "unknown key id"
        assert await refused(provider, token(ec_key(), kid="other")) == "unknown key id"
        assert server.requests == 2
        clock.now += 1
        assert await refused(provider, stranger) == "unknown key id"
        assert server.requests == 3
        assert await provider.verify(token(key, kid="k1"))  # known kids never fetch
        assert server.requests == 3
    finally:
        await provider.aclose()


async def test_concurrent_requests_with_a_new_kid_share_one_fetch(server: JwksServer) -> None:
    old, new = ec_key(), ec_key()
    server.serve(jwk(old, "old"))
    provider = remote_provider(server, Clock())
    await provider.start()
    try:
        server.serve(jwk(old, "old"), jwk(new, "new"))
        server.delay = 0.2
        tokens = [token(new, kid="new") for _ in range(20)]
        results = await asyncio.gather(*(provider.verify(t) for t in tokens))
        assert all(r["sub"] == "alice" for r in results)
        assert server.requests == 2
    finally:
        await provider.aclose()


async def test_a_caller_giving_up_does_not_cancel_the_shared_fetch(server: JwksServer) -> None:
    old, new = ec_key(), ec_key()
    server.serve(jwk(old, "old"))
    provider = remote_provider(server, Clock())
    await provider.start()
    try:
        server.serve(jwk(new, "new"))
        server.delay = 0.2
        first = asyncio.create_task(provider.verify(token(new, kid="new")))
        second = asyncio.create_task(provider.verify(token(new, kid="new")))
        await asyncio.sleep(0.05)
        first.cancel()
        assert (await second)["sub"] == "alice"
        assert first.cancelled()
        assert server.requests == 2
    finally:
        await provider.aclose()


@pytest.mark.parametrize("failure", ["500", "invalid json", "no usable key", "refused", "hang"])
async def test_endpoint_down_keeps_the_last_good_keys(
    failure: str, server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    key = ec_key()
    server.serve(jwk(key, "k1"))
    clock = Clock()
    keys = RemoteJwks(server.url, algorithms=["ES256"], clock=clock, fetch_timeout_s=0.3)
    provider = JwtProvider(name="idp", algorithms=["ES256"], keys=keys)
    await provider.start()
    try:
        caplog.set_level(logging.WARNING, logger="meshgate.auth")
        if failure == "500":
            server.status = 500
        elif failure == "invalid json":
            server.body = b'{"keys": [{"kty": '
        elif failure == "no usable key":
            server.serve(jwk(key, "k1", use="enc"))
        elif failure == "refused":
            await server.stop()
        else:
            server.hang = True
        started = time.monotonic()
        await keys.refresh()
        assert time.monotonic() - started < 3.0
        assert await provider.verify(token(key, kid="k1"))
        # an unknown kid during the outage: one early fetch, which fails too
        assert await refused(provider, token(ec_key(), kid="k2")) == "unknown key id"
        assert await provider.verify(token(key, kid="k1"))
        logged = warnings_of(caplog)
        assert len(logged) == 2, logged  # one warning per failed fetch
        assert all("keeping the last good key set" in m and server.url in m for m in logged)
        if failure == "refused":
            await server.start()  # same port
        server.status, server.hang = 200, False
        new = ec_key()
        server.serve(jwk(key, "k1"), jwk(new, "k2"))
        clock.now += 30  # the next early refresh is allowed: the endpoint is back
        assert await provider.verify(token(new, kid="k2"))
        assert len(warnings_of(caplog)) == 2
    finally:
        await provider.aclose()


@pytest.mark.parametrize("failure", ["500", "refused"])
async def test_no_keys_until_the_first_fetch_succeeds(
    failure: str, server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="meshgate.auth")
    key = ec_key()
    if failure == "500":
        server.status = 500
    else:
        await server.stop()
    clock = Clock()
    provider = remote_provider(server, clock)
    await provider.start()  # does not raise
    try:
        assert "no keys yet" in warnings_of(caplog)[0]
        assert "no keys yet" in provider.describe()
        tok = token(key, kid="k1")
        assert (
            await refused(provider, tok) == "no keys available (the JWKS could not be fetched yet)"
        )
        assert len(warnings_of(caplog)) == 2  # the token's early refresh failed too
        if failure == "refused":
            await server.start()
        server.serve(jwk(key, "k1"))
        before = server.requests
        assert (
            await refused(provider, tok) == "no keys available (the JWKS could not be fetched yet)"
        )
        assert server.requests == before  # rate-limited
        clock.now += 30
        assert (await provider.verify(tok))["sub"] == "alice"
        assert server.requests == before + 1
    finally:
        await provider.aclose()


async def test_background_refresh_every_cache_s(server: JwksServer) -> None:
    old, new = ec_key(), ec_key()
    server.serve(jwk(old, "old"))
    keys = RemoteJwks(server.url, algorithms=["ES256"], cache_s=0.1)  # the real clock
    await keys.start()
    try:
        server.serve(jwk(new, "new"))
        deadline = time.monotonic() + 10
        while not has_kid(keys, "new"):
            assert time.monotonic() < deadline, "the background refresh never came"
            await asyncio.sleep(0.02)
        assert keys.keys is not None and not keys.keys.lookup("old")
    finally:
        await keys.aclose()
    seen = server.requests
    await asyncio.sleep(0.3)
    assert server.requests == seen  # stopped


def has_kid(keys: RemoteJwks, kid: str) -> bool:
    """Whether the key set in use has `kid` (looked up without any fetch)."""
    return keys.keys is not None and bool(keys.keys.lookup(kid))


async def test_background_retries_a_failed_first_fetch(server: JwksServer) -> None:
    key = ec_key()
    server.status = 500
    keys = RemoteJwks(server.url, algorithms=["ES256"], refresh_min_s=0.0)
    await keys.start()
    try:
        assert keys.keys is None
        server.serve(jwk(key, "k1"))
        deadline = time.monotonic() + 10
        while not has_kid(keys, "k1"):  # retried after 1 s, not after cache_s
            assert time.monotonic() < deadline, "no retry"
            await asyncio.sleep(0.05)
    finally:
        await keys.aclose()


async def test_aclose_stops_a_hanging_fetch(server: JwksServer) -> None:
    server.hang = True
    keys = RemoteJwks(server.url, algorithms=["ES256"], fetch_timeout_s=30)
    fetch = asyncio.create_task(keys.refresh())
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await keys.aclose()
    assert time.monotonic() - started < 2
    with pytest.raises(asyncio.CancelledError):
        await fetch


def test_remote_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="http"):
        RemoteJwks("ftp://idp/jwks", algorithms=["RS256"])
    with pytest.raises(ValueError, match="cache_s"):
        RemoteJwks("https://idp/jwks", algorithms=["RS256"], cache_s=0)
    with pytest.raises(ValueError, match="refresh_min_s"):
        RemoteJwks("https://idp/jwks", algorithms=["RS256"], refresh_min_s=-1)
    with pytest.raises(ValueError, match="cannot verify HS256"):
        JwtProvider.build(name="p", algorithms=["HS256"], jwks_url="https://idp/jwks")


# --- JWKS contents ----------------------------------------------------------------------------


def write_jwks(tmp_path: Path, *keys: dict[str, Any]) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": list(keys)}))
    return str(path)


async def test_jwks_file_source(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    ec1, ed = ec_key(), ed25519.Ed25519PrivateKey.generate()
    path = write_jwks(tmp_path, jwk(rsa_key, "r1"), jwk(ec1, "e1"), jwk(ed, "d1"))
    provider = JwtProvider.build(name="f", algorithms=["RS384", "ES256", "EdDSA"], jwks_file=path)
    assert await provider.verify(token(rsa_key, "RS384", "r1"))
    assert await provider.verify(token(ec1, "ES256", "e1"))
    assert await provider.verify(token(ed, "EdDSA", "d1"))
    assert path in provider.describe()


async def test_keys_not_for_signatures_are_ignored(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    sig, enc, ops = ec_key(), ec_key(), ec_key()
    path = write_jwks(
        tmp_path,
        jwk(enc, "enc", use="enc"),
        jwk(ops, "ops", key_ops=["encrypt"]),
        jwk(rsa_key, "rsa-oaep", alg="RSA-OAEP"),
        jwk(sig, "sig", use="sig", key_ops=["verify"]),
    )
    provider = JwtProvider.build(name="f", algorithms=["ES256", "RS256"], jwks_file=path)
    assert await provider.verify(token(sig, kid="sig"))
    assert await refused(provider, token(enc, kid="enc")) == "unknown key id"
    assert await refused(provider, token(ops, kid="ops")) == "unknown key id"
    assert await refused(provider, token(rsa_key, "RS256", "rsa-oaep")) == "unknown key id"


async def test_a_jwk_alg_pins_its_algorithm(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = write_jwks(tmp_path, jwk(rsa_key, "r1", alg="RS256"))
    provider = JwtProvider.build(name="f", algorithms=["RS256", "RS512"], jwks_file=path)
    assert await provider.verify(token(rsa_key, "RS256", "r1"))
    assert await refused(provider, token(rsa_key, "RS512", "r1")) == (
        "token algorithm does not match the key"
    )


async def test_hmac_keys_in_a_jwks_are_never_used(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """An oct key (or the RSA key's PEM) published in a JWKS is no HMAC secret."""
    pem = rsa_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    secret = b"s" * 64
    path = write_jwks(
        tmp_path,
        {**HMACAlgorithm.to_jwk(secret, as_dict=True), "kid": "oct"},
        jwk(rsa_key, "r1"),
    )
    provider = JwtProvider.build(name="f", algorithms=["RS256"], jwks_file=path)
    for kid in ("oct", "r1"):
        assert await refused(provider, token(secret, "HS256", kid)) == (
            "token algorithm not allowed"
        )
    # the RSA key's PEM as an HMAC secret, with the RSA key's kid
    body = ".".join(
        b64(json.dumps(part).encode())
        for part in ({"alg": "HS256", "kid": "r1"}, {"sub": "a", "exp": int(time.time()) + 60})
    )
    signature = b64(hmac.new(pem, body.encode(), hashlib.sha256).digest())
    assert await refused(provider, f"{body}.{signature}") == "token algorithm not allowed"
    with pytest.raises(KeySetError, match="no usable signing key"):
        load_jwks_file(write_jwks(tmp_path, {"kty": "oct", "k": "c2VjcmV0"}), ["RS256"])


async def test_keys_without_kid(tmp_path: Path) -> None:
    anonymous, named = ec_key(), ec_key()
    provider = JwtProvider.build(
        name="f", algorithms=["ES256"], jwks_file=write_jwks(tmp_path, jwk(anonymous))
    )
    assert await provider.verify(token(anonymous))
    assert await provider.verify(token(anonymous, kid="whatever"))  # no kid to contradict
    path = write_jwks(tmp_path, jwk(named, "n1"))
    named_only = JwtProvider.build(name="f", algorithms=["ES256"], jwks_file=path)
    assert await refused(named_only, token(named)) == "token has no key id"


def test_bad_keys_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="meshgate.auth")
    good, private = ec_key(), ec_key()
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private_jwk = ECAlgorithm.to_jwk(private, as_dict=True)  # includes "d"
    keys = parse_jwks(
        {
            "keys": [
                "not an object",
                {"kty": "EC", "crv": "P-256", "x": "!!", "y": "!!", "kid": "broken"},
                {**private_jwk, "kid": "private"},
                jwk(weak, "weak"),
                jwk(good, 7),
                jwk(good, "good"),
                jwk(ec_key(), "good"),
            ]
        },
        ["ES256", "RS256"],
        "JWKS test",
    )
    assert len(keys) == 1 and keys.lookup("good")
    logged = "\n".join(warnings_of(caplog))
    reasons = ("not a JSON", "unusable", "private key", "1024 bits", "kid is not", "duplicate")
    for reason in reasons:
        assert reason in logged, reason


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "not a JWKS"),
        (b'{"keys": {}}', "not a JWKS"),
        (b'{"keys": []}', "no usable signing key"),
    ],
)
def test_jwks_file_errors(content: bytes, match: str, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(content)
    with pytest.raises(KeySetError, match=match) as info:
        JwtProvider.build(name="f", algorithms=["ES256"], jwks_file=str(path))
    assert str(path) in str(info.value) and "jwt provider 'f'" in str(info.value)


# --- PEM files --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
async def test_pem_file_source(kind: str, tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    key: Any = {
        "rsa": rsa_key,
        "ec": ec_key(),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }[kind]
    alg = {"rsa": "PS384", "ec": "ES256", "ed25519": "EdDSA"}[kind]
    path = tmp_path / "key.pem"
    path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    provider = JwtProvider.build(name="p", algorithms=[alg], public_key_file=str(path))
    assert await provider.verify(token(key, alg, kid="ignored"))
    assert str(path) in provider.describe()


def test_pem_file_errors(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "key.pem"

    def build(alg: str = "RS256") -> JwtProvider:
        return JwtProvider.build(name="p", algorithms=[alg], public_key_file=str(path))

    with pytest.raises(KeySetError, match="cannot read"):
        build()
    path.write_bytes(rsa_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    with pytest.raises(KeySetError, match="not a PEM public key"):
        build()
    path.write_bytes(b"hello")
    with pytest.raises(KeySetError, match="not a PEM public key"):
        build()
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path.write_bytes(
        weak.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeySetError, match="1024 bits is too weak"):
        build()
    path.write_bytes(
        rsa_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeySetError, match=r"RSA 2048-bit public key.*cannot verify ES256"):
        build("ES256")
