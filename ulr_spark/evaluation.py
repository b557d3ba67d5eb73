"""Quality against the simulator's truth (docs/design.md, "Metrics").

- NDCG@k of each model's relevance scores against the true labels, over all candidate items
  of each evaluated query (not only those shown), with gain 2^label - 1 and discount
  1 / log2(rank + 1). Queries whose items are all irrelevant (label 0 everywhere) have no ideal
  ranking and are left out of the mean. **Ties**: items with equal scores share their ranks, each
  taking the mean discount of the ranks the tied group spans (ranks beyond k count 0), the
  tie-aware DCG of McSherry and Najork (ECIR 2008) that ``sklearn.metrics.ndcg_score`` computes;
  so no order among tied items (such as their ids) decides the metric.
- Scores must be finite: a NaN or infinite score would sort first and count as a ranking, so
  evaluation stops with the number of such scores instead.
- Bias-curve error: mean over slots of |learned_k / learned_1 - true_k / true_1| divided by
  true_k / true_1, for the default context.
- Distractor leak (when the truth labels carry the true relevance and distractor scores): the
  within-query least-squares fit score ~ b_r * relevance + b_d * distractor (each centred per
  query), reported as b_d / b_r: how much of what the logging ranker rewarded, but is not
  relevance, the relevance score kept, per unit of true relevance. 0 is none; a naive model
  trained on clicks from a distractor-rewarding ranker is positive. Not reported when b_r <= 0
  (the score does not rise with relevance, so "per unit of relevance" means nothing).
- Blind share (MixEM with a relevance-blind component): the learned prior share of requests
  of that component, to compare with the simulated share of relevance-blind requests.
"""

from __future__ import annotations

from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from ulr_spark import click_metrics, schema
from ulr_spark.config import Config
from ulr_spark.io.artifacts import run_artifacts
from ulr_spark.io.delta import Provenance, read_table, replace_rows, sql_string, table_exists

BIAS_ERROR = "bias_curve_error"
DISTRACTOR_LEAK = "distractor_leak"
BLIND_SHARE = "blind_share"


def ndcg_metric(k: int) -> str:
    return f"ndcg@{k}"


def tie_averaged_discount(first_rank: F.Column, tied: F.Column, k: int) -> F.Column:
    """Mean of 1 / log2(r + 1) over the ranks r = first_rank .. first_rank + tied - 1 of a tied
    group, with ranks beyond k counting 0."""
    first, tied = first_rank.cast("long"), tied.cast("long")
    last = F.least(first + tied - 1, F.lit(k).cast("long"))
    summed = F.aggregate(
        F.sequence(first, last), F.lit(0.0), lambda acc, r: acc + 1.0 / F.log2(r.cast("double") + 1.0)
    )
    return F.when(first <= k, summed / tied).otherwise(0.0)


def ndcg(scored: DataFrame, cutoffs: list[int]) -> DataFrame:
    """(model, query_id, item_id, score, label) -> (model, metric, value, queries); ties as in
    the module docstring."""
    per_query = Window.partitionBy(schema.MODEL, schema.QUERY_ID)
    gain = F.pow(F.lit(2.0), F.col(schema.LABEL)) - 1.0
    ranked = (
        scored.withColumn("gain", gain)
        # rank(): 1 + the number of items with a strictly higher score, the first rank of the tie.
        .withColumn("first_rank", F.rank().over(per_query.orderBy(F.desc(schema.SCORE))))
        .withColumn("tied", F.count(F.lit(1)).over(Window.partitionBy(schema.MODEL, schema.QUERY_ID, schema.SCORE)))
        # Ties in the label do not change the ideal DCG (equal gains), so any order will do.
        .withColumn("rank_by_label", F.row_number().over(per_query.orderBy(F.desc(schema.LABEL), schema.ITEM_ID)))
    )

    sums = []
    for k in cutoffs:
        dcg = F.sum(F.col("gain") * tie_averaged_discount(F.col("first_rank"), F.col("tied"), k))
        ideal_rank = F.col("rank_by_label")
        idcg = F.sum(F.when(ideal_rank <= k, F.col("gain") / F.log2(ideal_rank + 1.0)).otherwise(0.0))
        sums += [dcg.alias(f"dcg{k}"), idcg.alias(f"idcg{k}")]
    per_query_scores = ranked.groupBy(schema.MODEL, schema.QUERY_ID).agg(F.max(schema.LABEL).alias("max_label"), *sums)
    judged = per_query_scores.where(F.col("max_label") > 0)
    means = judged.groupBy(schema.MODEL).agg(
        F.count(F.lit(1)).alias("queries"),
        *[F.avg(F.col(f"dcg{k}") / F.col(f"idcg{k}")).alias(ndcg_metric(k)) for k in cutoffs],
    )
    return means.select(
        schema.MODEL,
        F.explode(
            F.array(*[F.struct(F.lit(ndcg_metric(k)).alias(schema.METRIC), F.col(ndcg_metric(k)).alias(schema.VALUE)) for k in cutoffs])
        ).alias("m"),
        "queries",
    ).select(schema.MODEL, "m.metric", "m.value", "queries")


