"""Config model of tracing: W3C trace context, OpenTelemetry spans, OTLP/HTTP export
(docs/tracing.md)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from meshgate.config.common import token

# A header value the exporter may send: visible ASCII and spaces/tabs inside, no CR/LF.
_FIELD_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")


class TracingConfig(BaseModel):
    """Spans for every request and upstream attempt, exported over OTLP/HTTP."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    enabled: bool = Field(
        False,
        description="Accept and propagate W3C traceparent/tracestate and export spans. "
        "Off: trace headers pass through untouched and nothing is recorded.",
    )
    endpoint: str = Field(
        "http://127.0.0.1:4318/v1/traces",
        description="Full OTLP/HTTP traces URL (protobuf), signal path included.",
    )
    service_name: str = Field("meshgate", min_length=1, description="Resource service.name.")
    sample_rate: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Share of new traces recorded (trace id ratio; 0.01 as Kong: a recorded "
        "request costs several times an unrecorded one); a request whose caller sent a "
        "traceparent follows the caller's sampled flag.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra HTTP header fields on every export request (e.g. an API key); "
        "redacted by the admin API.",
    )
    export_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest time of one export request, retries included; also the "
        "longest wait for the final export when the gateway stops.",
    )
    max_queue_size: int = Field(
        2048, ge=1, strict=True, description="Ended spans waiting for export; more are dropped."
    )
    max_export_batch_size: int = Field(
        512, ge=1, strict=True, description="Spans per export request (at most max_queue_size)."
    )
    schedule_delay_s: float = Field(
        5.0, gt=0, description="Longest time between two exports while spans are queued."
    )

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, v: str) -> str:
        try:
            parts = urlsplit(v)
            port = parts.port  # a ValueError for a port out of range or not a number
        except ValueError as exc:
            raise ValueError(f"invalid URL {v!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http:// or https:// URL with a host")
        if port == 0:
            raise ValueError(f"{v!r}: port 0")
        return v

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, v: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in v.items():
            token(name, "header name")
            if not _FIELD_VALUE.fullmatch(value):
                raise ValueError(
                    f"header {name!r}: the value must be non-empty visible ASCII "
                    "(no line breaks, no leading or trailing spaces)"
                )
            if name.lower() in out:
                raise ValueError(f"header {name!r} given twice")
            out[name.lower()] = value
        return out

    @field_validator("max_export_batch_size")
    @classmethod
    def _batch_fits_queue(cls, v: int, info: ValidationInfo) -> int:
        queue = info.data.get("max_queue_size")  # absent when itself invalid
        if queue is not None and v > queue:
            raise ValueError(f"{v} is larger than max_queue_size ({queue})")
        return v
