"""Typed, validated configuration.

A YAML file maps onto the dataclasses below. Loading is strict: an unknown key, a value of the
wrong type or a value outside its range raises :class:`ConfigError` naming the key, so a typo
fails at start-up rather than hours into a run.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[2]"
    app_name: str = "ulr-spark"
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    # Extra Spark settings, passed through verbatim (e.g. spark.executor.memory).
    conf: dict[str, str] = field(default_factory=dict)

    def validate(self, at: str) -> None:
        _check(self.shuffle_partitions >= 1, f"{at}.shuffle_partitions", "must be >= 1")


@dataclass(frozen=True)
class TablesConfig:
    """Where each table lives. Relative paths resolve against ``root``."""

    root: str = "ulr-data"
    impressions: str = "impressions"
    truth_labels: str = "truth/labels"
    truth_examination: str = "truth/examination"
    candidates: str = "candidates"
    examples: str = "examples"
    bias_curves: str = "bias_curves"
    scores: str = "scores"
    scores_latest: str = "scores_latest"
    metrics: str = "metrics"
    comparison: str = "comparison"
    models: str = "models"
    petastorm_cache: str = "petastorm_cache"

    def path(self, name: str) -> str:
        value = getattr(self, name)
        if os.path.isabs(value) or "://" in value:
            return value
        root = self.root if (os.path.isabs(self.root) or "://" in self.root) else os.path.abspath(self.root)
        return os.path.join(root, value)


@dataclass(frozen=True)
class LogColumns:
    """Names of the impression-log columns (DESIGN section 2)."""

    request_id: str = "request_id"
    query_id: str = "query_id"
    item_id: str = "item_id"
    position: str = "position"
    clicked: str = "clicked"
    # One array<float|double> column holding the relevance features of the shown item.
    features: str = "features"
    # Low-cardinality columns describing the page (device, layout, ...), inputs of the bias tower.
    context: list[str] = field(default_factory=list)

    def validate(self, at: str) -> None:
        names = [self.request_id, self.query_id, self.item_id, self.position, self.clicked, self.features]
        names += list(self.context)
        duplicated = sorted({n for n in names if names.count(n) > 1})
        _check(not duplicated, at, f"column names must be distinct, repeated: {duplicated}")


@dataclass(frozen=True)
class LoggingRankerConfig:
    """The simulated production ranker: score = relevance_weight * f(x) + distractor_weight * u(x)
    + noise * N(0, 1) drawn per request; it shows its top ``slate_size`` candidates."""

    relevance_weight: float = 1.0
    distractor_weight: float = 1.0
    noise: float = 1.0

    def validate(self, at: str) -> None:
        _check(self.noise >= 0, f"{at}.noise", "must be >= 0")


@dataclass(frozen=True)
class LetorConfig:
    """A LETOR/svmlight ranking dataset to draw the truth and the features from."""

    train_path: str = ""
    # Queries of this file are held out (never logged); without it, heldout_fraction decides.
    test_path: str = ""
    # Query sizes come from `qid:` in the lines or, when the lines have none, from a
    # LightGBM-style "<file>.query" file next to the data.

    def validate(self, at: str) -> None:
        pass


@dataclass(frozen=True)
class SimulateConfig:
    # pbm: one examination curve. mixture: a share of requests come from people who click the
    # top slots whatever they show. context: the examination of a slot drops next to a very
    # attractive item (list neighbours, or left/right/above/below on a grid). confounded: pbm
    # clicks under a strong logging ranker (set in logging_ranker).
    scenario: str = "pbm"
    # synthetic: features and labels from a hidden function; letor: from the `letor` files.
    source: str = "synthetic"
    letor: LetorConfig = field(default_factory=LetorConfig)
    seed: int = 7
    num_queries: int = 2000
    heldout_fraction: float = 0.2
    candidates_per_query: int = 20
    slate_size: int = 10
    num_requests: int = 100_000
    num_features: int = 16
    # Examination of slots 1..slate_size: theta_k ** eta (DESIGN section 4).
    examination: list[float] = field(
        default_factory=lambda: [0.68, 0.61, 0.48, 0.34, 0.28, 0.20, 0.11, 0.10, 0.08, 0.06]
    )
    eta: float = 1.0
    click_noise: float = 0.1  # eps in P(attracted | y) = eps + (1 - eps) (2^y - 1) / 15
    # Share of (query, item) pairs at each label 0..4.
    label_shares: list[float] = field(default_factory=lambda: [0.45, 0.30, 0.15, 0.07, 0.03])
    logging_ranker: LoggingRankerConfig = field(default_factory=LoggingRankerConfig)
    start_date: str = "2026-01-01"
    days: int = 7  # requests are spread over this many event_date partitions, in id order
    # How requests pick a training query: uniform, or zipf (head and tail queries, with
    # P(rank r) proportional to r ** -zipf_exponent).
    query_popularity: str = "uniform"
    zipf_exponent: float = 1.1
    # Share of requests whose slate is re-drawn with fresh ranker noise. The rest show the
    # query's usual slate (the ranker's noise is then a fixed error per query and item), as
    # production rankers mostly repeat themselves; 1.0 re-draws every slate.
    randomised_share: float = 1.0
    partitions: int = 8
    # mixture: share of requests from top clickers, and their click probability on slots 1..n
    # (0 below), whatever the item.
    mixture_share: float = 0.3
    mixture_top_clicks: list[float] = field(default_factory=lambda: [0.7, 0.3, 0.1])
    # context: examination is multiplied by 1 - neighbour_effect * (largest attraction among
    # the slot's neighbours).
    neighbour_effect: float = 0.6

    SCENARIOS = ("pbm", "mixture", "context", "confounded")
    SOURCES = ("synthetic", "letor")
    POPULARITIES = ("uniform", "zipf")

    def validate(self, at: str) -> None:
        _check(self.scenario in self.SCENARIOS, f"{at}.scenario", f"must be one of {list(self.SCENARIOS)}")
        _check(self.source in self.SOURCES, f"{at}.source", f"must be one of {list(self.SOURCES)}")
        _check(
            self.source != "letor" or bool(self.letor.train_path),
            f"{at}.letor.train_path",
            "is required when source is 'letor'",
        )
        _check(
            self.query_popularity in self.POPULARITIES,
            f"{at}.query_popularity",
            f"must be one of {list(self.POPULARITIES)}",
        )
        _check(self.zipf_exponent > 0, f"{at}.zipf_exponent", "must be > 0")
        _check(0 <= self.randomised_share <= 1, f"{at}.randomised_share", "must be in [0, 1]")
        _check(0 <= self.mixture_share <= 1, f"{at}.mixture_share", "must be in [0, 1]")
        _check(all(0 <= v <= 1 for v in self.mixture_top_clicks), f"{at}.mixture_top_clicks", "values must be in [0, 1]")
        _check(0 <= self.neighbour_effect <= 1, f"{at}.neighbour_effect", "must be in [0, 1]")
        _check(self.num_queries >= 2, f"{at}.num_queries", "must be >= 2")
        _check(0 < self.heldout_fraction < 1, f"{at}.heldout_fraction", "must be in (0, 1)")
        _check(self.slate_size >= 1, f"{at}.slate_size", "must be >= 1")
        _check(
            self.candidates_per_query >= self.slate_size,
            f"{at}.candidates_per_query",
            "must be >= slate_size",
        )
        _check(self.num_requests >= 1, f"{at}.num_requests", "must be >= 1")
        _check(self.num_features >= 2, f"{at}.num_features", "must be >= 2")
        _check(
            len(self.examination) >= self.slate_size,
            f"{at}.examination",
            f"needs one value per slot (slate_size={self.slate_size})",
        )
        _check(all(0 < v <= 1 for v in self.examination), f"{at}.examination", "values must be in (0, 1]")
        _check(self.eta > 0, f"{at}.eta", "must be > 0")
        _check(0 <= self.click_noise < 1, f"{at}.click_noise", "must be in [0, 1)")
        _check(len(self.label_shares) == 5, f"{at}.label_shares", "needs 5 values (labels 0..4)")
        _check(
            all(v >= 0 for v in self.label_shares) and abs(sum(self.label_shares) - 1) < 1e-6,
            f"{at}.label_shares",
            "must be non-negative and sum to 1",
        )
        _check(self.partitions >= 1, f"{at}.partitions", "must be >= 1")
        _check(self.days >= 1, f"{at}.days", "must be >= 1")
        try:
            datetime.date.fromisoformat(self.start_date)
        except ValueError:
            raise ConfigError(f"config key '{at}.start_date': must be a date like 2026-01-01") from None


@dataclass(frozen=True)
class ExamplesConfig:
    max_slate_size: int = 10  # slots beyond this are not used (top-k shown)
    partitions: int = 8  # files of the examples table; at least the number of training processes
    # Page layout: 0 for a list; n > 0 for a grid n columns wide whose positions run in
    # row-major reading order (position p is row (p-1)//n + 1, column (p-1)%n + 1).
    grid_columns: int = 0
    # Merge requests that showed the same slate into one weighted row (DESIGN section 2). The
    # likelihood is unchanged for every model except mixem, whose E-step is per list: turn it
    # off for an exact mixem, at the price of one row per request.
    merge_identical_slates: bool = True

    def validate(self, at: str) -> None:
        _check(self.max_slate_size >= 1, f"{at}.max_slate_size", "must be >= 1")
        _check(self.grid_columns >= 0, f"{at}.grid_columns", "must be >= 0")
        _check(self.partitions >= 1, f"{at}.partitions", "must be >= 1")


@dataclass(frozen=True)
class ModelOptions:
    """Settings of the model family (DESIGN section 3); each variant may change them."""

    bias_dropout: float = 0.0  # dropout on the bias tower's output while training
    gradient_reversal: float = 0.0  # lambda of the adversary's reversed gradient; 0 = off
    dot_product_dim: int = 4
    mixem_components: int = 2
    mixem_skip_unclicked: bool = False
    attention_dim: int = 16

    def validate(self, at: str) -> None:
        _check(0 <= self.bias_dropout < 1, f"{at}.bias_dropout", "must be in [0, 1)")
        _check(self.gradient_reversal >= 0, f"{at}.gradient_reversal", "must be >= 0")
        _check(self.dot_product_dim >= 1, f"{at}.dot_product_dim", "must be >= 1")
        _check(self.mixem_components >= 1, f"{at}.mixem_components", "must be >= 1")
        _check(self.attention_dim >= 1, f"{at}.attention_dim", "must be >= 1")


@dataclass(frozen=True)
class ModelVariant:
    """A named model: an architecture with some options changed, e.g.
    ``{name: additive_dropout, model: additive, options: {bias_dropout: 0.3}}``."""

    name: str = ""
    model: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self, at: str) -> None:
        _check(bool(self.name), f"{at}.name", "is required")
        _check(self.model in TrainConfig.ARCHITECTURES, f"{at}.model", f"must be one of {list(TrainConfig.ARCHITECTURES)}")
        _build(ModelOptions, dict(self.options), f"{at}.options")


@dataclass(frozen=True)
class TrainConfig:
    models: list[str] = field(default_factory=lambda: ["naive", "additive"])
    model_options: ModelOptions = field(default_factory=ModelOptions)
    variants: list[ModelVariant] = field(default_factory=list)
    num_processes: int = 2
    use_gpu: bool = False
    epochs: int = 15
    batch_size: int = 256  # slates per process and step
    learning_rate: float = 0.003
    weight_decay: float = 0.0
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 32])
    seed: int = 0
    # Slates drawn from the examples to estimate the learned examination curve.
    bias_curve_sample: int = 20_000

    ARCHITECTURES = ("naive", "additive", "pal", "dot_product", "mixem", "xpa")

    def variant(self, name: str) -> tuple[str, ModelOptions]:
        """(architecture, options) of a configured model name."""
        for v in self.variants:
            if v.name == name:
                merged = {**dataclasses.asdict(self.model_options), **v.options}
                return v.model, _build(ModelOptions, merged, f"train.variants[{v.name}].options")
        return name, self.model_options

    def validate(self, at: str) -> None:
        _check(len(self.models) >= 1, f"{at}.models", "must name at least one model")
        variant_names = [v.name for v in self.variants]
        _check(len(set(variant_names)) == len(variant_names), f"{at}.variants", "names must be distinct")
        for name in variant_names:
            _check(name not in self.ARCHITECTURES, f"{at}.variants", f"{name!r} is an architecture; pick another name")
        known = list(self.ARCHITECTURES) + variant_names
        for name in self.models:
            _check(name in known, f"{at}.models", f"unknown model {name!r}; known: {known}")
        _check(len(set(self.models)) == len(self.models), f"{at}.models", "must not repeat a model")
        _check(self.num_processes >= 1, f"{at}.num_processes", "must be >= 1")
        _check(self.epochs >= 1, f"{at}.epochs", "must be >= 1")
        _check(self.batch_size >= 1, f"{at}.batch_size", "must be >= 1")
        _check(self.learning_rate > 0, f"{at}.learning_rate", "must be > 0")
        _check(self.weight_decay >= 0, f"{at}.weight_decay", "must be >= 0")
        _check(all(h >= 1 for h in self.hidden_sizes), f"{at}.hidden_sizes", "sizes must be >= 1")
        _check(self.bias_curve_sample >= 1, f"{at}.bias_curve_sample", "must be >= 1")


@dataclass(frozen=True)
class ScoreConfig:
    # Table of (query_id, item_id, features) to score; "candidates" (written by simulate) or
    # "impressions" (the distinct pairs of the log).
    source: str = "candidates"
    batch_size: int = 4096

    def validate(self, at: str) -> None:
        _check(self.source in ("candidates", "impressions"), f"{at}.source", "must be 'candidates' or 'impressions'")
        _check(self.batch_size >= 1, f"{at}.batch_size", "must be >= 1")


@dataclass(frozen=True)
class EvaluateConfig:
    ndcg_at: list[int] = field(default_factory=lambda: [1, 3, 5, 10])
    # Which queries NDCG is measured on: "heldout" (never in the log) or "all".
    queries: str = "heldout"
    # Slots whose examination error is averaged (slot 1 is the reference, error 0 by definition).
    bias_error_slots: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6, 7, 8, 9, 10])

    def validate(self, at: str) -> None:
        _check(len(self.ndcg_at) >= 1 and all(k >= 1 for k in self.ndcg_at), f"{at}.ndcg_at", "cutoffs must be >= 1")
        _check(self.queries in ("heldout", "all"), f"{at}.queries", "must be 'heldout' or 'all'")
        _check(all(k >= 2 for k in self.bias_error_slots), f"{at}.bias_error_slots", "slots must be >= 2")


@dataclass(frozen=True)
class CompareScenario:
    """One scenario of a comparison: a runnable config file, and settings merged over it."""

    name: str = ""
    config: str = ""  # YAML path, relative to the working directory
    settings: dict[str, Any] = field(default_factory=dict)

    def validate(self, at: str) -> None:
        _check(bool(self.name), f"{at}.name", "is required")
        _check(bool(self.config), f"{at}.config", "is required")


@dataclass(frozen=True)
class CompareClaim:
    """An expected result, checked in the report: ``model`` beats ``beats`` on ``metric`` in
    ``scenario`` by more than the spread over seeds (for bias_curve_error: lower is better)."""

    scenario: str = ""
    model: str = ""
    beats: str = ""
    metric: str = "ndcg@10"


@dataclass(frozen=True)
class CompareConfig:
    scenarios: list[CompareScenario] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    baselines: list[str] = field(default_factory=lambda: ["lightgbm", "xgboost"])
    baseline_rounds: int = 200
    baseline_max_rows: int = 5_000_000  # the boosted trees train on the driver
    claims: list[CompareClaim] = field(default_factory=list)
    report: str = "docs/comparison.md"
    plot: str = "docs/comparison_curves.png"

    def validate(self, at: str) -> None:
        names = [s.name for s in self.scenarios]
        _check(len(set(names)) == len(names), f"{at}.scenarios", "names must be distinct")
        _check(len(self.seeds) >= 1, f"{at}.seeds", "needs at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), f"{at}.seeds", "must not repeat a seed")
        for name in self.baselines:
            _check(name in ("lightgbm", "xgboost"), f"{at}.baselines", f"unknown baseline {name!r}; known: ['lightgbm', 'xgboost']")
        _check(self.baseline_rounds >= 1, f"{at}.baseline_rounds", "must be >= 1")
        for claim in self.claims:
            _check(claim.scenario in names, f"{at}.claims", f"scenario {claim.scenario!r} is not one of {names}")


@dataclass(frozen=True)
class TrackingConfig:
    """Optional MLflow tracking of params, metrics and model artifacts (off by default)."""

    mlflow: bool = False
    # Empty: MLflow's own choice (MLFLOW_TRACKING_URI, or the workspace on Databricks).
    tracking_uri: str = ""
    experiment: str = "ulr-spark"
    log_models: bool = True

    def validate(self, at: str) -> None:
        if self.mlflow:
            import importlib.util

            _check(
                importlib.util.find_spec("mlflow") is not None,
                f"{at}.mlflow",
                "is true but mlflow is not installed (pip install mlflow-skinny, or set it to false)",
            )
            _check(bool(self.experiment), f"{at}.experiment", "must name an experiment")


@dataclass(frozen=True)
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    tables: TablesConfig = field(default_factory=TablesConfig)
    columns: LogColumns = field(default_factory=LogColumns)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self, at: str = "") -> None:
        _check(
            self.examples.partitions >= self.train.num_processes,
            "examples.partitions",
            f"must be >= train.num_processes ({self.train.num_processes}) so every process reads a shard",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A short hash of the whole config, stored with artifacts and tables."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _check(ok: bool, key: str, rule: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {rule}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, [a for a in args if a is not type(None)][0], key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {type(value).__name__}")
        if args and args[1] is Any:
            return {str(k): v for k, v in value.items()}
        return {str(k): str(v) for k, v in value.items()}
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, datetime.date):  # YAML reads 2026-01-01 as a date
            return value.isoformat()
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def _build(cls: type, data: Any, at: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{at or '<root>'}': expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{at}." if at else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}'; known keys{' of ' + at if at else ''}: {sorted(fields)}"
        )
    kwargs = {name: _coerce(value, hints[name], f"{at}.{name}" if at else name) for name, value in data.items()}
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(at)
    return obj


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


def config_from_dict(data: dict[str, Any]) -> Config:
    return _build(Config, data, "")
