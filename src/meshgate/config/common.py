"""Pieces shared by the config models."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FiniteModel(Model):
    """`Model` whose float fields refuse inf and nan."""

    model_config = ConfigDict(allow_inf_nan=False)


# An HTTP token (RFC 9110 tchar): header names, and names used in keys.
TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def token(value: str, what: str) -> str:
    """``value`` when it is an HTTP token; else a ValueError naming ``what``."""
    if not TOKEN.match(value):
        raise ValueError(f"{value!r} is not a valid {what}")
    return value


def redis_url(value: str) -> str:
    """``value`` when it is a Redis URL; else a ValueError saying what is accepted."""
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"redis url {value!r} must start with redis://, rediss:// or unix://")
    return value