def check_finite_scores(scored: DataFrame, run_id: str) -> int:
    """The number of (model, query, item) rows to evaluate.

    Raises:
        ValueError: some scores are NaN or infinite (with their count), or no row is left.
    """
    score = F.col(schema.SCORE)
    counts = scored.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(score.isNull() | F.isnan(score) | (F.abs(score) == F.lit(float("inf"))), 1).otherwise(0)).alias("broken"),
    ).first()
    if counts["broken"]:
        raise ValueError(
            f"evaluate: column '{schema.SCORE}' must be finite (a NaN or infinite score would rank first) -- broken by "
            f"{counts['broken']} of {counts['rows']} score(s) of run {run_id!r}; nothing was written"
        )
    return int(counts["rows"])


def bias_curve_error(learned: DataFrame, truth: DataFrame, slots: list[int]) -> DataFrame:
    """(model, position, examination) vs truth (position, examination) -> (model, metric, value)."""
    true_curve = truth.where(F.col(schema.CONTEXT_KEY) == schema.DEFAULT_CONTEXT_KEY).select(
        schema.POSITION, F.col(schema.EXAMINATION).alias("true_examination")
    )
    joined = (
        learned.where(F.col(schema.CONTEXT_KEY) == schema.DEFAULT_CONTEXT_KEY)
        .join(true_curve, schema.POSITION)
        .where(F.col(schema.POSITION).isin(slots))
    )
    relative = F.abs(F.col(schema.EXAMINATION) - F.col("true_examination")) / F.col("true_examination")
    return joined.groupBy(schema.MODEL).agg(F.avg(relative).alias(schema.VALUE), F.count(F.lit(1)).alias("slots")).select(
        schema.MODEL, F.lit(BIAS_ERROR).alias(schema.METRIC), schema.VALUE
    )


SPLIT_TEST = schema.SPLIT_TEST


def distractor_leak(scored: DataFrame) -> DataFrame:
    """(model, query_id, score, relevance, distractor) -> (model, metric, value): b_d / b_r of
    the within-query least-squares fit (module docstring), by the 2x2 normal equations."""
    # Centred cross products per query, sum(xy) - sum(x) sum(y) / n, from one aggregation
    # (no window sort), then summed per model.
    s, r, d = F.col(schema.SCORE), F.col(schema.TRUE_RELEVANCE), F.col(schema.DISTRACTOR)
    pairs = {"rr": (r, r), "rd": (r, d), "dd": (d, d), "sr": (s, r), "sd": (s, d)}
    per_query = scored.groupBy(schema.MODEL, schema.QUERY_ID).agg(
        F.count(F.lit(1)).alias("n"), F.sum(s).alias("s"), F.sum(r).alias("r"), F.sum(d).alias("d"),
        *[F.sum(x * y).alias(f"{name}_raw") for name, (x, y) in pairs.items()],
    )
    sums = per_query.groupBy(schema.MODEL).agg(*[
        F.sum(F.col(f"{name}_raw") - F.col(name[0]) * F.col(name[1]) / F.col("n")).alias(name) for name in pairs
    ])
    det = F.col("rr") * F.col("dd") - F.col("rd") * F.col("rd")
    b_r = (F.col("dd") * F.col("sr") - F.col("rd") * F.col("sd")) / det
    b_d = (F.col("rr") * F.col("sd") - F.col("rd") * F.col("sr")) / det
    # Undefined unless the score rises with true relevance (a model that ranks backwards would
    # otherwise flip the sign of its leak and look best): no row then.
    return sums.where(b_r > 0).select(schema.MODEL, F.lit(DISTRACTOR_LEAK).alias(schema.METRIC), (b_d / b_r).alias(schema.VALUE))


def blind_shares(spark: SparkSession, artifacts) -> Optional[DataFrame]:
    """(model, metric, value) of every MixEM with a relevance-blind component (its card's
    learned component shares; the blind component is the last); None when there is none."""
    rows = [
        (a.spec.name, BLIND_SHARE, float(a.card["component_shares"][-1]))
        for a in artifacts or []
        if a.spec.mixem_blind_component and a.card.get("component_shares")
    ]
    if not rows:
        return None
    return spark.createDataFrame(rows, f"{schema.MODEL} string, {schema.METRIC} string, {schema.VALUE} double")


