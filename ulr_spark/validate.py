"""Checks on the impression log before anything is built from it.

Each broken rule is reported with the column, the rule and the number of rows that break it,
all rules at once, and nothing is written when any rule fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ulr_spark import schema as S
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


@dataclass(frozen=True)
class LogSummary:
    rows: int
    requests: int
    num_features: int


def _type_rule(field: T.StructField, column: str, cols: LogColumns) -> str | None:
    """The type rule a column breaks, or None."""
    dtype = field.dataType
    if column in (cols.request_id, cols.query_id, cols.item_id):
        ok = isinstance(dtype, (T.StringType,) + _INTEGRAL)
        return None if ok else f"must be a string or integer id, found {dtype.simpleString()}"
    if column == cols.position:
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
        return F.lit(S.DEFAULT_CONTEXT_KEY)
    parts = [F.concat(F.lit(f"{c}="), F.coalesce(F.col(c).cast("string"), F.lit("null"))) for c in cols.context]
    return F.concat_ws("|", *parts)


def validate_log(log: DataFrame, cols: LogColumns) -> LogSummary:
    """Raise :class:`InvalidLogError` unless every rule holds; return a summary otherwise."""
    required = [cols.request_id, cols.query_id, cols.item_id, cols.position, cols.clicked, cols.features]
    required += list(cols.context)
    fields = {f.name: f for f in log.schema.fields}

    total = log.count()
    if total == 0:
        raise InvalidLogError([Violation("<all>", "the log must not be empty", 0)], 0)

    schema_violations = [
        Violation(c, "required column is missing (every row lacks it)", total) for c in required if c not in fields
    ]
    for c in required:
        if c in fields:
            rule = _type_rule(fields[c], c, cols)
            if rule:
                schema_violations.append(Violation(c, rule, total))
    if schema_violations:
        raise InvalidLogError(schema_violations, total)

    clicked = F.col(cols.clicked).cast("int")
    features = F.col(cols.features)
    length = F.size(features)
    sizes = (
        log.where(features.isNotNull())
        .groupBy(length.alias("n"))
        .count()
        .orderBy(F.desc("count"), "n")
        .limit(1)
        .collect()
    )
    num_features = sizes[0]["n"] if sizes else 0

    row_rules = [
        (cols.request_id, "must not be null", F.col(cols.request_id).isNull()),
        (cols.query_id, "must not be null", F.col(cols.query_id).isNull()),
        (cols.item_id, "must not be null", F.col(cols.item_id).isNull()),
        (cols.position, "must not be null", F.col(cols.position).isNull()),
        (cols.position, "must be >= 1 (slots are 1-based)", F.col(cols.position) < 1),
        (cols.clicked, "must be 0 or 1", clicked.isNull() | ~clicked.isin(0, 1)),
        (cols.features, "must not be null", features.isNull()),
        (
            cols.features,
            f"must hold {num_features} values (the most common length), none of them null or NaN",
            features.isNotNull()
            & (
                (length != num_features)
                | F.exists(features, lambda v: v.isNull() | F.isnan(v.cast("double")))
            ),
        ),
    ]
    counts = log.agg(
        *[F.sum(F.when(cond, 1).otherwise(0)).alias(f"r{i}") for i, (_, _, cond) in enumerate(row_rules)]
    ).first()
    violations = [Violation(c, rule, int(counts[f"r{i}"])) for i, (c, rule, _) in enumerate(row_rules)]

    keyed = log.where(F.col(cols.request_id).isNotNull() & F.col(cols.position).isNotNull())
    duplicated_slots = (
        keyed.groupBy(cols.request_id, cols.position)
        .count()
        .where(F.col("count") > 1)
        .agg(F.sum("count").alias("rows"))
        .first()["rows"]
    )
    violations.append(
        Violation(cols.position, f"must be unique within a request ('{cols.request_id}'): two items in one slot",
                  int(duplicated_slots or 0))
    )
    per_request = keyed.groupBy(cols.request_id).agg(
        F.count(F.lit(1)).alias("n"),
        F.countDistinct(cols.query_id).alias("queries"),
        F.countDistinct(context_key(cols)).alias("contexts"),
    )
    request_counts = per_request.agg(
        F.count(F.lit(1)).alias("requests"),
        F.sum(F.when(F.col("queries") > 1, F.col("n")).otherwise(0)).alias("multi_query"),
        F.sum(F.when(F.col("contexts") > 1, F.col("n")).otherwise(0)).alias("multi_context"),
    ).first()
    violations.append(
        Violation(cols.query_id, f"must be the same for all rows of a request ('{cols.request_id}')",
                  int(request_counts["multi_query"] or 0))
    )
    if cols.context:
        violations.append(
            Violation(",".join(cols.context), "context must be the same for all rows of a request",
                      int(request_counts["multi_context"] or 0))
        )

    broken = [v for v in violations if v.rows > 0]
    if broken:
        raise InvalidLogError(broken, total)
    return LogSummary(rows=total, requests=int(request_counts["requests"]), num_features=num_features)
