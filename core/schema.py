"""Pydantic bases shared by every layer's input and definition models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """Immutable, and every unknown field is an error (definitions read from files)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StrictOpen(BaseModel):
    """No type coercion, but unknown fields are kept: a peer's messages may grow new fields."""

    model_config = ConfigDict(extra="allow", strict=True)


class Strict(Frozen):
    """As `Frozen`, and no type coercion: `"1"` is not an int, `1` is not a bool."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
