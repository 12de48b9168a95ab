"""Helpers for the edge-security e2e tests: a real JWKS HTTP server on 127.0.0.1,
public JWKs of generated keys, and signed, unsigned and forged tokens."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://issuer.test/"
AUDIENCE = "orders-api"

_jti = itertools.count()


class JwksServer:
    """A minimal HTTP/1.1 server answering every request with the JWKS `body` and
    `status`, counting the requests (`requests`). `stop` closes it (refused after)."""

    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.status = 200
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    def serve(self, *jwks: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(jwks)}).encode()
        self.status = 200

    async def start(self) -> JwksServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            head = (
                f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + self.body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def new_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_ec() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(private_key: Any, kid: str) -> dict[str, Any]:
    """The public JWK of an RSA or EC private key."""
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        out = RSAAlgorithm.to_jwk(public, as_dict=True)
    else:
        out = ECAlgorithm.to_jwk(public, as_dict=True)
    return {**out, "kid": kid, "use": "sig"}


def public_pem(private_key: Any) -> bytes:
    return private_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def claims(**over: Any) -> dict[str, Any]:
    """Valid claims for the test issuer and audience (each call a new jti)."""
    now = int(time.time())
    out: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 600,
        "jti": f"t{next(_jti)}",
    }
    out.update(over)
    return {k: v for k, v in out.items() if v is not None}


def token(key: Any, alg: str = "RS256", kid: str | None = "k1", **over: Any) -> str:
    """A token signed with `key`; `over` changes the claims (None removes one)."""
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**over), key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: dict[str, Any]) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def unsigned_token(alg: str = "none", kid: str = "k1") -> str:
    """An `alg: none` token (empty signature) with valid claims."""
    return f"{segment({'alg': alg, 'typ': 'JWT', 'kid': kid})}.{segment(claims())}."


def hs256_with_public_pem(private_key: Any, kid: str = "k1") -> str:
    """The key-confusion forgery: HS256 keyed with the RSA public key's PEM text."""
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{segment(claims())}"
    mac = hmac.new(public_pem(private_key), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def stripped_signature(valid: str) -> str:
    """A valid token with its signature removed (header.payload.)."""
    head, payload, _ = valid.split(".")
    return f"{head}.{payload}."
