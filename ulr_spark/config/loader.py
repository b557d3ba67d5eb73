"""The whole config, loading it from YAML with ``section.key=value`` overrides, and errors
that name the key.

Loading is strict: an unknown key, a value of the wrong type or a value outside its range
raises :class:`ConfigError` naming the key, so a typo fails at start-up rather than hours
into a run. The ``simulate:`` and ``compare:`` sections belong to the simulator and the
experiment harness: their models live with that code and are imported, by name, only when
a config has the section, so production code never imports them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import typing
from typing import Any, Optional, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from ulr_spark.config.rules import Section, require, rule_of
from ulr_spark.config.sections import (
    EvaluateConfig,
    ExamplesConfig,
    FeaturesConfig,
    LogColumns,
    ScoreConfig,
    SourceConfig,
    SparkConfig,
    TablesConfig,
    TrainConfig,
)
from ulr_spark.config.tracking import TrackingConfig


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


# Sections owned by code outside production: section -> "module:class", imported on demand.
OWNED_SECTIONS = {
    "simulate": "ulr_spark.simulation.settings:SimulateConfig",
    "compare": "ulr_spark.experiments.settings:CompareConfig",
}


OwnedSection = TypeVar("OwnedSection", bound=BaseModel)


def owned_settings(config: Config, section: str, model: type[OwnedSection]) -> OwnedSection:
    """The validated ``section`` of ``config`` (one of OWNED_SECTIONS), or ``model``'s defaults
    when the config has no such section; TypeError when the section was not validated (a config
    built around the loader)."""
    settings = getattr(config, section)
    if settings is None:
        return model()
    if not isinstance(settings, model):
        raise TypeError(f"config.{section} is a {type(settings).__name__}, not a validated {model.__name__}: build configs with load_config")
    return settings


def owned_section_model(section: str) -> type[BaseModel]:
    module, name = OWNED_SECTIONS[section].split(":")
    model: type[BaseModel] = getattr(importlib.import_module(module), name)
    return model


class Config(Section):
    spark: SparkConfig = Field(default_factory=SparkConfig)
    tables: TablesConfig = Field(default_factory=TablesConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    columns: LogColumns = Field(default_factory=LogColumns)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    examples: ExamplesConfig = Field(default_factory=ExamplesConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # The simulator's and the comparison's sections (OWNED_SECTIONS), already validated by
    # their own models; None when the config has no such section.
    simulate: Optional[Any] = None
    compare: Optional[Any] = None

    @model_validator(mode="after")
    def _every_process_reads_a_shard(self) -> Config:
        require(
            self.examples.partitions >= self.train.num_processes,
            "examples.partitions",
            f"must be >= train.num_processes ({self.train.num_processes}) so every process reads a shard",
        )
        split = self.examples.split
        require(
            not split.test_days or bool(self.columns.event_date), "examples.split.test_days", "needs columns.event_date"
        )
        require(
            bool(self.columns.features) or bool(self.features.numeric or self.features.categorical or self.features.item_id
                                                 or self.features.query_item),
            "columns.features", "is empty and the features: section declares none: the relevance tower needs an input",
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        absent = {name for name in OWNED_SECTIONS if getattr(self, name) is None}
        data: dict[str, Any] = self.model_dump(mode="json", exclude=absent)
        return data

    def fingerprint(self) -> str:
        """A short hash of the whole config, stored with artifacts and tables."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def _key(parts: list[Any]) -> str:
    key = ""
    for part in parts:
        if isinstance(part, int):
            key += f"[{part}]"
        elif part:
            key += f".{part}" if key else str(part)
    return key


def _known_keys(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed where ``loc`` (without its last part) points, for the error message."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        hints = typing.get_type_hints(model, include_extras=True) if isinstance(model, type) else {}
        annotation = hints.get(str(part))
        while typing.get_origin(annotation) in (typing.Annotated, list, typing.Union):
            annotation = typing.get_args(annotation)[0]
        model = annotation
    fields = getattr(model, "model_fields", None) or getattr(model, "__dataclass_fields__", {})
    return sorted(name for name in fields if not name.startswith("_"))


def _message(error: ErrorDetails, prefix: list[Any], root: Any) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        key = _key(prefix + list(loc))
        parent = _key(prefix + list(loc[:-1]))
        return f"unknown config key '{key}'; known keys{' of ' + parent if parent else ''}: {_known_keys(root, loc)}"
    ctx = error.get("ctx") or {}
    if kind == "ulr_rule":
        return f"config key '{_key(prefix + list(loc) + [ctx['key']])}': {ctx['rule']}"
    rule = rule_of(error)
    return f"config key '{_key(prefix + list(loc))}': {rule}"


def _validated(model: type[BaseModel], data: Any, prefix: list[Any]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{_key(prefix) or '<root>'}': expected a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_message(error.errors()[0], prefix, model)) from None


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}': '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def config_from_dict(data: dict[str, Any]) -> Config:
    """A validated :class:`Config` from a mapping of sections; raises :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key '<root>': expected a mapping, got {type(data).__name__}")
    data = dict(data)
    owned = {name: data.pop(name) for name in OWNED_SECTIONS if name in data}
    config = _validated(Config, data, [])
    updates = {name: _validated(owned_section_model(name), value, [name]) for name, value in owned.items()}
    return config.model_copy(update=updates) if updates else config


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load a YAML config (or the defaults) and apply ``section.key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for assignment in overrides or []:
        _apply_override(data, assignment)
    return config_from_dict(data)
