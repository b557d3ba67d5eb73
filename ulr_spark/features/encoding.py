"""The feature transform shared by training and scoring (docs/own_logs.md, "Features").

Every shown item becomes one float32 vector of width ``FeatureEncoder.width``:

    [ array column values (d_a) | standardised numerics (n) | missing indicators (<= n) | pad | category indices (m) ]

- numeric column j: z = (x - mean_j) / std_j, with mean and (population) standard deviation
  computed by build-examples over the log's non-missing values; a null or NaN becomes 0 (the
  mean) and its indicator 1. Only a column with a missing value in the fitted rows has an
  indicator (elsewhere a later missing value is imputed, unflagged). A constant column has
  std 1.
- categorical field i: an integer index in [0, buckets_i), stored as an exact float32
  (< 2^24). A vocabulary field maps its values, most frequent first, to 1..n and anything
  else (a value first seen after the examples were built, or null) to 0; a hashed field is
  ``pmod(xxhash64(value), buckets)``. The ids are hashed fields: ``item_id`` and the
  ``(query_id, item_id)`` pair.
- pad: one 0 when there is no dense value at all (an id-only log), so the dense part is never
  empty.

The relevance tower (:class:`ulr_spark.models.towers.RelevanceTower`) splits the vector back
into its dense part and its indices. The encoder travels as JSON: in the examples table's
schema (metadata of the ``features`` column, written in the same transaction as the rows) and
in every model card, so scoring applies exactly the transform training saw.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

ENCODER_FORMAT = 1
METADATA_KEY = "ulr_spark_encoder"
# Seeds of the hashes, fixed forever: a changed seed would silently remap every trained id.
HASH_SEED = 42
QUERY_ITEM = "query_item"
ITEM = "item_id"


@dataclass(frozen=True)
class NumericEncoding:
    column: str
    mean: float
    std: float
    # A missing-value indicator follows, when the column had a missing value in the rows the
    # transform was fitted on (as scikit-learn's SimpleImputer(add_indicator=True) does).
    indicator: bool = True


@dataclass(frozen=True)
class CategoricalEncoding:
    """A categorical field: ``columns`` are hashed together (ids) or looked up (vocabulary)."""

    name: str
    columns: tuple[str, ...]
    kind: str  # "vocabulary" or "hash"
    buckets: int
    embedding_dim: int
    values: tuple[str, ...] = ()  # vocabulary in index order: values[i] has index i + 1


@dataclass(frozen=True)
class FeatureEncoder:
    array_column: str = ""
    array_length: int = 0
    numeric: tuple[NumericEncoding, ...] = ()
    categorical: tuple[CategoricalEncoding, ...] = ()
    # The layout of the page the examples were built with (0: a list; n: a grid n wide).
    grid_columns: int = 0
    format: int = ENCODER_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def numeric_width(self) -> int:
        return len(self.numeric) + sum(n.indicator for n in self.numeric)

    @property
    def dense_width(self) -> int:
        return max(1, self.array_length + self.numeric_width)

    @property
    def width(self) -> int:
        return self.dense_width + len(self.categorical)

    @property
    def categorical_buckets(self) -> list[int]:
        return [c.buckets for c in self.categorical]

    @property
    def embedding_dims(self) -> list[int]:
        return [c.embedding_dim for c in self.categorical]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> FeatureEncoder:
        if data.get("format", 0) > ENCODER_FORMAT:
            raise ValueError(
                f"the feature encoder has format {data['format']}, newer than this version of ulr-spark reads "
                f"({ENCODER_FORMAT}); use the version that wrote it"
            )
        return FeatureEncoder(
            array_column=data["array_column"],
            array_length=int(data["array_length"]),
            numeric=tuple(NumericEncoding(**n) for n in data["numeric"]),
            categorical=tuple(
                CategoricalEncoding(**{**c, "columns": tuple(c["columns"]), "values": tuple(c["values"])})
                for c in data["categorical"]
            ),
            grid_columns=int(data.get("grid_columns", 0)),
            format=int(data.get("format", ENCODER_FORMAT)),
            extra=dict(data.get("extra", {})),
        )

    @staticmethod
    def from_json(text: str) -> FeatureEncoder:
        return FeatureEncoder.from_dict(json.loads(text))

    def source_columns(self) -> list[str]:
        """The input columns the transform reads."""
        names = [self.array_column] if self.array_column else []
        names += [n.column for n in self.numeric]
        for c in self.categorical:
            names += [n for n in c.columns if n not in names]
        return names

    def column(self, renamed: Optional[dict[str, str]] = None) -> Column:
        """The encoded vector of one row, array<float> of length ``width``. ``renamed`` maps the
        encoder's column names to the frame's (scoring reads ids as ``query_id``/``item_id``)."""
        def col(name: str) -> Column:
            return F.col((renamed or {}).get(name, name))

        parts: list[Column] = []
        if self.array_column:
            parts.append(col(self.array_column).cast(T.ArrayType(T.FloatType())))
        scalars: list[Column] = []
        for n in self.numeric:
            value = col(n.column).cast("double")
            scalars.append(F.when(missing_number(value), F.lit(0.0)).otherwise((value - F.lit(n.mean)) / F.lit(n.std)))
        for n in self.numeric:
            if n.indicator:
                scalars.append(missing_number(col(n.column).cast("double")).cast("double"))
        if self.array_length + self.numeric_width == 0:
            scalars.append(F.lit(0.0))
        for c in self.categorical:
            scalars.append(category_index(c, [col(n) for n in c.columns]).cast("double"))
        if scalars:
            parts.append(F.array(*[s.cast("float") for s in scalars]))
        return parts[0] if len(parts) == 1 else F.concat(*parts)


def missing_number(value: Column) -> Column:
    """Null, NaN or infinite: imputed with the mean and flagged (an infinite value would make
    the column's mean and deviation meaningless)."""
    return value.isNull() | F.isnan(value) | (F.abs(value) == F.lit(float("inf")))


def category_index(field_: CategoricalEncoding, columns: list[Column]) -> Column:
    """The field's integer index in [0, buckets)."""
    as_text = [c.cast("string") for c in columns]
    if field_.kind == "hash":
        return F.pmod(F.xxhash64(*as_text, F.lit(HASH_SEED)), F.lit(field_.buckets))
    if not field_.values:
        return F.lit(0)
    mapping = F.create_map(*[F.lit(v) for i, value in enumerate(field_.values) for v in (value, i + 1)])
    return F.coalesce(mapping[as_text[0]], F.lit(0))


def fit_encoder(
    log: DataFrame, array_column: str, array_length: int, features_config, query_column: str, item_column: str,
    grid_columns: int, fit_rows: Optional[Column] = None,
) -> tuple[FeatureEncoder, dict[str, int], list[tuple[str, str, int]]]:
    """Fit the transform on the rows of the log where ``fit_rows`` holds (all by default; the
    training split in build-examples): numeric means and deviations (one aggregation, which
    also counts the missing values of every row) and the vocabularies (one aggregation for all
    vocabulary columns).

    Returns (encoder, missing values per numeric column over the whole log, broken rules as
    (column, rule, rows)):
    a numeric column with no value at all, or a vocabulary column with more distinct values
    than its ``vocabulary`` allows.
    """
    broken: list[tuple[str, str, int]] = []
    numeric: list[NumericEncoding] = []
    missing: dict[str, int] = {}
    if features_config.numeric:
        aggregates = []
        fitted = F.lit(True) if fit_rows is None else fit_rows
        for i, name in enumerate(features_config.numeric):
            value = F.col(name).cast("double")
            present = F.when(~missing_number(value), value)
            aggregates += [
                F.avg(F.when(fitted, present)).alias(f"mean{i}"),
                F.stddev_pop(F.when(fitted, present)).alias(f"std{i}"),
                F.sum(F.when(present.isNull(), 1).otherwise(0)).alias(f"missing{i}"),
                F.sum(F.when(fitted & present.isNull(), 1).otherwise(0)).alias(f"fit_missing{i}"),
            ]
        stats = log.agg(F.sum(F.when(fitted, 1).otherwise(0)).alias("rows"), *aggregates).first()
        for i, name in enumerate(features_config.numeric):
            missing[name] = int(stats[f"missing{i}"] or 0)
            if not stats["rows"]:
                # No training row at all: the split's own rule reports it (split_violations).
                numeric.append(NumericEncoding(name, 0.0, 1.0, bool(stats[f"missing{i}"])))
                continue
            if stats[f"mean{i}"] is None:
                rule = "numeric feature must hold at least one finite value in the training split (it is entirely null, NaN or infinite there)"
                broken.append((name, rule, int(stats["rows"])))
                continue
            std = float(stats[f"std{i}"] or 0.0)
            numeric.append(NumericEncoding(name, float(stats[f"mean{i}"]), std if std > 0 else 1.0, bool(stats[f"fit_missing{i}"])))
    limits = {c.column: c.vocabulary for c in features_config.categorical if c.vocabulary is not None}
    vocabularies = vocabulary_counts(log if fit_rows is None else log.where(fit_rows), limits)
    categorical: list[CategoricalEncoding] = []
    for c in features_config.categorical:
        if c.buckets is not None:
            categorical.append(CategoricalEncoding(c.column, (c.column,), "hash", c.buckets, c.embedding_dim))
            continue
        distinct, rows, counts = vocabularies[c.column]
        if distinct > c.vocabulary:
            broken.append((
                c.column,
                f"categorical feature has {distinct} distinct values, more than its vocabulary={c.vocabulary} allows "
                f"(raise vocabulary, or set buckets to hash it)", rows,
            ))
            continue
        values = tuple(sorted(counts, key=lambda v: (-counts[v], v)))
        categorical.append(CategoricalEncoding(c.column, (c.column,), "vocabulary", len(values) + 1, c.embedding_dim, values))
    buckets, dim = features_config.id_buckets, features_config.id_embedding_dim
    if features_config.item_id:
        categorical.append(CategoricalEncoding(ITEM, (item_column,), "hash", buckets, dim))
    if features_config.query_item:
        categorical.append(CategoricalEncoding(QUERY_ITEM, (query_column, item_column), "hash", buckets, dim))
    encoder = FeatureEncoder(
        array_column=array_column, array_length=array_length, numeric=tuple(numeric), categorical=tuple(categorical),
        grid_columns=grid_columns,
    )
    return encoder, missing, broken


def vocabulary_counts(log: DataFrame, limits: dict[str, int]) -> dict[str, tuple[int, int, dict[str, int]]]:
    """Per column: (distinct non-null values, non-null rows, rows per value), in one pass over
    the log for all columns (values as text). The rows per value are collected only for a
    column within its limit (its vocabulary size); otherwise the dict is empty."""
    if not limits:
        return {}
    columns = list(limits)
    cells = F.array(*[F.struct(F.lit(i).alias("f"), F.col(c).cast("string").alias("value")) for i, c in enumerate(columns)])
    counted = (
        log.select(F.explode(cells).alias("e")).where(F.col("e.value").isNotNull())
        .groupBy(F.col("e.f").alias("f"), F.col("e.value").alias("value")).agg(F.count(F.lit(1)).alias("n"))
        .persist()
    )
    try:
        totals = {
            r["f"]: (int(r["distinct"]), int(r["rows"]))
            for r in counted.groupBy("f").agg(F.count(F.lit(1)).alias("distinct"), F.sum("n").alias("rows")).collect()
        }
        out = {}
        for i, column in enumerate(columns):
            distinct, rows = totals.get(i, (0, 0))
            counts: dict[str, int] = {}
            if 0 < distinct <= limits[column]:
                counts = {r["value"]: int(r["n"]) for r in counted.where(F.col("f") == i).select("value", "n").collect()}
            out[column] = (distinct, rows, counts)
        return out
    finally:
        counted.unpersist()


def encoder_of_examples(examples: DataFrame, features_column: str = "features") -> Optional[FeatureEncoder]:
    """The encoder recorded in the examples table's schema, or None for examples built before
    encoders existed (one array column, read as is)."""
    text = examples.schema[features_column].metadata.get(METADATA_KEY)
    return FeatureEncoder.from_json(text) if text else None


def with_encoder_metadata(examples: DataFrame, encoder: FeatureEncoder, features_column: str = "features") -> DataFrame:
    """Attach the encoder to the examples' ``features`` column (kept by Delta in the schema)."""
    metadata = {**examples.schema[features_column].metadata, METADATA_KEY: encoder.to_json()}
    return examples.withMetadata(features_column, metadata)
