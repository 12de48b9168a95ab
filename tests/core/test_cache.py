"""Tests of the response cache decisions (meshgate.core.cache)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgate.core.cache import (
    CacheError,
    CachePolicy,
    Freshness,
    Headers,
    LruBytes,
    SingleFlight,
    StoredResponse,
    VaryIndex,
    decode_entry,
    encode_entry,
    not_modified,
    parse_cache_control,
    revalidation_headers,
    stored_headers,
    vary_key,
)

NOW = 1000.0  # the monotonic clock
DATE_NOW = 1_700_000_000.0  # the Unix time at NOW


def http_date(t: float) -> str:
    return formatdate(t, usegmt=True)


# --------------------------------------------------------------------------- Cache-Control


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], {}),
        (["max-age=60"], {"max-age": "60"}),
        (["Max-Age=60, No-Cache"], {"max-age": "60", "no-cache": None}),
        (["public", "s-maxage=10"], {"public": None, "s-maxage": "10"}),
        (['private="set-cookie, x-a", no-store'], {"private": "set-cookie, x-a", "no-store": None}),
        ([r'ext="a\"b"'], {"ext": 'a"b'}),
        (["max-age=1, max-age=2", "max-age=3"], {"max-age": "1"}),
        ([" , ,max-age = 5 ,"], {"max-age": "5"}),
        (["bad name, =x, max-age=a b, ok"], {"ok": None}),
        (['x="unterminated, max-age=1'], {}),
        ([r'x="escaped end\"', "y"], {"y": None}),
        (['x="a"b, y'], {"y": None}),
        (["no-cache=", "z"], {"z": None}),
    ],
)
def test_parse_cache_control(values: list[str], expected: dict[str, str | None]) -> None:
    assert parse_cache_control(values) == expected


@given(st.lists(st.text(max_size=30), max_size=4))
def test_parse_cache_control_never_raises(values: list[str]) -> None:
    for name in parse_cache_control(values):
        assert name == name.lower()


# --------------------------------------------------------------------------- policy parameters


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CachePolicy.build(default_ttl_s=-1), r"default_ttl_s must be a finite .* -1"),
        (lambda: CachePolicy.build(default_ttl_s=math.inf), r"default_ttl_s .* inf"),
        (lambda: CachePolicy.build(stale_if_error_s=math.nan), r"stale_if_error_s .* nan"),
        (lambda: CachePolicy.build(stale_while_revalidate_s=-0.5), r"stale_while_revalidate_s"),
        (lambda: CachePolicy.build(max_object_bytes=-1), r"max_object_bytes .* -1"),
        (lambda: CachePolicy.build(max_object_bytes=True), r"max_object_bytes .* True"),
        (lambda: CachePolicy.build(methods=()), r"methods must name at least one"),
        (lambda: CachePolicy.build(methods=("GET", "B AD")), r"methods 1 \('B AD'\)"),
        (lambda: CachePolicy.build(statuses=(200, 99)), r"statuses 1 \(99\)"),
        (lambda: CachePolicy.build(key_headers=("x y",)), r"key_headers 0"),
        (lambda: CachePolicy.build(key_query=("a", "")), r"key_query 1"),
        (lambda: CachePolicy.build(key_query=("a=b",)), r"key_query 0"),
        (lambda: LruBytes(0), r"max_bytes must be an integer >= 1, got 0"),
        (lambda: SingleFlight(-1), r"max_waiters must be an integer >= 0, got -1"),
    ],
)
def test_bad_parameters_are_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(CacheError, match=message):
        make()
    assert issubclass(CacheError, ValueError)


# --------------------------------------------------------------------------- request bypass


@pytest.mark.parametrize(
    ("method", "headers", "public", "expected"),
    [
        ("GET", [], False, None),
        ("HEAD", [], False, None),
        ("get", [], False, None),
        ("POST", [], False, "method"),
        ("DELETE", [], False, "method"),
        ("GET", [("Authorization", "Bearer x")], False, "authorization"),
        ("GET", [("authorization", "Bearer x")], True, None),
        ("GET", [("Cache-Control", "no-store")], False, "no-store"),
        ("GET", [("cache-control", "max-age=0, NO-STORE")], True, "no-store"),
        ("GET", [("cache-control", "no-cache")], False, None),
        ("POST", [("authorization", "x"), ("cache-control", "no-store")], False, "method"),
    ],
)
def test_request_cacheable(
    method: str, headers: Headers, public: bool, expected: str | None
) -> None:
    policy = CachePolicy.build(public_with_authorization=public)
    assert policy.request_cacheable(method, headers) == expected


def test_configured_methods_are_cached() -> None:
    policy = CachePolicy.build(methods=("get", "POST"))
    assert policy.request_cacheable("POST", []) is None
    assert policy.request_cacheable("HEAD", []) == "method"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], False),
        ([("cache-control", "no-cache")], True),
        ([("cache-control", "max-age=0")], True),
        ([("cache-control", "max-age=10")], False),
        ([("pragma", "no-cache")], True),
        ([("Pragma", "foo, No-Cache")], True),
        ([("pragma", "no-cache"), ("cache-control", "max-age=10")], False),
    ],
)
def test_request_revalidates(headers: Headers, expected: bool) -> None:
    assert CachePolicy.build().request_revalidates(headers) is expected


# --------------------------------------------------------------------------- keys


def test_key_defaults_whole_query_and_head_shares_get() -> None:
    policy = CachePolicy.build()
    key = policy.key("GET", "API.example.com", "/a/b", "y=2&x=1", [])
    assert key == "api.example.com/a/b?y=2&x=1\nGET"
    assert policy.key("HEAD", "api.example.com", "/a/b", "y=2&x=1", []) == key
    assert policy.key("GET", "api.example.com", "/a/b", "x=1&y=2", []) != key
    assert policy.key("GET", "api.example.com", "/a/b", "", []) == "api.example.com/a/b\nGET"


def test_key_without_query() -> None:
    policy = CachePolicy.build(key_query=[])
    assert policy.key("GET", "h", "/p", "a=1&b=2", []) == "h/p\nGET"


def test_key_selected_query_params_sorted() -> None:
    policy = CachePolicy.build(key_query=["page", "lang"])
    a = policy.key("GET", "h", "/p", "utm=x&page=2&lang=de&page=1", [])
    assert a == "h/p?lang=de&page=2&page=1\nGET"
    assert policy.key("GET", "h", "/p", "lang=de&page=2&page=1&other", []) == a
    assert policy.key("GET", "h", "/p", "utm=y", []) == "h/p\nGET"
    # a name without value is a parameter too
    assert policy.key("GET", "h", "/p", "lang&x=1", []) == "h/p?lang\nGET"


def test_key_selected_headers() -> None:
    policy = CachePolicy.build(key_headers=["X-Tenant", "accept-language"])
    key = policy.key("GET", "h", "/", "", [("x-tenant", " t1 "), ("Accept-Language", "de")])
    assert key == "h/\nGET\naccept-language: de\nx-tenant: t1"
    assert policy.key("GET", "h", "/", "", [("X-TENANT", "t2")]) == "h/\nGET\nx-tenant: t2"
    assert policy.key("GET", "h", "/", "", [("x-other", "t1")]) == "h/\nGET"
    two = policy.key("GET", "h", "/", "", [("x-tenant", "a"), ("x-tenant", "b")])
    assert two == "h/\nGET\nx-tenant: a, b"


def test_keys_purge_by_path_prefix() -> None:
    policy = CachePolicy.build(key_headers=["x-tenant"])
    store: LruBytes[str] = LruBytes(1000)
    store.put(policy.key("GET", "h", "/api/a", "", [("x-tenant", "1")]), 1, "a1")
    store.put(policy.key("GET", "h", "/api/b", "q=1", []), 1, "b")
    store.put(policy.key("GET", "h", "/other", "", []), 1, "o")
    assert store.purge_prefix("h/api/") == 2
    assert len(store) == 1


# --------------------------------------------------------------------------- storable


@pytest.mark.parametrize(
    ("status", "headers", "length", "auth", "expected"),
    [
        (200, [], 10, False, (True, "ok")),
        (301, [], None, False, (True, "ok")),
        (404, [("cache-control", "max-age=5")], 0, False, (True, "ok")),
        (500, [], 10, False, (False, "status")),
        (206, [], 10, False, (False, "status")),
        (200, [("Cache-Control", "no-store")], 10, False, (False, "no-store")),
        (200, [("cache-control", "public, max-age=9, No-Store")], 10, False, (False, "no-store")),
        (200, [("cache-control", "private")], 10, False, (False, "private")),
        (200, [("cache-control", 'private="set-cookie"')], 10, False, (False, "private")),
        (200, [], 10, True, (False, "authorization")),
        (200, [("set-cookie", "a=b")], 10, False, (False, "set-cookie")),
        (200, [("Vary", "accept-encoding, *")], 10, False, (False, "vary-star")),
        (200, [("vary", "accept-encoding")], 10, False, (True, "ok")),
        (200, [], 1024 * 1024, False, (True, "ok")),
        (200, [], 1024 * 1024 + 1, False, (False, "size")),
    ],
)
def test_storable(
    status: int, headers: Headers, length: int | None, auth: bool, expected: tuple[bool, str]
) -> None:
    assert CachePolicy.build().storable(status, headers, length, auth) == expected


def test_storable_as_configured() -> None:
    policy = CachePolicy.build(
        statuses=(200, 500),
        max_object_bytes=5,
        cache_set_cookie=True,
        public_with_authorization=True,
    )
    assert policy.max_object_bytes == 5
    assert policy.storable(500, [("set-cookie", "a=b")], 5, True) == (True, "ok")
    assert policy.storable(404, [], 5, False) == (False, "status")
    assert policy.storable(200, [], 6, False) == (False, "size")


# --------------------------------------------------------------------------- freshness


def fresh(headers: Headers, policy: CachePolicy | None = None, now: float = NOW) -> Freshness:
    return (policy or CachePolicy.build()).freshness(headers, now, DATE_NOW)


@pytest.mark.parametrize(
    ("headers", "lifetime", "must_revalidate"),
    [
        ([], 300.0, False),
        ([("cache-control", "max-age=60")], 60.0, False),
        ([("cache-control", "max-age=60, s-maxage=10")], 10.0, True),
        ([("cache-control", "s-maxage=10"), ("cache-control", "max-age=60")], 10.0, True),
        ([("cache-control", "max-age=0")], 0.0, False),
        ([("cache-control", "max-age=abc")], 0.0, False),
        ([("cache-control", "max-age=-5")], 0.0, False),
        ([("cache-control", "max-age=99999999999")], float(2**31), False),
        ([("cache-control", "max-age=60"), ("expires", http_date(DATE_NOW + 999))], 60.0, False),
        ([("expires", http_date(DATE_NOW + 120))], 120.0, False),
        (
            [("expires", http_date(DATE_NOW + 120)), ("date", http_date(DATE_NOW - 30))],
            150.0,
            False,
        ),
        ([("expires", http_date(DATE_NOW - 10))], 0.0, False),
        ([("expires", "0")], 0.0, False),
        ([("cache-control", "no-cache, max-age=60")], 0.0, True),
        ([("cache-control", "max-age=60, must-revalidate")], 60.0, True),
        ([("cache-control", "max-age=60, proxy-revalidate")], 60.0, True),
        ([("cache-control", "public")], 300.0, False),
    ],
)
def test_freshness_lifetime(headers: Headers, lifetime: float, must_revalidate: bool) -> None:
    f = fresh(headers)
    assert f.lifetime_s == lifetime
    assert f.must_revalidate is must_revalidate


def test_expires_counts_from_the_upstream_date() -> None:
    """Expires - Date is the lifetime, and the age since Date is spent already:
    the entry stays fresh until Expires by the gateway's clock."""
    expires, date = http_date(DATE_NOW + 120), http_date(DATE_NOW - 30)
    f = fresh([("expires", expires), ("date", date)])
    assert (f.lifetime_s, f.stored_at) == (150.0, NOW - 30)
    assert f.state(NOW + 119.9) == "fresh"
    assert f.state(NOW + 120) == "expired"


