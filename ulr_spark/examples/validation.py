"""Checks on the impression log before anything is built from it.

Each broken rule is reported with the column, the rule and the number of rows that break it,
all rules at once, and nothing is written when any rule fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ulr_spark import schema
from ulr_spark.config import LogColumns

_INTEGRAL = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
_NUMERIC = _INTEGRAL + (T.FloatType, T.DoubleType, T.DecimalType)


@dataclass(frozen=True)
class Violation:
    column: str
    rule: str
    rows: int

    def __str__(self) -> str:
        return f"column '{self.column}': {self.rule} -- broken by {self.rows} row(s)"


class InvalidLogError(ValueError):
    """The impression log breaks one or more rules; nothing was written."""

    def __init__(self, violations: list[Violation], total_rows: int):
        self.violations = violations
        self.total_rows = total_rows
        lines = "\n".join(f"  - {v}" for v in violations)
        super().__init__(
            f"the impression log breaks {len(violations)} rule(s) ({total_rows} rows checked); "
            f"nothing was written:\n{lines}"
        )


def _type_rule(field: T.StructField, column: str, cols: LogColumns, numeric: tuple[str, ...] = (),
               categorical: tuple[str, ...] = ()) -> str | None:
    """The type rule a column breaks, or None."""
    dtype = field.dataType
    if column in numeric:
        ok = isinstance(dtype, _NUMERIC + (T.BooleanType,))
        return None if ok else f"numeric feature must be a number or boolean, found {dtype.simpleString()}"
    if column in categorical:
        ok = isinstance(dtype, (T.StringType, T.BooleanType) + _INTEGRAL)
        return None if ok else f"categorical feature must be a string, integer or boolean, found {dtype.simpleString()}"
    if column in (cols.request_id, cols.query_id, cols.item_id):
        ok = isinstance(dtype, (T.StringType,) + _INTEGRAL)
        return None if ok else f"must be a string or integer id, found {dtype.simpleString()}"
    if column in (cols.position, cols.row, cols.col):
        return None if isinstance(dtype, _INTEGRAL) else f"must be an integer slot, found {dtype.simpleString()}"
    if column == cols.clicked:
        ok = isinstance(dtype, _INTEGRAL + (T.BooleanType,))
        return None if ok else f"must be an integer 0/1, found {dtype.simpleString()}"
    if column == cols.features:
        ok = isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, _NUMERIC)
        return None if ok else f"must be an array of numbers, found {dtype.simpleString()}"
    ok = isinstance(dtype, (T.StringType, T.BooleanType) + _INTEGRAL)
    return None if ok else f"context column must be a string, integer or boolean, found {dtype.simpleString()}"


def context_key(cols: LogColumns):
    """A readable key of the context columns, e.g. ``device=mobile|layout=grid``."""
    if not cols.context:
        return F.lit(schema.DEFAULT_CONTEXT_KEY)
    parts = [F.concat(F.lit(f"{c}="), F.coalesce(F.col(c).cast("string"), F.lit("null"))) for c in cols.context]
    return F.concat_ws("|", *parts)


def schema_violations(
    log: DataFrame, cols: LogColumns, total_rows: int, numeric: tuple[str, ...] = (), categorical: tuple[str, ...] = ()
) -> list[Violation]:
    """Missing columns and wrong types: every row breaks these, and no data pass is needed.
    ``numeric`` and ``categorical`` are the declared feature columns."""
    required = [cols.request_id, cols.query_id, cols.item_id, cols.clicked]
    required += [cols.row, cols.col] if cols.grid_from_columns else [cols.position]
    required += [cols.features] if cols.features else []
    required += list(cols.context) + [c for c in numeric + categorical if c not in required]
    fields = {f.name: f for f in log.schema.fields}
    violations = [
        Violation(c, "required column is missing (every row lacks it)", total_rows) for c in required if c not in fields
    ]
    for c in required:
        if c in fields:
            rule = _type_rule(fields[c], c, cols, numeric, categorical)
            if rule:
                violations.append(Violation(c, rule, total_rows))
    return violations


def sampled_feature_length(log: DataFrame, cols: LogColumns, sample_rows: int = 1000) -> int:
    """The most common length of the features array in the first rows of the log (0 when the
    log has no array column).

    Reading a sample instead of the whole log saves a pass over it; every row whose length
    differs is then counted by :func:`row_rules`, so a wrong guess cannot go unnoticed.
    """
    if not cols.features:
        return 0
    lengths = (
        log.where(F.col(cols.features).isNotNull())
        .select(F.size(cols.features).alias("n"))
        .limit(sample_rows)
        .toPandas()["n"]
    )
    return int(lengths.mode().min()) if len(lengths) else 0


class RowRule(NamedTuple):
    """A rule on single rows: its name (the suffix of its count columns), the column it is
    about, the rule as the error states it, and the condition that marks a breaking row."""

    name: str
    column: str
    rule: str
    breaks: Column


def row_rules(cols: LogColumns, num_features: int) -> list[RowRule]:
    """The rules on single rows of the log."""
    clicked = F.col(cols.clicked).cast("int")
    rules = []
    if cols.grid_from_columns:
        rules.append(RowRule(
            "grid_below_1", f"{cols.row},{cols.col}", "must both be present and >= 1 (rows and columns are 1-based)",
            F.col(cols.row).isNull() | F.col(cols.col).isNull() | (F.col(cols.row) < 1) | (F.col(cols.col) < 1),
        ))
    if cols.features:
        features = F.col(cols.features)
        length = F.size(features)
        rules += [
            RowRule("null_features", cols.features, "must not be null", features.isNull()),
            RowRule(
                "malformed_features",
                cols.features,
                f"must hold {num_features} values (the length of the first rows), each finite as the float32 the "
                "trainer reads (no null, NaN, infinity or magnitude above 3.4e38)"
                if num_features else "must not be empty: an array of no value gives the relevance tower nothing to read",
                features.isNotNull() & ((length != num_features) | (length == 0) | any_not_finite_float32(features)),
            ),
        ]
    return rules + [
        RowRule("null_request_id", cols.request_id, "must not be null", F.col(cols.request_id).isNull()),
        RowRule("null_query_id", cols.query_id, "must not be null", F.col(cols.query_id).isNull()),
        RowRule("null_item_id", cols.item_id, "must not be null", F.col(cols.item_id).isNull()),
        RowRule("null_position", cols.position, "must not be null", F.col(cols.position).isNull()),
        RowRule("position_below_1", cols.position, "must be >= 1 (slots are 1-based)", F.col(cols.position) < 1),
        RowRule("clicked_not_binary", cols.clicked, "must be 0 or 1", clicked.isNull() | ~clicked.isin(0, 1)),
    ]


def any_not_finite_float32(values: Column) -> Column:
    """True where an array holds a value that :func:`not_finite_float32` rejects (null for a null
    array). The same test as ``exists(values, not_finite_float32)``, without a lambda, which Spark
    evaluates row by row outside its generated code: after the cast, an element that is NaN or
    infinite overlaps the array of those three values, and an array that overlaps nothing but
    holds a null makes ``arrays_overlap`` null."""
    special = F.array(F.lit(float("nan")), F.lit(float("inf")), F.lit(float("-inf"))).cast(T.ArrayType(T.FloatType()))
    overlap = F.arrays_overlap(values.cast(T.ArrayType(T.FloatType())), special)
    return F.when(values.isNotNull(), F.coalesce(overlap, F.lit(True)))


def not_finite_float32(value: Column) -> Column:
    """True where a number is null, or not finite once cast to float32 (the type the trainer and
    the scorer read): NaN, infinity, or a double too large for float32, which the cast turns
    into infinity."""
    as_float = value.cast("float")
    return value.isNull() | F.isnan(as_float) | (F.abs(as_float) == F.lit(float("inf")))


def rows_in_shared_slots(sorted_positions: Column) -> Column:
    """How many entries of a sorted array of positions have an equal neighbour, without a lambda
    (a lambda would keep Spark from compiling the whole per-request projection): written as
    ``,1,,2,,2,,3,``, every run of one repeated token is removed, and the tokens left are the
    entries of a slot of their own. Only arrays that hold a repeated position get that far."""
    n = F.size(sorted_positions)
    tokens = F.concat(F.lit(","), F.array_join(sorted_positions.cast(T.ArrayType(T.StringType())), ",,"), F.lit(","))
    singles = F.regexp_replace(tokens, r"(,-?[0-9]+,)\1+", "")
    shared = n - (F.length(singles) - F.length(F.regexp_replace(singles, ",", ""))) / 2
    return F.when(F.size(F.array_distinct(sorted_positions)) == n, F.lit(0)).otherwise(shared.cast("int"))


class RequestChecks:
    """The rules, computed inside the per-request aggregation that builds the slates, so that
    checking the log costs no pass of its own.

    :meth:`aggregates` go into ``groupBy(request_id).agg``; :meth:`counts` turn them into
    per-request counts of rule-breaking rows (columns ``check_*``), which add up across
    requests and merged slates; :meth:`violations` reads the totals.
    """

    def __init__(self, cols: LogColumns, num_features: int, max_slate_size: int):
        self.cols = cols
        self.num_features = num_features
        self.rules = row_rules(cols, num_features)
        self.max_slate_size = max_slate_size

    def aggregates(self) -> list[Column]:
        cols = self.cols
        out = [F.sum(F.when(r.breaks, 1).otherwise(0)).alias(f"broken_{r.name}") for r in self.rules]
        return out + [
            F.count(F.lit(1)).alias("log_rows"),
            F.sum(F.when(F.col(cols.position) > self.max_slate_size, 1).otherwise(0)).alias("beyond_rows"),
            F.sort_array(F.collect_list(cols.position)).alias("all_positions"),
            F.min(F.col(cols.query_id).cast("string")).alias("min_query"),
            F.max(F.col(cols.query_id).cast("string")).alias("max_query"),
            F.min(context_key(cols)).alias("min_context"),
            F.max(context_key(cols)).alias("max_context"),
        ]

    def counts(self) -> list[Column]:
        rows = F.col("log_rows")
        # On the sorted positions, a row shares its slot when a neighbour has the same value.
        p = F.col("all_positions")
        shared_slot = rows_in_shared_slots(p)
        request_keyed = F.col("request_id").isNotNull()
        out = [F.col(f"broken_{r.name}").cast("long").alias(f"check_{r.name}") for r in self.rules]
        return out + [
            rows.cast("long").alias("check_log_rows"),
            F.col("beyond_rows").cast("long").alias("check_beyond_rows"),
            F.when(request_keyed, shared_slot).otherwise(0).cast("long").alias("check_shared_slot"),
            F.when(request_keyed & (F.col("min_query") != F.col("max_query")), rows).otherwise(0).cast("long")
            .alias("check_multi_query"),
            F.when(request_keyed & (F.col("min_context") != F.col("max_context")), rows).otherwise(0).cast("long")
            .alias("check_multi_context"),
        ]

    @staticmethod
    def count_columns(frame: DataFrame) -> list[str]:
        return [c for c in frame.columns if c.startswith("check_")]

    def violations(self, totals) -> list[Violation]:
        cols = self.cols
        found = [Violation(r.column, r.rule, int(totals[f"check_{r.name}"] or 0)) for r in self.rules]
        found.append(
            Violation(cols.position, f"must be unique within a request ('{cols.request_id}'): two items in one slot",
                      int(totals["check_shared_slot"] or 0))
        )
        found.append(
            Violation(cols.query_id, f"must be the same for all rows of a request ('{cols.request_id}')",
                      int(totals["check_multi_query"] or 0))
        )
        if cols.context:
            found.append(
                Violation(",".join(cols.context), "context must be the same for all rows of a request",
                          int(totals["check_multi_context"] or 0))
            )
        return [v for v in found if v.rows > 0]
