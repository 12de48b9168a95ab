"""Fault injection decisions (sans-IO): delay or abort a share of requests.

The caller draws the random numbers and reads the trigger header; this module
only decides. Request input never makes it raise: a header it cannot read
means no fault. With `header_trigger`, any client that can send the header
can ask for faults, so strip `x-meshgate-fault` at the edge of the mesh.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

FAULT_HEADER = "x-meshgate-fault"

_STATUS = re.compile(r"[0-9]{3}")
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


class FaultError(ValueError):
    """A fault policy is badly configured."""


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to do to one request: wait `delay_s` first, answer `abort_status` instead of
    proxying; None for a fault that does not apply."""

    delay_s: float | None
    abort_status: int | None


NO_FAULT = FaultDecision(None, None)


def parse_fault_header(value: str) -> tuple[float | None, int | None] | None:
    """The (delay seconds, abort status) a fault header asks for; None when unreadable.

    The value is a comma-separated list of ``abort=<status 400..599>`` and
    ``delay=<seconds>`` (plain decimal), each at most once, spaces allowed;
    empty elements are skipped, so "" and " " give (None, None): no directive.
    """
    delay: float | None = None
    abort: int | None = None
    for item in value.split(","):
        if not item.strip():
            continue
        name, eq, text = item.partition("=")
        name, text = name.strip().lower(), text.strip()
        if not eq:
            return None
        if name == "abort" and abort is None and _STATUS.fullmatch(text):
            abort = int(text)
            if not 400 <= abort <= 599:
                return None
        elif name == "delay" and delay is None and _SECONDS.fullmatch(text):
            delay = float(text)
        else:
            return None
    return delay, abort


def _check_percent(name: str, value: float) -> None:
    if not 0.0 <= value <= 100.0:
        raise FaultError(f"fault {name} must be in 0..100, got {value!r}")


class FaultPolicy:
    """Delay and/or abort a percentage of requests, optionally only on request.

    Without `header_trigger` the header is ignored and each fault applies when
    its random number (in [0, 1)) times 100 is below its percentage; the two
    draws are independent. With `header_trigger`, only requests carrying
    `x-meshgate-fault` get faults: an empty header applies the configured
    faults at their percentages, a header with directives applies exactly
    those, always (delay capped at `max_delay_s`).
    """

    __slots__ = (
        "_abort_percent",
        "_abort_status",
        "_delay_percent",
        "_delay_s",
        "_header_trigger",
        "_max_delay_s",
    )

    def __init__(
        self,
        delay_s: float | None,
        delay_percent: float,
        abort_status: int | None,
        abort_percent: float,
        header_trigger: bool,
        max_delay_s: float,
    ) -> None:
        """Use `build`, which validates; this only stores."""
        self._delay_s = delay_s
        self._delay_percent = delay_percent
        self._abort_status = abort_status
        self._abort_percent = abort_percent
        self._header_trigger = header_trigger
        self._max_delay_s = max_delay_s

    @classmethod
    def build(
        cls,
        *,
        delay_s: float | None = None,
        delay_percent: float = 0.0,
        abort_status: int | None = None,
        abort_percent: float = 0.0,
        header_trigger: bool = False,
        max_delay_s: float = 10.0,
    ) -> FaultPolicy:
        """A validated policy; a delay of 0 counts as no delay."""
        if not 0.0 <= max_delay_s < math.inf:
            raise FaultError(f"fault max_delay_s must be a finite number >= 0, got {max_delay_s!r}")
        if delay_s is not None and not 0.0 <= delay_s <= max_delay_s:
            raise FaultError(
                f"fault delay_s must be in 0..{max_delay_s} (max_delay_s), got {delay_s!r}"
            )
        if abort_status is not None and not 400 <= abort_status <= 599:
            raise FaultError(f"fault abort_status must be in 400..599, got {abort_status!r}")
        _check_percent("delay_percent", delay_percent)
        _check_percent("abort_percent", abort_percent)
        if delay_percent > 0 and delay_s is None:
            raise FaultError("fault delay_percent is set but delay_s is not")
        if abort_percent > 0 and abort_status is None:
            raise FaultError("fault abort_percent is set but abort_status is not")
        if not delay_s:
            delay_s = None
        can_delay = delay_s is not None and delay_percent > 0
        can_abort = abort_status is not None and abort_percent > 0
        if not (can_delay or can_abort or header_trigger):
            raise FaultError(
                "fault policy does nothing: set delay_s with delay_percent > 0, "
                "abort_status with abort_percent > 0, or header_trigger"
            )
        return cls(delay_s, delay_percent, abort_status, abort_percent, header_trigger, max_delay_s)

    def decide(self, r_delay: float, r_abort: float, header: str | None) -> FaultDecision:
        """The faults for one request, given two random numbers in [0, 1) and the value
        of `x-meshgate-fault` (None when absent)."""
        if self._header_trigger:
            if header is None:
                return NO_FAULT
            asked = parse_fault_header(header)
            if asked is None:
                return NO_FAULT
            delay, abort = asked
            if delay is not None or abort is not None:
                # "delay=0" (or a max_delay_s of 0) is no delay
                return FaultDecision(min(delay or 0.0, self._max_delay_s) or None, abort)
        delay_s = self._delay_s if r_delay * 100 < self._delay_percent else None
        abort_status = self._abort_status if r_abort * 100 < self._abort_percent else None
        if delay_s is None and abort_status is None:
            return NO_FAULT
        return FaultDecision(delay_s, abort_status)

    def describe(self) -> str:
        """One line for `meshgate explain`."""
        parts = []
        if self._delay_s is not None and self._delay_percent > 0:
            parts.append(f"delay {self._delay_s:g}s for {self._delay_percent:g}% of requests")
        if self._abort_status is not None and self._abort_percent > 0:
            parts.append(f"abort {self._abort_status} for {self._abort_percent:g}% of requests")
        if self._header_trigger:
            scope = "; ".join(parts) or "nothing"
            return (
                f"only requests with {FAULT_HEADER}: empty -> {scope}; "
                f"'abort=<status>, delay=<seconds>' -> exactly that (delay up to "
                f"{self._max_delay_s:g}s)"
            )
        return "; ".join(parts)
