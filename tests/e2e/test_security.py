"""Edge security end to end: in-process gateways on real sockets, the test upstream,
httpx (and curl), and a real JWKS HTTP server on 127.0.0.1.

JWT (RS256 and ES256 keys from a JWKS URL): claims forwarded and client copies
replaced, Authorization stripped on demand, tokens from cookies and query
parameters, ``${jwt.sub}`` templates; attack tokens (alg none, HS/RS key
confusion, stripped or forged signature, expired, not yet valid, wrong issuer or
audience, unknown kid) refused with RFC 6750 challenges before the upstream; kid
rotation and a failing JWKS endpoint; optional auth; scopes any/all and required
claims. API keys (hashed consumers, header or query, stripped, consumer rate-limit
budgets, `meshgate hash-key`). CORS preflights and simple requests. IP allow/deny
with spoofed X-Forwarded-For from untrusted and trusted peers. `meshgate explain`.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshgate.auth.apikeys import hash_key
from meshgate.config.loader import parse_config
from meshgate.explain import run_explain
from tests.e2e.conftest import (
    GatewayFactory,
    TestUpstream,
    assert_json_error,
    curl,
    eventually,
    make_config,
    parse_curl_i,
    run_cmd,
    subprocess_env,
    to_yaml,
    url,
)
from tests.e2e.security_helpers import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    hs256_with_public_pem,
    new_ec,
    new_rsa,
    public_jwk,
    stripped_signature,
    token,
    unsigned_token,
)

CHALLENGE = re.compile(
    r'Bearer realm="meshgate", error="invalid_token", error_description="([^"\\]*)"'
)
ORIGIN = "https://app.example.com"
PREVIEW = "https://pr-12.preview.example.com"
KEY_A = "mg_alice_0123456789abcdefghijklmnopqrstuvwxyzAB"
KEY_B = "mg_bob_0123456789abcdefghijklmnopqrstuvwxyzABCD"


# --------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return new_rsa()


@pytest.fixture(scope="module")
def other_rsa() -> rsa.RSAPrivateKey:
    """A key the JWKS never publishes (forgeries, rotation)."""
    return new_rsa()


@pytest.fixture
def ec_key() -> ec.EllipticCurvePrivateKey:
    return new_ec()


@pytest.fixture
async def jwks(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> AsyncIterator[JwksServer]:
    server = await JwksServer().start()
    server.serve(public_jwk(rsa_key, "k1"), public_jwk(ec_key, "e1"))
    yield server
    await server.stop()


def provider(jwks_url: str, **over: Any) -> dict[str, Any]:
    return {
        "name": "corp",
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "algorithms": ["RS256", "ES256"],
        "jwks_url": jwks_url,
        "forward_claims": {"sub": "x-user-id"},
        **over,
    }


def route(path: str, **extra: Any) -> dict[str, Any]:
    return {"path": path, "upstream": "main", **extra}


def bearer(tok: str, **headers: str) -> dict[str, str]:
    return {"authorization": f"Bearer {tok}", **headers}


async def get(gw: Any, path: str, headers: dict[str, str] | None = None, method: str = "GET"):
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.request(method, url(gw, path), headers=headers or {})


def cors_headers(resp: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in resp.headers.items() if k.lower().startswith("access-control-")}


def vary_tokens(resp: httpx.Response) -> set[str]:
    return {t.strip().lower() for line in resp.headers.get_list("vary") for t in line.split(",")}


async def away_from_hour_boundary(margin_s: float = 10.0) -> None:
    """Rate-limit windows are aligned to the hour: never straddle a boundary."""
    left = 3600 - time.time() % 3600
    if left < margin_s:
        await asyncio.sleep(left + 0.05)


# --------------------------------------------------------------------------
# JWT: valid tokens, forwarded claims, where tokens come from
# --------------------------------------------------------------------------


async def test_valid_rs256_and_es256_tokens_forward_claims_and_replace_spoofed_headers(
    upstream: TestUpstream,
    gateway_factory: GatewayFactory,
    jwks: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    gw = await gateway_factory(routes=[route("/*", auth={})], auth={"jwt": [provider(jwks.url)]})
    assert jwks.requests >= 1  # fetched when the gateway started
    rs = token(rsa_key, "RS256", "k1", sub="alice")
    r = await get(gw, "/orders/1", bearer(rs, **{"x-user-id": "admin"}))
    assert r.status_code == 200, r.text
    rec = upstream.requests[-1]
    assert rec.header_all("x-user-id") == ["alice"]  # the client's copy is gone
    assert rec.header("authorization") == f"Bearer {rs}"  # forward_authorization default

    # two client copies of the forwarded header, with an ES256 token
    es = token(ec_key, "ES256", "e1", sub="bob")
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.get(
            url(gw, "/orders/2"),
            headers=[
                ("authorization", f"Bearer {es}"),
                ("x-user-id", "admin"),
                ("X-User-Id", "root"),
            ],
        )
    assert r.status_code == 200, r.text
    assert upstream.requests[-1].header_all("x-user-id") == ["bob"]
    assert len(upstream.requests) == 2


async def test_forward_authorization_false_strips_the_token(
    upstream: TestUpstream,
    gateway_factory: GatewayFactory,
    jwks: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    gw = await gateway_factory(
        routes=[route("/*", auth={})],
        auth={"jwt": [provider(jwks.url, forward_authorization=False)]},
    )
    r = await get(gw, "/x", bearer(token(rsa_key)))
    assert r.status_code == 200, r.text
    rec = upstream.requests[-1]
    assert rec.header("authorization") is None
    assert rec.header("x-user-id") == "alice"


async def test_tokens_from_cookie_and_query_are_stripped_when_not_forwarded(
    upstream: TestUpstream,
    gateway_factory: GatewayFactory,
    jwks: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    sources = [
        {"header": "authorization", "prefix": "Bearer"},
        {"cookie": "access_token"},
        {"query": "access_token"},
    ]
    gw = await gateway_factory(
        routes=[route("/*", auth={})],
        auth={"jwt": [provider(jwks.url, token_from=sources, forward_authorization=False)]},
    )
    tok = token(rsa_key, sub="carol")
    r = await get(gw, "/c", {"cookie": f"theme=dark; access_token={tok}; lang=en"})
    assert r.status_code == 200, r.text
    rec = upstream.requests[-1]
    assert rec.header("x-user-id") == "carol"
    cookie = rec.header("cookie") or ""
    assert tok not in cookie and "access_token" not in cookie
    assert "theme=dark" in cookie and "lang=en" in cookie

    tok2 = token(rsa_key, sub="dave")
    r = await get(gw, f"/q?page=2&access_token={tok2}&sort=asc")
    assert r.status_code == 200, r.text
    rec = upstream.requests[-1]
    assert rec.header("x-user-id") == "dave"
    assert rec.path == "/q"
    assert "access_token" not in rec.target and tok2 not in rec.target
    assert "page=2" in rec.target and "sort=asc" in rec.target

    # a bad token in the cookie is refused like any other
    r = await get(gw, "/c", {"cookie": f"access_token={stripped_signature(tok)}"})
    assert r.status_code == 401
    assert len(upstream.requests) == 2


async def test_query_token_is_forwarded_when_forward_authorization_is_true(
    upstream: TestUpstream,
    gateway_factory: GatewayFactory,
    jwks: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    gw = await gateway_factory(
        routes=[route("/*", auth={})],
        auth={"jwt": [provider(jwks.url, token_from=[{"query": "t"}])]},
    )
    tok = token(rsa_key)
    r = await get(gw, f"/q?t={tok}")
    assert r.status_code == 200, r.text
    assert f"t={tok}" in upstream.requests[-1].target


async def test_jwt_claims_in_request_header_templates(
    upstream: TestUpstream,
    gateway_factory: GatewayFactory,
    jwks: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    gw = await gateway_factory(
        routes=[
            route(
                "/*",
                auth={},
                request_headers={"set": {"x-subject": "${jwt.sub}", "x-tenant": "${jwt.tenant}"}},
            )
        ],
        auth={"jwt": [provider(jwks.url)]},
    )
    r = await get(gw, "/t", bearer(token(rsa_key, sub="erin", tenant="acme")))
    assert r.status_code == 200, r.text
    rec = upstream.requests[-1]
    assert rec.header("x-subject") == "erin"
    assert rec.header("x-tenant") == "acme"


async def test_curl_with_a_bearer_token(
    upstream: TestUpstream,
    gateway_factory: GatewayFactory,
    jwks: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    gw = await gateway_factory(routes=[route("/*", auth={})], auth={"jwt": [provider(jwks.url)]})
    tok = token(rsa_key, sub="frank")
    code, out, err = await curl("-i", "-H", f"Authorization: Bearer {tok}", url(gw, "/curl"))
    assert code == 0, err
    status, _, _ = parse_curl_i(out)
    assert status == 200
    assert upstream.requests[-1].header("x-user-id") == "frank"

    code, out, err = await curl("-i", "-H", "Authorization: Bearer nope.nope.nope", url(gw, "/c"))
    assert code == 0, err
    status, headers, body = parse_curl_i(out)
    assert status == 401
    assert CHALLENGE.fullmatch(headers["www-authenticate"][0])
    assert json.loads(body)["error"].startswith("invalid token")
    assert len(upstream.requests) == 1


# --------------------------------------------------------------------------
# JWT attacks
# --------------------------------------------------------------------------

Maker = Callable[[rsa.RSAPrivateKey, rsa.RSAPrivateKey], str]

ATTACKS: list[Any] = [
    *(
        pytest.param(lambda k, o, a=alg: unsigned_token(a), "alg none", id=f"alg-{alg}")
        for alg in ("none", "None", "NONE", "nOnE")
    ),
    pytest.param(
        lambda k, o: hs256_with_public_pem(k), "algorithm", id="hs256-signed-with-rsa-public-pem"
    ),
    pytest.param(lambda k, o: stripped_signature(token(k)), "signature", id="stripped-signature"),
    pytest.param(lambda k, o: token(o, kid="k1"), "signature", id="signed-by-another-key"),
    pytest.param(lambda k, o: token(k, exp=int(time.time()) - 3600), "expired", id="expired"),
    pytest.param(
        lambda k, o: token(k, nbf=int(time.time()) + 3600), "not yet valid", id="nbf-in-future"
    ),
    pytest.param(lambda k, o: token(k, iss="https://evil.test/"), "issuer", id="wrong-issuer"),
    pytest.param(lambda k, o: token(k, aud="other-api"), "audience", id="wrong-audience"),
    pytest.param(lambda k, o: token(o, kid="rogue"), "key id", id="unknown-kid"),
    pytest.param(lambda k, o: token(k, exp=None), "exp", id="no-exp"),
]


@pytest.mark.parametrize(("make", "reason"), ATTACKS)
async def test_attack_tokens_are_refused_before_the_upstream(
    upstream: TestUpstream,
    gateway_factory: GatewayFactory,
    jwks: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa: rsa.RSAPrivateKey,
    make: Maker,
    reason: str,
) -> None:
    gw = await gateway_factory(routes=[route("/*", auth={})], auth={"jwt": [provider(jwks.url)]})
    tok = make(rsa_key, other_rsa)
    r = await get(gw, "/orders", bearer(tok))
    data = assert_json_error(r, 401)
    challenge = r.headers["www-authenticate"]
    found = CHALLENGE.fullmatch(challenge)
    assert found, challenge
    description = found.group(1)
    assert reason in description, description
    assert data["error"] == f"invalid token: {description}"
    for part in filter(None, tok.split(".")):
        assert part not in challenge and part not in r.text
    assert upstream.requests == []


# --------------------------------------------------------------------------
# JWKS: kid rotation, endpoint failing
# --------------------------------------------------------------------------


async def test_kid_rotation_is_picked_up_without_a_restart(
    upstream: TestUpstream,
    gateway_factory: GatewayFactory,
    jwks: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa: rsa.RSAPrivateKey,
) -> None:
    # default jwks_cache_s (600 s): only the early refresh on an unknown kid can help
    gw = await gateway_factory(routes=[route("/*", auth={})], auth={"jwt": [provider(jwks.url)]})
    assert jwks.requests == 1
    assert (await get(gw, "/a", bearer(token(rsa_key, kid="k1")))).status_code == 200

    # the IdP rotates: k2 (a new key) replaces k1
    jwks.serve(public_jwk(other_rsa, "k2"))
    r = await get(gw, "/b", bearer(token(other_rsa, kid="k2", sub="rotated")))
    assert r.status_code == 200, r.text
    assert upstream.requests[-1].header("x-user-id") == "rotated"
    assert jwks.requests == 2
    # the removed key stops working (a fresh token: not from the verified-token cache)
    r = await get(gw, "/c", bearer(token(rsa_key, kid="k1")))
    assert r.status_code == 401
    assert "key id" in r.headers["www-authenticate"]
    # made-up kids cost at most one fetch per jwks_refresh_min_s (30 s by default)
    for i in range(5):
        r = await get(gw, f"/x{i}", bearer(token(other_rsa, kid=f"made-up-{i}")))
        assert r.status_code == 401
    assert jwks.requests <= 3
    assert upstream.paths() == ["/a", "/b"]


async def test_last_good_keys_stay_while_the_jwks_endpoint_fails(
    upstream: TestUpstream,
    gateway_factory: GatewayFactory,
    jwks: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = provider(jwks.url, jwks_cache_s=0.3, jwks_refresh_min_s=0)
    gw = await gateway_factory(routes=[route("/*", auth={})], auth={"jwt": [cfg]})
    assert (await get(gw, "/a", bearer(token(rsa_key, kid="k1")))).status_code == 200

    # the endpoint answers 500: background refreshes fail, the last good set stays
    jwks.status = 500
    before = jwks.requests
    await eventually(lambda: jwks.requests >= before + 2, wait_s=5)
    r = await get(gw, "/b", bearer(token(rsa_key, kid="k1", sub="during-500")))
    assert r.status_code == 200, r.text
    # an unknown kid triggers an early refresh, which fails too: still the last good set
    r = await get(gw, "/c", bearer(token(rsa_key, kid="k9")))
    assert r.status_code == 401
    r = await get(gw, "/d", bearer(token(rsa_key, kid="k1", sub="after-failed-early")))
    assert r.status_code == 200, r.text

    # the endpoint is gone altogether (connection refused)
    await jwks.stop()
    r = await get(gw, "/e", bearer(token(rsa_key, kid="k9")))
    assert r.status_code == 401
    r = await get(gw, "/f", bearer(token(rsa_key, kid="k1", sub="endpoint-down")))
    assert r.status_code == 200, r.text
    assert upstream.requests[-1].header("x-user-id") == "endpoint-down"
    assert upstream.paths() == ["/a", "/b", "/d", "/f"]
    failures = [r for r in caplog.records if "fetch failed" in r.getMessage()]
    assert failures and all(r.levelname == "WARNING" for r in failures)


# --------------------------------------------------------------------------
# required / optional auth
# --------------------------------------------------------------------------


async def test_missing_token_on_required_route_and_optional_auth(
    upstream: TestUpstream,
    gateway_factory: GatewayFactory,
    jwks: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    gw = await gateway_factory(
        routes=[route("/req/*", auth={}), route("/opt/*", auth={"required": False})],
        auth={"jwt": [provider(jwks.url)]},
    )
    r = await get(gw, "/req/x")
    data = assert_json_error(r, 401)
    assert r.headers["www-authenticate"] == 'Bearer realm="meshgate"'
    assert data["error"] == "missing credentials"
    # a different scheme is not a bearer token either
    r = await get(gw, "/req/x", {"authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401
    assert "error=" not in r.headers["www-authenticate"]
    assert upstream.requests == []

    r = await get(gw, "/opt/x")  # anonymous
    assert r.status_code == 200, r.text
    assert upstream.requests[-1].header("x-user-id") is None
    r = await get(gw, "/opt/y", bearer(token(rsa_key, sub="gina")))
    assert r.status_code == 200, r.text
    assert upstream.requests[-1].header("x-user-id") == "gina"
    # a present but invalid token is refused even where auth is optional
    r = await get(gw, "/opt/z", bearer(token(rsa_key, exp=int(time.time()) - 3600)))
    assert_json_error(r, 401)
    assert CHALLENGE.fullmatch(r.headers["www-authenticate"])
    assert upstream.paths() == ["/opt/x", "/opt/y"]


async def test_anonymous_caller_cannot_spoof_a_forwarded_claim_header(
    upstream: TestUpstream,
    gateway_factory: GatewayFactory,
    jwks: JwksServer,
) -> None:
    """docs/security.md: for forward_claims "a client's own header of that name is
    always removed first" -- also when the caller is let through anonymously."""
    gw = await gateway_factory(
        routes=[route("/opt/*", auth={"required": False})],
        auth={"jwt": [provider(jwks.url)]},
    )
    r = await get(gw, "/opt/x", {"x-user-id": "admin"})
    assert r.status_code == 200, r.text
    assert upstream.requests[-1].header("x-user-id") is None


