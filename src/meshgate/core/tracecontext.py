"""W3C Trace Context (https://www.w3.org/TR/trace-context/): ``traceparent`` and
``tracestate`` parsing and formatting. Sans-IO: text in, values out.

Parsing is strict: a ``traceparent`` that does not follow the spec (wrong length,
upper-case hex, all-zero ids, version ``ff``, more than one header) is reported as
None, and the caller starts a new trace; it is never an error of the request. A
``tracestate`` is only read when its ``traceparent`` was valid, and one that breaks
the grammar is dropped whole (never half-propagated).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

SAMPLED = 0x01  # the only flag version 00 defines
MAX_TRACESTATE_MEMBERS = 32

# version 00 is exactly 55 characters; a later version may append "-..." fields
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_KEY_CHARS = r"[a-z0-9_\-*/]"
_TRACESTATE_MEMBER = re.compile(
    rf"(?:[a-z]{_KEY_CHARS}{{0,255}}|[a-z0-9]{_KEY_CHARS}{{0,240}}@[a-z]{_KEY_CHARS}{{0,13}})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A parsed ``traceparent``: the caller's trace id, its span id and the flags."""

    trace_id: int  # 128 bits, never 0
    parent_id: int  # 64 bits, never 0
    flags: int  # 8 bits

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)


def parse_traceparent(values: Sequence[str]) -> TraceParent | None:
    """The trace parent given by the ``traceparent`` header fields ``values``
    (every field of that name, in order), or None when there is none or it is
    invalid. More than one field is invalid (the spec's "restart the trace")."""
    if len(values) != 1:
        return None
    value = values[0].strip(_OWS)
    m = _TRACEPARENT.fullmatch(value)
    if m is None:
        return None
    version, trace_hex, parent_hex, flags_hex, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id = int(trace_hex, 16)
    parent_id = int(parent_hex, 16)
    if trace_id == 0 or parent_id == 0:
        return None
    return TraceParent(trace_id, parent_id, int(flags_hex, 16))


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    """A version-00 ``traceparent`` value (the only flag set is ``sampled``)."""
    if not 0 < trace_id < 1 << 128:
        raise ValueError(f"trace id {trace_id} is not a non-zero 128-bit number")
    if not 0 < span_id < 1 << 64:
        raise ValueError(f"span id {span_id} is not a non-zero 64-bit number")
    return f"00-{trace_id:032x}-{span_id:016x}-{SAMPLED if sampled else 0:02x}"


def parse_tracestate(values: Sequence[str]) -> tuple[tuple[str, str], ...] | None:
    """The (key, value) members of the ``tracestate`` header fields ``values``
    (several fields are one comma-separated list), in order; empty members are
    skipped. None when there are no members, or when any member breaks the grammar,
    a key repeats or there are more than 32 members (the whole header is dropped)."""
    members: list[tuple[str, str]] = []
    keys: set[str] = set()
    for value in values:
        for part in value.split(","):
            member = part.strip(_OWS)
            if not member:
                continue
            if _TRACESTATE_MEMBER.fullmatch(member) is None:
                return None
            key, _, val = member.partition("=")
            if key in keys:
                return None
            keys.add(key)
            members.append((key, val))
    if not members or len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    return tuple(members)


def format_tracestate(members: Sequence[tuple[str, str]]) -> str:
    """The ``tracestate`` value of ``members`` (as `parse_tracestate` returns them)."""
    return ",".join(f"{key}={value}" for key, value in members)
