"""Config model of response compression (``compress:`` at the top level and on routes)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from meshgate.core.encoding import CompressPolicy, MediaTypeError, MediaTypes

Coding = Literal["br", "zstd", "gzip"]
DEFAULT_ENCODINGS: tuple[Coding, ...] = ("br", "zstd", "gzip")

DEFAULT_TYPES = (
    "text/*",
    "application/json",
    "application/*+json",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/xml",
    "application/*+xml",
    "application/x-ndjson",
    "application/graphql-response+json",
    "application/wasm",
    "image/svg+xml",
    "image/x-icon",
    "image/vnd.microsoft.icon",
    "image/bmp",
    "font/ttf",
    "font/otf",
    "application/vnd.ms-fontobject",
)
"""Text-like types that compress well (already-compressed formats such as JPEG,
PNG, WOFF2, zip or video are left out on purpose)."""


def _media_type(value: str) -> str:
    try:
        MediaTypes([value])
    except MediaTypeError as exc:
        raise ValueError(str(exc)) from None
    return value.strip().lower()


class CompressConfig(BaseModel):
    """Compression of responses (``true``: the defaults; ``false``: off on this route)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="false: no compression on this route.")
    encodings: list[Coding] = Field(
        default_factory=lambda: list(DEFAULT_ENCODINGS),
        description="Codings offered, in order of preference when the client weighs "
        "several equally.",
    )
    min_size_bytes: int = Field(
        1024,
        ge=0,
        description="Responses whose Content-Length is smaller go as they are "
        "(a body of unknown length is compressed).",
    )
    content_types: list[Annotated[str, AfterValidator(_media_type)]] = Field(
        default_factory=lambda: list(DEFAULT_TYPES),
        description="Media types compressed: type/subtype, type/* or type/*+suffix "
        "(parameters such as charset are ignored).",
    )
    gzip_level: int = Field(6, ge=1, le=9, description="zlib level (6: zlib's default).")
    br_quality: int = Field(
        4, ge=0, le=11, description="brotli quality (11 is far too slow for live traffic)."
    )
    zstd_level: int = Field(
        3, ge=1, le=19, description="zstd level (up to 19: windows a browser accepts)."
    )

    @model_validator(mode="before")
    @classmethod
    def _bool_shorthand(cls, v: object) -> object:
        if v is True:
            return {}
        if v is False:
            return {"enabled": False}
        return v

    @field_validator("encodings")
    @classmethod
    def _unique_encodings(cls, v: list[Coding]) -> list[Coding]:
        if not v:
            raise ValueError("list at least one of br, zstd, gzip (or enabled: false)")
        dup = sorted({c for c in v if v.count(c) > 1})
        if dup:
            raise ValueError(f"listed twice: {', '.join(dup)}")
        return v

    @field_validator("content_types")
    @classmethod
    def _some_types(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one media type (or enabled: false)")
        return v

    def build(self) -> CompressPolicy:
        return CompressPolicy(
            codings=tuple(self.encodings),
            min_size_bytes=self.min_size_bytes,
            types=MediaTypes(self.content_types),
        )

    def level(self, coding: str) -> int:
        return {"gzip": self.gzip_level, "br": self.br_quality, "zstd": self.zstd_level}[coding]
