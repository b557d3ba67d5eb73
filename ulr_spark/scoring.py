"""Scoring: the relevance towers of a run applied to (query, item) pairs inside Spark.

The weights are broadcast once; each Python worker rebuilds the models once and scores Arrow
batches with ``mapInArrow``. All models of the run are scored in one pass over the input and
written in one transaction that replaces the run's rows, so a rerun never duplicates them. A
second transaction merges them into ``scores_latest``, the newest score of every pair.
"""

from __future__ import annotations

import io
import uuid
import warnings
from collections.abc import Iterator
from typing import Optional

import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ulr_spark import schema
from ulr_spark.config import Config
from ulr_spark.io.artifacts import run_artifacts, weights_bytes
from ulr_spark.io.delta import (
    Provenance,
    overwrite_table,
    read_table,
    replace_rows,
    set_table_properties,
    sql_string,
    table_exists,
    tag_sql_commits,
)
from ulr_spark.io.sizing import set_shuffle_partitions, table_bytes
from ulr_spark.io.spark import describe_step
from ulr_spark.models.registry import build_model
from ulr_spark.models.spec import ModelSpec

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

# Models rebuilt in this Python worker, keyed by a token of the broadcast: one rebuild per
# worker and scoring job, however many batches it scores.
_WORKER_MODELS: dict[str, list] = {}


def _models_from_broadcast(broadcast) -> list:
    token, payload = broadcast.value
    if token not in _WORKER_MODELS:
        torch.set_num_threads(1)
        models = []
        for spec_dict, blob in payload:
            model = build_model(ModelSpec.from_dict(spec_dict))
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)["state_dict"]
            model.load_state_dict(state)
            models.append(model.eval())
        _WORKER_MODELS.clear()
        _WORKER_MODELS[token] = models
    return _WORKER_MODELS[token]


def feature_matrix(features, num_features: int) -> torch.Tensor:
    """An Arrow list<float> column as a read-only [rows, num_features] float32 tensor over the
    column's value buffer: no copy when the values are float32 (only read, under no_grad)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.list_value_length(features)
    broken = len(features) - pc.sum(pc.equal(lengths, num_features)).as_py() if len(features) else 0
    if broken or features.null_count:
        raise ValueError(
            f"score: column '{schema.FEATURES}' must hold {num_features} values per row (the model's input), "
            f"broken by {max(broken, features.null_count)} row(s) in a batch"
        )
    values = pc.list_flatten(features)
    if values.type != pa.float32():
        values = values.cast(pa.float32())
    matrix = values.to_numpy(zero_copy_only=False).reshape(len(features), num_features)
    with warnings.catch_warnings():
        # torch warns that the buffer is not writable; the tensor is only read.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(matrix)


def score_pairs(pairs: DataFrame, spark: SparkSession, artifacts, batch_size: int) -> DataFrame:
    """(query_id, item_id, features) -> (query_id, item_id, model, score) for every model.

    Arrow batches go straight to torch (``mapInArrow``): the ids pass through untouched and
    the features are read from the list column's value buffer.
    """
    import pyarrow as pa

    payload = [(a.spec.to_dict(), weights_bytes(a)) for a in artifacts]
    broadcast = spark.sparkContext.broadcast((uuid.uuid4().hex, payload))

    def apply(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        models = _models_from_broadcast(broadcast)
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


def pairs_to_score(config: Config, spark: SparkSession) -> DataFrame:
    """The (query, item, features) rows to score, per ``score.source``."""
    if config.score.source == "candidates":
        return read_table(spark, config.tables.path("candidates")).select(schema.QUERY_ID, schema.ITEM_ID, schema.FEATURES)
    cols = config.columns
    path = config.tables.path("impressions")
    set_shuffle_partitions(spark, table_bytes(spark, path), config.spark.shuffle_partitions)
    log = read_table(spark, path)
    # Feature values may differ between impressions of a pair; the latest is not knowable
    # without a timestamp, so take one deterministic representative per pair.
    return (
        log.groupBy(F.col(cols.query_id).cast("string").alias(schema.QUERY_ID), F.col(cols.item_id).cast("string").alias(schema.ITEM_ID))
        .agg(F.min(F.col(cols.features).cast(T.ArrayType(T.FloatType()))).alias(schema.FEATURES))
    )


def score(config: Config, spark: SparkSession, run_id: str, pairs: Optional[DataFrame] = None) -> int:
    """Score ``pairs`` (by default the pairs of ``score.source``) with every model of the run
    into ``tables.scores``; returns the rows written for the run."""
    artifacts = run_artifacts(config.tables.path("models"), run_id)
    if pairs is None:
        pairs = pairs_to_score(config, spark)
    scores = score_pairs(pairs, spark, artifacts, config.score.batch_size).select(
        schema.QUERY_ID,
        schema.ITEM_ID,
        schema.SCORE,
        schema.MODEL,
        F.lit(run_id).alias(schema.RUN_ID),
        F.current_timestamp().alias(schema.SCORED_AT),
    )
    provenance = Provenance.of(config, run_id, "score", [a.spec.name for a in artifacts])
    path = config.tables.path("scores")
    describe_step(spark, f"score {len(artifacts)} model(s) and write the scores")
    replace_rows(scores, path, "scores", provenance, f"{schema.RUN_ID} = {sql_string(run_id)}", change_feed=True)
    run_scores = read_table(spark, path).where(F.col(schema.RUN_ID) == run_id)
    describe_step(spark, "merge the run's scores into scores_latest")
    update_latest_scores(run_scores, config.tables.path("scores_latest"), provenance)
    return run_scores.count()


LATEST_KEY = (schema.MODEL, schema.QUERY_ID, schema.ITEM_ID)


def update_latest_scores(run_scores: DataFrame, path: str, provenance: Provenance) -> None:
    """Merge a run's scores into the table of the newest score per (model, query, item).

    One MERGE transaction: pairs new to the table are inserted, and a pair's row is replaced only
    when its score changed, so the table's change feed holds exactly the scores that changed.
    Pairs this run did not score keep their previous row.
    """
    from delta.tables import DeltaTable

    spark = run_scores.sparkSession
    if not table_exists(spark, path):
        overwrite_table(run_scores, path, schema.SCORES_LATEST, provenance, change_feed=True)
        return
    on = " AND ".join(f"latest.{c} = run.{c}" for c in LATEST_KEY)
    with tag_sql_commits(spark, provenance.user_metadata):
        (
            DeltaTable.forPath(spark, path)
            .alias("latest")
            .merge(run_scores.alias("run"), on)
            .whenMatchedUpdateAll(condition=f"NOT (latest.{schema.SCORE} <=> run.{schema.SCORE})")
            .whenNotMatchedInsertAll()
            .execute()
        )
    set_table_properties(spark, path, schema.SCORES_LATEST, provenance, change_feed=True)