# --------------------------------------------------------------------------
# scopes and claims
# --------------------------------------------------------------------------


async def test_scopes_any_and_all_and_required_claims(
    upstream: TestUpstream,
    gateway_factory: GatewayFactory,
    jwks: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    gw = await gateway_factory(
        routes=[
            route("/any/*", auth={"scopes": ["orders:read", "orders:admin"]}),
            route("/all/*", auth={"scopes": ["orders:read", "orders:write"], "scopes_mode": "all"}),
            route("/tenant/*", auth={"claims": {"tenant": ["acme"]}}),
        ],
        auth={"jwt": [provider(jwks.url)]},
    )
    read_only = token(rsa_key, scope="orders:read profile")  # a string
    read_write = token(rsa_key, scp=["orders:write", "orders:read"])  # a list, in scp
    nothing = token(rsa_key)
    other = token(rsa_key, scope="orders:list")

    async def status(path: str, tok: str) -> httpx.Response:
        return await get(gw, path, bearer(tok))

    assert (await status("/any/1", read_only)).status_code == 200  # one is enough
    assert (await status("/any/2", read_write)).status_code == 200
    assert (await status("/all/1", read_write)).status_code == 200
    for path, tok in (("/all/x", read_only), ("/any/x", nothing), ("/any/y", other)):
        r = await status(path, tok)
        data = assert_json_error(r, 403)
        assert data["error"] == "insufficient scope"
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="meshgate", error="insufficient_scope"')
    r = await status("/all/x", read_only)
    assert 'scope="orders:read orders:write"' in r.headers["www-authenticate"]

    assert (await status("/tenant/1", token(rsa_key, tenant="acme"))).status_code == 200
    for tok in (token(rsa_key, tenant="globex"), token(rsa_key), token(rsa_key, tenant=["x"])):
        r = await status("/tenant/x", tok)
        assert assert_json_error(r, 403)["error"] == "claim tenant not allowed"
    assert upstream.paths() == ["/any/1", "/any/2", "/all/1", "/tenant/1"]


# --------------------------------------------------------------------------
# API keys
# --------------------------------------------------------------------------


def api_keys_config(**over: Any) -> dict[str, Any]:
    return {
        "key_from": [{"header": "x-api-key"}, {"query": "api_key"}],
        "consumers": [
            {"name": "alice-app", "keys": [hash_key(KEY_A)], "scopes": ["orders:read"]},
            {"name": "bob-app", "keys": [hash_key(KEY_B)]},
        ],
        **over,
    }


async def test_api_keys_header_query_stripping_and_consumer_rate_limits(
    upstream: TestUpstream,
    gateway_factory: GatewayFactory,
    jwks: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    await away_from_hour_boundary()
    gw = await gateway_factory(
        routes=[
            route(
                "/keys/*",
                auth={"providers": ["api_key"]},
                rate_limits=[{"limit": 1, "window_s": 3600, "key": ["consumer"]}],
            ),
            route("/scoped/*", auth={"providers": ["api_key"], "scopes": ["orders:admin"]}),
            route("/jwt/*", auth={"providers": ["corp"]}),
            route("/either/*", auth={}),
        ],
        auth={"jwt": [provider(jwks.url)], "api_keys": api_keys_config()},
    )
    # key in a header: stripped before the upstream
    r = await get(gw, "/keys/a", {"x-api-key": KEY_A})
    assert r.status_code == 200, r.text
    rec = upstream.requests[-1]
    assert rec.header("x-api-key") is None
    assert KEY_A not in json.dumps(rec.headers) and KEY_A not in rec.target
    # key in the query: stripped too; bob has his own budget
    r = await get(gw, f"/keys/b?x=1&api_key={KEY_B}")
    assert r.status_code == 200, r.text
    rec = upstream.requests[-1]
    assert rec.path == "/keys/b" and "api_key" not in rec.target and "x=1" in rec.target
    # each consumer's budget of 1 is now spent
    assert (await get(gw, "/keys/c", {"x-api-key": KEY_A})).status_code == 429
    assert (await get(gw, f"/keys/d?api_key={KEY_B}")).status_code == 429

    # unknown key, no key, a JWT where only keys are taken
    for headers in ({"x-api-key": "mg_wrong"}, {"x-api-key": KEY_A + "x"}):
        r = await get(gw, "/keys/e", headers)
        assert assert_json_error(r, 401)["error"] == "invalid API key"
        assert r.headers["www-authenticate"] == 'Key realm="meshgate"'
        assert "mg_wrong" not in r.text
    r = await get(gw, "/keys/f")
    assert assert_json_error(r, 401)["error"] == "missing credentials"
    assert r.headers["www-authenticate"] == 'Key realm="meshgate"'
    r = await get(gw, "/keys/g", bearer(token(rsa_key)))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Key realm="meshgate"'
    # a consumer's scopes are checked like a token's
    r = await get(gw, "/scoped/x", {"x-api-key": KEY_A})
    assert_json_error(r, 403)
    # a JWT-only route ignores API keys
    r = await get(gw, "/jwt/x", {"x-api-key": KEY_A})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="meshgate"'
    assert (await get(gw, "/jwt/y", bearer(token(rsa_key)))).status_code == 200
    # both kinds where both are allowed
    assert (await get(gw, "/either/k", {"x-api-key": KEY_B})).status_code == 200
    assert (await get(gw, "/either/j", bearer(token(rsa_key)))).status_code == 200
    assert upstream.paths() == ["/keys/a", "/keys/b", "/jwt/y", "/either/k", "/either/j"]


async def test_api_key_caller_cannot_spoof_a_forwarded_claim_header(
    upstream: TestUpstream,
    gateway_factory: GatewayFactory,
    jwks: JwksServer,
) -> None:
    """On a route taking JWTs and API keys, an API-key caller's own `x-user-id`
    (the header the JWT provider forwards `sub` in) must not reach the upstream,
    which trusts it as the verified subject."""
    gw = await gateway_factory(
        routes=[route("/*", auth={})],
        auth={"jwt": [provider(jwks.url)], "api_keys": api_keys_config()},
    )
    r = await get(gw, "/x", {"x-api-key": KEY_B, "x-user-id": "alice"})
    assert r.status_code == 200, r.text
    assert upstream.requests[-1].header("x-user-id") is None


async def hash_key_cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    if stdin is None:
        return await run_cmd(sys.executable, "-m", "meshgate", "hash-key", *args)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshgate",
        "hash-key",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_hash_key_cli() -> None:
    results = await asyncio.gather(
        hash_key_cli("s3cret-key"),
        hash_key_cli(),  # stdin closed (DEVNULL): a new key
        hash_key_cli(stdin=b"piped-key"),
        hash_key_cli(""),
    )
    (c1, o1, e1), (c2, o2, e2), (c3, o3, e3), (c4, o4, e4) = results

    assert c1 == 0, e1
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", o1), o1
    assert o1.strip() == hash_key("s3cret-key")

    assert c2 == 0, e2
    key = re.search(r"^key:\s+(\S+)$", o2, re.M)
    hashed = re.search(r"^hash:\s+(sha256:[0-9a-f]{64})$", o2, re.M)
    assert key and hashed, o2
    assert len(key.group(1)) >= 32
    assert hashed.group(1) == hash_key(key.group(1))

    assert c3 == 0, e3
    assert o3.strip() == hash_key("piped-key")

    assert c4 != 0
    assert o4 == ""
    assert "empty" in e4 and "Traceback" not in e4


# --------------------------------------------------------------------------
# CORS
# --------------------------------------------------------------------------

CORS = {
    "allow_origins": [ORIGIN],
    "allow_origin_regex": r"https://[a-z0-9-]+\.preview\.example\.com",
    "allow_methods": ["GET", "POST", "PUT"],
    "allow_headers": ["authorization", "x-custom"],
    "expose_headers": ["x-request-id"],
    "allow_credentials": True,
    "max_age_s": 123,
}


@pytest.fixture
async def cors_gateway(gateway_factory: GatewayFactory, jwks: JwksServer) -> Any:
    return await gateway_factory(
        routes=[
            route("/private/*", auth={}),
            route("/nocors/*", cors=False),
            route("/star/*", cors={"allow_origins": ["*"]}),
            route("/*"),
        ],
        auth={"jwt": [provider(jwks.url)]},
        cors=CORS,
    )


def preflight(origin: str, method: str, headers: str | None = None) -> dict[str, str]:
    out = {"origin": origin, "access-control-request-method": method}
    if headers is not None:
        out["access-control-request-headers"] = headers
    return out


async def test_cors_preflight_is_answered_without_upstream_or_auth(
    upstream: TestUpstream, cors_gateway: Any
) -> None:
    for path in ("/private/orders", "/open/x"):
        r = await get(
            cors_gateway, path, preflight(ORIGIN, "PUT", "Authorization, X-Custom"), "OPTIONS"
        )
        assert r.status_code == 204, r.text
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert r.headers["access-control-allow-credentials"] == "true"
        methods = {m.strip() for m in r.headers["access-control-allow-methods"].split(",")}
        assert {"GET", "POST", "PUT"} <= methods
        allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "x-custom"} <= allowed
        assert r.headers["access-control-max-age"] == "123"
        assert "origin" in vary_tokens(r)
        assert "www-authenticate" not in r.headers
    # a regex origin
    r = await get(cors_gateway, "/open/x", preflight(PREVIEW, "POST"), "OPTIONS")
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == PREVIEW
    assert upstream.requests == []


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(preflight("https://evil.example.net", "GET"), id="origin"),
        pytest.param(preflight(PREVIEW + ".evil.net", "GET"), id="regex-is-anchored"),
        pytest.param(preflight("null", "GET"), id="null-origin"),
        pytest.param(preflight(ORIGIN, "DELETE"), id="method"),
        pytest.param(preflight(ORIGIN, "PUT", "x-custom, x-evil"), id="header"),
    ],
)
async def test_cors_preflight_refused(
    upstream: TestUpstream, cors_gateway: Any, headers: dict[str, str]
) -> None:
    r = await get(cors_gateway, "/private/x", headers, "OPTIONS")
    data = assert_json_error(r, 403)
    assert data["error"] == "CORS preflight refused"
    assert cors_headers(r) == {}
    assert upstream.requests == []


