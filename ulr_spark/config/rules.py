"""Building blocks of the config models: the strict base class, and rules that span several keys, each reported under the key it names."""

from __future__ import annotations

import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


class Section(BaseModel):
    """A config section: unknown keys are errors, values are not coerced across types (a
    quoted "3" is not an integer, "yes" is not a boolean), and a loaded config is read-only."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PositionalSection(Section):
    """A section that code also builds with positional arguments, in field order, as
    ``CompareClaim("pbm", "additive", "naive")``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(**dict(zip(type(self).model_fields, args)), **kwargs)


def broken(key: str, rule: str) -> PydanticCustomError:
    """The error of a rule that involves several keys of a section, reported under ``key``
    (relative to the section, e.g. ``examination`` or ``letor.train_path``)."""
    return PydanticCustomError("ulr_rule", "{rule}", {"key": key, "rule": rule})


def require(ok: bool, key: str, rule: str) -> None:
    if not ok:
        raise broken(key, rule)


def date_as_text(value: Any) -> Any:
    """YAML reads 2026-01-01 as a date; the config keeps the text."""
    return value.isoformat() if isinstance(value, datetime.date) else value


def mapping_as_text(value: Any) -> Any:
    """Spark settings are text; YAML reads ``8`` or ``true`` as a number or a boolean."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return value