def test_default_ttl_is_the_policy_s() -> None:
    assert fresh([], CachePolicy.build(default_ttl_s=7.5)).lifetime_s == 7.5


@pytest.mark.parametrize(
    ("headers", "initial_age"),
    [
        ([("age", "30")], 30.0),
        ([("Age", "30"), ("age", "50")], 30.0),
        ([("age", "bogus")], 0.0),
        ([("date", http_date(DATE_NOW - 20))], 20.0),
        ([("date", http_date(DATE_NOW - 20)), ("age", "5")], 20.0),
        ([("date", http_date(DATE_NOW - 20)), ("age", "50")], 50.0),
        ([("date", http_date(DATE_NOW + 100))], 0.0),  # upstream clock ahead
        ([("date", "not a date")], 0.0),
    ],
)
def test_upstream_age_is_counted_in(headers: Headers, initial_age: float) -> None:
    f = fresh([*headers, ("cache-control", "max-age=100")])
    assert f.stored_at == NOW - initial_age
    assert f.age(NOW) == int(initial_age)
    assert f.age(NOW + 10.9) == int(initial_age) + 10


def test_age_is_whole_seconds_never_negative() -> None:
    f = Freshness(NOW, 10.0, 0.0, 0.0, False)
    assert f.age(NOW - 5) == 0
    assert f.age(NOW + 0.999) == 0
    assert f.age(NOW + 1) == 1


