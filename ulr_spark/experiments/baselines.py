"""Boosted-tree baselines that users would otherwise pick, trained on the same clicks.

- LightGBM LambdaMART with its position debiasing: the slot of each row goes into the
  Dataset's ``position``, and LightGBM learns a position bias factor next to the trees.
- XGBoost's unbiased LambdaMART (``lambdarank_unbiased``), which expects the rows of each
  query group in the order they were shown.

One request is one query group, its clicks are the labels. Both libraries train on one
machine, so the log is collected to the driver: this is a comparison tool for logs that fit
in memory, not a stage of the production job. Scores of the candidates go into the run's
scores table under the baseline's name, so ``evaluate`` measures them exactly like the
two-tower models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ulr_spark import schema
from ulr_spark.config import Config
from ulr_spark.experiments.settings import BASELINES
from ulr_spark.io.delta import Provenance, read_table, replace_rows, sql_string

BASELINE_MODEL_NAMES = {"lightgbm": "lightgbm_lambdamart", "xgboost": "xgboost_unbiased_lambdamart"}


def click_rows(config: Config, spark: SparkSession, max_rows: int) -> pd.DataFrame:
    """The log as (request, position, clicked, features), sorted by request and position."""
    cols = config.columns
    log = read_table(spark, config.tables.path("impressions"))
    rows = log.count()
    if rows > max_rows:
        raise ValueError(
            f"baselines: the log has {rows} rows, more than compare.baseline_max_rows={max_rows}; "
            "the boosted-tree baselines train on the driver"
        )
    frame = log.select(
        F.col(cols.request_id).cast("string").alias("request_id"),
        F.col(cols.position).cast("int").alias("position"),
        F.col(cols.clicked).cast("int").alias("clicked"),
        F.col(cols.features).alias("features"),
    ).toPandas()
    return frame.sort_values(["request_id", "position"], kind="stable").reset_index(drop=True)


def _matrix(features: pd.Series) -> np.ndarray:
    return np.stack(features.to_numpy()).astype(np.float32)


def fit_lightgbm(groups: pd.DataFrame, rounds: int, seed: int):
    import lightgbm as lgb

    sizes = groups.groupby("request_id", sort=False).size().to_numpy()
    data = lgb.Dataset(
        _matrix(groups["features"]),
        label=groups["clicked"].to_numpy(),
        group=sizes,
        position=groups["position"].to_numpy() - 1,
    )
    params = {
        "objective": "lambdarank",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 50,
        "seed": seed,
        "deterministic": True,
        "num_threads": 2,
        "verbosity": -1,
    }
    booster = lgb.train(params, data, num_boost_round=rounds)
    return lambda x: booster.predict(x)


def fit_xgboost(groups: pd.DataFrame, rounds: int, seed: int):
    import xgboost as xgb

    qid = pd.factorize(groups["request_id"])[0]
    data = xgb.DMatrix(_matrix(groups["features"]), label=groups["clicked"].to_numpy(), qid=qid)
    params = {
        "objective": "rank:ndcg",
        "lambdarank_unbiased": True,
        "lambdarank_pair_method": "topk",
        "learning_rate": 0.05,
        "max_depth": 6,
        "tree_method": "hist",
        "seed": seed,
        "nthread": 2,
    }
    booster = xgb.train(params, data, num_boost_round=rounds)
    return lambda x: booster.predict(xgb.DMatrix(x))


FITTERS = {"lightgbm": fit_lightgbm, "xgboost": fit_xgboost}


def train_baselines(
    config: Config, spark: SparkSession, run_id: str, baselines: list[str], rounds: int, max_rows: int
) -> dict[str, int]:
    """Fit each baseline on the log's clicks and add its candidate scores to the run."""
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"baselines: unknown {unknown}; known: {list(BASELINES)}")
    groups = click_rows(config, spark, max_rows)
    candidates = read_table(spark, config.tables.path("candidates")).select(schema.QUERY_ID, schema.ITEM_ID, schema.FEATURES).toPandas()
    x = _matrix(candidates[schema.FEATURES])
    frames = []
    for name in baselines:
        predict = FITTERS[name](groups, rounds, config.train.seed)
        frames.append(
            pd.DataFrame(
                {
                    schema.QUERY_ID: candidates[schema.QUERY_ID],
                    schema.ITEM_ID: candidates[schema.ITEM_ID],
                    schema.SCORE: predict(x).astype(np.float64),
                    schema.MODEL: BASELINE_MODEL_NAMES[name],
                }
            )
        )
    scores = spark.createDataFrame(pd.concat(frames, ignore_index=True)).select(
        schema.QUERY_ID, schema.ITEM_ID, schema.SCORE, schema.MODEL, F.lit(run_id).alias(schema.RUN_ID),
        F.lit(config.tables.path("candidates")).alias(schema.PAIRS_SOURCE), F.current_timestamp().alias(schema.SCORED_AT),
    )
    names = ", ".join(sql_string(BASELINE_MODEL_NAMES[n]) for n in baselines)
    replace_rows(
        scores.coalesce(1), config.tables.path("scores"), "scores",
        Provenance.of(config, run_id, "baselines", [BASELINE_MODEL_NAMES[n] for n in baselines]),
        f"{schema.RUN_ID} = {sql_string(run_id)} AND {schema.MODEL} IN ({names})",
        change_feed=True, merge_schema=True,
    )
    return {BASELINE_MODEL_NAMES[n]: len(candidates) for n in baselines}
