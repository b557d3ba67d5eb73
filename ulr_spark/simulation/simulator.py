"""Simulated impression logs with a known truth (docs/design.md, "Simulator").

The catalogue (queries, their candidate items, features and true labels) is small and drawn on
the driver with numpy, from a hidden function of synthetic features or from a LETOR file. The
log itself is generated in Spark, without a shuffle: every request picks a query (uniformly, or
by Zipf popularity so that head queries repeat), the logging ranker scores the query's
candidates and shows its top ``slate_size``, and clicks follow the scenario (see
:func:`shown_items`). A ``randomised_share`` of requests get fresh ranker noise; the others
repeat the query's usual slate, as production logs do. Under ``pbm``

    P(click | slot k, item) = theta_k ** eta * (eps + (1 - eps) * (2 ** y - 1) / 15).

Truth: the relevance label y comes from a hidden non-linear function f of the features plus a
per-query offset. The logging ranker scores ``relevance_weight * f(x) + distractor_weight *
u(x) + noise``, where u is a feature direction unrelated to relevance. Clicks therefore
over-reward items with a high u(x) only through their better slots: a naive model learns u,
a debiased one should not. The per-request noise of the randomised requests moves items across
slots, which is what makes relevance and position identifiable (Hager et al., 2025). With
``hidden_relevance`` the ranker's relevance term (and the labels) also hold relevance that no
feature shows (``confounded``; ulr_spark.simulation.catalogue).

The other scenarios (formulas in ulr_spark.simulation.scenarios): ``mixture`` adds requests that
click the top slots whatever they show; ``context`` lowers the examination of a slot next to an
attractive or a salient item, on a page sorted by the ranker or blended (salient and plain
items alternating); ``trust`` adds trust bias,

    P(click | slot k, item) = theta_k * (a(y) * (1 - (k + 1) / 100) + (1 - a(y)) * 0.65 / k).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ulr_spark import schema
from ulr_spark.config import Config, LogColumns
from ulr_spark.io.delta import PROPERTY_PREFIX, Provenance, overwrite_table, read_table, table_exists, table_properties
from ulr_spark.simulation.catalogue import SALIENT, SimulatedTruth, attraction, draw_catalogue
from ulr_spark.simulation.scenarios import blended_slate, neighbour_max, trust_click
from ulr_spark.simulation.settings import SimulateConfig, simulation_settings

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


def _query_rank(cfg: SimulateConfig, n_train: int) -> F.Column:
    """The popularity rank (0-based) of the training query a request asks.

    zipf: the inverse CDF of the density x ** -s on [1, n + 1), floored, so that rank r (1-based)
    has probability close to r ** -s / H(n, s): a few head queries take most requests.
    """
    if cfg.query_popularity == "uniform":
        return F.pmod(F.xxhash64(F.col("id"), F.lit(cfg.seed)), F.lit(n_train))
    u = hashed_uniform(F.col("id"), salt=cfg.seed + 17)
    s, top = cfg.zipf_exponent, float(n_train + 1)
    if abs(s - 1.0) < 1e-9:
        x = F.exp(u * float(np.log(top)))
    else:
        x = F.pow(1.0 + u * (top ** (1.0 - s) - 1.0), 1.0 / (1.0 - s))
    return F.least(F.floor(x).cast("long") - 1, F.lit(n_train - 1))


def _ranked_slate(pages: DataFrame, cfg: SimulateConfig) -> DataFrame:
    """Adds column ``slate``: the candidates the logging ranker shows, from the request's
    ``candidates`` array: its top ``slate_size`` (layout sorted), or salient and plain
    candidates alternating, each class in the ranker's order (layout blended).

    A randomised request adds fresh noise per (request, item); the others add the ranker's
    fixed error per item, so they all show the query's usual slate. Only (key, index, salient)
    entries are sorted, and the chosen candidates are picked by index afterwards.
    """
    lr = cfg.logging_ranker
    if cfg.randomised_share >= 1.0:
        randomised = F.lit(True)
    else:
        randomised = hashed_uniform(F.col("request_index"), salt=cfg.seed + 13) < cfg.randomised_share

    def sort_key(candidate: F.Column, index: F.Column) -> F.Column:
        fresh = hashed_normal(F.col("request_index"), candidate[schema.ITEM_ID], salt=cfg.seed)
        fixed = hashed_normal(candidate[schema.ITEM_ID], salt=cfg.seed + 11)
        noise = F.when(randomised, fresh).otherwise(fixed)
        score = candidate["base_score"] + F.lit(lr.noise) * noise
        # The index is unique, so salient never decides the order; blended reads it.
        return F.struct((-score).alias("key"), index.alias("index"), candidate[SALIENT].alias("salient"))

    pages = pages.withColumn("order", F.array_sort(F.transform(F.col("candidates"), sort_key)))
    if cfg.layout == "blended":
        salient_first = hashed_uniform(F.col("request_index"), salt=cfg.seed + 23) < 0.5
        pages = blended_slate(pages, "order", cfg.slate_size, into="top", salient_first=salient_first)
    else:
        pages = pages.withColumn("top", F.slice("order", 1, cfg.slate_size))
    slate = F.transform("top", lambda entry: F.element_at(F.col("candidates"), entry["index"] + 1))
    return pages.withColumn("slate", slate).drop("order", "top")


def shown_items(spark: SparkSession, config: Config, truth: SimulatedTruth) -> DataFrame:
    """Every shown item with its slot, true examination and click probability (lazy).

    - pbm, confounded: P(click) = theta_k * P(attracted | y).
    - context: theta_k * (1 - neighbour_effect * max neighbour signal) * P(attracted | y), the
      signal being the neighbour's attraction or its salient flag (``neighbour_signal``).
    - mixture: as pbm, except that a ``mixture_share`` of requests click slot k with
      probability ``mixture_top_clicks[k]`` whatever they show.
    - trust: theta_k * (a(y) * (1 - (k + 1) / 100) + (1 - a(y)) * 0.65 / k), a(y) = P(attracted | y).

    Each row also carries the item's ``salient`` flag (0/1) and the ``examination`` of its slot.

    Each request joins its query's candidate array (broadcast), ranks it with array functions
    and explodes the top ``slate_size``: no shuffle, so the log grows in Spark at the speed of
    a scan and nothing about it is held on the driver.
    """
    cfg = simulation_settings(config)
    catalogue = truth.catalogue
    train = catalogue[catalogue[schema.SPLIT] == schema.SPLIT_TRAIN].copy()
    train_queries = np.sort(train["query_index"].unique())
    # Dense index of the training queries, which is also their popularity rank.
    train["train_rank"] = np.searchsorted(train_queries, train["query_index"].to_numpy())
    train["attraction"] = attraction(train[schema.LABEL].to_numpy(), cfg.click_noise)
    lr = cfg.logging_ranker
    train["base_score"] = lr.relevance_weight * train[schema.TRUE_RELEVANCE] + lr.distractor_weight * train[schema.DISTRACTOR]
    train = train.sort_values(["train_rank", schema.ITEM_ID])
    candidate = [schema.ITEM_ID, schema.FEATURES, "attraction", "base_score", SALIENT]
    per_query = (
        spark.createDataFrame(train[["train_rank", schema.QUERY_ID, *candidate]])
        .groupBy("train_rank")
        .agg(
            F.first(schema.QUERY_ID).alias(schema.QUERY_ID),
            F.array_sort(F.collect_list(F.struct(*candidate))).alias("candidates"),
        )
    )

    n_train = len(train_queries)
    requests = spark.range(0, cfg.num_requests, numPartitions=cfg.partitions).select(
        F.col("id").alias("request_index"),
        _query_rank(cfg, n_train).alias("train_rank"),
        # Consecutive request ids share a day, so each task writes one or two date partitions.
        F.date_add(
            F.lit(cfg.start_date).cast("date"),
            F.floor(F.col("id") * cfg.days / cfg.num_requests).cast("int"),
        ).alias(schema.EVENT_DATE),
    )
    # The signal a slot's neighbours send in the context scenario: attraction, or salience.
    signal = "attraction" if cfg.neighbour_signal == "attraction" else SALIENT
    pages = _ranked_slate(requests.join(F.broadcast(per_query), "train_rank"), cfg).select(
        "request_index",
        schema.QUERY_ID,
        schema.EVENT_DATE,
        F.transform("slate", lambda entry: entry[signal].cast("double")).alias("signals"),
        # Outer, though no slate is empty: for an inner explode Spark infers size(slate) > 0 and
        # pushes it into the join, where it would rank every page once more per reference.
        F.posexplode_outer("slate").alias("index", "entry"),
    )
    exam = F.array(*[F.lit(float(v)) for v in truth.examination])
    examination = F.element_at(exam, F.col("index") + 1)
    if cfg.scenario == "context":
        strongest = neighbour_max(F.col("signals"), F.col("index"), config.examples.grid_columns)
        examination = examination * (1.0 - cfg.neighbour_effect * strongest)
    shown = pages.select(
        "request_index",
        schema.QUERY_ID,
        schema.EVENT_DATE,
        (F.col("index") + 1).alias("slot"),
        F.col("entry")[schema.ITEM_ID].alias(schema.ITEM_ID),
        F.col("entry")[schema.FEATURES].alias(schema.FEATURES),
        F.col("entry")["attraction"].alias("attraction"),
        F.col("entry")[SALIENT].alias(SALIENT),
        examination.alias("examination"),
    )
    p_click = F.col("examination") * F.col("attraction")
    if cfg.scenario == "trust":
        p_click = trust_click(F.col("examination"), F.col("attraction"), F.col("slot"))
    if cfg.scenario == "mixture":
        top = cfg.mixture_top_clicks + [0.0] * max(0, cfg.slate_size - len(cfg.mixture_top_clicks))
        top_clicks = F.array(*[F.lit(float(v)) for v in top])
        top_clicker = hashed_uniform(F.col("request_index"), salt=cfg.seed + 5) < cfg.mixture_share
        p_click = F.when(top_clicker, F.element_at(top_clicks, F.col("slot"))).otherwise(p_click)
    return shown.withColumn("p_click", p_click)


def impression_log(shown: DataFrame, cfg: SimulateConfig, cols: LogColumns) -> DataFrame:
    """The log contract (docs/design.md, "The impression log") of :func:`shown_items`, with clicks drawn."""
    return shown.select(
        F.format_string("r%010d", F.col("request_index")).alias(cols.request_id),
        F.col(schema.QUERY_ID).alias(cols.query_id),
        F.col(schema.ITEM_ID).alias(cols.item_id),
        F.col("slot").cast("int").alias(cols.position),
        (hashed_uniform(F.col("request_index"), F.col(schema.ITEM_ID), salt=cfg.seed + 2) < F.col("p_click"))
        .cast("int")
        .alias(cols.clicked),
        F.col(schema.FEATURES).cast(T.ArrayType(T.FloatType())).alias(cols.features),
        F.col(schema.EVENT_DATE),
    )


def true_examination(spark: SparkSession, cfg: SimulateConfig, truth: SimulatedTruth, shown: DataFrame) -> DataFrame:
    """The truth a learned curve is compared with, relative to slot 1.

    pbm, confounded, trust and mixture: the curve theta of the people who examine by position
    (the top clickers of ``mixture`` have no examination curve; under ``trust`` theta is what
    examination is, trust changes only what a person clicks once they look). context: the examination of each
    slot averaged over the logged pages, which is what a model that averages over pages
    (XPA) or ignores the neighbours (the others) can recover.
    """
    if cfg.scenario == "context":
        curve = shown.groupBy(F.col("slot").alias("position")).agg(F.avg("examination").alias("e")).toPandas()
        curve = curve.sort_values("position")
        positions, absolute = curve["position"].to_numpy(np.int32), curve["e"].to_numpy(np.float64)
    else:
        positions, absolute = np.arange(1, cfg.slate_size + 1, dtype=np.int32), truth.examination
    return spark.createDataFrame(
        pd.DataFrame(
            {
                schema.CONTEXT_KEY: schema.DEFAULT_CONTEXT_KEY,
                schema.POSITION: positions,
                schema.EXAMINATION: absolute / absolute[0],
                schema.EXAMINATION_ABSOLUTE: absolute,
            }
        )
    )


def refuse_foreign_log(spark: SparkSession, config: Config) -> None:
    """Simulate overwrites ``tables.impressions`` only when simulate wrote it (its table
    property ``ulr_spark.stage``), or when nothing is there yet.

    Raises:
        ValueError: the log is not a Delta path, or is a table another writer made.
    """
    if config.source.format != "delta":
        raise ValueError(
            f"simulate: source.format is {config.source.format!r}; simulate writes a Delta log and never writes a "
            "source of another format (point tables.impressions at a new path with source.format=delta)"
        )
    path = config.tables.path("impressions")
    if table_exists(spark, path):
        stage = table_properties(spark, path).get(PROPERTY_PREFIX + "stage")
        if stage != "simulate":
            raise ValueError(
                f"simulate: {path} holds a Delta table that simulate did not write (its property "
                f"{PROPERTY_PREFIX}stage is {stage!r}); ulr-spark never overwrites a log it did not simulate: point "
                "tables.impressions (or tables.root) elsewhere"
            )
    elif os.path.exists(path) and os.listdir(path):
        raise ValueError(f"simulate: {path} holds files that are not a Delta table; ulr-spark never overwrites them")


def simulate(spark: SparkSession, config: Config, run_id: str) -> dict[str, int]:
    """Write the impression log, the candidates and the truth tables. Returns row counts."""
    cfg, tables = simulation_settings(config), config.tables
    refuse_foreign_log(spark, config)
    if config.columns.context:
        raise ValueError(
            "simulate: simulated logs have no context columns, but columns.context is "
            f"{config.columns.context}; set columns.context: [] for simulated logs"
        )
    truth = draw_catalogue(cfg)
    catalogue = truth.catalogue
    candidates = spark.createDataFrame(catalogue[[schema.QUERY_ID, schema.ITEM_ID, schema.FEATURES, schema.SPLIT]]).withColumn(
        schema.FEATURES, F.col(schema.FEATURES).cast(T.ArrayType(T.FloatType()))
    )
    labels = spark.createDataFrame(
        catalogue[[schema.QUERY_ID, schema.ITEM_ID, schema.LABEL, schema.TRUE_RELEVANCE, schema.DISTRACTOR, schema.SPLIT]]
    )
    provenance = Provenance.of(config, run_id, "simulate")
    overwrite_table(candidates.coalesce(1), tables.path("candidates"), "candidates", provenance)
    overwrite_table(labels.coalesce(1), tables.path("truth_labels"), "truth_labels", provenance)
    shown = shown_items(spark, config, truth)
    overwrite_table(
        true_examination(spark, cfg, truth, shown).coalesce(1), tables.path("truth_examination"), "truth_examination",
        provenance,
    )
    log = impression_log(shown, cfg, config.columns)
    overwrite_table(log, tables.path("impressions"), "impressions", provenance, partition_by=[schema.EVENT_DATE])
    return {
        "impressions": read_table(spark, tables.path("impressions")).count(),
        "candidates": len(catalogue),
        "queries": int(catalogue[schema.QUERY_ID].nunique()),
    }