def test_fresh_until_lifetime_with_a_fake_clock() -> None:
    f = fresh([("cache-control", "max-age=60"), ("age", "10")])
    assert f.state(NOW) == "fresh"
    assert f.state(NOW + 49.999) == "fresh"
    assert f.state(NOW + 50) == "expired"


def test_no_cache_is_stored_but_never_fresh() -> None:
    f = fresh([("cache-control", "no-cache")], CachePolicy.build(stale_if_error_s=60))
    assert f.state(NOW) == "expired"
    assert CachePolicy.build().storable(200, [("cache-control", "no-cache")], 1, False)[0]


@pytest.mark.parametrize(
    ("headers", "defaults", "windows"),
    [
        ([("cache-control", "max-age=10")], (0.0, 0.0), (0.0, 0.0)),
        ([("cache-control", "max-age=10")], (5.0, 0.0), (5.0, 0.0)),
        ([("cache-control", "max-age=10, stale-while-revalidate=30")], (0.0, 0.0), (30.0, 0.0)),
        ([("cache-control", "max-age=10, stale-if-error=600")], (0.0, 0.0), (0.0, 600.0)),
        (
            [("cache-control", "max-age=10, stale-while-revalidate=0, stale-if-error=7")],
            (5.0, 100.0),
            (0.0, 7.0),
        ),
        ([("cache-control", "max-age=10, stale-if-error=x")], (0.0, 100.0), (0.0, 100.0)),
    ],
)
def test_stale_windows_from_response_or_policy(
    headers: Headers, defaults: tuple[float, float], windows: tuple[float, float]
) -> None:
    swr, sie = defaults
    f = fresh(headers, CachePolicy.build(stale_while_revalidate_s=swr, stale_if_error_s=sie))
    assert (f.stale_while_revalidate_s, f.stale_if_error_s) == windows


