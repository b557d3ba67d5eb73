"""The production sections of the config: Spark, tables, log columns, examples, training,
scoring, evaluation and tracking. Each is a strict pydantic model (:class:`Section`); a
rule that spans keys is a validator that names the key it is about."""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Annotated, Any, Literal, Optional

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError, model_validator

from ulr_spark.config.rules import Section, broken, date_as_text, mapping_as_text, require, rule_of
from ulr_spark.models.options import ARCHITECTURES, ModelOptions

PositiveInt = Annotated[int, Field(ge=1)]


class SparkConfig(Section):
    master: str = "local[2]"
    app_name: str = "ulr-spark"
    shuffle_partitions: PositiveInt = 8
    driver_memory: str = "4g"
    # Extra Spark settings, passed through verbatim (e.g. spark.executor.memory).
    conf: Annotated[dict[str, str], BeforeValidator(mapping_as_text)] = Field(default_factory=dict)


class TablesConfig(Section):
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
    # Training checkpoints, one folder per run (train --resume reads them); storage the driver
    # and every training process share, like petastorm_cache.
    checkpoints: str = "checkpoints"

    def path(self, name: str) -> str:
        """The absolute path or URL of table ``name`` (a field of this section)."""
        value: str = getattr(self, name)
        if os.path.isabs(value) or "://" in value:
            return value
        root = self.root if (os.path.isabs(self.root) or "://" in self.root) else os.path.abspath(self.root)
        return os.path.join(root, value)


class SourceConfig(Section):
    """Where the impression log is read from; ulr-spark never writes to it (docs/own_logs.md).

    ``tables.impressions`` names it: a Delta path (``delta``), a metastore or Unity Catalog
    table name such as ``catalog.schema.table`` (``table``), or a folder or glob of Parquet or
    CSV files (``parquet``, ``csv``)."""

    format: Literal["delta", "table", "parquet", "csv"] = "delta"
    # An optional SQL predicate on the log's own columns, e.g. "country = 'DE'".
    filter: str = ""
    # Optional event-date range on columns.event_date, both ends inclusive (YYYY-MM-DD).
    start_date: Annotated[Optional[str], BeforeValidator(date_as_text)] = None
    end_date: Annotated[Optional[str], BeforeValidator(date_as_text)] = None
    # Reader options, passed through (csv: header, sep, ...; a CSV log is read with a header
    # and inferred types unless these say otherwise).
    options: Annotated[dict[str, str], BeforeValidator(mapping_as_text)] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _dates(self) -> SourceConfig:
        for key in ("start_date", "end_date"):
            value = getattr(self, key)
            if value is not None:
                try:
                    datetime.date.fromisoformat(value)
                except ValueError:
                    raise broken(key, f"must be a date YYYY-MM-DD, got {value!r}") from None
        if self.start_date and self.end_date:
            require(self.start_date <= self.end_date, "end_date", f"must not be before start_date ({self.start_date})")
        return self


class LogColumns(Section):
    """Names of the impression-log columns (docs/design.md, "The impression log")."""

    request_id: str = "request_id"
    query_id: str = "query_id"
    item_id: str = "item_id"
    position: str = "position"
    clicked: str = "clicked"
    # One array<float|double> column holding relevance features of the shown item; "" when the
    # log has none (features then come only from the features: section).
    features: str = "features"
    # Low-cardinality columns describing the page (device, layout, ...), inputs of the bias tower.
    context: list[str] = Field(default_factory=list)
    # Day of the request: the source's date range and the test split by days read it.
    event_date: str = "event_date"
    # A grid logged as 1-based row and column (both set): the slot is (row - 1) x width + col,
    # the width being the largest column in the log. Then ``position`` is not read.
    row: str = ""
    col: str = ""

    @model_validator(mode="after")
    def _distinct(self) -> LogColumns:
        names = [self.request_id, self.query_id, self.item_id, self.clicked, self.features]
        names += [self.row, self.col] if self.row else [self.position]
        names += list(self.context)
        names = [n for n in names if n]
        repeated = sorted({n for n in names if names.count(n) > 1})
        require(not repeated, "", f"column names must be distinct, repeated: {repeated}")
        require(bool(self.row) == bool(self.col), "col" if self.row else "row", "row and col must be set together")
        return self

    @property
    def grid_from_columns(self) -> bool:
        return bool(self.row)


