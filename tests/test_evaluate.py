import math

import pytest

from ulr_spark import schema
from ulr_spark.evaluation import BIAS_ERROR, bias_curve_error, ndcg


def dcg(labels):
    return sum((2**y - 1) / math.log2(i + 2) for i, y in enumerate(labels))


def test_ndcg_matches_a_hand_computation(spark):
    rows = [
        # q1: the model ranks labels as 1, 3, 0; ideal is 3, 1, 0.
        ("m", "q1", "a", 0.9, 1), ("m", "q1", "b", 0.5, 3), ("m", "q1", "c", 0.1, 0),
        # q2: perfect ranking.
        ("m", "q2", "a", 0.9, 2), ("m", "q2", "b", 0.5, 0),
        # q3: no relevant item, left out.
        ("m", "q3", "a", 0.9, 0), ("m", "q3", "b", 0.1, 0),
    ]
    df = spark.createDataFrame(rows, [schema.MODEL, schema.QUERY_ID, schema.ITEM_ID, schema.SCORE, schema.LABEL])
    got = {r[schema.METRIC]: (r[schema.VALUE], r["queries"]) for r in ndcg(df, [1, 3]).collect()}
    q1_at1 = dcg([1]) / dcg([3])
    q1_at3 = dcg([1, 3, 0]) / dcg([3, 1, 0])
    assert got["ndcg@1"][0] == pytest.approx((q1_at1 + 1.0) / 2)
    assert got["ndcg@3"][0] == pytest.approx((q1_at3 + 1.0) / 2)
    assert got["ndcg@1"][1] == 2


def test_bias_curve_error_is_mean_relative_error(spark):
    truth = spark.createDataFrame(
        [("default", 1, 1.0), ("default", 2, 0.5), ("default", 3, 0.25)], [schema.CONTEXT_KEY, schema.POSITION, schema.EXAMINATION]
    )
    learned = spark.createDataFrame(
        [("m", "default", 1, 1.0), ("m", "default", 2, 0.6), ("m", "default", 3, 0.2), ("m", "other", 2, 9.0)],
        [schema.MODEL, schema.CONTEXT_KEY, schema.POSITION, schema.EXAMINATION],
    )
    row = bias_curve_error(learned, truth, [2, 3]).first()
    assert row[schema.METRIC] == BIAS_ERROR
    assert row[schema.VALUE] == pytest.approx((0.1 / 0.5 + 0.05 / 0.25) / 2)


def test_ndcg_with_ties_is_sklearns_tie_averaged_ndcg(spark):
    """Tied scores share their ranks (the mean discount of the ranks they span); the item ids,
    which once broke the ties, must not matter."""
    import numpy as np
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(4)
    queries = {}
    for q in range(12):
        n = int(rng.integers(3, 9))
        labels = rng.integers(0, 5, n)
        labels[0] = max(labels[0], 1)
        scores = rng.integers(0, 3, n).astype(float)  # few distinct values: many ties
        queries[f"q{q}"] = (labels, scores)
    rows = [("m", q, f"{i:02d}", float(s), int(y)) for q, (ys, ss) in queries.items() for i, (y, s) in enumerate(zip(ys, ss))]
    # The same scores with the item ids reversed: a tie broken by id would change the metric.
    rows += [("m_ids_reversed", q, f"{99 - int(i)}", s, y) for _, q, i, s, y in rows]
    df = spark.createDataFrame(rows, [schema.MODEL, schema.QUERY_ID, schema.ITEM_ID, schema.SCORE, schema.LABEL])
    got = {(r[schema.MODEL], r[schema.METRIC]): r[schema.VALUE] for r in ndcg(df, [1, 3, 5]).collect()}
    for k in (1, 3, 5):
        expected = np.mean([ndcg_score([2.0**ys - 1], [ss], k=k) for ys, ss in queries.values()])
        assert got[("m", f"ndcg@{k}")] == pytest.approx(expected, abs=1e-12)
        assert got[("m_ids_reversed", f"ndcg@{k}")] == pytest.approx(expected, abs=1e-12)


def evaluation_tables(spark, tmp_path, scores, split=schema.SPLIT_TRAIN):
    from pyspark.sql import functions as F

    from tests.conftest import small_config

    config = small_config(tmp_path)
    spark.createDataFrame(
        [(q, i, s, "m", "r1") for q, i, s in scores],
        f"{schema.QUERY_ID} string, {schema.ITEM_ID} string, {schema.SCORE} double, {schema.MODEL} string, {schema.RUN_ID} string",
    ).withColumn(schema.SCORED_AT, F.current_timestamp()).write.format("delta").save(config.tables.path("scores"))
    spark.createDataFrame(
        [(q, i, 1 + (n % 2), split) for n, (q, i, _) in enumerate(scores)],
        f"{schema.QUERY_ID} string, {schema.ITEM_ID} string, {schema.LABEL} int, {schema.SPLIT} string",
    ).write.format("delta").save(config.tables.path("truth_labels"))
    return config