@pytest.mark.parametrize(
    ("offset", "state"),
    [
        (0.0, "fresh"),
        (9.9, "fresh"),
        (10.0, "stale-while-revalidate"),
        (39.9, "stale-while-revalidate"),
        (40.0, "stale-if-error-only"),
        (609.9, "stale-if-error-only"),
        (610.0, "expired"),
    ],
)
def test_states_over_time(offset: float, state: str) -> None:
    cc = "max-age=10, stale-while-revalidate=30, stale-if-error=600"
    assert fresh([("cache-control", cc)]).state(NOW + offset) == state


def test_stale_while_revalidate_longer_than_stale_if_error() -> None:
    f = Freshness(0.0, 10.0, 30.0, 5.0, False)
    assert f.state(25.0) == "stale-while-revalidate"
    assert f.state(40.0) == "expired"


@pytest.mark.parametrize("cc", ["must-revalidate", "proxy-revalidate", "s-maxage=10", "no-cache"])
def test_must_revalidate_forbids_stale_serving(cc: str) -> None:
    headers = [("cache-control", f"max-age=10, {cc}, stale-while-revalidate=30, stale-if-error=60")]
    f = fresh(headers)
    assert f.must_revalidate
    assert f.state(NOW + 10) == "expired"
    assert f.state(NOW + 35) == "expired"


