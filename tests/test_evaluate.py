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
