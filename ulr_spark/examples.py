"""From the impression log to position-context training examples (DESIGN section 2).

One example per distinct slate: the query, the context, and the shown items in slot order with
their features. Identical slates are merged into one row whose ``impressions`` counts the
requests and whose ``clicks[i]`` sums the clicks on entry i, so the weighted log-likelihood of
the merged row equals the sum over the requests it replaces.

Arrays are padded to ``max_slate_size`` entries (position 0 marks padding) so Petastorm hands
the trainer dense tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ulr_spark import schema as S
from ulr_spark.config import Config, LogColumns
from ulr_spark.delta_io import overwrite_table, read_table
from ulr_spark.validate import LogSummary, context_key, validate_log


# Below this share of (query, item) pairs logged in more than one slot, position and relevance
# can hardly be told apart (Hager et al., 2025), and build-examples says so.
MIN_SHARE_IN_SEVERAL_SLOTS = 0.05


@dataclass(frozen=True)
class ExamplesSummary:
    log_rows: int
    requests: int
    rows_beyond_max_slate: int
    examples: int
    num_features: int
    contexts: int
    share_of_pairs_in_several_slots: float
    compression: float  # requests per example row, from merging identical slates


def requests_to_slates(log: DataFrame, cols: LogColumns, max_slate_size: int, num_features: int) -> DataFrame:
    """One row per request: query, context and the padded, slot-ordered slate arrays."""
    k, d = max_slate_size, num_features
    shown = log.where(F.col(cols.position) <= k).select(
        F.col(cols.request_id).alias("request_id"),
        F.col(cols.query_id).cast("string").alias(S.QUERY_ID),
        context_key(cols).alias(S.CONTEXT_KEY),
        F.struct(
            F.col(cols.position).cast("int").alias("position"),
            F.col(cols.item_id).cast("string").alias("item_id"),
            F.col(cols.features).cast(T.ArrayType(T.FloatType())).alias("features"),
            F.col(cols.clicked).cast("int").alias("clicked"),
        ).alias("entry"),
    )
    per_request = shown.groupBy("request_id").agg(
        F.first(S.QUERY_ID).alias(S.QUERY_ID),
        F.first(S.CONTEXT_KEY).alias(S.CONTEXT_KEY),
        # Structs sort by their first field, the position.
        F.array_sort(F.collect_list("entry")).alias("slate"),
    )

    def padded(expr: str, pad: str) -> F.Column:
        return F.expr(f"transform(sequence(0, {k - 1}), i -> coalesce(get(slate, i).{expr}, {pad}))")

    return per_request.select(
        S.QUERY_ID,
        S.CONTEXT_KEY,
        F.size("slate").cast("int").alias(S.SLATE_SIZE),
        padded("item_id", "''").alias(S.ITEM_IDS),
        padded("position", "0").alias(S.POSITIONS),
        F.flatten(padded("features", f"array_repeat(cast(0 as float), {d})")).alias(S.FEATURES),
        padded("clicked", "0").alias("request_clicks"),
    )


def merge_identical_slates(slates: DataFrame, max_slate_size: int) -> DataFrame:
    """Merge requests that showed the same slate in the same context into weighted rows."""
    key = [S.QUERY_ID, S.CONTEXT_KEY, S.SLATE_SIZE, S.ITEM_IDS, S.POSITIONS, S.FEATURES]
    sums = [F.sum(F.col("request_clicks")[i]).alias(f"c{i}") for i in range(max_slate_size)]
    merged = slates.groupBy(*key).agg(F.count(F.lit(1)).alias(S.IMPRESSIONS), *sums)
    clicks = F.array(*[F.col(f"c{i}").cast("int") for i in range(max_slate_size)])
    return merged.select(*key, F.col(S.IMPRESSIONS).cast("long"), clicks.alias(S.CLICKS))


def context_vocabulary(examples: DataFrame) -> dict[str, int]:
    """Dense ids for the context keys in sorted order, ``default`` first when present.

    Context columns are low-cardinality by contract, so the keys are collected to the driver.
    """
    keys = sorted(r[0] for r in examples.select(S.CONTEXT_KEY).distinct().collect())
    keys.sort(key=lambda key: key != S.DEFAULT_CONTEXT_KEY)
    return {key: i for i, key in enumerate(keys)}


def with_context_ids(examples: DataFrame, vocab: dict[str, int]) -> DataFrame:
    mapping = F.create_map(*[F.lit(v) for pair in vocab.items() for v in pair])
    return examples.select(
        S.QUERY_ID, S.CONTEXT_KEY, mapping[F.col(S.CONTEXT_KEY)].cast("int").alias(S.CONTEXT_ID), S.SLATE_SIZE,
        S.ITEM_IDS, S.POSITIONS, S.FEATURES, S.IMPRESSIONS, S.CLICKS,
    )


def share_of_pairs_in_several_slots(log: DataFrame, cols: LogColumns) -> float:
    """Share of (query, item) pairs the log shows in two or more different slots."""
    per_pair = log.groupBy(cols.query_id, cols.item_id).agg(F.countDistinct(cols.position).alias("slots"))
    row = per_pair.agg(F.avg((F.col("slots") > 1).cast("double")).alias("share")).first()
    return float(row["share"] or 0.0)


def build_examples(config: Config, spark, run_id: str) -> ExamplesSummary:
    """Validate the log, build the examples and write them in one transaction."""
    cols, k = config.columns, config.examples.max_slate_size
    log = read_table(spark, config.tables.path("impressions"))
    summary: LogSummary = validate_log(log, cols)
    beyond = log.where(F.col(cols.position) > k).count()
    if beyond:
        print(f"build-examples: {beyond} log row(s) sit beyond max_slate_size={k} and are not used")

    share = share_of_pairs_in_several_slots(log, cols)
    if share < MIN_SHARE_IN_SEVERAL_SLOTS:
        print(
            f"build-examples: WARNING only {share:.1%} of (query, item) pairs were shown in more than one slot; "
            "unless item features overlap across slots, the bias and relevance towers cannot be told apart"
        )
    slates = requests_to_slates(log, cols, k, summary.num_features)
    merged = merge_identical_slates(slates, k).cache()
    try:
        examples = with_context_ids(merged, context_vocabulary(merged)).repartition(config.examples.partitions)
        # The vocabulary travels inside the examples (context_id next to context_key), so one
        # transaction writes everything the trainer needs.
        overwrite_table(examples, config.tables.path("examples"), run_id)
    finally:
        merged.unpersist()
    written = read_table(spark, config.tables.path("examples"))
    n_examples = written.count()
    contexts = written.select(S.CONTEXT_ID).distinct().count()
    return ExamplesSummary(
        log_rows=summary.rows,
        requests=summary.requests,
        rows_beyond_max_slate=beyond,
        examples=n_examples,
        num_features=summary.num_features,
        contexts=contexts,
        share_of_pairs_in_several_slots=share,
        compression=summary.requests / n_examples if n_examples else 0.0,
    )
