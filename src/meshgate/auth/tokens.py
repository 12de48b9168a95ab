"""What the request path needs of token checks without loading PyJWT and cryptography
(about 11 MB of RSS): the refusal type and the scope reading. `meshgate.auth.jwt`
raises and uses them; routes without JWT never import it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class TokenError(Exception):
    """A token was refused. `description` says why in a few words, without token text."""

    status = 401

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def scopes_of(
    claims: Mapping[str, Any], scope_claims: Iterable[str] = ("scope", "scp")
) -> set[str]:
    """The scopes in the first of `scope_claims` the claims hold (not null): a
    space-separated string, or a list (its string items). No such claim: empty."""
    for name in scope_claims:
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            return set(value.split())
        if isinstance(value, list):
            return {v for v in value if isinstance(v, str)}
        return set()
    return set()
