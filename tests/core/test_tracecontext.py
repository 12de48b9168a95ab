"""W3C traceparent / tracestate parsing and formatting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshgate.core.tracecontext import (
    TraceParent,
    format_traceparent,
    format_tracestate,
    parse_traceparent,
    parse_tracestate,
)

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

trace_ids = st.integers(min_value=1, max_value=(1 << 128) - 1)
span_ids = st.integers(min_value=1, max_value=(1 << 64) - 1)


def test_spec_example() -> None:
    tp = parse_traceparent([VALID])
    assert tp == TraceParent(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1)
    assert tp is not None and tp.sampled
    unsampled = parse_traceparent([VALID[:-2] + "00"])
    assert unsampled is not None and not unsampled.sampled


def test_surrounding_whitespace_is_not_part_of_the_value() -> None:
    assert parse_traceparent([f" {VALID}\t"]) == parse_traceparent([VALID])


@pytest.mark.parametrize(
    "value",
    [
        "",
        VALID.upper(),  # upper-case hex
        VALID.replace("4bf9", "4BF9"),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        VALID + "-extra",  # version 00 has exactly 4 fields
        VALID[:-1],  # short
        VALID + "0",
        "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  # not hex
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  # future version, no dash
    ],
)
def test_invalid_traceparent(value: str) -> None:
    assert parse_traceparent([value]) is None


def test_no_header_or_several_headers_is_no_parent() -> None:
    assert parse_traceparent([]) is None
    assert parse_traceparent([VALID, VALID]) is None


def test_future_version_is_read_as_version_00() -> None:
    later = "cc" + VALID[2:]
    assert parse_traceparent([later]) == parse_traceparent([VALID])
    assert parse_traceparent([later + "-what-comes-next"]) == parse_traceparent([VALID])


def test_format() -> None:
    tid, sid = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
    assert format_traceparent(tid, sid, True) == VALID
    assert format_traceparent(tid, sid, False) == VALID[:-2] + "00"
    for bad in ((0, sid), (1 << 128, sid), (tid, 0), (tid, 1 << 64)):
        with pytest.raises(ValueError):
            format_traceparent(*bad, True)


@given(trace_ids, span_ids, st.booleans())
def test_format_then_parse_round_trips(trace_id: int, span_id: int, sampled: bool) -> None:
    text = format_traceparent(trace_id, span_id, sampled)
    assert len(text) == 55
    assert parse_traceparent([text]) == TraceParent(trace_id, span_id, int(sampled))


@given(st.text(max_size=80))
def test_parser_never_raises_and_accepts_only_canonical_version_00(text: str) -> None:
    tp = parse_traceparent([text])
    value = text.strip(" \t")
    if tp is not None and value.startswith("00"):
        # the same ids back (the flags: only the sampled bit is written)
        assert format_traceparent(tp.trace_id, tp.parent_id, tp.sampled)[:53] == value[:53]


@given(st.from_regex(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", fullmatch=True))
def test_any_lowercase_version_00_with_nonzero_ids_parses(text: str) -> None:
    tp = parse_traceparent([text])
    zero = text[3:35] == "0" * 32 or text[36:52] == "0" * 16
    assert (tp is None) == zero
    if tp is not None:
        assert tp.flags == int(text[-2:], 16)
        assert f"{tp.trace_id:032x}" == text[3:35] and f"{tp.parent_id:016x}" == text[36:52]


@given(st.from_regex(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", fullmatch=True), st.data())
def test_any_upper_case_letter_invalidates(text: str, data: st.DataObject) -> None:
    letters = [i for i, ch in enumerate(text) if ch in "abcdef"]
    if not letters:
        return
    i = data.draw(st.sampled_from(letters))
    assert parse_traceparent([text[:i] + text[i].upper() + text[i + 1 :]]) is None


# --- tracestate -------------------------------------------------------------


def test_tracestate_members_in_order_across_fields() -> None:
    got = parse_tracestate(["rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", "", " ,acme@sys=x y"])
    assert got == (("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE"), ("acme@sys", "x y"))
    assert got is not None
    assert format_tracestate(got) == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,acme@sys=x y"


@pytest.mark.parametrize(
    "values",
    [
        [],
        [""],
        [" , "],
        ["Rojo=1"],  # upper-case key
        ["rojo"],  # no value
        ["rojo="],  # empty value
        ["rojo=a=b"],
        ["rojo=1,rojo=2"],  # duplicate key
        ["rojo=1\x7f"],  # DEL is not a value character
        ["1abc=x"],  # simple key must start with a letter
        ["t@1sys=x"],  # system id must start with a letter
        [",".join(f"k{i}=v" for i in range(33))],  # more than 32 members
    ],
)
def test_invalid_or_empty_tracestate_is_dropped(values: list[str]) -> None:
    assert parse_tracestate(values) is None


keys = st.from_regex(r"[a-z][a-z0-9_\-*/]{0,20}", fullmatch=True)
member_values = st.from_regex(
    r"[\x21-\x2b\x2d-\x3c\x3e-\x7e]([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,20}"
    r"[\x21-\x2b\x2d-\x3c\x3e-\x7e])?",
    fullmatch=True,
)


@given(st.dictionaries(keys, member_values, min_size=1, max_size=32))
def test_tracestate_round_trips(members: dict[str, str]) -> None:
    pairs = tuple(members.items())
    assert parse_tracestate([format_tracestate(pairs)]) == pairs


@given(st.lists(st.text(max_size=40), max_size=3))
def test_tracestate_parser_never_raises(values: list[str]) -> None:
    got = parse_tracestate(values)
    if got is not None:
        assert 1 <= len(got) <= 32
        assert parse_tracestate([format_tracestate(got)]) == got
