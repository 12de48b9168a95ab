"""The Headers multimap: set, set_fields, add, remove keep order and replace all fields."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshgate.http.messages import Headers

names = st.sampled_from(["a", "b", "c", "x-ratelimit-limit", "retry-after"])
pairs = st.lists(st.tuples(names, st.text("xyz", max_size=3)), max_size=8)


def test_set_replaces_every_field_of_the_name_in_the_first_ones_place() -> None:
    h = Headers([("a", "1"), ("b", "2"), ("a", "3")])
    h.set("A", "9")
    assert h.items() == [("a", "9"), ("b", "2")]


def test_set_fields_replaces_existing_and_appends_new() -> None:
    h = Headers([("a", "1"), ("x-ratelimit-limit", "5"), ("b", "2"), ("x-ratelimit-limit", "6")])
    h.set_fields([("x-ratelimit-limit", "10"), ("retry-after", "3")])
    assert h.items() == [("a", "1"), ("b", "2"), ("x-ratelimit-limit", "10"), ("retry-after", "3")]


@given(existing=pairs, fields=st.dictionaries(names, st.text("pq", max_size=2)))
def test_set_fields_equals_set_one_by_one_up_to_order(
    existing: list[tuple[str, str]], fields: dict[str, str]
) -> None:
    one = Headers(existing)
    for name, value in fields.items():
        one.set(name, value)
    many = Headers(existing)
    many.set_fields(list(fields.items()))
    assert sorted(one.items()) == sorted(many.items())
    for name in fields:
        assert many.get_all(name) == [fields[name]]