class CategoricalFeature(Section):
    """A categorical relevance feature: embedded in the relevance tower (docs/own_logs.md)."""

    column: Annotated[str, Field(min_length=1)]
    # Either a vocabulary of at most this many distinct values (index 0: a value not seen when
    # the examples were built, or null), an error when the log holds more ...
    vocabulary: Optional[PositiveInt] = None
    # ... or hashing of the value into this many buckets (collisions share an embedding).
    buckets: Optional[PositiveInt] = None
    # Width of the value's embedding in the relevance MLP; 0: only a learned scalar per value.
    embedding_dim: Annotated[int, Field(ge=0)] = 8

    @model_validator(mode="after")
    def _one_encoding(self) -> CategoricalFeature:
        require((self.vocabulary is None) != (self.buckets is None), "vocabulary", "set exactly one of vocabulary or buckets")
        return self


class FeaturesConfig(Section):
    """Relevance features beyond the array column ``columns.features`` (docs/own_logs.md)."""

    # Numeric columns, standardised with the log's mean and standard deviation; a null or NaN
    # becomes the mean (0 once standardised) plus a missing-value indicator.
    numeric: list[str] = Field(default_factory=list)
    categorical: list[CategoricalFeature] = Field(default_factory=list)
    # Hashed embeddings of the ids: the item, and the (query, item) pair -- what a classic click
    # model (PBM, UBM, DBN) fits one attractiveness for.
    item_id: bool = False
    query_item: bool = False
    # Hash buckets of each id feature (2^18: few collisions below ~100k distinct ids).
    id_buckets: Annotated[int, Field(ge=2, le=2**24)] = 2**18
    id_embedding_dim: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _distinct(self) -> FeaturesConfig:
        names = list(self.numeric) + [c.column for c in self.categorical]
        repeated = sorted({n for n in names if names.count(n) > 1})
        require(not repeated, "numeric", f"a column may be declared once, repeated: {repeated}")
        for c in self.categorical:
            require(c.buckets is None or c.buckets <= 2**24, "categorical", f"{c.column}: buckets must be <= 2^24")
        return self


class SplitConfig(Section):
    """The held-out split build-examples makes (docs/own_logs.md, "Held-out clicks")."""

    # Test split: the last test_days days of columns.event_date, or a share of the requests
    # chosen by a hash of the request id (at most one of the two; neither: no test split).
    test_days: Annotated[int, Field(ge=0)] = 0
    test_share: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # Share of the other requests kept out of training to stop it early (by a hash too).
    validation_share: Annotated[float, Field(ge=0, lt=1)] = 0.1

    @model_validator(mode="after")
    def _one_test_rule(self) -> SplitConfig:
        require(not (self.test_days and self.test_share), "test_share", "set test_days or test_share, not both")
        return self