async def test_cors_on_simple_requests_and_auth_errors(
    upstream: TestUpstream, cors_gateway: Any, rsa_key: rsa.RSAPrivateKey
) -> None:
    gw = cors_gateway
    r = await get(gw, "/open/1", {"origin": ORIGIN})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    assert "origin" in vary_tokens(r)

    r = await get(gw, "/open/2", {"origin": PREVIEW})
    assert r.headers["access-control-allow-origin"] == PREVIEW

    # the 401 of the auth stage carries the CORS headers, so the page can read it
    r = await get(gw, "/private/1", {"origin": ORIGIN})
    assert_json_error(r, 401)
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "origin" in vary_tokens(r)
    r = await get(gw, "/private/2", bearer(token(rsa_key), origin=ORIGIN))
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN

    # other origins get no CORS headers at all
    for origin in ("https://evil.example.net", "null", PREVIEW + ".evil.net"):
        r = await get(gw, "/open/3", {"origin": origin})
        assert r.status_code == 200
        assert cors_headers(r) == {}
        assert "origin" in vary_tokens(r)
    r = await get(gw, "/private/3", {"origin": "https://evil.example.net"})
    assert r.status_code == 401
    assert cors_headers(r) == {}

    # never "*" with credentials
    for path in ("/open/4", "/private/4"):
        r = await get(gw, path, {"origin": ORIGIN})
        assert r.headers["access-control-allow-origin"] != "*"
    # a route's own policy replaces the global one
    r = await get(gw, "/star/1", {"origin": "https://anyone.example.org"})
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers


