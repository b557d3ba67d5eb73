"""Quality on held-out clicks, the way the click-model literature measures it (Chuklin, Markov
and de Rijke, "Click models for web search", 2015, section 4.1; Dupret and Piwowarski, SIGIR
2008), and the two classic baselines it is read against.

Every model, baseline or neural, gives each shown result r of a test session s a click
probability p_sr (a neural model: its full probability, relevance and bias together). Then

- log-likelihood: (1 / |S|) sum_s sum_r ln P(C_sr = c_sr), with P(C=1) = p and P(C=0) = 1 - p
  (probabilities clipped to [1e-6, 1 - 1e-6]); higher is better, 0 is perfect;
- perplexity at rank r: 2 ^ ( -(1 / |S_r|) sum_{s in S_r} log2 P(C_sr = c_sr) ), over the test
  sessions S_r that show a result at rank r; 1 is perfect, 2 is a coin flip;
- perplexity: the mean of the per-rank perplexities.

A merged example row of n sessions and c clicks on an entry counts as n sessions, c of them
clicked there. The baselines are fitted in Spark on the training split only:

- ``click_rate_by_rank``: p = clicks / impressions of the (context, rank) cell in training;
  a cell training never showed gets the overall click rate.
- ``pbm_em``: the position-based model P(C = 1) = alpha_qd gamma_rc (Craswell et al., WSDM
  2008), fitted by expectation-maximisation (Chuklin et al., section 3.1) from alpha = gamma
  = 1/2, with one attractiveness per (query, item) and one examination per (rank, context).
  The M-step of alpha adds a Beta(1, 1) prior (one pseudo-click and one pseudo-skip), so a pair
  seen once is not set to 0 or 1; a (query, item) pair never seen in training gets the mean
  attractiveness of the training impressions, sum n alpha / sum n, and a cell never seen the
  impression-weighted mean examination.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ulr_spark import schema

CLICK_RATE_BY_RANK = "click_rate_by_rank"
PBM_EM = "pbm_em"
LOG_LIKELIHOOD = "log_likelihood"
PERPLEXITY = "perplexity"
CLIP = 1e-6

# One row per shown result of the examples: its slot, its sessions (impressions) and clicks.
ENTRY_COLUMNS = (schema.QUERY_ID, schema.ITEM_ID, schema.CONTEXT_KEY, schema.POSITION, "sessions", "clicked")


def entries(examples: DataFrame) -> DataFrame:
    """(query_id, item_id, context_key, position, sessions, clicked) per filled slot of each
    example row: ``sessions`` the row's impressions, ``clicked`` the clicks on the entry."""
    zipped = F.arrays_zip(
        F.col(schema.ITEM_IDS).alias("item"), F.col(schema.POSITIONS).alias("slot"), F.col(schema.CLICKS).alias("c")
    )
    return (
        examples.select(schema.QUERY_ID, schema.CONTEXT_KEY, schema.IMPRESSIONS, F.explode(zipped).alias("e"))
        .where(F.col("e.slot") > 0)
        .select(
            schema.QUERY_ID,
            F.col("e.item").alias(schema.ITEM_ID),
            schema.CONTEXT_KEY,
            F.col("e.slot").alias(schema.POSITION),
            F.col(schema.IMPRESSIONS).cast("double").alias("sessions"),
            F.col("e.c").cast("double").alias("clicked"),
        )
    )


def click_rate_by_rank(train: DataFrame, test: DataFrame) -> DataFrame:
    """Test entries with ``probability``: the training click rate of their (context, rank) cell."""
    overall = train.agg((F.sum("clicked") / F.sum("sessions")).alias("p")).first()["p"]
    rates = train.groupBy(schema.CONTEXT_KEY, schema.POSITION).agg((F.sum("clicked") / F.sum("sessions")).alias("rate"))
    return test.join(F.broadcast(rates), [schema.CONTEXT_KEY, schema.POSITION], "left").select(
        *ENTRY_COLUMNS, F.coalesce(F.col("rate"), F.lit(float(overall))).alias("probability")
    )


def _cell_key(context: F.Column, position: F.Column) -> F.Column:
    return F.concat_ws("#", context, position.cast("string"))