class ExamplesConfig(Section):
    max_slate_size: PositiveInt = 10  # slots beyond this are not used (top-k shown)
    partitions: PositiveInt = 8  # files of the examples table; at least the number of training processes
    # Page layout: 0 for a list; n > 0 for a grid n columns wide whose positions run in
    # row-major reading order (position p is row (p-1)//n + 1, column (p-1)%n + 1).
    grid_columns: Annotated[int, Field(ge=0)] = 0
    # Merge requests that showed the same slate into one weighted row (docs/design.md,
    # "Examples"). The likelihood is unchanged for every model except mixem, whose E-step is
    # per list (request): see merge_on_clicks.
    merge_identical_slates: bool = True
    # Merge only requests that also clicked alike (the click vector joins the merge key), so a
    # merged row's requests share one MixEM posterior exactly. null: on when a configured model
    # is a mixem, off otherwise (it costs rows: clicked slates merge less).
    merge_on_clicks: Optional[bool] = None
    # Daily runs: build only the event dates that are new or changed since the examples were
    # built and replace exactly their rows (build-examples --full rebuilds everything). Needs
    # columns.event_date; requests of different dates never merge (docs/operations.md).
    incremental: bool = False
    split: SplitConfig = Field(default_factory=SplitConfig)

    @model_validator(mode="after")
    def _incremental_split(self) -> ExamplesConfig:
        # A split by days moves with every new day: yesterday's test rows would become training
        # rows, so every date would change. A split by a hash of the request id never moves.
        require(
            not (self.incremental and self.split.test_days), "incremental",
            "cannot be combined with split.test_days (the last days move every day); use split.test_share",
        )
        return self


_MODEL_OPTIONS = TypeAdapter(ModelOptions)


class ModelVariant(Section):
    """A named model: an architecture with some options changed, e.g.
    ``{name: additive_dropout, model: additive, options: {bias_dropout: 0.3}}``."""

    name: Annotated[str, Field(min_length=1)]
    model: Literal[ARCHITECTURES]  # type: ignore[valid-type]
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _options_are_model_options(self) -> ModelVariant:
        try:
            _MODEL_OPTIONS.validate_python(self.options)
        except ValidationError as error:
            first = error.errors()[0]
            key = ".".join(["options", *(str(part) for part in first["loc"])])
            rule = rule_of(first)
            if first["type"] == "unexpected_keyword_argument":
                rule = f"is not a model option; known: {sorted(f.name for f in dataclasses.fields(ModelOptions))}"
            raise broken(key, rule) from None
        return self