async def test_route_cors_false_disables_the_global_policy(
    upstream: TestUpstream, cors_gateway: Any
) -> None:
    r = await get(cors_gateway, "/nocors/1", {"origin": ORIGIN})
    assert r.status_code == 200
    assert cors_headers(r) == {}
    # an OPTIONS there is not a preflight the gateway answers: it is proxied
    r = await get(cors_gateway, "/nocors/2", preflight(ORIGIN, "GET"), "OPTIONS")
    assert r.status_code == 200
    assert cors_headers(r) == {}
    assert [(q.method, q.path) for q in upstream.requests] == [
        ("GET", "/nocors/1"),
        ("OPTIONS", "/nocors/2"),
    ]


async def test_cors_preflight_with_curl(upstream: TestUpstream, cors_gateway: Any) -> None:
    code, out, err = await curl(
        "-i",
        "-X",
        "OPTIONS",
        "-H",
        f"Origin: {ORIGIN}",
        "-H",
        "Access-Control-Request-Method: POST",
        "-H",
        "Access-Control-Request-Headers: content-type, authorization",
        url(cors_gateway, "/private/x"),
    )
    assert code == 0, err
    status, headers, _ = parse_curl_i(out)
    assert status == 204
    assert headers["access-control-allow-origin"] == [ORIGIN]
    assert headers["access-control-max-age"] == ["123"]
    assert upstream.requests == []