@given(
    lifetime=st.integers(0, 10_000),
    swr=st.integers(0, 10_000),
    sie=st.integers(0, 10_000),
    age=st.integers(0, 10_000),
    later=st.floats(0, 50_000, allow_nan=False),
)
def test_states_follow_each_other_in_order(
    lifetime: int, swr: int, sie: int, age: int, later: float
) -> None:
    order = ["fresh", "stale-while-revalidate", "stale-if-error-only", "expired"]
    cc = f"max-age={lifetime}, stale-while-revalidate={swr}, stale-if-error={sie}"
    f = fresh([("cache-control", cc), ("age", str(age))])
    assert order.index(f.state(NOW)) <= order.index(f.state(NOW + later))
    assert (f.state(NOW + later) == "fresh") == (age + later < lifetime)


# --------------------------------------------------------------------------- Vary


def test_vary_same_and_different_variants() -> None:
    vary = ["Accept-Encoding", "accept-language"]
    a = vary_key(vary, [("accept-encoding", "gzip, br"), ("Accept-Language", "de")])
    assert a == "accept-encoding=br,gzip\naccept-language=de"
    assert vary_key(vary, [("Accept-Language", "de"), ("accept-encoding", "BR,GZIP")]) == a
    split = [("accept-encoding", "gzip"), ("accept-language", "de"), ("accept-encoding", "br")]
    assert vary_key(vary, split) == a
    assert vary_key(vary, [("accept-encoding", "gzip"), ("accept-language", "de")]) != a
    assert vary_key(vary, [("accept-encoding", "gzip, br"), ("accept-language", "en")]) != a


def test_vary_accept_encoding_keeps_q_values() -> None:
    a = vary_key(["accept-encoding"], [("accept-encoding", "gzip;q=0.5, br ; q=1")])
    assert a == "accept-encoding=br;q=1,gzip;q=0.5"
    assert a != vary_key(["accept-encoding"], [("accept-encoding", "gzip, br")])


def test_vary_absent_header_differs_from_empty() -> None:
    absent = vary_key(["x-a"], [])
    assert absent == "x-a"
    assert vary_key(["x-a"], [("x-a", "")]) == "x-a="
    assert vary_key(["x-a"], [("x-a", " 1 ,2")]) == "x-a=1,2"


def test_vary_names_merged_deduplicated_sorted() -> None:
    headers = [("b", "2"), ("a", "1")]
    assert vary_key(["B, a", "A", " ,"], headers) == "a=1\nb=2"
    assert vary_key([], headers) == ""


def test_vary_star_has_no_variant() -> None:
    with pytest.raises(CacheError, match=r"Vary: \*"):
        vary_key(["accept, *"], [])


# --------------------------------------------------------------------------- conditional requests

LM = http_date(DATE_NOW - 3600)
OLD = "Sun, 06 Nov 1994 08:49:37 GMT"


