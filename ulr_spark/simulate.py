"""Simulated impression logs with a known truth (DESIGN section 4).

The catalogue (queries, their candidate items, features and true labels) is small and drawn on
the driver with numpy. The log itself is generated in Spark: every request picks a query, the
logging ranker scores the query's candidates with per-request noise and shows its top
``slate_size``, and clicks follow the position-based model

    P(click | slot k, item) = theta_k ** eta * (eps + (1 - eps) * (2 ** y - 1) / 15).

Truth: the relevance label y comes from a hidden non-linear function f of the features plus a
per-query offset. The logging ranker scores ``relevance_weight * f(x) + distractor_weight *
u(x) + noise``, where u is a feature direction unrelated to relevance. Clicks therefore
over-reward items with a high u(x) only through their better slots: a naive model learns u,
a debiased one should not. The per-request noise moves items across slots, which is what makes
relevance and position identifiable (Hager et al., 2025).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from ulr_spark import schema as S
from ulr_spark.config import Config, LogColumns, SimulateConfig
from ulr_spark.delta_io import overwrite_table


@dataclass(frozen=True)
class SimulatedTruth:
    """What the simulator knows and the models must recover."""

    catalogue: pd.DataFrame  # query_id, item_id, features, label, split, relevance, distractor
    examination: np.ndarray  # true examination of slots 1..slate_size


def attraction(labels: np.ndarray, eps: float) -> np.ndarray:
    """P(attracted | y) = eps + (1 - eps) * (2^y - 1) / (2^4 - 1)."""
    return eps + (1.0 - eps) * (np.power(2.0, labels) - 1.0) / 15.0


def examination_curve(cfg: SimulateConfig) -> np.ndarray:
    return np.power(np.asarray(cfg.examination[: cfg.slate_size], dtype=np.float64), cfg.eta)


def draw_catalogue(cfg: SimulateConfig) -> SimulatedTruth:
    """Queries, candidates, features and labels; deterministic for a seed."""
    rng = np.random.default_rng(cfg.seed)
    q, c, d = cfg.num_queries, cfg.candidates_per_query, cfg.num_features
    x = rng.normal(size=(q, c, d)).astype(np.float32)

    # Hidden relevance: a linear part, an interaction, and a query offset the model cannot see
    # (it moves whole queries up or down, which per-query NDCG ignores).
    w_lin, w_a, w_b = (rng.normal(size=d) / np.sqrt(d) for _ in range(3))
    relevance = x @ w_lin + 0.7 * np.tanh(x @ w_a) * (x @ w_b) + rng.normal(scale=0.3, size=(q, 1))
    relevance = (relevance - relevance.mean()) / relevance.std()

    # The distractor direction is made orthogonal to the linear part of relevance.
    w_u = rng.normal(size=d)
    w_u -= w_u @ w_lin / (w_lin @ w_lin) * w_lin
    distractor = x @ w_u
    distractor = (distractor - distractor.mean()) / distractor.std()

    cut_points = np.quantile(relevance, np.cumsum(cfg.label_shares)[:-1])
    labels = np.searchsorted(cut_points, relevance, side="right").astype(np.int32)

    order = rng.permutation(q)
    n_heldout = max(1, int(round(q * cfg.heldout_fraction)))
    heldout = np.zeros(q, dtype=bool)
    heldout[order[:n_heldout]] = True

    query_ids = np.array([f"q{i:07d}" for i in range(q)])
    catalogue = pd.DataFrame(
        {
            S.QUERY_ID: np.repeat(query_ids, c),
            S.ITEM_ID: [f"{qid}-i{j:03d}" for qid in query_ids for j in range(c)],
            "query_index": np.repeat(np.arange(q), c),
            S.FEATURES: list(x.reshape(q * c, d)),
            S.LABEL: labels.reshape(-1),
            S.SPLIT: np.where(np.repeat(heldout, c), S.SPLIT_HELDOUT, S.SPLIT_TRAIN),
            "relevance": relevance.reshape(-1).astype(np.float64),
            "distractor": distractor.reshape(-1).astype(np.float64),
        }
    )
    return SimulatedTruth(catalogue=catalogue, examination=examination_curve(cfg))


_HASH_RANGE = 2**53


def hashed_uniform(*columns: F.Column, salt: int) -> F.Column:
    """A uniform draw in (0, 1) that is a pure function of the columns and the salt.

    Unlike ``rand(seed)``, it does not depend on partitioning or on the order rows arrive in
    after a shuffle, so the same config always simulates the same log.
    """
    bits = F.pmod(F.xxhash64(*columns, F.lit(salt)), F.lit(_HASH_RANGE))
    return (bits.cast("double") + 0.5) / float(_HASH_RANGE)


def hashed_normal(*columns: F.Column, salt: int) -> F.Column:
    """A standard normal draw (Box-Muller over two hashed uniforms)."""
    u1 = hashed_uniform(*columns, salt=salt)
    u2 = hashed_uniform(*columns, salt=salt + 1)
    return F.sqrt(-2.0 * F.log(u1)) * F.cos(2.0 * np.pi * u2)


def impression_log(spark: SparkSession, cfg: SimulateConfig, truth: SimulatedTruth, cols: LogColumns) -> DataFrame:
    """The simulated log as a lazy Spark DataFrame (DESIGN section 2 contract)."""
    catalogue = truth.catalogue
    train = catalogue[catalogue[S.SPLIT] == S.SPLIT_TRAIN].copy()
    train_queries = np.sort(train["query_index"].unique())
    # Requests pick a training query uniformly: dense index -> query_index.
    train["train_rank"] = np.searchsorted(train_queries, train["query_index"].to_numpy())
    train["attraction"] = attraction(train[S.LABEL].to_numpy(), cfg.click_noise)
    lr = cfg.logging_ranker
    train["base_score"] = lr.relevance_weight * train["relevance"] + lr.distractor_weight * train["distractor"]
    candidates = spark.createDataFrame(
        train[["train_rank", S.QUERY_ID, S.ITEM_ID, S.FEATURES, "attraction", "base_score"]]
    )

    exam = F.array(*[F.lit(float(v)) for v in truth.examination])
    n_train = len(train_queries)
    requests = spark.range(0, cfg.num_requests, numPartitions=cfg.partitions).select(
        F.col("id").alias("request_index"),
        F.pmod(F.xxhash64(F.col("id"), F.lit(cfg.seed)), F.lit(n_train)).alias("train_rank"),
        F.date_add(F.lit(cfg.start_date).cast("date"), F.pmod(F.col("id"), F.lit(cfg.days)).cast("int")).alias(
            "event_date"
        ),
    )
    shown = (
        requests.join(F.broadcast(candidates), "train_rank")
        .withColumn(
            "logged_score",
            F.col("base_score") + F.lit(lr.noise) * hashed_normal(F.col("request_index"), F.col(S.ITEM_ID), salt=cfg.seed),
        )
        .withColumn(
            "slot",
            F.row_number().over(Window.partitionBy("request_index").orderBy(F.desc("logged_score"), S.ITEM_ID)),
        )
        .where(F.col("slot") <= cfg.slate_size)
    )
    p_click = F.element_at(exam, F.col("slot")) * F.col("attraction")
    return shown.select(
        F.format_string("r%010d", F.col("request_index")).alias(cols.request_id),
        F.col(S.QUERY_ID).alias(cols.query_id),
        F.col(S.ITEM_ID).alias(cols.item_id),
        F.col("slot").cast("int").alias(cols.position),
        (hashed_uniform(F.col("request_index"), F.col(S.ITEM_ID), salt=cfg.seed + 2) < p_click)
        .cast("int")
        .alias(cols.clicked),
        F.col(S.FEATURES).cast(T.ArrayType(T.FloatType())).alias(cols.features),
        F.col("event_date"),
    )


def simulate(spark: SparkSession, config: Config, run_id: str) -> dict[str, int]:
    """Write the impression log, the candidates and the truth tables. Returns row counts."""
    cfg, tables = config.simulate, config.tables
    if config.columns.context:
        raise ValueError(
            "simulate: scenario 'pbm' writes no context columns, but columns.context is "
            f"{config.columns.context}; set columns.context: [] for simulated logs"
        )
    truth = draw_catalogue(cfg)
    catalogue = truth.catalogue
    candidates = spark.createDataFrame(catalogue[[S.QUERY_ID, S.ITEM_ID, S.FEATURES, S.SPLIT]]).withColumn(
        S.FEATURES, F.col(S.FEATURES).cast(T.ArrayType(T.FloatType()))
    )
    labels = spark.createDataFrame(catalogue[[S.QUERY_ID, S.ITEM_ID, S.LABEL, S.SPLIT]])
    examination = spark.createDataFrame(
        pd.DataFrame(
            {
                S.CONTEXT_KEY: S.DEFAULT_CONTEXT_KEY,
                S.POSITION: np.arange(1, cfg.slate_size + 1, dtype=np.int32),
                S.EXAMINATION: truth.examination / truth.examination[0],
                "examination_absolute": truth.examination,
            }
        )
    )
    overwrite_table(candidates.coalesce(1), tables.path("candidates"), run_id)
    overwrite_table(labels.coalesce(1), tables.path("truth_labels"), run_id)
    overwrite_table(examination.coalesce(1), tables.path("truth_examination"), run_id)
    log = impression_log(spark, cfg, truth, config.columns)
    overwrite_table(log, tables.path("impressions"), run_id, partition_by=["event_date"])
    return {
        "impressions": cfg.num_requests * cfg.slate_size,
        "candidates": len(catalogue),
        "queries": cfg.num_queries,
    }