# --------------------------------------------------------------------------
# IP rules
# --------------------------------------------------------------------------

IP_ROUTES = [
    route("/office/*", ip_rules={"allow": ["10.0.0.0/8", "2001:db8::/32"]}),
    route("/*"),
]
GLOBAL_IP = {"deny": ["203.0.113.0/24", "2001:db8:dead::/48"]}


async def refused(gw: Any, path: str, xff: str | None = None) -> bool:
    """True when the gateway answers 403 `client address not allowed`, False for 200."""
    r = await get(gw, path, {"x-forwarded-for": xff} if xff is not None else {})
    if r.status_code == 200:
        return False
    data = assert_json_error(r, 403)
    assert data["error"] == "client address not allowed"
    return True


async def test_ip_rules_ignore_forwarded_for_from_an_untrusted_peer(
    upstream: TestUpstream, gateway_factory: GatewayFactory
) -> None:
    gw = await gateway_factory(routes=IP_ROUTES, ip_rules=GLOBAL_IP)
    # the peer (127.0.0.1) decides: a spoofed denied or allowed address changes nothing
    assert not await refused(gw, "/pub", "203.0.113.5")
    assert not await refused(gw, "/pub", "2001:db8:dead::1")
    assert await refused(gw, "/office/1", "10.1.2.3")
    assert await refused(gw, "/office/2")
    assert upstream.paths() == ["/pub", "/pub"]