class TrainConfig(Section):
    models: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: ["naive", "additive"])
    # A model_options: line with its keys commented out is null in YAML: the defaults.
    model_options: Annotated[ModelOptions, BeforeValidator(lambda v: {} if v is None else v)] = Field(default_factory=ModelOptions)
    variants: list[ModelVariant] = Field(default_factory=list)
    num_processes: PositiveInt = 2
    use_gpu: bool = False
    # Passes over the log's impressions (merged or not, an epoch is as many rows as impressions).
    epochs: PositiveInt = 15
    batch_size: PositiveInt = 256  # example rows per process and step
    learning_rate: Annotated[float, Field(gt=0)] = 0.003
    # Every rate decays to 0 over the planned epochs (cosine or linear), or stays constant.
    # With a constant rate the initialisation seed alone moved NDCG@10 by 0.06 on one data set
    # (docs/models.md, "Fair training").
    learning_rate_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    hidden_sizes: list[PositiveInt] = Field(default_factory=lambda: [64, 32])
    seed: int = 0
    # Slates drawn from the examples to estimate the learned examination curve.
    bias_curve_sample: PositiveInt = 20_000
    # Poisson-bootstrap replicates of that sample for the curve's 95% interval (0: none).
    bias_curve_bootstrap: Annotated[int, Field(ge=0)] = 50
    # Early stopping: training ends when the validation loss has not improved for this many
    # epochs, and the best epoch's weights are kept (0: train every epoch, keep the last).
    early_stopping_patience: Annotated[int, Field(ge=0)] = 3
    # Learning rate of the embedding tables (categorical and id features), trained by Adagrad:
    # a rarely seen id gets few updates, each of which must count.
    embedding_learning_rate: Annotated[float, Field(gt=0)] = 0.05
    # Warm start: "latest" or a run id. Each model starts from the same-named model of that run
    # (same spec and feature transform; contexts added since keep their fresh bias rows).
    init_from: Optional[str] = None
    # Train only on the examples of the last window_days event dates (0: all). Needs examples
    # built with examples.incremental (they carry their date).
    window_days: Annotated[int, Field(ge=0)] = 0
    # A checkpoint (weights, optimiser and schedule state, step, random state) is written at the
    # end of every epoch and, when > 0, every this many steps; train --resume continues from it.
    checkpoint_every_steps: Annotated[int, Field(ge=0)] = 0
    # How each process reads its shard: "memory" reads it once into tensors (on the training
    # device) and shuffles those; "stream" streams it through Petastorm, which holds only a
    # shuffle buffer; "auto" reads into memory when the shard's tensors fit in
    # memory_limit_mb. Petastorm-fed steps ran at about 80% of in-memory ones (docs/scaling.md).
    input: Literal["auto", "memory", "stream"] = "auto"
    memory_limit_mb: PositiveInt = 2048

    @model_validator(mode="after")
    def _models_are_known(self) -> TrainConfig:
        variant_names = [v.name for v in self.variants]
        require(len(set(variant_names)) == len(variant_names), "variants", "names must be distinct")
        for name in variant_names:
            require(name not in ARCHITECTURES, "variants", f"{name!r} is an architecture; pick another name")
        known = list(ARCHITECTURES) + variant_names
        for name in self.models:
            require(name in known, "models", f"unknown model {name!r}; known: {known}")
        require(len(set(self.models)) == len(self.models), "models", "must not repeat a model")
        if self.init_from is not None and self.init_from != "latest":
            from ulr_spark.io.artifacts import RUN_ID_PATTERN

            require(bool(RUN_ID_PATTERN.fullmatch(self.init_from)), "init_from", "must be 'latest' or a run id")
        for name in self.models:
            architecture, options = self.variant(name)
            require(
                architecture != "mixem" or not options.mixem_blind_component or options.mixem_components >= 2, "models",
                f"{name}: mixem_blind_component needs mixem_components >= 2 (the blind one and at least one that reads relevance)",
            )
        return self

    def variant(self, name: str) -> tuple[str, ModelOptions]:
        """(architecture, options) of a configured model name: a variant's options override
        ``model_options``."""
        for v in self.variants:
            if v.name == name:
                merged = {**_MODEL_OPTIONS.dump_python(self.model_options), **v.options}
                return v.model, _MODEL_OPTIONS.validate_python(merged)
        return name, self.model_options


class ScoreConfig(Section):
    # Table of (query_id, item_id, features) to score; "candidates" (written by simulate) or
    # "impressions" (the distinct pairs of the log).
    source: Literal["candidates", "impressions"] = "candidates"
    # Rows per Arrow batch sent to the Python workers: fewer, larger batches cost less per row
    # between the JVM and Python (measured in bench/throughput.py).
    batch_size: PositiveInt = 32768
    # scores_latest replaces a pair's score only when it moved by more than this, relative to
    # max(1, |score|): a recomputation that differs in the last bits is not a change.
    change_tolerance: Annotated[float, Field(ge=0)] = 1e-6
    # Daily runs: score only the pairs that are new or whose features changed since their newest
    # score in scores_latest (unchanged pairs keep it); `score --all` scores every pair. Pairs
    # that left the source are then not removed from scores_latest (docs/operations.md).
    only_changed: bool = False


class EvaluateConfig(Section):
    # EM iterations of the position-based model baseline fitted on the training split.
    pbm_iterations: PositiveInt = 30
    ndcg_at: Annotated[list[PositiveInt], Field(min_length=1)] = Field(default_factory=lambda: [1, 3, 5, 10])
    # Which queries NDCG is measured on: "heldout" (never in the log) or "all".
    queries: Literal["heldout", "all"] = "heldout"
    # Slots whose examination error is averaged (slot 1 is the reference, error 0 by definition).
    bias_error_slots: list[Annotated[int, Field(ge=2)]] = Field(default_factory=lambda: [2, 3, 4, 5, 6, 7, 8, 9, 10])