def heldout_click_metrics(config: Config, spark: SparkSession, artifacts) -> Optional[DataFrame]:
    """Log-likelihood and perplexity (overall and per rank) on the test split of the examples
    the run was trained on, for every model of the run and the two baselines fitted on its
    training split (:mod:`ulr_spark.click_metrics`); None when the examples have no test split.
    Columns: model, metric, position, value."""
    card = artifacts[0].card
    path, version = card.get("examples_path"), card.get("examples_version")
    if not path or version is None or not table_exists(spark, path):
        return None
    examples = read_table(spark, path, int(version))
    if schema.SPLIT not in examples.columns:
        return None
    test_examples = examples.where(F.col(schema.SPLIT) == SPLIT_TEST)
    if not test_examples.limit(1).count():
        return None
    print(f"evaluate: held-out clicks of the test split of {path} (version {version}); baselines fitted on its training split")
    train = click_metrics.entries(examples.where(F.col(schema.SPLIT) == schema.SPLIT_TRAIN)).persist()
    test = click_metrics.entries(test_examples).persist()
    try:
        by_rank = click_metrics.click_rate_by_rank(train, test).withColumn(schema.MODEL, F.lit(click_metrics.CLICK_RATE_BY_RANK))
        fitted = click_metrics.fit_pbm(train, config.evaluate.pbm_iterations)
        pbm = click_metrics.pbm_probabilities(test, fitted).withColumn(schema.MODEL, F.lit(click_metrics.PBM_EM))
        models = click_metrics.model_probabilities(test_examples, spark, artifacts, config.score.batch_size)
        columns = [schema.MODEL, schema.POSITION, "sessions", "clicked", "probability"]
        scored = models.select(*columns).unionByName(by_rank.select(*columns)).unionByName(pbm.select(*columns))
        sessions = test_examples.agg(F.sum(schema.IMPRESSIONS)).first()[0]
        metrics = click_metrics.likelihood_metrics(scored, float(sessions)).localCheckpoint()
    finally:
        train.unpersist()
        test.unpersist()
    return metrics.select(schema.MODEL, schema.METRIC, schema.POSITION, schema.VALUE)


def evaluate(config: Config, spark: SparkSession, run_id: str) -> DataFrame:
    """Compute, write (replacing the run's rows) and return the run's metrics: held-out click
    log-likelihood and perplexity when the examples have a test split, and NDCG and the
    bias-curve error when the simulator's truth tables exist.

    Raises:
        ValueError: there is nothing to evaluate (no test split and no truth table), or the
            scores are not finite, or none of them has a label.
    """
    tables = config.tables
    run_filter = F.col(schema.RUN_ID) == run_id
    parts = []
    try:
        artifacts = run_artifacts(tables.path("models"), run_id)
    except FileNotFoundError:
        artifacts = None  # scores written without a trained run (compare's boosted-tree baselines)
    clicks = heldout_click_metrics(config, spark, artifacts) if artifacts else None
    if clicks is not None:
        parts.append(clicks.withColumn(schema.SPLIT, F.lit(SPLIT_TEST)))
    if table_exists(spark, tables.path("truth_labels")):
        parts.append(truth_metrics(config, spark, run_id))
    if not parts:
        raise ValueError(
            f"evaluate: run {run_id!r} has nothing to evaluate: its examples have no test split (set "
            "examples.split.test_days or examples.split.test_share and rebuild them) and there is no truth table at "
            f"{tables.path('truth_labels')}; nothing was written"
        )
    shares = blind_shares(spark, artifacts)
    if shares is not None:
        parts.append(shares.select(
            schema.MODEL, schema.METRIC, schema.VALUE, F.lit("model").alias(schema.SPLIT),
            F.lit(None).cast("int").alias(schema.POSITION),
        ))
    metrics = parts[0]
    for part in parts[1:]:
        metrics = metrics.unionByName(part)
    metrics = metrics.select(
        F.lit(run_id).alias(schema.RUN_ID), schema.MODEL, schema.METRIC, schema.SPLIT, schema.POSITION,
        F.col(schema.VALUE).cast("double"), F.current_timestamp().alias(schema.EVALUATED_AT),
    )
    replace_rows(
        metrics.coalesce(1), tables.path("metrics"), "metrics", Provenance.of(config, run_id, "evaluate"),
        f"{schema.RUN_ID} = {sql_string(run_id)}", merge_schema=True,
    )
    return read_table(spark, tables.path("metrics")).where(run_filter)