@pytest.mark.parametrize(
    ("headers", "etag", "last_modified", "expected"),
    [
        ([], '"a"', LM, False),
        ([("if-none-match", '"a"')], '"a"', None, True),
        ([("if-none-match", '"b"')], '"a"', None, False),
        ([("if-none-match", 'W/"a"')], '"a"', None, True),
        ([("if-none-match", '"a"')], 'W/"a"', None, True),
        ([("if-none-match", 'W/"a"')], 'W/"a"', None, True),
        ([("if-none-match", '"A"')], '"a"', None, False),
        ([("if-none-match", '"x", W/"y" , "a"')], '"a"', None, True),
        ([("if-none-match", '"x"'), ("If-None-Match", '"a"')], '"a"', None, True),
        ([("if-none-match", '"x,y"')], '"y"', None, False),
        ([("if-none-match", '"x,y"')], '"x,y"', None, True),
        ([("if-none-match", "*")], '"a"', None, True),
        ([("if-none-match", "*")], None, LM, False),
        ([("if-none-match", '"a"')], None, LM, False),
        ([("if-none-match", "a")], "a", None, False),  # unquoted tags are malformed
        ([("if-none-match", "*")], "a", None, True),
        # If-Modified-Since
        ([("if-modified-since", LM)], None, LM, True),
        ([("if-modified-since", http_date(DATE_NOW))], None, LM, True),
        ([("if-modified-since", http_date(DATE_NOW - 7200))], None, LM, False),
        ([("if-modified-since", "yesterday")], None, LM, False),
        ([("if-modified-since", "Mon, 01 Jan 99999999999 00:00:00 GMT")], None, LM, False),
        # the obsolete date formats a recipient must accept (RFC 9110 section 5.6.7)
        ([("if-modified-since", "Sunday, 06-Nov-94 08:49:37 GMT")], None, OLD, True),
        ([("if-modified-since", "Sun Nov  6 08:49:37 1994")], None, OLD, True),
        ([("if-modified-since", "Sun Nov  6 08:49:36 1994")], None, OLD, False),
        ([("if-modified-since", LM)], None, None, False),
        ([("if-modified-since", LM)], None, "garbage", False),
        # If-None-Match decides when both are present
        ([("if-none-match", '"b"'), ("if-modified-since", http_date(DATE_NOW))], '"a"', LM, False),
        ([("if-none-match", '"a"'), ("if-modified-since", "bad")], '"a"', LM, True),
    ],
)
def test_not_modified(
    headers: Headers, etag: str | None, last_modified: str | None, expected: bool
) -> None:
    assert not_modified(headers, etag, last_modified) is expected


@pytest.mark.parametrize(
    ("etag", "last_modified", "expected"),
    [
        (None, None, []),
        ('"a"', None, [("if-none-match", '"a"')]),
        (None, LM, [("if-modified-since", LM)]),
        ('W/"a"', LM, [("if-none-match", 'W/"a"'), ("if-modified-since", LM)]),
    ],
)
def test_revalidation_headers(
    etag: str | None, last_modified: str | None, expected: list[tuple[str, str]]
) -> None:
    assert revalidation_headers(etag, last_modified) == expected


# --------------------------------------------------------------------------- LruBytes


def test_lru_evicts_least_recently_used_until_it_fits() -> None:
    store: LruBytes[str] = LruBytes(10)
    assert store.put("a", 4, "A")
    assert store.put("b", 4, "B")
    assert store.get("a") == "A"  # a is now the most recent
    assert store.put("c", 4, "C")
    assert store.get("b") is None
    assert (store.get("a"), store.get("c")) == ("A", "C")
    assert (store.bytes_used, len(store)) == (8, 2)
    assert store.put("d", 10, "D")
    assert (store.bytes_used, len(store), store.get("d")) == (10, 1, "D")
    assert store.evictions == 3  # b for c, then a and c for d


def test_lru_evictions_do_not_count_replaced_deleted_or_purged_entries() -> None:
    store: LruBytes[int] = LruBytes(10)
    store.put("a", 5, 1)
    store.put("a", 6, 2)
    store.put("b", 4, 3)
    store.delete("b")
    store.put("c", 1, 4)
    store.purge_prefix("c")
    assert not store.put("d", 11, 5)
    assert store.evictions == 0


def test_lru_replacing_a_key_recounts_its_size() -> None:
    store: LruBytes[int] = LruBytes(10)
    store.put("a", 6, 1)
    store.put("a", 3, 2)
    assert (store.get("a"), store.bytes_used, len(store)) == (2, 3, 1)


