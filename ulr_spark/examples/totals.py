"""What build-examples reads from the merged rows before it writes them: the totals the rules
and the summary need (one aggregation, which also collects the context keys), the share of
(query, item) pairs seen in several slots, and the rules on the log as a whole.

The merged rows are cached and far fewer than the log's rows, so each of these reads costs
little; none of them reads the log.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F

from ulr_spark import schema
from ulr_spark.config import LogColumns
from ulr_spark.examples.validation import RequestChecks, Violation

SPLITS = (schema.SPLIT_TRAIN, schema.SPLIT_VALIDATION, schema.SPLIT_TEST)


def merged_totals(merged: DataFrame, max_slate_size: int) -> Row:
    """One row: examples (non-empty slates), requests, requests with an empty slate, clicks,
    requests per split, every ``check_*`` count summed, and ``contexts``, the context keys of the
    non-empty slates (low-cardinality by contract, so they travel to the driver)."""
    empty = F.col(schema.SLATE_SIZE) == 0
    clicks = sum((F.col(schema.CLICKS)[i].cast("long") for i in range(max_slate_size)), F.lit(0).cast("long"))
    return merged.agg(
        F.sum(F.when(empty, 0).otherwise(1)).alias("examples"),
        F.sum(schema.IMPRESSIONS).alias("requests"),
        F.sum(F.when(empty, F.col(schema.IMPRESSIONS)).otherwise(0)).alias("empty_requests"),
        F.sum(clicks).alias("clicks"),
        *[F.sum(F.when((F.col(schema.SPLIT) == name) & ~empty, F.col(schema.IMPRESSIONS)).otherwise(0)).alias(f"requests_{name}")
          for name in SPLITS],
        *[F.sum(c).alias(c) for c in RequestChecks.count_columns(merged)],
        F.collect_set(F.when(~empty, F.col(schema.CONTEXT_KEY))).alias("contexts"),
    ).first()


def context_vocabulary(keys) -> dict[str, int]:
    """Dense ids for the context keys in sorted order, ``default`` first when present."""
    ordered = sorted(keys)
    ordered.sort(key=lambda key: key != schema.DEFAULT_CONTEXT_KEY)
    return {key: i for i, key in enumerate(ordered)}


def share_of_pairs_in_several_slots(examples: DataFrame) -> float:
    """Share of (query, item) pairs shown in two or more different slots (slots up to the cap),
    read from the examples, which are much smaller than the log. A pair is in several slots
    when its lowest and highest slot differ: one aggregation, where counting the distinct slots
    took three."""
    entries = examples.select(
        schema.QUERY_ID, F.explode(F.arrays_zip(F.col(schema.ITEM_IDS).alias("item"), F.col(schema.POSITIONS).alias("slot"))).alias("e")
    ).where(F.col("e.slot") > 0)
    per_pair = entries.groupBy(schema.QUERY_ID, F.col("e.item").alias("item")).agg(
        (F.min("e.slot") != F.max("e.slot")).alias("several")
    )
    row = per_pair.agg(F.avg(F.col("several").cast("double")).alias("share")).first()
    return float(row["share"] or 0.0)


def trainable_violations(totals, cols: LogColumns, max_slate_size: int, total_rows: int) -> list[Violation]:
    """Rules on the log as a whole: it must leave something to train on."""
    found = []
    if not totals["examples"]:
        found.append(Violation(
            cols.position, f"at least one row must sit within max_slate_size={max_slate_size} (every row is beyond it, "
            "so no slate can be built)", total_rows,
        ))
    if not totals["clicks"]:
        found.append(Violation(
            cols.clicked, "at least one row within max_slate_size must be a click (1): without clicks neither relevance "
            "nor position bias can be identified", total_rows,
        ))
    return found