def truth_metrics(config: Config, spark: SparkSession, run_id: str) -> DataFrame:
    """NDCG of the run's scores against the truth labels, and the bias-curve error against the
    true curve: (model, metric, position, value, split)."""
    tables, ec = config.tables, config.evaluate
    run_filter = F.col(schema.RUN_ID) == run_id
    scores = read_table(spark, tables.path("scores")).where(run_filter) if table_exists(spark, tables.path("scores")) else None
    if scores is None:
        raise ValueError(f"evaluate: run {run_id!r} has no scores in {tables.path('scores')}; run `ulr-spark score` first")
    # A run may have scored a pair from two pairs sources: its newest score counts, once.
    scores = scores.groupBy(schema.MODEL, schema.QUERY_ID, schema.ITEM_ID).agg(
        F.max_by(schema.SCORE, schema.SCORED_AT).alias(schema.SCORE)
    )
    labels = read_table(spark, tables.path("truth_labels"))
    if ec.queries == "heldout":
        labels = labels.where(F.col(schema.SPLIT) == schema.SPLIT_HELDOUT)
    joined = scores.join(labels, [schema.QUERY_ID, schema.ITEM_ID])
    scored = joined.select(schema.MODEL, schema.QUERY_ID, schema.ITEM_ID, schema.SCORE, schema.LABEL)
    if not check_finite_scores(scored, run_id):
        if not scores.limit(1).count():
            raise ValueError(f"evaluate: run {run_id!r} has no scores in {tables.path('scores')}; run `ulr-spark score` first")
        raise ValueError(
            f"evaluate: no score of run {run_id!r} has a label with evaluate.queries={ec.queries!r}: the run scored "
            f"{scores.count()} row(s), and {tables.path('truth_labels')} labels none of their (query, item) pairs "
            "(set evaluate.queries=all, or score the pairs the labels cover); nothing was written"
        )
    metrics = ndcg(scored, ec.ndcg_at).select(schema.MODEL, schema.METRIC, schema.VALUE, F.lit(ec.queries).alias(schema.SPLIT))
    if {schema.TRUE_RELEVANCE, schema.DISTRACTOR} <= set(labels.columns):
        leak = distractor_leak(joined.select(schema.MODEL, schema.QUERY_ID, schema.SCORE, schema.TRUE_RELEVANCE, schema.DISTRACTOR))
        metrics = metrics.unionByName(leak.withColumn(schema.SPLIT, F.lit(ec.queries)))
    if table_exists(spark, tables.path("bias_curves")) and table_exists(spark, tables.path("truth_examination")):
        learned = read_table(spark, tables.path("bias_curves")).where(run_filter)
        truth = read_table(spark, tables.path("truth_examination"))
        metrics = metrics.unionByName(bias_curve_error(learned, truth, ec.bias_error_slots).withColumn(schema.SPLIT, F.lit("truth")))
    return metrics.withColumn(schema.POSITION, F.lit(None).cast("int"))


def format_metrics(metrics: DataFrame) -> str:
    """Readable tables: one row per model with its overall metrics (held-out log-likelihood and
    perplexity, NDCG, bias-curve error), then the held-out perplexity per rank."""
    has_position = schema.POSITION in metrics.columns
    rows = metrics.select(schema.MODEL, schema.METRIC, schema.VALUE, F.col(schema.POSITION) if has_position else F.lit(None).alias(schema.POSITION)).collect()
    overall = [r for r in rows if r[schema.POSITION] is None]
    per_rank = [r for r in rows if r[schema.POSITION] is not None]

    def order(metric: str) -> tuple:
        is_ndcg = metric.startswith("ndcg@")
        return (is_ndcg, metric != click_metrics.PERPLEXITY, int(metric.split("@")[1]) if is_ndcg else 0, metric)

    names = sorted({r[schema.METRIC] for r in overall}, key=order)
    values = {(r[schema.MODEL], r[schema.METRIC]): r[schema.VALUE] for r in overall}
    baselines = (click_metrics.CLICK_RATE_BY_RANK, click_metrics.PBM_EM)
    models = sorted({r[schema.MODEL] for r in rows}, key=lambda m: (m in baselines, m))
    tables = [_table("model", models, names, values)]
    if per_rank:
        ranks = sorted({r[schema.POSITION] for r in per_rank})
        by_rank = {(r[schema.MODEL], f"rank {r[schema.POSITION]}"): r[schema.VALUE] for r in per_rank}
        tables.append("held-out perplexity per rank\n" + _table("model", models, [f"rank {p}" for p in ranks], by_rank))
    return "\n\n".join(tables)


def _table(first: str, models: list[str], names: list[str], values: dict) -> str:
    width = max([len(first)] + [len(m) for m in models])
    header = f"{first:<{width}}  " + "  ".join(f"{n:>{max(len(n), 8)}}" for n in names)
    lines = [header, "-" * len(header)]
    for model in models:
        cells = []
        for n in names:
            v = values.get((model, n))
            cells.append(f"{f'{v:.4f}' if v is not None else '-':>{max(len(n), 8)}}")
        lines.append(f"{model:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
