"""Retry decisions (sans-IO): which failures to retry, how long to back off, retry budgets.

`RetryPolicy` answers, for one failed try, whether its failure is retriable and
how long to wait before the next try. The caller runs the loop: it counts tries
against `max_retries`, keeps the route's total deadline, picks another host,
asks a budget before each retry and never retries once response bytes reached
the client. Two budgets cap how many retries an upstream gets: `RetryBudget`
(Envoy: concurrent retries against active requests) and `WindowedRetryBudget`
(the seed's and Linkerd's: retries against requests over a time window).

Nothing here reads a clock or draws random numbers itself: clock readings come
in as `now` (seconds, from a clock that does not go backwards) and randomness as
a callable returning floats in [0, 1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from datetime import UTC
from email.utils import parsedate_to_datetime
from math import floor
from typing import Literal

RETRY_ON = (
    "connect-failure",
    "reset",
    "gateway-error",
    "5xx",
    "retriable-status-codes",
    "retriable-4xx",
    # gRPC statuses of a trailers-only answer (HTTP 200, grpc-status in the head)
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
)
# The retry_on condition of each gRPC status code it names (Envoy's x-envoy-retry-grpc-on).
GRPC_CONDITIONS: dict[int, str] = {
    1: "cancelled",
    4: "deadline-exceeded",
    8: "resource-exhausted",
    13: "internal",
    14: "unavailable",
}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

Failure = Literal["connect-failure", "reset", "timeout"]
"""A try that ended without a response head: the connection could not be made, it
was reset, or the per-try timeout expired."""

# The retry_on conditions under which each failure is retried.
_FAILURE_CONDITIONS: dict[str, tuple[str, ...]] = {
    "connect-failure": ("connect-failure",),
    "reset": ("reset",),
    "timeout": ("gateway-error", "5xx"),
}
_GATEWAY_ERRORS = frozenset({502, 503, 504})

_DELTA_SECONDS = re.compile(r"[0-9]+")
# Retry-After delays longer than this are read as this (the cap RFC 9111 section
# 1.2.2 puts on the delta-seconds of caching, borrowed); any cap on honoring a
# Retry-After is far smaller.
_MAX_DELTA_S = 2147483648.0


class RetryError(ValueError):
    """A retry policy or budget is badly configured, or a caller passed a value outside
    the documented domain."""


def _check_count(what: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RetryError(f"{what} must be an integer >= {minimum}, got {value!r}")


def _check_number(what: str, value: float, *, zero_ok: bool) -> None:
    low_ok = value >= 0.0 if zero_ok else value > 0.0
    if not (low_ok and value < math.inf):
        bound = ">= 0" if zero_ok else "> 0"
        raise RetryError(f"{what} must be a finite number {bound}, got {value!r}")


def parse_retry_after(value: str, now_epoch: float) -> float | None:
    """The delay a `Retry-After` header value asks for, in seconds (>= 0); None when unreadable.

    The value is delta-seconds (digits only, as RFC 9110 has it: "1.5" and "-5"
    are unreadable; more than 2**31 reads as 2**31) or an HTTP-date in any form
    `email.utils` parses (IMF-fixdate, RFC 850, asctime; a date without a zone is
    GMT). A date is turned into a delay against `now_epoch` (Unix seconds); a
    date in the past gives 0.0.
    """
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        digits = text.lstrip("0")
        return min(float(int(digits or "0")), _MAX_DELTA_S) if len(digits) <= 10 else _MAX_DELTA_S
    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now_epoch)
    except (ValueError, TypeError, OverflowError):
        return None


class RetryPolicy:
    """Which failed tries to retry and how long to wait before each retry.

    A try is retriable when its method may be repeated and a `retry_on`
    condition covers how it failed:

    - the method must be in `IDEMPOTENT` (compared as sent: methods are case
      sensitive), unless `retry_non_idempotent` is set; except that a connect
      failure is retried for any method: the request never left, so repeating it
      cannot do anything twice;
    - failure "connect-failure": condition "connect-failure"; "reset":
      "reset"; "timeout" (per-try): "gateway-error" or "5xx", since the gateway
      would answer it with a 504. Unlike Envoy, "5xx" and "gateway-error" do not
      also cover connect failures and resets: each condition says what it covers;
    - a status (a response head came): 502, 503 and 504 under "gateway-error",
      any 5xx under "5xx", the listed `retriable_status_codes` under
      "retriable-status-codes", 409 under "retriable-4xx";
    - a gRPC status (`grpc_status`, from a trailers-only answer: nothing of a
      response body was sent): its condition in `GRPC_CONDITIONS`, whatever the
      method (gRPC calls are all POSTs; naming a gRPC condition is the opt-in,
      as in Envoy and gRPC's own retry policy).

    Backoff is exponential with full jitter: before retry n (1 for the first) a
    uniform draw in [0, min(backoff_max_s, backoff_base_s * 2 ** (n - 1))). A
    `Retry-After` from the upstream replaces it: the retry waits exactly that long
    if it is at most `retry_after_max_s`, and is not made at all if it asks for
    longer (the upstream asked for a pause; the original answer, with its
    Retry-After, is then the client's). The default cap of 1 s honors the usual
    "Retry-After: 1" while one retry stays well inside the default 15 s route
    timeout. The caller still checks that the wait fits the route's deadline.
    """

    __slots__ = (
        "_ceilings",
        "_random",
        "backoff_base_s",
        "backoff_max_s",
        "max_retries",
        "retriable_status_codes",
        "retries_grpc",
        "retry_after_max_s",
        "retry_non_idempotent",
        "retry_on",
    )

    def __init__(
        self,
        retry_on: frozenset[str],
        retriable_status_codes: frozenset[int],
        max_retries: int,
        backoff_base_s: float,
        backoff_max_s: float,
        retry_after_max_s: float,
        retry_non_idempotent: bool,
        random: Callable[[], float],
    ) -> None:
        """Use `build`, which validates; this only stores."""
        self.retry_on = retry_on
        # Some gRPC status is retried: trailers-only answers are worth a look.
        self.retries_grpc = any(c in retry_on for c in GRPC_CONDITIONS.values())
        self.retriable_status_codes = retriable_status_codes
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.retry_non_idempotent = retry_non_idempotent
        self._random = random
        # the backoff ceiling before retry 1, 2, ...: doubling (exact for floats) up
        # to backoff_max_s, so that no call computes a power that could overflow
        ceilings = [backoff_base_s]
        while ceilings[-1] < backoff_max_s:
            ceilings.append(min(backoff_max_s, ceilings[-1] * 2.0))
        self._ceilings = tuple(ceilings)

    @classmethod
    def build(
        cls,
        *,
        retry_on: Iterable[str] = ("connect-failure", "reset", "gateway-error"),
        retriable_status_codes: Iterable[int] = (),
        max_retries: int = 1,
        backoff_base_s: float = 0.025,
        backoff_max_s: float = 0.25,
        retry_after_max_s: float = 1.0,
        retry_non_idempotent: bool = False,
        random: Callable[[], float],
    ) -> RetryPolicy:
        """A validated policy. `retriable_status_codes` (400..599) must be given exactly
        when `retry_on` has "retriable-status-codes"."""
        if isinstance(retry_on, str):
            raise RetryError(f"retry_on must be a list of conditions, got {retry_on!r}")
        conditions = frozenset(retry_on)
        unknown = sorted(conditions - frozenset(RETRY_ON))
        if unknown:
            raise RetryError(f"retry_on must be among {', '.join(RETRY_ON)}, got {unknown[0]!r}")
        codes = frozenset(retriable_status_codes)
        bad = sorted(
            (
                c
                for c in codes
                if isinstance(c, bool) or not isinstance(c, int) or not 400 <= c <= 599
            ),
            key=repr,
        )
        if bad:
            raise RetryError(f"retriable_status_codes must be in 400..599, got {bad[0]!r}")
        if codes and "retriable-status-codes" not in conditions:
            raise RetryError(
                "retriable_status_codes are set but retry_on lacks 'retriable-status-codes'"
            )
        if not codes and "retriable-status-codes" in conditions:
            raise RetryError(
                "retry_on has 'retriable-status-codes' but retriable_status_codes is empty"
            )
        _check_count("max_retries", max_retries, 0)
        _check_number("backoff_base_s", backoff_base_s, zero_ok=False)
        _check_number("backoff_max_s", backoff_max_s, zero_ok=False)
        if backoff_max_s < backoff_base_s:
            raise RetryError(
                f"backoff_max_s must be >= backoff_base_s ({backoff_base_s!r}), "
                f"got {backoff_max_s!r}"
            )
        _check_number("retry_after_max_s", retry_after_max_s, zero_ok=True)
        return cls(
            conditions,
            codes,
            max_retries,
            backoff_base_s,
            backoff_max_s,
            retry_after_max_s,
            retry_non_idempotent,
            random,
        )

    def retriable(
        self,
        *,
        method: str,
        failure: Failure | None,
        status: int | None,
        grpc_status: int | None = None,
    ) -> bool:
        """Whether a try of `method` that failed may be retried (see the class).

        Pass `failure` when the try ended without a response head, else the
        upstream's `status` (and its `grpc_status`, if the head carries one); a
        failure takes precedence over a status.
        """
        if failure is None and grpc_status is not None:
            return GRPC_CONDITIONS.get(grpc_status) in self.retry_on
        if failure is not None:
            conditions = _FAILURE_CONDITIONS.get(failure)
            if conditions is None:
                raise RetryError(
                    f"failure must be one of {', '.join(_FAILURE_CONDITIONS)}, got {failure!r}"
                )
            if failure == "connect-failure":
                return "connect-failure" in self.retry_on
        elif status is None:
            raise RetryError("retriable needs a failure or a status, got neither")
        else:
            conditions = self._status_conditions(status)
        if not (self.retry_non_idempotent or method in IDEMPOTENT):
            return False
        return any(condition in self.retry_on for condition in conditions)

    def _status_conditions(self, status: int) -> tuple[str, ...]:
        """The retry_on conditions that cover a response with `status`."""
        conditions: tuple[str, ...] = ()
        if 500 <= status <= 599:
            conditions = ("gateway-error", "5xx") if status in _GATEWAY_ERRORS else ("5xx",)
        elif status == 409:
            conditions = ("retriable-4xx",)
        if status in self.retriable_status_codes:
            conditions += ("retriable-status-codes",)
        return conditions

    def backoff_s(self, retry_number: int, retry_after_s: float | None = None) -> float | None:
        """Seconds to wait before retry `retry_number` (1 for the first retry); None
        when the upstream's Retry-After (`retry_after_s`, as `parse_retry_after`
        gives it) is longer than `retry_after_max_s`, meaning: do not retry."""
        if isinstance(retry_number, bool) or not isinstance(retry_number, int) or retry_number < 1:
            raise RetryError(f"retry_number must be an integer >= 1, got {retry_number!r}")
        if retry_after_s is not None:
            return retry_after_s if retry_after_s <= self.retry_after_max_s else None
        ceilings = self._ceilings
        return self._random() * ceilings[min(retry_number, len(ceilings)) - 1]


class RetryBudget:
    """Envoy's retry budget: concurrent retries bounded by a share of active requests.

    The caller calls `request_started` / `request_finished` around each original
    request to the upstream (retries are not counted as active requests, which
    is a little stricter than Envoy), and `try_start_retry` before each retry,
    then `retry_finished` when an admitted retry ends. A retry is admitted when
    the retries in flight, itself included, are at most
    max(min_retry_concurrency, floor(budget_percent% of active requests)).
    Denials are counted in `exhausted`. A finish without a start does nothing:
    counts never go negative.
    """

    __slots__ = ("active", "budget_percent", "exhausted", "min_retry_concurrency", "retries_active")

    def __init__(self, budget_percent: float = 20.0, min_retry_concurrency: int = 3) -> None:
        if not 0.0 <= budget_percent <= 100.0:
            raise RetryError(f"budget_percent must be in 0..100, got {budget_percent!r}")
        _check_count("min_retry_concurrency", min_retry_concurrency, 0)
        self.budget_percent = budget_percent
        self.min_retry_concurrency = min_retry_concurrency
        self.active = 0
        self.retries_active = 0
        self.exhausted = 0

    def allowed_retries(self) -> int:
        """How many retries may be in flight now."""
        return max(self.min_retry_concurrency, floor(self.budget_percent * self.active / 100))

    def request_started(self) -> None:
        """An original request to the upstream began."""
        self.active += 1

    def request_finished(self) -> None:
        """An original request to the upstream ended (however it ended)."""
        if self.active:
            self.active -= 1

    def try_start_retry(self) -> bool:
        """Admit one retry if the budget has room (then `retry_finished` must follow)."""
        if self.retries_active + 1 > self.allowed_retries():
            self.exhausted += 1
            return False
        self.retries_active += 1
        return True

    def retry_finished(self) -> None:
        """An admitted retry ended."""
        if self.retries_active:
            self.retries_active -= 1

    def snapshot(self) -> dict[str, int]:
        """Counts for the admin API."""
        return {
            "active": self.active,
            "retries_active": self.retries_active,
            "allowed_retries": self.allowed_retries(),
            "exhausted": self.exhausted,
        }


class WindowCounts:
    """Two event counts over a sliding window of `span_s`, kept in `buckets` buckets.

    Bucket i spans [i * bucket_s, (i + 1) * bucket_s), bucket_s = span_s / buckets.
    The counts at `now` are the sums over the bucket holding `now` and the
    `buckets - 1` before it: they cover the last span_s less up to one bucket
    (between 0.9 and 1 span_s with 10 buckets). A reading older than the newest
    bucket seen counts into the newest bucket. Memory is O(buckets).
    """

    __slots__ = ("_first", "_first_total", "_newest", "_second", "_second_total", "bucket_s")

    def __init__(self, span_s: float, buckets: int = 10) -> None:
        """`span_s` > 0 finite and `buckets` >= 1 are the caller's to validate."""
        self.bucket_s = span_s / buckets
        self._first = [0] * buckets
        self._second = [0] * buckets
        self._first_total = 0
        self._second_total = 0
        self._newest: int | None = None

    def _slot(self, now: float) -> int:
        """The index of the bucket holding `now`, after dropping buckets that left the window."""
        bucket = floor(now / self.bucket_s)
        newest = self._newest
        n = len(self._first)
        if newest is None or bucket - newest >= n:
            self.clear()
            self._newest = bucket
        elif bucket > newest:
            first, second = self._first, self._second
            for i in range(newest + 1, bucket + 1):
                slot = i % n
                self._first_total -= first[slot]
                self._second_total -= second[slot]
                first[slot] = second[slot] = 0
            self._newest = bucket
        else:
            bucket = newest
        return bucket % n

    def add(self, now: float, first: int, second: int) -> None:
        """Count `first` and `second` events at `now`."""
        slot = self._slot(now)
        self._first[slot] += first
        self._second[slot] += second
        self._first_total += first
        self._second_total += second

    def totals(self, now: float) -> tuple[int, int]:
        """The two counts in the window ending at `now`."""
        self._slot(now)
        return self._first_total, self._second_total

    def clear(self) -> None:
        """Forget all events."""
        n = len(self._first)
        self._first = [0] * n
        self._second = [0] * n
        self._first_total = self._second_total = 0


class WindowedRetryBudget:
    """The seed's and Linkerd's retry budget: retries against requests over `ttl_s`.

    Each original request deposits (`record_request`), each retry withdraws
    (`try_retry`). A retry is admitted when the retries in the window, itself
    included, are at most min_per_s * ttl_s + ratio * the requests in the window;
    denials are counted in `exhausted`. The window is 10 buckets of ttl_s / 10
    (see `WindowCounts`), so memory is O(1) and counts leave the window up to
    one bucket early.

    Bound (proved in tests/core/test_retry.py): over any run, the retries
    admitted in buckets b0..b1 are at most ratio * (the requests recorded in
    buckets b0 - 9..b1) + min_per_s * ttl_s * (floor((b1 - b0) / 10) + 1):
    amplification ratio, plus min_per_s per second and one extra window's reserve.
    """

    __slots__ = ("_counts", "exhausted", "min_per_s", "ratio", "reserve", "ttl_s")

    def __init__(self, ratio: float = 0.2, min_per_s: float = 10.0, ttl_s: float = 10.0) -> None:
        if not 0.0 <= ratio < math.inf:
            raise RetryError(f"ratio must be a finite number >= 0, got {ratio!r}")
        _check_number("min_per_s", min_per_s, zero_ok=True)
        _check_number("ttl_s", ttl_s, zero_ok=False)
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.ttl_s = ttl_s
        self.reserve = min_per_s * ttl_s
        self.exhausted = 0
        self._counts = WindowCounts(ttl_s)

    @property
    def bucket_s(self) -> float:
        """The width of one bucket of the window (ttl_s / 10)."""
        return self._counts.bucket_s

    def record_request(self, now: float) -> None:
        """An original request (not a retry) was sent at `now`."""
        self._counts.add(now, 1, 0)

    def try_retry(self, now: float) -> bool:
        """Admit one retry at `now` if the budget has room; an admitted retry counts."""
        requests, retries = self._counts.totals(now)
        if retries + 1 > self.reserve + self.ratio * requests:
            self.exhausted += 1
            return False
        self._counts.add(now, 0, 1)
        return True

    def snapshot(self, now: float) -> dict[str, float]:
        """Counts in the window ending at `now`, for the admin API."""
        requests, retries = self._counts.totals(now)
        return {
            "requests": requests,
            "retries": retries,
            "allowed": self.reserve + self.ratio * requests,
            "exhausted": self.exhausted,
        }
