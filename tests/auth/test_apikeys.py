"""Tests of API key hashing and lookup (meshgate.auth.apikeys)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.auth.apikeys import ApiKeyError, ApiKeys, hash_key, new_key

ALICE_1, ALICE_2, BOB = "mg_alice-first", "mg_alice-second", "mg_bob"
KEYS = ApiKeys.build(
    [
        ("alice", [hash_key(ALICE_1), hash_key(ALICE_2)]),
        ("bob", [hash_key(BOB)]),
        ("carol", []),
    ]
)


# --------------------------------------------------------------------------- hash_key, new_key


def test_hash_format() -> None:
    assert hash_key("mg_secret") == "sha256:" + hashlib.sha256(b"mg_secret").hexdigest()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", hash_key("x"))
    assert hash_key("clé") == "sha256:" + hashlib.sha256("clé".encode()).hexdigest()
    # a known vector
    assert hash_key("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_hash_of_an_empty_key_is_refused() -> None:
    with pytest.raises(ApiKeyError, match="cannot be empty"):
        hash_key("")


def test_new_key() -> None:
    keys = {new_key() for _ in range(1000)}
    assert len(keys) == 1000
    for key in keys:
        assert re.fullmatch(r"mg_[A-Za-z0-9_-]{43}", key)
    assert ApiKeys.build([("c", [hash_key(k) for k in keys])]).lookup(keys.pop()) == "c"


# --------------------------------------------------------------------------- lookup


@pytest.mark.parametrize(
    ("presented", "consumer"),
    [
        (ALICE_1, "alice"),
        (ALICE_2, "alice"),
        (BOB, "bob"),
        ("mg_unknown", None),
        ("mg_bo", None),  # a prefix of a key
        ("mg_bobb", None),
        ("MG_BOB", None),  # keys are case-sensitive
        (" mg_bob", None),  # and taken as given
        ("", None),
        ("\udcff", None),  # a lone surrogate (from a query string) is only a miss
        (hash_key(BOB), None),  # the stored hash is not the key
    ],
)
def test_lookup(presented: str, consumer: str | None) -> None:
    assert KEYS.lookup(presented) == consumer


def test_len_counts_keys() -> None:
    assert len(KEYS) == 3
    assert len(ApiKeys.build([])) == 0


def test_stored_hashes_may_use_upper_case_hex_and_spaces() -> None:
    stored = hash_key(BOB)
    keys = ApiKeys.build([("bob", ["sha256:" + stored[7:].upper() + " "])])
    assert keys.lookup(BOB) == "bob"


# --------------------------------------------------------------------------- configuration errors

GOOD = hash_key("mg_good")


@pytest.mark.parametrize(
    ("consumers", "message"),
    [
        (
            [("alice", [GOOD]), ("bob", [hash_key(BOB), GOOD])],
            r"API key consumers 'alice' and 'bob' have the same key hash \(key 1 of 'bob'\)",
        ),
        (
            [("alice", [GOOD, GOOD.upper().replace("SHA256", "sha256")])],
            r"consumer 'alice' lists the same key hash twice \(key 1\)",
        ),
        (
            [("alice", [GOOD]), ("bob", ["mg_the-raw-key"])],
            r"API key consumer 'bob': key 0 is not 'sha256:' and 64 hex digits",
        ),
        ([("bob", [GOOD[:-1]])], r"consumer 'bob': key 0 is not"),
        ([("bob", [GOOD + "0"])], r"consumer 'bob': key 0 is not"),
        ([("bob", [GOOD[:-1] + "g"])], r"key 0 is not"),
        ([("bob", [GOOD.replace("sha256", "sha512")])], r"key 0 is not"),
        ([("bob", [GOOD[7:]])], r"key 0 is not"),  # no prefix
        ([("bob", ["sha256:" + "ab " * 21 + "a"])], r"key 0 is not"),  # spaces inside
        ([("bob", [""])], r"key 0 is not"),
        (
            [("bob", ["sha256:" + hashlib.sha256(b"").hexdigest()])],
            r"consumer 'bob': key 0 is the empty key",
        ),
        ([("", [GOOD])], r"an API key consumer has an empty name"),
        ([("bob", [GOOD]), ("bob", [hash_key(BOB)])], r"consumer 'bob' is listed twice"),
    ],
)
def test_bad_configuration(consumers: Sequence[tuple[str, Sequence[str]]], message: str) -> None:
    with pytest.raises(ApiKeyError, match=message):
        ApiKeys.build(consumers)


def test_errors_never_show_the_stored_value() -> None:
    with pytest.raises(ApiKeyError) as caught:
        ApiKeys.build([("bob", ["mg_the-raw-key"])])
    assert "the-raw-key" not in str(caught.value)
    with pytest.raises(ApiKeyError) as caught:
        ApiKeys.build([("a", [GOOD]), ("b", [GOOD])])
    assert GOOD[7:] not in str(caught.value)


def test_api_key_error_is_a_value_error() -> None:
    assert issubclass(ApiKeyError, ValueError)


# --------------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=8, unique=True),
    other=st.text(max_size=40),
)
def test_every_key_finds_its_consumer_and_nothing_else_does(keys: list[str], other: str) -> None:
    table = ApiKeys.build([(f"consumer-{i}", [hash_key(k)]) for i, k in enumerate(keys)])
    for i, key in enumerate(keys):
        assert table.lookup(key) == f"consumer-{i}"
    if other not in keys:
        assert table.lookup(other) is None
