"""Scoring: the relevance towers of a run applied to (query, item) pairs inside Spark.

The weights are broadcast once; each Python worker rebuilds the models once and scores Arrow
batches with ``mapInArrow``. All models of the run are scored in one pass over the input.

What a scoring run replaces (docs/tables.md): the rows of ``scores`` with its run id, its
models and its *pairs source* (the pairs table it read, recorded in the ``pairs_source``
column), in one transaction. Scoring another pairs table under the same run id adds to the
run; scoring the same table again replaces exactly what the previous scoring of it wrote, so a
rerun never duplicates rows and pairs that left the table leave the run.

A second transaction merges the run's scores into ``scores_latest``, the newest score of every
(model, query, item): new pairs are inserted, a pair's row is replaced only when its score moved
by more than ``score.change_tolerance`` (so a bit-different recomputation is not a change), and
pairs of the same source and model that this run no longer scored are deleted.

The input is checked before anything is written: duplicate pairs are merged (counted in the
summary), and features of the wrong length or not finite as float32 stop the run with the
count of broken pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import torch
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ulr_spark import schema
from ulr_spark.config import Config
from ulr_spark.examples.validation import not_finite_float32
from ulr_spark.features.encoding import FeatureEncoder
from ulr_spark.inference import broadcast_models, feature_matrix, models_from_broadcast
from ulr_spark.io.artifacts import run_artifacts
from ulr_spark.io.delta import (
    AUTO_MERGE_SCHEMA,
    CHANGE_FEED,
    Provenance,
    create_table,
    read_table,
    replace_rows,
    session_setting,
    set_table_properties,
    sql_string,
    table_exists,
    tag_sql_commits,
    with_column_comments,
    with_retries,
)
from ulr_spark.io.sizing import set_shuffle_partitions, table_bytes
from ulr_spark.io.source import read_log, source_location
from ulr_spark.io.spark import describe_step

SCORE_SCHEMA = T.StructType(
    [
        T.StructField(schema.QUERY_ID, T.StringType(), False),
        T.StructField(schema.ITEM_ID, T.StringType(), False),
        T.StructField(schema.MODEL, T.StringType(), False),
        T.StructField(schema.SCORE, T.DoubleType(), False),
    ]
)

def _score_arrow_schema():
    import pyarrow as pa

    return pa.schema(
        [
            pa.field(schema.QUERY_ID, pa.string(), False),
            pa.field(schema.ITEM_ID, pa.string(), False),
            pa.field(schema.MODEL, pa.string(), False),
            pa.field(schema.SCORE, pa.float64(), False),
        ]
    )


SCORE_ARROW_SCHEMA = _score_arrow_schema()

def score_pairs(pairs: DataFrame, spark: SparkSession, artifacts, batch_size: int) -> DataFrame:
    """(query_id, item_id, features) -> (query_id, item_id, model, score) for every model.

    Arrow batches go straight to torch (``mapInArrow``): the ids pass through untouched and
    the features are read from the list column's value buffer.
    """
    import pyarrow as pa

    broadcast = broadcast_models(spark, artifacts)

    def apply(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        models = models_from_broadcast(broadcast)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            query_ids, item_ids = batch.column(schema.QUERY_ID), batch.column(schema.ITEM_ID)
            features = feature_matrix(batch.column(schema.FEATURES), models[0].spec.num_features)
            with torch.no_grad():
                for model in models:
                    yield pa.RecordBatch.from_arrays(
                        [
                            query_ids,
                            item_ids,
                            pa.array([model.spec.name] * batch.num_rows, pa.string()),
                            pa.array(model.relevance(features).double().numpy()),
                        ],
                        schema=SCORE_ARROW_SCHEMA,
                    )

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    columns = pairs.select(
        F.col(schema.QUERY_ID).cast("string"), F.col(schema.ITEM_ID).cast("string"), F.col(schema.FEATURES).cast(T.ArrayType(T.FloatType()))
    )
    return columns.mapInArrow(apply, SCORE_SCHEMA)


def pairs_to_score(config: Config, spark: SparkSession, encoder: Optional[FeatureEncoder] = None) -> tuple[DataFrame, str]:
    """The (query, item, features) rows to score, per ``score.source``, and where they come
    from (the run's pairs source). With the run's ``encoder`` the features are the encoded
    vector its models were trained on, computed from the source's own columns."""
    cols = config.columns
    if config.score.source == "candidates":
        path = config.tables.path("candidates")
        frame = read_table(spark, path)
        renamed = {cols.query_id: schema.QUERY_ID, cols.item_id: schema.ITEM_ID, cols.features: schema.FEATURES}
        if encoder is not None:
            missing = [c for c in encoder.source_columns() if renamed.get(c, c) not in frame.columns]
            if missing:
                raise ValueError(f"score: {path} lacks the feature column(s) {missing} the run was trained on; nothing was written")
        encoded = encoder.column(renamed) if encoder is not None else F.col(schema.FEATURES)
        return frame.select(schema.QUERY_ID, schema.ITEM_ID, encoded.alias(schema.FEATURES)), path
    path = source_location(config)
    if config.source.format == "delta":
        set_shuffle_partitions(spark, table_bytes(spark, path), config.spark.shuffle_partitions)
    log = read_log(config, spark)
    if encoder is not None:
        missing = [c for c in encoder.source_columns() if c not in log.columns]
        if missing:
            raise ValueError(f"score: the log at {path} lacks the feature column(s) {missing} the run was trained on; nothing was written")
    pairs = log.select(
        F.col(cols.query_id).cast("string").alias(schema.QUERY_ID),
        F.col(cols.item_id).cast("string").alias(schema.ITEM_ID),
        (encoder.column() if encoder is not None else F.col(cols.features)).alias(schema.FEATURES),
    )
    return pairs, path


@dataclass(frozen=True)
class ScoreSummary:
    rows_read: int  # input rows, duplicates included
    duplicate_rows: int  # rows that repeated a (query, item) pair already read: merged, not scored twice
    pairs_scored: int
    models: int
    pairs_source: str

    def __str__(self) -> str:
        return (
            f"{self.pairs_scored} pair(s) x {self.models} model(s) scored from {self.pairs_source} "
            f"({self.rows_read} row(s) read, {self.duplicate_rows} duplicate(s) of a pair merged)"
        )


def distinct_pairs(pairs: DataFrame, num_features: int) -> tuple[DataFrame, dict]:
    """One row per (query, item) with its number of copies in the input, persisted (the caller
    counts, scores, then unpersists it), and the counts the summary needs.

    A pair repeated in the input (the same item logged many times, or a duplicated candidate)
    is scored once: when its copies' features differ, the smallest array is taken, so the
    choice is deterministic. Every copy is checked, not only the one kept.

    Raises:
        ValueError: some pairs have a copy whose features have the wrong length or are not
            finite as float32 (names the column, the rule and the count; nothing is written).
    """
    features = F.col(schema.FEATURES).cast(T.ArrayType(T.DoubleType()))
    broken = features.isNull() | (F.size(features) != num_features) | F.exists(features, not_finite_float32)
    grouped = (
        pairs.groupBy(F.col(schema.QUERY_ID).cast("string").alias(schema.QUERY_ID), F.col(schema.ITEM_ID).cast("string").alias(schema.ITEM_ID))
        .agg(F.count(F.lit(1)).alias("copies"), F.max(broken.cast("int")).alias("broken"), F.min(features).alias(schema.FEATURES))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    totals = grouped.agg(F.sum("copies").alias("rows"), F.count(F.lit(1)).alias("pairs"), F.sum("broken").alias("broken")).first()
    if totals["broken"]:
        grouped.unpersist()
        raise ValueError(
            f"score: column '{schema.FEATURES}' must hold {num_features} values per pair (the model's input), each finite "
            f"as float32 -- broken by {totals['broken']} of {totals['pairs']} pair(s); nothing was written"
        )
    return grouped, {"rows": int(totals["rows"] or 0), "pairs": int(totals["pairs"] or 0)}


def score(
    config: Config, spark: SparkSession, run_id: str, pairs: Optional[DataFrame] = None, pairs_source: Optional[str] = None
) -> ScoreSummary:
    """Score ``pairs`` (by default those of ``score.source``) with every model of the run into
    ``tables.scores`` and ``tables.scores_latest`` (module docstring: what a run replaces).

    ``pairs_source`` names where given ``pairs`` come from (required with ``pairs``): a later
    scoring of the same source under this run id replaces these rows.

    Raises:
        FileNotFoundError: the run does not exist or did not finish training.
        ValueError: bad features in the input, or ``pairs`` without ``pairs_source``.
        WriteConflictError: concurrent writers kept conflicting.
    """
    artifacts = run_artifacts(config.tables.path("models"), run_id)
    encoder = run_encoder(artifacts)
    if pairs is None:
        pairs, pairs_source = pairs_to_score(config, spark, encoder)
    elif not pairs_source:
        raise ValueError("score: pass pairs_source, the name of the pairs table, with pairs")
    assert pairs_source is not None
    describe_step(spark, "check and deduplicate the pairs to score")
    grouped, counts = distinct_pairs(pairs, artifacts[0].spec.num_features)
    try:
        models = [a.spec.name for a in artifacts]
        unique = grouped.select(schema.QUERY_ID, schema.ITEM_ID, schema.FEATURES)
        scores = score_pairs(unique, spark, artifacts, config.score.batch_size).select(
            schema.QUERY_ID,
            schema.ITEM_ID,
            schema.SCORE,
            schema.MODEL,
            F.lit(run_id).alias(schema.RUN_ID),
            F.lit(pairs_source).alias(schema.PAIRS_SOURCE),
            F.current_timestamp().alias(schema.SCORED_AT),
        )
        provenance = Provenance.of(config, run_id, "score", models)
        path = config.tables.path("scores")
        describe_step(spark, f"score {len(artifacts)} model(s) and write the scores")
        replace_rows(
            scores, path, "scores", provenance, run_source_predicate(run_id, pairs_source, models), change_feed=True, merge_schema=True
        )
    finally:
        grouped.unpersist()
    run_scores = read_table(spark, path).where(run_source_predicate(run_id, pairs_source, models))
    describe_step(spark, "merge the run's scores into scores_latest")
    update_latest_scores(run_scores, config.tables.path("scores_latest"), provenance, pairs_source, models, config.score.change_tolerance)
    return ScoreSummary(
        rows_read=counts["rows"], duplicate_rows=counts["rows"] - counts["pairs"], pairs_scored=counts["pairs"],
        models=len(models), pairs_source=pairs_source,
    )


def run_encoder(artifacts) -> Optional[FeatureEncoder]:
    """The feature transform the run's models were trained with (one per run), or None for a
    run trained on a plain features array."""
    data = artifacts[0].card.get("feature_encoder")
    return FeatureEncoder.from_dict(data) if data else None


def run_source_predicate(run_id: str, pairs_source: str, models: list[str]) -> str:
    """The rows of ``scores`` one scoring of a pairs source writes: its run, source and models."""
    names = ", ".join(sql_string(m) for m in models)
    # Rows written before the pairs_source column (null) are replaced by the run's next scoring.
    source = f"({schema.PAIRS_SOURCE} = {sql_string(pairs_source)} OR {schema.PAIRS_SOURCE} IS NULL)"
    return f"{schema.RUN_ID} = {sql_string(run_id)} AND {source} AND {schema.MODEL} IN ({names})"


LATEST_KEY = (schema.MODEL, schema.QUERY_ID, schema.ITEM_ID)


def update_latest_scores(
    run_scores: DataFrame, path: str, provenance: Provenance, pairs_source: str, models: list[str], tolerance: float
) -> None:
    """Merge a run's scores into the table of the newest score per (model, query, item).

    One MERGE transaction (retried on conflicts): pairs new to the table are inserted; a pair's
    row is replaced when its score moved by more than ``tolerance`` x max(1, |score|), or when
    it came from another source; rows of this source and these models that the run did not
    score are deleted. So the table's change feed holds the scores that really changed.
    """
    from delta.tables import DeltaTable

    spark = run_scores.sparkSession

    def create() -> bool:
        """Create the table from this run's scores, unless it exists (then the MERGE follows).
        A concurrent creator makes this fail and retry, and the retry finds the table."""
        if table_exists(spark, path):
            return False
        writer = with_column_comments(run_scores).write.format("delta").option("userMetadata", provenance.user_metadata)
        create_table(writer.option(CHANGE_FEED, "true"), path)
        return True

    if with_retries(create, path):
        set_table_properties(spark, path, schema.SCORES_LATEST, provenance, change_feed=True)
        return
    on = " AND ".join(f"latest.{c} = run.{c}" for c in LATEST_KEY)
    moved = (
        f"NOT (abs(latest.{schema.SCORE} - run.{schema.SCORE}) <= {float(tolerance)!r} * greatest(1.0, abs(latest.{schema.SCORE}))) "
        f"OR NOT (latest.{schema.PAIRS_SOURCE} <=> run.{schema.PAIRS_SOURCE})"
    )
    names = ", ".join(sql_string(m) for m in models)
    gone = f"latest.{schema.PAIRS_SOURCE} = {sql_string(pairs_source)} AND latest.{schema.MODEL} IN ({names})"

    def merge() -> None:
        (
            DeltaTable.forPath(spark, path)
            .alias("latest")
            .merge(run_scores.alias("run"), on)
            .whenMatchedUpdateAll(condition=moved)
            .whenNotMatchedInsertAll()
            .whenNotMatchedBySourceDelete(condition=gone)
            .execute()
        )

    # A scores_latest written before the pairs_source column gains it (older rows read null).
    with tag_sql_commits(spark, provenance.user_metadata), session_setting(spark, AUTO_MERGE_SCHEMA, "true"):
        with_retries(merge, path)
    set_table_properties(spark, path, schema.SCORES_LATEST, provenance, change_feed=True)
