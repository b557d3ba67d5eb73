"""Scoring: the relevance towers of a run applied to (query, item) pairs inside Spark.

The weights are broadcast once; each Python worker rebuilds the models once and scores Arrow
batches with ``mapInArrow``. All models of the run are scored in one pass over the input.

What a scoring run replaces (docs/tables.md): the rows of ``scores`` with its run id, its
models and its *pairs source* (the pairs table it read, recorded in the ``pairs_source``
column), in one transaction. Scoring another pairs table under the same run id adds to the
run; scoring the same table again replaces exactly what the previous scoring of it wrote, so a
rerun never duplicates rows and pairs that left the table leave the run. With ``score.only_changed`` (or ``score --all`` off)
only pairs that are new or whose features changed since their newest score are scored and
upserted into the run's rows (:mod:`ulr_spark.latest_scores`).

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
from ulr_spark.io.delta import Provenance, read_table, replace_rows, sql_string
from ulr_spark.io.sizing import set_shuffle_partitions, table_bytes
from ulr_spark.io.source import read_log, source_location
from ulr_spark.io.spark import describe_step
from ulr_spark.latest_scores import features_digest, unchanged_pairs, update_latest_scores, upsert_run_scores

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

def score_pairs(pairs: DataFrame, spark: SparkSession, artifacts, batch_size: int, digest: bool = False) -> DataFrame:
    """(query_id, item_id, features) -> (query_id, item_id, model, score) for every model, and
    with ``digest`` the input's ``features_digest`` column passed through after them.

    Arrow batches go straight to torch (``mapInArrow``): the ids pass through untouched and
    the features are read from the list column's value buffer.
    """
    import pyarrow as pa

    broadcast = broadcast_models(spark, artifacts)
    arrow_schema = SCORE_ARROW_SCHEMA.append(pa.field(schema.FEATURES_DIGEST, pa.int64())) if digest else SCORE_ARROW_SCHEMA

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
                            *([batch.column(schema.FEATURES_DIGEST)] if digest else []),
                        ],
                        schema=arrow_schema,
                    )

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    columns = pairs.select(
        F.col(schema.QUERY_ID).cast("string"), F.col(schema.ITEM_ID).cast("string"), F.col(schema.FEATURES).cast(T.ArrayType(T.FloatType())),
        *([F.col(schema.FEATURES_DIGEST).cast("long")] if digest else []),
    )
    # StructType.add changes the schema in place: build a new one.
    out = T.StructType([*SCORE_SCHEMA.fields, T.StructField(schema.FEATURES_DIGEST, T.LongType())]) if digest else SCORE_SCHEMA
    return columns.mapInArrow(apply, out)


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
    pairs_unchanged: int = 0  # score.only_changed: pairs whose features had not changed, not rescored

    def __str__(self) -> str:
        return (
            f"{self.pairs_scored} pair(s) x {self.models} model(s) scored from {self.pairs_source} "
            f"({self.rows_read} row(s) read, {self.duplicate_rows} duplicate(s) of a pair merged"
            + (f", {self.pairs_unchanged} unchanged pair(s) not rescored)" if self.pairs_unchanged else ")")
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
    config: Config, spark: SparkSession, run_id: str, pairs: Optional[DataFrame] = None, pairs_source: Optional[str] = None,
    only_changed: Optional[bool] = None,
) -> ScoreSummary:
    """Score ``pairs`` (by default those of ``score.source``) with every model of the run into
    ``tables.scores`` and ``tables.scores_latest`` (module docstring: what a run replaces).

    ``only_changed`` (default ``score.only_changed``) scores only the pairs that are new or whose
    features changed since their newest score in ``scores_latest`` (:mod:`ulr_spark.latest_scores`).

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
    only_changed = config.score.only_changed if only_changed is None else only_changed
    latest_path = config.tables.path("scores_latest")
    unchanged = 0
    unique = grouped
    models = [a.spec.name for a in artifacts]

    def summary() -> ScoreSummary:
        return ScoreSummary(
            rows_read=counts["rows"], duplicate_rows=counts["rows"] - counts["pairs"], pairs_scored=counts["pairs"] - unchanged,
            models=len(models), pairs_source=str(pairs_source), pairs_unchanged=unchanged,
        )

    try:
        unique = grouped.select(schema.QUERY_ID, schema.ITEM_ID, schema.FEATURES, features_digest().alias(schema.FEATURES_DIGEST))
        if only_changed:
            key = [schema.QUERY_ID, schema.ITEM_ID, schema.FEATURES_DIGEST]
            unique = unique.join(unchanged_pairs(spark, latest_path, pairs_source, models), key, "left_anti").persist()
            unchanged = counts["pairs"] - unique.count()
            if unchanged == counts["pairs"]:  # nothing new or changed: nothing to write
                return summary()
        scores = score_pairs(unique, spark, artifacts, config.score.batch_size, digest=True).select(
            schema.QUERY_ID,
            schema.ITEM_ID,
            schema.SCORE,
            schema.MODEL,
            F.lit(run_id).alias(schema.RUN_ID),
            F.lit(pairs_source).alias(schema.PAIRS_SOURCE),
            F.current_timestamp().alias(schema.SCORED_AT),
            schema.FEATURES_DIGEST,
        )
        provenance = Provenance.of(config, run_id, "score", models)
        path = config.tables.path("scores")
        describe_step(spark, f"score {len(artifacts)} model(s) and write the scores")
        if only_changed:
            upsert_run_scores(scores, path, provenance)
        else:
            predicate = run_source_predicate(run_id, pairs_source, models)
            replace_rows(scores, path, "scores", provenance, predicate, change_feed=True, merge_schema=True)
    finally:
        unique.unpersist()
        grouped.unpersist()
    run_scores = read_table(spark, path).where(run_source_predicate(run_id, pairs_source, models))
    describe_step(spark, "merge the run's scores into scores_latest")
    update_latest_scores(
        run_scores, latest_path, provenance, pairs_source, models, config.score.change_tolerance, delete_missing=not only_changed
    )
    return summary()


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