def test_non_finite_scores_stop_evaluation_with_their_count(spark, tmp_path):
    import os

    from ulr_spark.evaluation import evaluate

    config = evaluation_tables(spark, tmp_path, [("q1", "a", float("nan")), ("q1", "b", 0.3), ("q1", "c", float("inf"))])
    config = config.model_copy(update={"evaluate": config.evaluate.model_copy(update={"queries": "all"})})
    with pytest.raises(ValueError, match=r"column 'score' must be finite .* broken by 2 of 3 score\(s\)"):
        evaluate(config, spark, "r1")
    assert not os.path.exists(config.tables.path("metrics"))


def test_a_queries_setting_that_matches_nothing_says_so(spark, tmp_path):
    import os

    from ulr_spark.evaluation import evaluate

    config = evaluation_tables(spark, tmp_path, [("q1", "a", 0.1), ("q1", "b", 0.3)])  # no held-out label
    with pytest.raises(ValueError, match="evaluate.queries='heldout'"):
        evaluate(config, spark, "r1")
    assert not os.path.exists(config.tables.path("metrics"))


def test_distractor_leak_is_the_within_query_least_squares_ratio(spark):
    """score = b_r relevance + b_d distractor + a per-query offset: the leak is b_d / b_r,
    whatever the offsets; a score that falls with relevance has no leak row."""
    import numpy as np
    import pandas as pd

    from ulr_spark.evaluation import distractor_leak

    rng = np.random.default_rng(0)
    rows = []
    for q in range(30):
        r, d, offset = rng.normal(size=8), rng.normal(size=8), 5 * rng.normal()
        for model, (b_r, b_d) in {"leaky": (2.0, 0.5), "clean": (1.0, 0.0), "backwards": (-1.0, 0.3)}.items():
            s = b_r * r + b_d * d + offset + 0.01 * rng.normal(size=8)
            rows += [(model, f"q{q}", float(a), float(b), float(c)) for a, b, c in zip(s, r, d)]
    frame = pd.DataFrame(rows, columns=[schema.MODEL, schema.QUERY_ID, schema.SCORE, schema.TRUE_RELEVANCE, schema.DISTRACTOR])
    leak = {row[schema.MODEL]: row[schema.VALUE] for row in distractor_leak(spark.createDataFrame(frame)).collect()}
    assert set(leak) == {"leaky", "clean"}
    assert abs(leak["leaky"] - 0.25) < 0.01 and abs(leak["clean"]) < 0.01


def test_two_evaluate_runs_at_once_both_land(spark, tmp_path):
    """Two evaluate runs write the metrics table at the same moment, the first write of all
    creating it: both commit, and each run's rows are there exactly once."""
    from pyspark.sql import functions as F

    from tests.conftest import run_at_once
    from ulr_spark.evaluation import evaluate
    from ulr_spark.io.delta import commits_of_run, read_table

    # Labels a=1, b=2, c=1 (evaluation_tables): r1 ranks b first (NDCG@1 = 1), r2 ranks a first
    # (NDCG@1 = (2^1 - 1) / (2^2 - 1)).
    config = evaluation_tables(spark, tmp_path, [("q1", "a", 0.1), ("q1", "b", 0.9), ("q1", "c", 0.2)])
    config = config.model_copy(update={"evaluate": config.evaluate.model_copy(update={"queries": "all"})})
    scores_path = config.tables.path("scores")
    read_table(spark, scores_path).where(F.col(schema.RUN_ID) == "r1").withColumn(schema.RUN_ID, F.lit("r2")).withColumn(
        schema.SCORE, F.when(F.col(schema.ITEM_ID) == "a", 0.9).otherwise(F.col(schema.SCORE) / 10)
    ).localCheckpoint().write.format("delta").mode("append").save(scores_path)

    errors = run_at_once(lambda run_id: evaluate(config, spark, run_id), ("r1", "r2"))
    assert not errors, errors
    path = config.tables.path("metrics")
    rows = read_table(spark, path).collect()
    metrics = {r: sorted(x[schema.METRIC] for x in rows if x[schema.RUN_ID] == r) for r in ("r1", "r2")}
    expected = sorted(f"ndcg@{k}" for k in config.evaluate.ndcg_at)
    assert metrics == {"r1": expected, "r2": expected}, "each run's metrics exactly once, nothing lost"
    assert len(rows) == 2 * len(expected)
    at_1 = {x[schema.RUN_ID]: x[schema.VALUE] for x in rows if x[schema.METRIC] == "ndcg@1"}
    assert at_1 == pytest.approx({"r1": 1.0, "r2": 1 / 3}), "each run wrote its own values"
    assert commits_of_run(spark, path, "r1") and commits_of_run(spark, path, "r2")
