import os

from pyspark.sql import types as T

from tests.conftest import small_config
from tests.test_validate import LOG_SCHEMA
from ulr_spark import schema
from ulr_spark.examples.slates import build_examples
from ulr_spark.io.delta import read_table
from ulr_spark.training.driver import warn_if_mixem_rows_mix_clicks


def test_identical_slates_merge_into_weighted_rows(spark, tmp_path):
    config = small_config(tmp_path, examples={"max_slate_size": 3, "partitions": 2})
    f = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.5, 0.5], "d": [2.0, 2.0]}
    rows = [
        # r1 and r2 show the same slate (a, b, c) for q1: merged, clicks summed per slot.
        ("r1", "q1", "a", 1, 1, f["a"]), ("r1", "q1", "b", 2, 0, f["b"]), ("r1", "q1", "c", 3, 0, f["c"]),
        ("r2", "q1", "b", 2, 1, f["b"]), ("r2", "q1", "a", 1, 1, f["a"]), ("r2", "q1", "c", 3, 0, f["c"]),
        # r3: same items, another order: a different slate.
        ("r3", "q1", "b", 1, 0, f["b"]), ("r3", "q1", "a", 2, 1, f["a"]), ("r3", "q1", "c", 3, 0, f["c"]),
        # r4: two slots only, and a fourth one beyond max_slate_size=3 that is not used.
        ("r4", "q2", "d", 1, 0, f["d"]), ("r4", "q2", "a", 2, 1, f["a"]), ("r4", "q2", "c", 4, 1, f["c"]),
    ]
    spark.createDataFrame(rows, LOG_SCHEMA).write.format("delta").save(config.tables.path("impressions"))

    summary = build_examples(config, spark, "test")
    assert (summary.log_rows, summary.requests, summary.examples) == (12, 4, 3)
    assert summary.rows_beyond_max_slate == 1
    assert summary.compression == 4 / 3
    # (q1, a) and (q1, b) were shown in two slots; (q1, c), (q2, d), (q2, a) in one; (q2, c)
    # only beyond the cap, where it is not used.
    assert summary.share_of_pairs_in_several_slots == 2 / 5

    table = config.tables.path("examples")
    assert os.path.isdir(os.path.join(table, "_delta_log"))
    examples = {tuple(r[schema.ITEM_IDS]): r for r in read_table(spark, table).collect()}
    merged = examples[("a", "b", "c")]
    assert merged[schema.IMPRESSIONS] == 2
    assert merged[schema.CLICKS] == [2, 1, 0]
    assert merged[schema.POSITIONS] == [1, 2, 3]
    assert merged[schema.FEATURES] == f["a"] + f["b"] + f["c"]
    assert examples[("b", "a", "c")][schema.IMPRESSIONS] == 1
    assert examples[("b", "a", "c")][schema.CLICKS] == [0, 1, 0]
    short = examples[("d", "a", "")]
    assert short[schema.SLATE_SIZE] == 2
    assert short[schema.POSITIONS] == [1, 2, 0]
    assert short[schema.FEATURES] == f["d"] + f["a"] + [0.0, 0.0]
    assert short[schema.CLICKS] == [0, 1, 0]
    # Total clicks and impressions are preserved by merging (the beyond-cap slot aside).
    assert sum(sum(r[schema.CLICKS]) for r in examples.values()) == 5
    assert sum(r[schema.IMPRESSIONS] for r in examples.values()) == 4

    # With a MixEM configured, r1 and r2 (clicks 1,0,0 and 1,1,0) no longer merge: each row's
    # requests clicked alike, so one E-step posterior per row is exact.
    mixem = small_config(tmp_path, examples={"max_slate_size": 3, "partitions": 2}, train={"models": ["additive", "mixem"]})
    assert warn_if_mixem_rows_mix_clicks(mixem, read_table(spark, table)) == 1  # the merged (a, b, c) row
    assert warn_if_mixem_rows_mix_clicks(config, read_table(spark, table)) == 0  # no MixEM: no check
    assert build_examples(mixem, spark, "test").examples == 4
    assert warn_if_mixem_rows_mix_clicks(mixem, read_table(spark, table)) == 0
    by_clicks = sorted(r[schema.CLICKS] for r in read_table(spark, table).collect() if r[schema.ITEM_IDS] == ["a", "b", "c"])
    assert by_clicks == [[1, 0, 0], [1, 1, 0]]


def test_context_columns_become_context_ids(spark, tmp_path):
    config = small_config(tmp_path, columns={"context": ["device"]}, examples={"max_slate_size": 2, "partitions": 2})
    log_schema = T.StructType(LOG_SCHEMA.fields + [T.StructField("device", T.StringType())])
    rows = [
        ("r1", "q1", "a", 1, 1, [1.0], "mobile"), ("r1", "q1", "b", 2, 0, [2.0], "mobile"),
        ("r2", "q1", "a", 1, 1, [1.0], "desktop"), ("r2", "q1", "b", 2, 0, [2.0], "desktop"),
    ]
    spark.createDataFrame(rows, log_schema).write.format("delta").save(config.tables.path("impressions"))
    summary = build_examples(config, spark, "test")
    assert summary.contexts == 2 and summary.examples == 2
    ids = {r[schema.CONTEXT_KEY]: r[schema.CONTEXT_ID] for r in read_table(spark, config.tables.path("examples")).collect()}
    assert ids == {"device=desktop": 0, "device=mobile": 1}
