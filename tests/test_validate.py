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


DOUBLE_FEATURES = T.StructType([*LOG_SCHEMA.fields[:5], T.StructField("features", T.ArrayType(T.DoubleType()))])


def test_features_must_be_finite_as_the_float32_the_trainer_reads(spark, tmp_path):
    """+inf, and a double too large for float32 (which the trainer's cast turns into +inf)."""
    rows = good_rows()
    rows[0] = rows[0][:5] + ([float("inf"), 1.0],)
    rows[4] = rows[4][:5] + ([1e39, 1.0],)
    expect_failure(spark, tmp_path, rows, "features", "each finite as the float32", 2, schema=DOUBLE_FEATURES)


def test_a_log_with_no_row_within_max_slate_size_is_refused(spark, tmp_path):
    """One request shown at slots 11 and 12 only: no slate can be built from it."""
    rows = [("r0", "q0", "i1", 11, 1, [0.1, 1.0]), ("r0", "q0", "i2", 12, 0, [0.2, 1.0])]
    expect_failure(spark, tmp_path, rows, "position", "at least one row must sit within max_slate_size=10", 2)


def test_requests_beyond_max_slate_size_make_no_example_and_are_counted(spark, tmp_path):
    config = small_config(tmp_path)
    write_log(spark, tmp_path, good_rows() + [("r9", "q0", "i1", 11, 1, [0.1, 1.0])])
    summary = build_examples(config, spark, "test")
    assert summary.requests_beyond_max_slate == 1 and summary.rows_beyond_max_slate == 1
    assert summary.requests == 5 and summary.examples == 2, summary
    from ulr_spark.io.delta import read_table

    assert read_table(spark, config.tables.path("examples")).where("slate_size = 0").count() == 0


def test_a_log_without_a_click_is_refused(spark, tmp_path):
    rows = [r[:4] + (0,) + r[5:] for r in good_rows()]
    expect_failure(spark, tmp_path, rows, "clicked", "at least one row within max_slate_size must be a click", 12)


def _cli(config, tmp_path, *args):
    import yaml

    from ulr_spark.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    return main([args[0], "--config", str(path), *args[1:]])


def test_fewer_training_rows_than_processes_is_refused_before_training(spark, tmp_path, capsys):
    """One request of 2 slots and 2 training processes: Petastorm cannot give each a shard."""
    from ulr_spark.io.artifacts import latest_run_id

    config = small_config(tmp_path)
    write_log(spark, tmp_path, [("r0", "q0", "i1", 1, 1, [0.1, 1.0]), ("r0", "q0", "i2", 2, 0, [0.2, 1.0])])
    build_examples(config, spark, "test")
    assert _cli(config, tmp_path, "train", "--run-id", "t1") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 training row(s), fewer than train.num_processes=2" in err, err
    with pytest.raises(FileNotFoundError):
        latest_run_id(config.tables.path("models"))


@pytest.mark.slow
def test_a_failed_training_run_is_never_published(spark, tmp_path, capsys):
    """A loss that is not finite stops training; the run is not published, the previous run
    stays the latest, and no staging folder is left."""
    from tests.test_runs import publish_untrained_run
    from ulr_spark.io.artifacts import latest_run_id

    config = small_config(tmp_path, train={"num_processes": 1, "epochs": 3, "models": ["additive"]})
    write_log(spark, tmp_path, good_rows())
    build_examples(config, spark, "test")
    publish_untrained_run(config.tables.path("models"), "good")
    assert _cli(config, tmp_path, "train", "--run-id", "diverged", "--set", "train.learning_rate=1.0e+30") == 1
    err = capsys.readouterr().err.strip()
    assert "the distributed training failed" in err and len(err.splitlines()) == 1, err
    models = config.tables.path("models")
    assert latest_run_id(models) == "good"
    assert sorted(os.listdir(models)) == ["good"]