async def test_ip_rules_with_trusted_proxies_use_the_rightmost_untrusted_address(
    upstream: TestUpstream, gateway_factory: GatewayFactory
) -> None:
    gw = await gateway_factory(
        routes=IP_ROUTES, ip_rules=GLOBAL_IP, trusted_proxies=["127.0.0.0/8"]
    )
    cases = [
        ("/pub", "203.0.113.5", True),  # global deny
        ("/pub", "198.51.100.1, 203.0.113.5", True),  # a clean spoofed entry does not help
        ("/pub", "203.0.113.5, 198.51.100.1", False),  # the client is 198.51.100.1
        ("/pub", "198.51.100.1, 127.0.0.9", False),  # trusted hops are skipped
        ("/pub", "2001:db8:dead::7", True),  # IPv6 deny
        ("/office/a", "10.1.2.3", False),  # route allow
        ("/office/b", "10.1.2.3, 198.51.100.7", True),  # a spoofed allowed entry does not help
        ("/office/c", "198.51.100.7, 10.1.2.3", False),
        ("/office/d", "10.1.2.3, 127.0.0.5", False),
        ("/office/e", "2001:db8::1", False),  # IPv6 allow
        ("/office/f", "2001:db9::1", True),
        ("/office/g", "2001:db8:dead::1", True),  # global deny wins over route allow
        ("/office/h", "203.0.113.5", True),
        ("/office/i", None, True),  # no XFF: the trusted peer itself, not allowed
    ]
    got = [(p, x, await refused(gw, p, x)) for p, x, _ in cases]
    assert got == cases
    assert upstream.paths() == [p for p, _, deny in cases if not deny]