def test_lru_refuses_an_entry_over_the_budget_and_drops_the_old_one() -> None:
    store: LruBytes[int] = LruBytes(10)
    store.put("a", 5, 1)
    store.put("b", 5, 2)
    assert not store.put("a", 11, 3)
    assert (store.get("a"), store.get("b"), store.bytes_used) == (None, 2, 5)
    with pytest.raises(CacheError, match="entry_size must be >= 0"):
        store.put("c", -1, 4)


def test_lru_delete_and_purge_prefix() -> None:
    store: LruBytes[int] = LruBytes(100)
    for i, key in enumerate(["h/a/1", "h/a/2", "h/ab", "h/b", "g/a/1"]):
        store.put(key, i + 1, i)
    assert store.delete("h/b")
    assert not store.delete("h/b")
    assert store.purge_prefix("h/a/") == 2
    assert store.purge_prefix("nothing") == 0
    assert sorted(k for k in ["h/a/1", "h/a/2", "h/ab", "g/a/1"] if store.get(k) is not None) == [
        "g/a/1",
        "h/ab",
    ]
    assert store.bytes_used == 3 + 5
    assert store.purge_prefix("") == 2
    assert (store.bytes_used, len(store)) == (0, 0)


_ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "get", "delete", "purge"]),
        st.sampled_from(["a", "ab", "b", "ba", "c"]),
        st.integers(0, 40),
    ),
    max_size=60,
)


@given(budget=st.integers(1, 64), ops=_ops)
def test_lru_accounting_is_exact(budget: int, ops: list[tuple[str, str, int]]) -> None:
    """Against a reference LRU: same answers, and bytes_used is the sum of the
    sizes of the keys present, within the budget, after every operation."""
    store: LruBytes[int] = LruBytes(budget)
    model: OrderedDict[str, int] = OrderedDict()  # key -> size, least recent first
    for op, key, size in ops:
        if op == "put":
            model.pop(key, None)
            assert store.put(key, size, size) == (size <= budget)
            if size <= budget:
                model[key] = size
                while sum(model.values()) > budget:
                    model.popitem(last=False)
        elif op == "get":
            assert store.get(key) == model.get(key)
            if key in model:
                model.move_to_end(key)
        elif op == "delete":
            assert store.delete(key) == (key in model)
            model.pop(key, None)
        else:
            removed = [k for k in model if k.startswith(key)]
            assert store.purge_prefix(key) == len(removed)
            for k in removed:
                del model[k]
        assert store.bytes_used == sum(model.values()) <= budget
        assert len(store) == len(model)


# --------------------------------------------------------------------------- SingleFlight


def test_single_flight_one_leader_per_key() -> None:
    flights = SingleFlight(max_waiters=2)
    assert flights.begin("k")
    assert not flights.begin("k")
    assert flights.begin("other")
    assert len(flights) == 2
    assert flights.join("k") and flights.join("k")
    assert not flights.join("k")  # the bound
    assert flights.waiting("k") == 2
    flights.leave("k")
    assert flights.waiting("k") == 1
    assert flights.join("k")
    assert flights.end("k") == 2
    assert flights.waiting("k") == 0
    assert len(flights) == 1
    assert flights.begin("k")  # the next miss leads a new fill
    assert flights.end("k") == 0


def test_single_flight_without_a_fill() -> None:
    flights = SingleFlight()
    assert not flights.join("k")
    flights.leave("k")
    assert flights.waiting("k") == 0
    assert flights.end("k") == 0
    assert len(flights) == 0
    flights.begin("k")
    flights.leave("k")  # no waiter to remove
    assert flights.waiting("k") == 0


def test_single_flight_with_no_waiters_allowed() -> None:
    flights = SingleFlight(max_waiters=0)
    assert flights.begin("k")
    assert not flights.join("k")


# --------------------------------------------------------------------------- stored entries


def stored(headers: Headers, body: bytes = b"body", status: int = 200) -> StoredResponse:
    policy = CachePolicy.build()
    fields = stored_headers(headers)
    return StoredResponse(status, fields, body, policy.freshness(fields, NOW, DATE_NOW), "r@1")


