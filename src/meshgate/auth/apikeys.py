"""API keys: consumers identified by a secret key, of which only a hash is stored.

A key is stored as "sha256:" followed by the 64 lower-case hex digits of the
SHA-256 of its UTF-8 bytes (`hash_key`; `meshgate hash-key` prints it). The
hash is unsalted and fast on purpose, as Kong and AWS store API keys: a key is
a random secret of high entropy (`new_key` draws 256 bits), so a stolen hash
cannot be reversed by guessing, and a salt or slow hash that protects
low-entropy passwords would only cost time on every request. Keys chosen by
people are not API keys: do not store those this way.

`ApiKeys.lookup` hashes the presented key and finds the digest by a dict
lookup, then confirms it with `hmac.compare_digest`. The time taken does not
tell how much of a stored key the presented one matches: the digest of a
guess cannot be steered toward a stored digest, byte by byte.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence

_PREFIX = "sha256:"
_STORED = re.compile(r"sha256:[0-9a-fA-F]{64}")


class ApiKeyError(ValueError):
    """API key consumers are badly configured (the message never holds a key or hash)."""


def _digest(key: str) -> bytes:
    # surrogatepass: a key read from a query string may hold lone surrogates
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


_EMPTY = _digest("")


def hash_key(key: str) -> str:
    """How `key` is stored: "sha256:<64 hex digits>". Raises ApiKeyError for an empty key."""
    if not key:
        raise ApiKeyError("an API key cannot be empty")
    return _PREFIX + _digest(key).hex()


def new_key() -> str:
    """A new random key: "mg_" and 43 URL-safe characters (256 bits)."""
    return "mg_" + secrets.token_urlsafe(32)


class ApiKeys:
    """The consumers, found by the keys they present."""

    __slots__ = ("_by_digest",)

    _by_digest: dict[bytes, tuple[bytes, str]]

    @classmethod
    def build(cls, consumers: Sequence[tuple[str, Sequence[str]]]) -> ApiKeys:
        """Keys from (consumer name, its stored key hashes) pairs.

        Raises ApiKeyError naming the consumer for an empty or repeated name, a
        hash not of the form "sha256:<64 hex digits>" (hex in either case;
        surrounding spaces ignored), the hash of the empty key, or a hash
        listed twice (naming both consumers).
        """
        by_digest: dict[bytes, tuple[bytes, str]] = {}
        names: set[str] = set()
        for name, hashes in consumers:
            if not name:
                raise ApiKeyError("an API key consumer has an empty name")
            if name in names:
                raise ApiKeyError(f"API key consumer {name!r} is listed twice")
            names.add(name)
            for i, stored in enumerate(hashes):
                text = stored.strip()
                if _STORED.fullmatch(text) is None:
                    raise ApiKeyError(
                        f"API key consumer {name!r}: key {i} is not 'sha256:' and 64 hex digits "
                        "(store the output of `meshgate hash-key`, never the key itself)"
                    )
                digest = bytes.fromhex(text.removeprefix(_PREFIX))
                if digest == _EMPTY:
                    raise ApiKeyError(f"API key consumer {name!r}: key {i} is the empty key")
                other = by_digest.get(digest)
                if other is not None and other[1] == name:
                    raise ApiKeyError(
                        f"API key consumer {name!r} lists the same key hash twice (key {i})"
                    )
                if other is not None:
                    raise ApiKeyError(
                        f"API key consumers {other[1]!r} and {name!r} have the same key hash "
                        f"(key {i} of {name!r})"
                    )
                by_digest[digest] = (digest, name)
        self = cls.__new__(cls)
        self._by_digest = by_digest
        return self

    def __len__(self) -> int:
        """The number of keys (not consumers)."""
        return len(self._by_digest)

    def lookup(self, presented: str) -> str | None:
        """The consumer whose key `presented` is; None for no consumer's (or an empty key)."""
        if not presented:
            return None
        digest = _digest(presented)
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            return None
        return found[1]