async def test_ip_rules_refuse_the_peer_itself_and_curl_sees_the_json_error(
    upstream: TestUpstream, gateway_factory: GatewayFactory
) -> None:
    gw = await gateway_factory(ip_rules={"deny": ["127.0.0.0/8", "::1"]})
    assert await refused(gw, "/x")
    code, out, err = await curl("-i", "-H", "X-Forwarded-For: 198.51.100.1", url(gw, "/y"))
    assert code == 0, err
    status, _, body = parse_curl_i(out)
    assert status == 403
    assert json.loads(body)["error"] == "client address not allowed"
    assert upstream.requests == []


async def test_a_refused_address_gets_no_cors_preflight_answer(
    upstream: TestUpstream, gateway_factory: GatewayFactory
) -> None:
    """docs/security.md: the chain starts with ip_rules and "a refused address never
    reaches the rest" -- the CORS policy included, preflights too."""
    gw = await gateway_factory(cors=CORS, ip_rules={"deny": ["127.0.0.0/8"]})
    r = await get(gw, "/x", preflight(ORIGIN, "GET"), "OPTIONS")
    assert assert_json_error(r, 403)["error"] == "client address not allowed"
    assert cors_headers(r) == {}
    assert upstream.requests == []


# --------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------


def test_explain_shows_the_security_stages_first() -> None:
    cfg = make_config(
        9,
        routes=[
            route(
                "/*",
                auth={"scopes": ["orders:read"]},
                rate_limits=[{"limit": 5, "window_s": 60}],
            )
        ],
        auth={"jwt": [{"name": "hs", "algorithms": ["HS256"], "secret": "s" * 40}]},
        cors=CORS,
        ip_rules=GLOBAL_IP,
    )
    config, doc = parse_config(to_yaml(cfg), "gw.yaml")
    lines = run_explain(config, doc, "GET", "http://localhost/orders", [])
    chain = [line for line in lines if line.startswith("chain: ")]
    assert len(chain) == 1, lines
    assert chain[0].startswith("chain: ip_rules -> cors -> auth"), chain[0]
