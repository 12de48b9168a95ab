"""JWT verification: every algorithm with generated keys, the classic attacks (alg none,
HS/RS key confusion, stripped or foreign signatures, time claims, issuer, audience,
algorithms outside the list, garbage), the verified-token cache and provider settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshgate.auth.jwks import KeySetError
from meshgate.auth.jwt import CACHE_MAX_AGE_S, JwtProvider
from meshgate.auth.tokens import TokenError, scopes_of

NOW = 1_700_000_000.0
HMAC_SECRET = secrets.token_urlsafe(64)  # 86 characters: enough for HS512 (64 bytes)
ALL_ALGORITHMS = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA",
]  # fmt: skip


class Clock:
    """A settable clock (Unix seconds)."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "ES384": ec.generate_private_key(ec.SECP384R1()),
        "ES512": ec.generate_private_key(ec.SECP521R1()),
    }


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(private_key: Any) -> bytes:
    return bytes(
        private_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand (no library checks)."""
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "iat": int(NOW) - 10, "exp": int(NOW) + 600, **extra}


@pytest.fixture
def signing_key(
    rsa_key: rsa.RSAPrivateKey,
    ec_keys: dict[str, ec.EllipticCurvePrivateKey],
    ed_key: ed25519.Ed25519PrivateKey,
) -> Any:
    """alg -> the key that signs tokens of that algorithm."""

    def pick(alg: str) -> Any:
        if alg.startswith("HS"):
            return HMAC_SECRET
        if alg[:2] in ("RS", "PS"):
            return rsa_key
        if alg.startswith("ES"):
            return ec_keys[alg]
        return ed_key

    return pick


def provider_for(
    alg: str, key: Any, tmp_path: Path, clock: Clock | None = None, **kwargs: Any
) -> JwtProvider:
    """A provider for `alg` keyed like the signer: a secret or a PEM public key file."""
    if alg.startswith("HS"):
        source: dict[str, Any] = {"secret": key}
    else:
        pem = tmp_path / f"{alg}.pem"
        pem.write_bytes(public_pem(key))
        source = {"public_key_file": str(pem)}
    return JwtProvider.build(
        name="test", algorithms=kwargs.pop("algorithms", [alg]), clock=clock or Clock(),
        **source, **kwargs,
    )  # fmt: skip


@pytest.fixture
def rs256(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> JwtProvider:
    return provider_for("RS256", rsa_key, tmp_path)


def sign(payload: dict[str, Any], key: Any, alg: str = "RS256", **headers: Any) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers=headers or None)


async def refused(provider: JwtProvider, token: str) -> str:
    with pytest.raises(TokenError) as info:
        await provider.verify(token)
    assert info.value.status == 401
    return info.value.description


# --- every algorithm -----------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALL_ALGORITHMS)
async def test_every_algorithm_verifies(alg: str, signing_key: Any, tmp_path: Path) -> None:
    key = signing_key(alg)
    provider = provider_for(alg, key, tmp_path)
    got = await provider.verify(sign(claims(scope="read write"), key, alg, kid="any"))
    assert got == claims(scope="read write")
    assert alg in provider.describe()


async def test_one_provider_several_public_key_algorithms(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    provider = provider_for("RS256", rsa_key, tmp_path, algorithms=["RS256", "PS512"])
    for alg in ("RS256", "PS512"):
        assert (await provider.verify(sign(claims(), rsa_key, alg)))["sub"] == "alice"
    assert await refused(provider, sign(claims(), rsa_key, "RS384")) == (
        "token algorithm not allowed"
    )


# --- attacks -------------------------------------------------------------------------------


@pytest.mark.parametrize("casing", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("alg", ["HS256", "RS256"])
async def test_alg_none_is_refused_in_any_casing(
    casing: str, signed: bool, alg: str, signing_key: Any, tmp_path: Path
) -> None:
    provider = provider_for(alg, signing_key(alg), tmp_path)
    header = {"alg": casing, "typ": "JWT"}
    signature = b""
    if signed:  # a signature that would be right if the alg were HS256
        body = craft(header, claims()).rsplit(".", 1)[0]
        signature = hmac.new(HMAC_SECRET.encode(), body.encode(), hashlib.sha256).digest()
    token = craft(header, claims(), signature)
    assert await refused(provider, token) == "unsigned tokens (alg none) are not accepted"


@pytest.mark.parametrize("alg", ["none", "NONE", "nOnE"])
def test_alg_none_cannot_be_configured(alg: str) -> None:
    with pytest.raises(ValueError, match="never accepted"):
        JwtProvider.build(name="p", algorithms=["HS256", alg], secret=HMAC_SECRET)


async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    rsa_key: rsa.RSAPrivateKey, rs256: JwtProvider
) -> None:
    """The key-confusion attack: the public PEM used as an HMAC secret."""
    pem = public_pem(rsa_key)
    header = {"alg": "HS256", "typ": "JWT"}
    body = craft(header, claims()).rsplit(".", 1)[0]
    for secret in (pem, pem.strip()):
        signature = hmac.new(secret, body.encode(), hashlib.sha256).digest()
        token = f"{body}.{b64(signature)}"
        assert await refused(rs256, token) == "token algorithm not allowed"
    assert (await rs256.verify(sign(claims(), rsa_key)))["sub"] == "alice"


def test_hmac_and_public_key_sources_never_mix(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    pem = tmp_path / "rsa.pem"
    pem.write_bytes(public_pem(rsa_key))
    with pytest.raises(ValueError, match="cannot verify HS256"):
        JwtProvider.build(name="p", algorithms=["HS256"], public_key_file=str(pem))
    with pytest.raises(ValueError, match="cannot be mixed"):
        JwtProvider.build(name="p", algorithms=["RS256", "HS256"], public_key_file=str(pem))
    with pytest.raises(ValueError, match="cannot verify RS256"):
        JwtProvider.build(name="p", algorithms=["RS256"], secret=HMAC_SECRET)
    with pytest.raises(KeySetError, match="looks like a PEM"):
        JwtProvider.build(name="p", algorithms=["HS256"], secret=public_pem(rsa_key).decode())


async def test_stripped_signature_is_refused(
    rsa_key: rsa.RSAPrivateKey, rs256: JwtProvider
) -> None:
    token = sign(claims(), rsa_key)
    body = token.rsplit(".", 1)[0]
    assert await refused(rs256, body + ".") == "invalid signature"
    assert (await refused(rs256, body)).startswith("malformed token")


async def test_signature_of_another_key_is_refused(rs256: JwtProvider) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert await refused(rs256, sign(claims(), other)) == "invalid signature"


async def test_tampered_claims_are_refused(rsa_key: rsa.RSAPrivateKey, rs256: JwtProvider) -> None:
    header, _, signature = sign(claims(), rsa_key).split(".")
    forged = b64(json.dumps(claims(sub="admin")).encode())
    assert await refused(rs256, f"{header}.{forged}.{signature}") == "invalid signature"


async def test_hmac_token_with_another_secret_is_refused(tmp_path: Path) -> None:
    provider = provider_for("HS256", HMAC_SECRET, tmp_path)
    other = secrets.token_urlsafe(64)
    assert await refused(provider, sign(claims(), other, "HS256")) == "invalid signature"


@pytest.mark.parametrize(
    ("extra", "description"),
    [
        ({"exp": int(NOW) - 61}, "token expired"),
        ({"exp": int(NOW) - 60}, "token expired"),  # exp <= now - skew
        ({"nbf": int(NOW) + 61}, "token not yet valid (nbf)"),
        ({"iat": int(NOW) + 61}, "token issued in the future (iat)"),
        ({"exp": "1800000000"}, "malformed token: exp is not a number"),
        ({"nbf": True}, "malformed token: nbf is not a number"),
        ({"iat": 10**400}, "malformed token: iat is out of range"),
    ],
)
async def test_time_claims_are_checked_with_skew(
    extra: dict[str, Any], description: str, rsa_key: rsa.RSAPrivateKey, rs256: JwtProvider
) -> None:
    assert await refused(rs256, sign(claims(**extra), rsa_key)) == description


@pytest.mark.parametrize(
    "extra",
    [{"exp": int(NOW) - 59}, {"nbf": int(NOW) + 59}, {"iat": int(NOW) + 59}, {"exp": NOW + 0.5}],
)
async def test_time_claims_within_the_skew_pass(
    extra: dict[str, Any], rsa_key: rsa.RSAPrivateKey, rs256: JwtProvider
) -> None:
    assert (await rs256.verify(sign(claims(**extra), rsa_key)))["sub"] == "alice"


async def test_clock_skew_is_configurable(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    strict = provider_for("RS256", rsa_key, tmp_path, clock_skew_s=0)
    assert await refused(strict, sign(claims(exp=int(NOW)), rsa_key)) == "token expired"
    assert await refused(strict, sign(claims(nbf=int(NOW) + 1), rsa_key)) == (
        "token not yet valid (nbf)"
    )


async def test_issuer(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    provider = provider_for("RS256", rsa_key, tmp_path, issuer="https://idp.example")
    assert await provider.verify(sign(claims(iss="https://idp.example"), rsa_key))
    assert await refused(provider, sign(claims(iss="https://evil.example"), rsa_key)) == (
        "wrong issuer"
    )
    assert await refused(provider, sign(claims(), rsa_key)) == (
        "token lacks the required claim iss"
    )


async def test_audience(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    provider = provider_for("RS256", rsa_key, tmp_path, audiences=["api", "web"])
    assert await provider.verify(sign(claims(aud="api"), rsa_key))
    assert await provider.verify(sign(claims(aud=["other", "web"]), rsa_key))
    for aud in ("other", ["x", "y"], "api web"):
        assert await refused(provider, sign(claims(aud=aud), rsa_key)) == "wrong audience"
    assert await refused(provider, sign(claims(), rsa_key)) == (
        "token lacks the required claim aud"
    )


async def test_audience_not_checked_when_not_configured(
    rsa_key: rsa.RSAPrivateKey, rs256: JwtProvider
) -> None:
    assert (await rs256.verify(sign(claims(aud="anything"), rsa_key)))["aud"] == "anything"


async def test_required_claims(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    no_exp = {"sub": "alice"}
    default = provider_for("RS256", rsa_key, tmp_path)
    assert await refused(default, sign(no_exp, rsa_key)) == "token lacks the required claim exp"
    lenient = provider_for("RS256", rsa_key, tmp_path, required_claims=())
    assert await lenient.verify(sign(no_exp, rsa_key)) == no_exp
    strict = provider_for("RS256", rsa_key, tmp_path, required_claims=("exp", "sub", "jti"))
    assert await refused(strict, sign(claims(), rsa_key)) == "token lacks the required claim jti"


@pytest.mark.parametrize("alg", ["RS512", "PS256", "ES256", "HS256", "EdDSA"])
async def test_algorithm_outside_the_list_is_refused(
    alg: str, signing_key: Any, rs256: JwtProvider
) -> None:
    token = sign(claims(), signing_key(alg), alg)
    assert await refused(rs256, token) == "token algorithm not allowed"


async def test_ec_key_only_verifies_its_curve(
    ec_keys: dict[str, ec.EllipticCurvePrivateKey], tmp_path: Path
) -> None:
    pem = tmp_path / "p256.pem"
    pem.write_bytes(public_pem(ec_keys["ES256"]))
    with pytest.raises(KeySetError, match="cannot verify ES384"):
        JwtProvider.build(name="p", algorithms=["ES256", "ES384"], public_key_file=str(pem))


def seg(value: Any) -> str:
    """A base64url segment holding `value` as JSON."""
    return b64(json.dumps(value).encode())


GARBAGE = [
    ("", "expected three dot-separated parts"),
    ("Bearer", "expected three dot-separated parts"),
    ("only.two", "expected three dot-separated parts"),
    ("a.b.c.d.e", "expected three dot-separated parts"),  # a JWE
    ("!!!!.eyJzdWIiOiJ4In0.c2ln", "header is not base64url"),
    ("eyJhbGciOiJSUzI1NiJ9=.e30.c2ln", "header is not base64url"),
    ("A.e30.c2ln", "header is not base64url"),
    ("ZWj\u00e2.e30.c2ln", "header is not base64url"),
    (f"{b64(b'not json')}.e30.c2ln", "header is not JSON"),
    (f"{b64(bytes([0xFF, 0xFE]))}.e30.c2ln", "header is not JSON"),
    (f"{seg([1, 2])}.e30.c2ln", "header is not a JSON object"),
    (f"{seg({})}.e30.c2ln", "no alg in the header"),
    (f"{seg({'alg': 256})}.e30.c2ln", "no alg in the header"),
    (f"{seg({'alg': 'RS256', 'kid': 7})}.e30.c2ln", "kid is not a string"),
    (f"{seg({'alg': 'RS256'})}.!!!.c2ln", "malformed token"),
]


@pytest.mark.parametrize(("token", "reason"), GARBAGE)
async def test_garbage_tokens(token: str, reason: str, rs256: JwtProvider) -> None:
    description = await refused(rs256, token)
    assert reason in description
    assert description.startswith("malformed token")
    # safe in a quoted-string and never echoing the token
    assert '"' not in description and "\\" not in description
    for part in token.split("."):
        if len(part) >= 4:
            assert part not in description


async def test_signed_payload_that_is_not_a_claims_object(
    rsa_key: rsa.RSAPrivateKey, rs256: JwtProvider
) -> None:
    for payload in (b"[]", b"not json", b'"text"'):
        token = jwt.PyJWS().encode(payload, rsa_key, algorithm="RS256")
        assert await refused(rs256, token) == "malformed token"


async def test_descriptions_never_contain_token_text(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    provider = provider_for("RS256", rsa_key, tmp_path, issuer="good", audiences=["api"])
    marker = "SECRET-MARKER"
    tokens = [
        sign(claims(iss=marker, aud="api"), rsa_key),
        sign(claims(iss="good", aud=marker), rsa_key),
        sign(claims(iss="good", aud="api", exp=marker), rsa_key),
        sign(claims(iss="good", aud="api"), rsa_key, kid=marker)[:-8] + "AAAAAAAA",
        craft({"alg": marker}, claims()),
        craft({"alg": "none", "kid": marker}, claims()),
    ]
    for token in tokens:
        description = await refused(provider, token)
        assert marker not in description and token not in description


# --- the verified-token cache ---------------------------------------------------------------


class DecodeSpy:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._decode = jwt.decode
        monkeypatch.setattr(jwt, "decode", self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._decode(*args, **kwargs)


async def test_cache_hit_skips_pyjwt(
    rsa_key: rsa.RSAPrivateKey, rs256: JwtProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = DecodeSpy(monkeypatch)
    token = sign(claims(), rsa_key)
    first = await rs256.verify(token)
    assert spy.calls == 1
    for _ in range(3):
        assert await rs256.verify(token) == first
    assert spy.calls == 1
    # each caller gets its own dict: changing one does not change the cache
    first["sub"] = "mallory"
    assert (await rs256.verify(token))["sub"] == "alice"


async def test_cached_token_expires_at_exp(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    provider = provider_for("RS256", rsa_key, tmp_path, clock=clock)
    spy = DecodeSpy(monkeypatch)
    token = sign(claims(exp=int(NOW) + 100), rsa_key)
    await provider.verify(token)
    clock.now = NOW + 99.9
    await provider.verify(token)
    assert spy.calls == 1
    clock.now = NOW + 100  # at exp the entry is gone: checked again, passes within the skew
    await provider.verify(token)
    assert spy.calls == 2
    clock.now = NOW + 160  # exp + skew: expired, cached or not
    assert await refused(provider, token) == "token expired"
    clock.now = NOW + 10_000
    assert await refused(provider, token) == "token expired"


async def test_token_within_skew_of_exp_is_not_cached(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    provider = provider_for("RS256", rsa_key, tmp_path, clock=clock)
    spy = DecodeSpy(monkeypatch)
    token = sign(claims(exp=int(NOW) - 30), rsa_key)
    await provider.verify(token)
    await provider.verify(token)
    assert spy.calls == 2


async def test_cache_entries_are_checked_again_after_the_max_age(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    provider = provider_for("RS256", rsa_key, tmp_path, clock=clock, required_claims=())
    spy = DecodeSpy(monkeypatch)
    for token in (sign(claims(exp=int(NOW) + 86_400), rsa_key), sign({"sub": "x"}, rsa_key)):
        clock.now = NOW
        spy.calls = 0
        await provider.verify(token)
        clock.now = NOW + CACHE_MAX_AGE_S - 1
        await provider.verify(token)
        assert spy.calls == 1
        clock.now = NOW + CACHE_MAX_AGE_S
        await provider.verify(token)
        assert spy.calls == 2


async def test_cache_is_bounded_lru(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = provider_for("RS256", rsa_key, tmp_path, cache_size=2)
    spy = DecodeSpy(monkeypatch)
    a, b, c = (sign(claims(jti=j), rsa_key) for j in "abc")
    await provider.verify(a)
    await provider.verify(b)
    await provider.verify(a)  # a is now the most recent: c evicts b
    await provider.verify(c)
    assert spy.calls == 3
    await provider.verify(a)
    assert spy.calls == 3
    await provider.verify(b)
    assert spy.calls == 4


async def test_cache_can_be_off(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = provider_for("RS256", rsa_key, tmp_path, cache_size=0)
    spy = DecodeSpy(monkeypatch)
    token = sign(claims(), rsa_key)
    await provider.verify(token)
    await provider.verify(token)
    assert spy.calls == 2
    assert "no token cache" in provider.describe()


async def test_not_yet_valid_token_passes_later(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    clock = Clock()
    provider = provider_for("RS256", rsa_key, tmp_path, clock=clock)
    token = sign(claims(nbf=int(NOW) + 120), rsa_key)
    assert await refused(provider, token) == "token not yet valid (nbf)"
    assert await refused(provider, token) == "token not yet valid (nbf)"
    clock.now = NOW + 100
    assert await provider.verify(token)


# --- settings ----------------------------------------------------------------------------------


def test_exactly_one_key_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"exactly one .* \(got none\)"):
        JwtProvider.build(name="p", algorithms=["HS256"])
    with pytest.raises(ValueError, match=r"\(got secret, secret_file\)"):
        JwtProvider.build(
            name="p", algorithms=["HS256"], secret=HMAC_SECRET, secret_file=str(tmp_path / "s")
        )


@pytest.mark.parametrize("algorithms", [[], ["HS257"], ["RS256", "ES256K"], ["hs256"]])
def test_unknown_algorithms(algorithms: list[str]) -> None:
    with pytest.raises(ValueError, match="algorithm"):
        JwtProvider.build(name="p", algorithms=algorithms, secret=HMAC_SECRET)


@pytest.mark.parametrize(("alg", "need"), [("HS256", 32), ("HS384", 48), ("HS512", 64)])
def test_hmac_secret_length(alg: str, need: int) -> None:
    with pytest.raises(KeySetError, match=f"{alg} needs at least {need}"):
        JwtProvider.build(name="p", algorithms=[alg], secret="x" * (need - 1))
    JwtProvider.build(name="p", algorithms=[alg], secret="x" * need)


async def test_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    raw = secrets.token_bytes(48)
    path.write_bytes(raw + b"\r\n")
    provider = JwtProvider.build(
        name="p", algorithms=["HS384"], secret_file=str(path), clock=Clock()
    )
    assert await provider.verify(sign(claims(), raw, "HS384"))
    assert str(path) in provider.describe()
    with pytest.raises(KeySetError, match=r"jwt provider 'q': secret file .*missing.*cannot read"):
        JwtProvider.build(name="q", algorithms=["HS256"], secret_file=str(tmp_path / "missing"))


def test_describe_shows_no_secret(tmp_path: Path) -> None:
    provider = provider_for("HS256", HMAC_SECRET, tmp_path, issuer="https://idp", audiences=["api"])
    text = provider.describe()
    assert HMAC_SECRET not in text
    assert "'test'" in text and "inline secret" in text and "https://idp" in text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clock_skew_s": -1}, "clock_skew_s"),
        ({"cache_size": -1}, "cache_size"),
        ({"audiences": []}, "audiences"),
        ({"audiences": [""]}, "audiences"),
    ],
)
def test_bad_settings(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        JwtProvider.build(name="p", algorithms=["HS256"], secret=HMAC_SECRET, **kwargs)


async def test_single_audience_string_is_one_audience(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    provider = provider_for("RS256", rsa_key, tmp_path, audiences="api")
    assert await provider.verify(sign(claims(aud="api"), rsa_key))
    assert await refused(provider, sign(claims(aud="a"), rsa_key)) == "wrong audience"


async def test_start_and_aclose_without_jwks_url(rs256: JwtProvider) -> None:
    await rs256.start()
    await rs256.aclose()


# --- scopes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token_claims", "scope_claims", "want"),
    [
        ({"scope": "read  write\tadmin"}, ("scope", "scp"), {"read", "write", "admin"}),
        ({"scp": ["read", "write", 3]}, ("scope", "scp"), {"read", "write"}),
        ({"scope": "a", "scp": ["b"]}, ("scope", "scp"), {"a"}),
        ({"scope": None, "scp": ["b"]}, ("scope", "scp"), {"b"}),
        ({"scope": "", "scp": ["b"]}, ("scope", "scp"), set()),
        ({"scope": 5, "scp": ["b"]}, ("scope", "scp"), set()),
        ({"perms": "x y"}, ["perms"], {"x", "y"}),
        ({"sub": "x"}, ("scope", "scp"), set()),
    ],
)
def test_scopes_of(token_claims: dict[str, Any], scope_claims: Any, want: set[str]) -> None:
    assert scopes_of(token_claims, scope_claims) == want


def test_scopes_of_default_claims() -> None:
    assert scopes_of({"scp": "a b"}) == {"a", "b"}