def fit_pbm(train: DataFrame, iterations: int) -> tuple[DataFrame, dict[str, float], float, float]:
    """Fit the PBM by EM on training entries (module docstring).

    Returns (attractiveness per pair: query_id, item_id, alpha), examination per cell keyed
    ``"<context_key>#<rank>"``, the attractiveness of an unseen pair and the examination of an
    unseen cell. Each iteration is one pass over the pairs (one row per pair holding its cells)
    and a collect of the cells' sums; the examination table is small and travels as a literal.
    """
    cells = train.groupBy(schema.QUERY_ID, schema.ITEM_ID, schema.CONTEXT_KEY, schema.POSITION).agg(
        F.sum("sessions").alias("n"), F.sum("clicked").alias("c")
    )
    pairs = cells.groupBy(schema.QUERY_ID, schema.ITEM_ID).agg(
        F.collect_list(F.struct(_cell_key(F.col(schema.CONTEXT_KEY), F.col(schema.POSITION)).alias("cell"), "n", "c")).alias("cells"),
        F.sum("n").alias("n"),
    ).withColumn("alpha", F.lit(0.5)).localCheckpoint()
    totals = cells.groupBy(_cell_key(F.col(schema.CONTEXT_KEY), F.col(schema.POSITION)).alias("cell")).agg(F.sum("n").alias("n")).collect()
    cell_sessions = {r["cell"]: float(r["n"]) for r in totals}
    gamma = {cell: 0.5 for cell in cell_sessions}
    previous = pairs
    for _ in range(iterations):
        table = F.create_map(*[F.lit(v) for cell, g in gamma.items() for v in (cell, g)])

        def no_click_share(e, attractive: bool, table: F.Column = table) -> F.Column:
            a, g = F.col("alpha"), table[e["cell"]]
            share = a * (1 - g) if attractive else g * (1 - a)
            return (e["n"] - e["c"]) * share / (1 - a * g)

        attractive = F.aggregate("cells", F.lit(0.0), lambda acc, e: acc + e["c"] + no_click_share(e, True))
        examined = F.transform("cells", lambda e: F.struct(e["cell"].alias("cell"), (e["c"] + no_click_share(e, False)).alias("x")))
        step = pairs.select(
            schema.QUERY_ID, schema.ITEM_ID, "cells", "n",
            ((attractive + 1.0) / (F.col("n") + 2.0)).alias("next_alpha"), examined.alias("examined"),
        ).localCheckpoint()
        sums = step.select(F.explode("examined").alias("e")).groupBy("e.cell").agg(F.sum("e.x").alias("x")).collect()
        gamma = {r["cell"]: min(1.0, float(r["x"]) / cell_sessions[r["cell"]]) for r in sums}
        previous.unpersist()
        previous = step
        pairs = step.select(schema.QUERY_ID, schema.ITEM_ID, "cells", "n", F.col("next_alpha").alias("alpha"))
    weighted = pairs.agg((F.sum(F.col("n") * F.col("alpha")) / F.sum("n")).alias("a")).first()["a"]
    total = sum(cell_sessions.values())
    unseen_gamma = sum(gamma[c] * n for c, n in cell_sessions.items()) / total
    alphas = pairs.select(schema.QUERY_ID, schema.ITEM_ID, "alpha")
    return alphas, gamma, float(weighted), float(unseen_gamma)


def pbm_probabilities(test: DataFrame, fitted: tuple[DataFrame, dict[str, float], float, float]) -> DataFrame:
    """Test entries with ``probability`` = alpha_qd gamma_rc of a fitted PBM (unseen pairs and
    cells as in the module docstring)."""
    alphas, gamma, unseen_alpha, unseen_gamma = fitted
    table = F.create_map(*[F.lit(v) for cell, g in gamma.items() for v in (cell, g)])
    g = F.coalesce(table[_cell_key(F.col(schema.CONTEXT_KEY), F.col(schema.POSITION))], F.lit(unseen_gamma))
    return test.join(alphas, [schema.QUERY_ID, schema.ITEM_ID], "left").select(
        *ENTRY_COLUMNS, (F.coalesce(F.col("alpha"), F.lit(unseen_alpha)) * g).alias("probability")
    )