def test_stored_headers_drop_framing_age_and_x_cache() -> None:
    fields = [
        ("Content-Type", "text/plain"),
        ("Content-Length", "4"),
        ("Transfer-Encoding", "chunked"),
        ("Age", "3"),
        ("X-Cache", "MISS"),
        ("ETag", '"a"'),
    ]
    assert stored_headers(fields) == (("content-type", "text/plain"), ("etag", '"a"'))


def test_entry_validators_and_size() -> None:
    entry = stored([("etag", '"a"'), ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")])
    assert (entry.etag, entry.last_modified) == ('"a"', "Mon, 01 Jan 2024 00:00:00 GMT")
    assert entry.size == 4 + len("etag") + 3 + len("last-modified") + 29 + 256
    assert stored([]).etag is None


@pytest.mark.parametrize(
    "entry",
    [
        stored([("cache-control", "max-age=5, stale-if-error=9"), ("vary", "accept")], b"\x00\xff"),
        stored([("x-latin", "caf\xe9")], b"", 404),
        stored([("cache-control", "no-cache")]),
        VaryIndex(("Accept-Encoding", "x-a, x-b"), "route@abc"),
    ],
)
def test_entries_survive_encoding(entry: StoredResponse | VaryIndex) -> None:
    assert decode_entry(encode_entry(entry)) == entry


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"MGC1",
        b"XXXX\x00\x00\x00\x02{}",
        b"MGC1\x00\x00\x00\x02{}",
        b"MGC1\x00\x00\x00\x05[1,2]",
    ],
)
def test_malformed_entries_are_refused(data: bytes) -> None:
    with pytest.raises(CacheError):
        decode_entry(data)


def test_a_304_refreshes_headers_and_freshness() -> None:
    policy = CachePolicy.build()
    entry = stored([("cache-control", "max-age=10"), ("etag", '"a"'), ("x-kept", "1")])
    assert entry.freshness.state(NOW + 11) == "expired"
    later = NOW + 20
    refreshed = entry.refreshed(
        [("Cache-Control", "max-age=60"), ("ETag", '"a"'), ("Content-Length", "0")],
        policy,
        later,
        DATE_NOW + 20,
    )
    assert refreshed.headers == (
        ("x-kept", "1"),
        ("cache-control", "max-age=60"),
        ("etag", '"a"'),
    )
    assert (refreshed.body, refreshed.status, refreshed.tag) == (b"body", 200, "r@1")
    assert refreshed.freshness.state(later + 59) == "fresh"
    assert refreshed.freshness.state(later + 60) == "expired"


@pytest.mark.parametrize(
    ("cache_control", "until"),
    [
        ("max-age=10", NOW + 10),
        ("max-age=10, stale-while-revalidate=5, stale-if-error=20", NOW + 30),
        ("max-age=10, stale-while-revalidate=50, stale-if-error=20", NOW + 60),
        ("max-age=10, must-revalidate, stale-if-error=20", NOW + 10),
        ("no-cache, stale-if-error=20", NOW),
    ],
)
def test_servable_until_ends_with_the_last_window(cache_control: str, until: float) -> None:
    freshness = stored([("cache-control", cache_control)]).freshness
    assert freshness.servable_until() == until
    assert freshness.state(until) == "expired"


def test_a_304_without_date_does_not_date_the_entry_back() -> None:
    policy = CachePolicy.build()
    old_date = http_date(DATE_NOW - 100)
    fields = [("date", old_date), ("cache-control", "max-age=60"), ("etag", '"a"')]
    entry = StoredResponse(200, tuple(fields), b"", policy.freshness(fields, NOW, DATE_NOW), "t")
    assert entry.freshness.state(NOW) == "expired"  # 100 s old when received
    later = NOW + 5
    plain = entry.refreshed([("etag", '"a"')], policy, later, DATE_NOW + 5)
    assert ("date", old_date) not in plain.headers
    assert plain.freshness.state(later + 59) == "fresh"
    dated = entry.refreshed([("date", http_date(DATE_NOW + 5))], policy, later, DATE_NOW + 5)
    assert dated.headers[-1] == ("date", http_date(DATE_NOW + 5))
    assert dated.freshness.state(later + 59) == "fresh"
