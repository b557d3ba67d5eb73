"""Building blocks of the config models: the strict base class, and rules that span several keys, each reported under the key it names."""

from __future__ import annotations

import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError


class Section(BaseModel):
    """A config section: unknown keys are errors, values are not coerced across types (a
    quoted "3" is not an integer, "yes" is not a boolean), and a loaded config is read-only."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_section(cls, data: Any) -> Any:
        """A section whose keys are all commented out is read by YAML as null: the defaults."""
        return {} if data is None else data


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


_TYPE_RULES = {
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "dataclass_type": "expected a mapping",
    "dataclass_args_type": "expected a mapping",
}
_BOUND_RULES = {"greater_than_equal": ">=", "greater_than": ">", "less_than": "<", "less_than_equal": "<="}


def rule_of(error: ErrorDetails) -> str:
    """The rule a pydantic error says was broken, in the words of the config's other errors
    (``must be >= 1``, ``expected an integer, got 'three'``), without the key."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "ulr_rule":
        return str(ctx["rule"])
    if kind in _TYPE_RULES:
        return f"{_TYPE_RULES[kind]}, got {error['input']!r}"
    if kind in _BOUND_RULES:
        bound = next(iter(ctx.values()))
        return f"must be {_BOUND_RULES[kind]} {bound:g}" if isinstance(bound, float) else f"must be {_BOUND_RULES[kind]} {bound}"
    if kind == "literal_error":
        return f"must be one of [{str(ctx['expected']).replace(' or ', ', ')}], got {error['input']!r}"
    if kind in ("too_short", "string_too_short"):
        if ctx.get("min_length") == 1:
            return "is required" if kind == "string_too_short" else "needs at least one value"
        return f"needs at least {ctx.get('min_length')} {'characters' if kind == 'string_too_short' else 'values'}"
    if kind == "missing":
        return "is required"
    return error["msg"].removeprefix("Value error, ")
