"""Scoring: the relevance towers of a run applied to (query, item) pairs inside Spark.

The weights are broadcast once; each Python worker rebuilds the models once and scores Arrow
batches with ``mapInPandas``. All models of the run are scored in one pass over the input and
written in one transaction that replaces the run's rows, so a rerun never duplicates them.
"""

from __future__ import annotations

import io
import uuid
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ulr_spark import schema as S
from ulr_spark.artifacts import run_artifacts, weights_bytes
from ulr_spark.config import Config
from ulr_spark.delta_io import read_table, replace_rows, sql_string
from ulr_spark.models import ModelSpec, build_model

SCORE_SCHEMA = T.StructType(
    [
        T.StructField(S.QUERY_ID, T.StringType(), False),
        T.StructField(S.ITEM_ID, T.StringType(), False),
        T.StructField(S.MODEL, T.StringType(), False),
        T.StructField(S.SCORE, T.DoubleType(), False),
    ]
)

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


def score_pairs(pairs: DataFrame, spark: SparkSession, artifacts, batch_size: int) -> DataFrame:
    """(query_id, item_id, features) -> (query_id, item_id, model, score) for every model."""
    payload = [(a.spec.to_dict(), weights_bytes(a)) for a in artifacts]
    broadcast = spark.sparkContext.broadcast((uuid.uuid4().hex, payload))

    def apply(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        models = _models_from_broadcast(broadcast)
        for frame in batches:
            if frame.empty:
                continue
            features = torch.from_numpy(np.stack(frame[S.FEATURES].to_numpy()).astype(np.float32))
            with torch.no_grad():
                for model in models:
                    yield pd.DataFrame(
                        {
                            S.QUERY_ID: frame[S.QUERY_ID].to_numpy(),
                            S.ITEM_ID: frame[S.ITEM_ID].to_numpy(),
                            S.MODEL: model.spec.name,
                            S.SCORE: model.relevance(features).double().numpy(),
                        }
                    )

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    return pairs.select(S.QUERY_ID, S.ITEM_ID, S.FEATURES).mapInPandas(apply, SCORE_SCHEMA)


def pairs_to_score(config: Config, spark: SparkSession) -> DataFrame:
    """The (query, item, features) rows to score, per ``score.source``."""
    if config.score.source == "candidates":
        return read_table(spark, config.tables.path("candidates")).select(S.QUERY_ID, S.ITEM_ID, S.FEATURES)
    cols = config.columns
    log = read_table(spark, config.tables.path("impressions"))
    # Feature values may differ between impressions of a pair; the latest is not knowable
    # without a timestamp, so take one deterministic representative per pair.
    return (
        log.groupBy(F.col(cols.query_id).cast("string").alias(S.QUERY_ID), F.col(cols.item_id).cast("string").alias(S.ITEM_ID))
        .agg(F.min(F.col(cols.features).cast(T.ArrayType(T.FloatType()))).alias(S.FEATURES))
    )


def score(config: Config, spark: SparkSession, run_id: str) -> int:
    """Score the configured pairs with every model of the run; returns rows written."""
    artifacts = run_artifacts(config.tables.path("models"), run_id)
    scores = score_pairs(pairs_to_score(config, spark), spark, artifacts, config.score.batch_size).select(
        S.QUERY_ID,
        S.ITEM_ID,
        S.SCORE,
        S.MODEL,
        F.lit(run_id).alias(S.RUN_ID),
        F.current_timestamp().alias(S.SCORED_AT),
    )
    path = config.tables.path("scores")
    replace_rows(scores, path, run_id, f"{S.RUN_ID} = {sql_string(run_id)}")
    return read_table(spark, path).where(F.col(S.RUN_ID) == run_id).count()