def likelihood_metrics(scored: DataFrame, test_sessions: float | None = None) -> DataFrame:
    """(model, sessions, clicked, position, probability) entries -> (model, metric, position,
    value, sessions): log-likelihood and perplexity overall (position null) and perplexity per
    rank, as the module docstring defines them. ``test_sessions`` is |S|, the number of test
    sessions; by default the sessions of the rank shown most often (every session when each
    shows rank 1)."""
    p = F.least(F.greatest(F.col("probability"), F.lit(CLIP)), F.lit(1 - CLIP))
    ln = F.col("clicked") * F.log(p) + (F.col("sessions") - F.col("clicked")) * F.log(1 - p)
    per_rank = scored.groupBy(schema.MODEL, schema.POSITION).agg(F.sum(ln).alias("ln"), F.sum("sessions").alias("n"))
    perplexity = per_rank.select(
        schema.MODEL, F.lit(PERPLEXITY).alias(schema.METRIC), F.col(schema.POSITION).cast("int").alias(schema.POSITION),
        F.pow(F.lit(2.0), -(F.col("ln") / F.lit(math.log(2))) / F.col("n")).alias(schema.VALUE), F.col("n").alias("sessions"),
    )
    overall = perplexity.groupBy(schema.MODEL).agg(F.avg(schema.VALUE).alias(schema.VALUE), F.max("sessions").alias("sessions"))
    # Sessions: those showing rank 1 (every session shows it unless slot 1 was filtered out).
    sessions = per_rank.groupBy(schema.MODEL).agg(
        F.sum("ln").alias("ln"), (F.lit(float(test_sessions)) if test_sessions else F.max("n")).alias("n")
    )
    return perplexity.unionByName(
        overall.select(schema.MODEL, F.lit(PERPLEXITY).alias(schema.METRIC), F.lit(None).cast("int").alias(schema.POSITION), schema.VALUE, "sessions")
    ).unionByName(
        sessions.select(
            schema.MODEL, F.lit(LOG_LIKELIHOOD).alias(schema.METRIC), F.lit(None).cast("int").alias(schema.POSITION),
            (F.col("ln") / F.col("n")).alias(schema.VALUE), F.col("n").alias("sessions"),
        )
    )


_PROBABILITY_SCHEMA = T.StructType([
    T.StructField(schema.MODEL, T.StringType(), False),
    T.StructField(schema.POSITION, T.IntegerType(), False),
    T.StructField("sessions", T.DoubleType(), False),
    T.StructField("clicked", T.DoubleType(), False),
    T.StructField("probability", T.DoubleType(), False),
])


def model_probabilities(test_examples: DataFrame, spark: SparkSession, artifacts, batch_size: int) -> DataFrame:
    """(model, position, sessions, clicked, probability) per filled slot of each test example
    and model of the run: sigma of the model's click logit on the logged slate (relevance and
    bias together), computed by the Python workers (``mapInArrow``)."""
    import pyarrow as pa

    from ulr_spark.inference import broadcast_models, feature_matrix, models_from_broadcast

    broadcast = broadcast_models(spark, artifacts)
    k = artifacts[0].spec.max_slate_size
    d = artifacts[0].spec.num_features

    def apply(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        models = models_from_broadcast(broadcast)
        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            column = {name: batch.column(name) for name in batch.schema.names}
            features = feature_matrix(column[schema.FEATURES], k * d).reshape(n, k, d)
            positions = torch.from_numpy(np.asarray(column[schema.POSITIONS].flatten().to_numpy(zero_copy_only=False), dtype=np.int64).reshape(n, k))
            contexts = torch.from_numpy(column[schema.CONTEXT_ID].to_numpy(zero_copy_only=False).astype(np.int64))
            clicks = np.asarray(column[schema.CLICKS].flatten().to_numpy(zero_copy_only=False), dtype=np.float64).reshape(n, k)
            sessions = np.repeat(column[schema.IMPRESSIONS].to_numpy(zero_copy_only=False).astype(np.float64)[:, None], k, 1)
            filled = positions.numpy() > 0
            with torch.no_grad():
                for model in models:
                    p = torch.sigmoid(model(features, positions, contexts)).double().numpy()
                    yield pa.RecordBatch.from_arrays(
                        [
                            pa.array([model.spec.name] * int(filled.sum()), pa.string()),
                            pa.array(positions.numpy()[filled].astype(np.int32)),
                            pa.array(sessions[filled]),
                            pa.array(clicks[filled]),
                            pa.array(p[filled]),
                        ],
                        names=[f.name for f in _PROBABILITY_SCHEMA.fields],
                    )

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    columns = test_examples.select(
        F.col(schema.FEATURES).cast(T.ArrayType(T.FloatType())), schema.POSITIONS, schema.CONTEXT_ID, schema.CLICKS,
        schema.IMPRESSIONS,
    )
    return columns.mapInArrow(apply, _PROBABILITY_SCHEMA)
