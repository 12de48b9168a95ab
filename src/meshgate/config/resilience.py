"""Config models of resilience: retries, retry budgets, circuit breakers, limits, outliers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshgate.config.common import FiniteModel as _Model
from meshgate.core.breaker import BreakerState, CircuitBreaker
from meshgate.core.outlier import OutlierDetector
from meshgate.core.retry import RETRY_ON, RetryBudget, RetryPolicy, WindowedRetryBudget


class RetryConfig(_Model):
    """A route's retry policy (design defaults: one retry of idempotent requests)."""

    retry_on: list[str] = Field(
        default_factory=lambda: ["connect-failure", "reset", "gateway-error"],
        description=f"Any of: {', '.join(RETRY_ON)}.",
    )
    retriable_status_codes: list[int] = Field(default_factory=list)
    max_retries: int = Field(1, ge=0, le=10, description="0 turns retries off.")
    per_try_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Each attempt's time to the response head; the route's "
        "timeout_s still bounds all attempts together.",
    )
    backoff_base_s: float = Field(0.025, gt=0)
    backoff_max_s: float = Field(0.25, gt=0)
    retry_after_max_s: float = Field(
        1.0, ge=0, description="Honor an upstream Retry-After up to this; longer: no retry."
    )
    retry_non_idempotent: bool = Field(
        False, description="Also retry POST/PATCH (connect failures are always safe)."
    )
    max_body_bytes: int = Field(
        65536, ge=0, description="Request bodies are kept for a replay up to this size."
    )
    attempts_header: bool = Field(True, description="x-meshgate-attempts on retried answers.")

    @field_validator("retry_on")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for cond in v:
            if cond not in RETRY_ON:
                raise ValueError(f"unknown retry_on {cond!r}; use some of {', '.join(RETRY_ON)}")
        return v

    @field_validator("retriable_status_codes")
    @classmethod
    def _statuses(cls, v: list[int]) -> list[int]:
        for code in v:
            if not 100 <= code <= 599:
                raise ValueError(f"{code} is not an HTTP status code")
        return v

    @model_validator(mode="after")
    def _valid_policy(self) -> RetryConfig:
        try:
            self.build(lambda: 0.0)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return self

    def build(self, random: Callable[[], float]) -> RetryPolicy:
        return RetryPolicy.build(
            retry_on=self.retry_on,
            retriable_status_codes=self.retriable_status_codes,
            max_retries=self.max_retries,
            backoff_base_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            retry_after_max_s=self.retry_after_max_s,
            retry_non_idempotent=self.retry_non_idempotent,
            random=random,
        )


class RetryBudgetConfig(_Model):
    """Caps retries per upstream so failures cannot multiply load (a retry storm)."""

    model: Literal["concurrent", "windowed"] = Field(
        "concurrent",
        description="concurrent: Envoy's (retries in flight vs active requests); windowed: "
        "the seed's/Linkerd's (retries vs requests over ttl_s).",
    )
    budget_percent: float = Field(20.0, ge=0, le=100)
    min_retry_concurrency: int = Field(3, ge=0, description="concurrent model.")
    min_per_s: float = Field(10.0, ge=0, description="windowed model.")
    ttl_s: float = Field(10.0, gt=0, description="windowed model.")

    @model_validator(mode="after")
    def _valid(self) -> RetryBudgetConfig:
        if self.model == "windowed":
            WindowedRetryBudget(self.budget_percent / 100.0, self.min_per_s, self.ttl_s)
        else:
            RetryBudget(self.budget_percent, self.min_retry_concurrency)
        return self


class CircuitBreakerConfig(_Model):
    """The seed's breaker: closed -> open -> half-open, per upstream."""

    failure_threshold: int = Field(5, ge=1, description="Consecutive failures that open it.")
    success_threshold: int = Field(3, ge=1, description="Half-open successes that close it.")
    reset_timeout_s: float = Field(30.0, gt=0, description="Open this long, then half-open.")
    window_s: float = Field(60.0, gt=0, description="Failure-rate window.")
    failure_rate_percent: float = Field(50.0, gt=0, le=100)
    min_requests: int = Field(
        10, ge=1, description="Requests in the window before the rate counts."
    )
    half_open_max_probes: int = Field(1, ge=1, description="Concurrent requests let through.")

    @model_validator(mode="after")
    def _valid(self) -> CircuitBreakerConfig:
        self.build()  # the core's own checks (a ValueError naming the parameter)
        return self

    def build(
        self, on_transition: Callable[[BreakerState, BreakerState, str], None] | None = None
    ) -> CircuitBreaker:
        return CircuitBreaker.build(
            failure_threshold=self.failure_threshold,
            success_threshold=self.success_threshold,
            reset_timeout_s=self.reset_timeout_s,
            window_s=self.window_s,
            failure_rate_percent=self.failure_rate_percent,
            min_requests=self.min_requests,
            half_open_max_probes=self.half_open_max_probes,
            on_transition=on_transition,
        )


class OutlierDetectionConfig(_Model):
    """Eject hosts that keep failing (Envoy defaults)."""

    consecutive_5xx: int = Field(5, ge=1)
    consecutive_gateway_errors: int = Field(5, ge=1)
    base_ejection_s: float = Field(30.0, gt=0, description="Times the number of ejections so far.")
    max_ejection_s: float = Field(300.0, gt=0, description="Longest ejection.")
    max_ejection_percent: float = Field(10.0, ge=0, le=100)

    @model_validator(mode="after")
    def _valid(self) -> OutlierDetectionConfig:
        self.build()
        return self

    def build(self) -> OutlierDetector:
        return OutlierDetector.build(
            consecutive_5xx=self.consecutive_5xx,
            consecutive_gateway_errors=self.consecutive_gateway_errors,
            base_ejection_s=self.base_ejection_s,
            max_ejection_s=self.max_ejection_s,
            max_ejection_percent=self.max_ejection_percent,
        )


class UpstreamLimitsConfig(_Model):
    """Envoy's circuit-breaker thresholds: overflow answers 503 x-meshgate-overflow."""

    max_connections: int = Field(1024, ge=1)
    max_pending_requests: int = Field(1024, ge=1, description="Requests waiting for a connection.")
    max_requests: int = Field(1024, ge=1, description="Requests in flight.")
    max_retries: int = Field(3, ge=0, description="Retries in flight.")
