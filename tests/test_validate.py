"""Every bad-input rule fails build-examples with the column, the rule and the row count,
and leaves no examples table behind."""

import os

import pytest
from pyspark.sql import types as T

from tests.conftest import small_config
from ulr_spark.examples.slates import build_examples
from ulr_spark.examples.validation import InvalidLogError

LOG_SCHEMA = T.StructType(
    [
        T.StructField("request_id", T.StringType()),
        T.StructField("query_id", T.StringType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("position", T.IntegerType()),
        T.StructField("clicked", T.IntegerType()),
        T.StructField("features", T.ArrayType(T.FloatType())),
    ]
)


def good_rows():
    rows = []
    for r in range(4):
        for p in range(1, 4):
            rows.append((f"r{r}", f"q{r % 2}", f"i{p}", p, int(p == 1), [0.1 * p, 1.0]))
    return rows


def write_log(spark, root, rows, schema=LOG_SCHEMA):
    path = os.path.join(str(root), "impressions")
    spark.createDataFrame(rows, schema).write.format("delta").mode("overwrite").save(path)
    return path


def expect_failure(spark, tmp_path, rows, column, rule, count, schema=LOG_SCHEMA):
    config = small_config(tmp_path)
    write_log(spark, tmp_path, rows, schema)
    with pytest.raises(InvalidLogError) as caught:
        build_examples(config, spark, "test")
    matching = [v for v in caught.value.violations if v.column == column and rule in v.rule]
    assert matching, str(caught.value)
    assert matching[0].rows == count, str(caught.value)
    message = str(caught.value)
    assert f"column '{column}'" in message and rule in message and f"broken by {count} row(s)" in message
    assert not os.path.exists(config.tables.path("examples")), "nothing may be written on bad input"


def test_good_log_passes(spark, tmp_path):
    config = small_config(tmp_path)
    write_log(spark, tmp_path, good_rows())
    summary = build_examples(config, spark, "test")
    assert summary.log_rows == 12 and summary.requests == 4 and summary.num_features == 2


def test_missing_required_column(spark, tmp_path):
    rows = [r[:4] + r[5:] for r in good_rows()]
    schema = T.StructType([f for f in LOG_SCHEMA.fields if f.name != "clicked"])
    expect_failure(spark, tmp_path, rows, "clicked", "required column is missing", 12, schema)


def test_wrong_type(spark, tmp_path):
    rows = [r[:3] + (str(r[3]),) + r[4:] for r in good_rows()]
    schema = T.StructType(
        [T.StructField("position", T.StringType()) if f.name == "position" else f for f in LOG_SCHEMA.fields]
    )
    expect_failure(spark, tmp_path, rows, "position", "must be an integer slot, found string", 12, schema)


def test_null_keys(spark, tmp_path):
    rows = good_rows()
    rows[0] = (rows[0][0], None) + rows[0][2:]
    rows[5] = (rows[5][0], None) + rows[5][2:]
    expect_failure(spark, tmp_path, rows, "query_id", "must not be null", 2)


def test_position_below_one(spark, tmp_path):
    rows = good_rows()
    for i in (0, 3, 6):
        rows[i] = rows[i][:3] + (0,) + rows[i][4:]
    expect_failure(spark, tmp_path, rows, "position", "must be >= 1", 3)


def test_two_items_in_one_slot(spark, tmp_path):
    rows = good_rows()
    rows[1] = rows[1][:3] + (1,) + rows[1][4:]  # r0 now has two items in slot 1
    expect_failure(spark, tmp_path, rows, "position", "two items in one slot", 2)


def test_click_other_than_zero_or_one(spark, tmp_path):
    rows = good_rows()
    rows[2] = rows[2][:4] + (2,) + rows[2][5:]
    rows[4] = rows[4][:4] + (None,) + rows[4][5:]
    expect_failure(spark, tmp_path, rows, "clicked", "must be 0 or 1", 2)


def test_empty_log(spark, tmp_path):
    expect_failure(spark, tmp_path, [], "<all>", "must not be empty", 0)


def test_features_of_the_wrong_length(spark, tmp_path):
    rows = good_rows()
    rows[7] = rows[7][:5] + ([1.0, 2.0, 3.0],)
    expect_failure(spark, tmp_path, rows, "features", "must hold 2 values", 1)


def test_every_broken_rule_is_reported_at_once(spark, tmp_path):
    config = small_config(tmp_path)
    rows = good_rows()
    rows[0] = rows[0][:3] + (0,) + rows[0][4:]
    rows[2] = rows[2][:4] + (5,) + rows[2][5:]
    write_log(spark, tmp_path, rows)
    with pytest.raises(InvalidLogError) as caught:
        build_examples(config, spark, "test")
    assert {v.column for v in caught.value.violations} == {"position", "clicked"}
