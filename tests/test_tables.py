"""Downstream consumers: the scores' change feed between two runs, the latest-scores table, and
the properties that say which run wrote a table."""

import json
import os

import pytest
from pyspark.sql import functions as F

from tests.conftest import small_config
from ulr_spark import schema
from ulr_spark.io.delta import CHANGE_TYPE, read_changes_since_run, read_table, table_properties
from ulr_spark.pipeline import run_stage

pytestmark = pytest.mark.slow

KEY = [schema.MODEL, schema.QUERY_ID, schema.ITEM_ID]


def rows(df, *columns):
    return {tuple(r[c] for c in columns) for r in df.select(*columns).collect()}


@pytest.fixture(scope="module")
def two_runs(spark, tmp_path_factory):
    """Run A trains and scores naive and additive; run B retrains only additive (another seed)."""
    root = tmp_path_factory.mktemp("tables")
    first = small_config(root, train={"models": ["naive", "additive"], "num_processes": 1, "epochs": 1})
    second = small_config(root, train={"models": ["additive"], "num_processes": 1, "epochs": 1, "seed": 11})
    for stage in ("simulate", "build-examples", "train", "score"):
        run_stage(first, spark, stage, "run-a")
    a_latest = read_table(spark, first.tables.path("scores_latest")).collect()
    for stage in ("train", "score"):
        run_stage(second, spark, stage, "run-b")
    return first, second, a_latest


def test_scores_change_feed_between_two_runs_is_exactly_the_new_runs_rows(spark, two_runs):
    config, _, _ = two_runs
    path = config.tables.path("scores")
    changes = read_changes_since_run(spark, path, "run-a")
    assert rows(changes, CHANGE_TYPE) == {("insert",)}
    run_b = read_table(spark, path).where(F.col(schema.RUN_ID) == "run-b")
    columns = KEY + [schema.SCORE, schema.RUN_ID]
    assert changes.count() == run_b.count() > 0
    assert rows(changes, *columns) == rows(run_b, *columns)
    # Run A's rows are untouched.
    assert read_table(spark, path).where(F.col(schema.RUN_ID) == "run-a").count() == 2 * run_b.count()


def test_latest_scores_change_feed_holds_exactly_the_scores_that_changed(spark, two_runs):
    config, _, a_latest = two_runs
    path = config.tables.path("scores_latest")
    scores = read_table(spark, config.tables.path("scores"))
    a = {(r[schema.MODEL], r[schema.QUERY_ID], r[schema.ITEM_ID]): r[schema.SCORE] for r in a_latest}
    b = {(r[schema.MODEL], r[schema.QUERY_ID], r[schema.ITEM_ID]): r[schema.SCORE] for r in scores.where(F.col(schema.RUN_ID) == "run-b").collect()}
    changed = {key for key, score in b.items() if a[key] != score}
    assert len(changed) > 0.9 * len(b)  # another seed moves (nearly) every score

    changes = read_changes_since_run(spark, path, "run-a")
    post = changes.where(F.col(CHANGE_TYPE) == "update_postimage")
    pre = changes.where(F.col(CHANGE_TYPE) == "update_preimage")
    assert rows(changes, CHANGE_TYPE) == {("update_preimage",), ("update_postimage",)}
    assert rows(post, *KEY) == changed
    assert {(m, q, i): s for m, q, i, s in rows(post, *KEY, schema.SCORE)} == {k: b[k] for k in changed}
    assert {(m, q, i): s for m, q, i, s in rows(pre, *KEY, schema.SCORE)} == {k: a[k] for k in changed}

    latest = read_table(spark, path)
    assert latest.count() == len(a)  # one row per (model, query, item), no duplicates
    # A row names the run that produced its current score: run B where B changed it.
    for model, query, item, run_id, score in rows(latest, *KEY, schema.RUN_ID, schema.SCORE):
        key = (model, query, item)
        assert (run_id, score) == (("run-b", b[key]) if key in changed else ("run-a", a[key])), key


def test_rescoring_a_run_changes_no_latest_score_and_duplicates_nothing(spark, two_runs):
    _, config, _ = two_runs
    latest, scores_path = config.tables.path("scores_latest"), config.tables.path("scores")
    before = {p: spark.sql(f"DESCRIBE HISTORY delta.`{p}`").agg(F.max("version")).first()[0] for p in (latest, scores_path)}
    run_stage(config, spark, "score", "run-b")

    def changes(path):
        return spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", before[path] + 1).load(path)

    assert changes(latest).count() == 0  # the same scores again: nothing changed for consumers
    merge = spark.sql(f"DESCRIBE HISTORY delta.`{latest}`").where("operation = 'MERGE'").orderBy(F.desc("version")).first()
    assert merge["userMetadata"] == "ulr-spark run_id=run-b" and merge["version"] > before[latest]
    # The scores table replaces the run's rows in one transaction: as many deletes as inserts, all of run B.
    rescored = changes(scores_path)
    assert rows(rescored, schema.RUN_ID) == {("run-b",)}
    kinds = {r[CHANGE_TYPE]: r["count"] for r in rescored.groupBy(CHANGE_TYPE).count().collect()}
    scores = read_table(spark, scores_path)
    n_b = scores.where(F.col(schema.RUN_ID) == "run-b").count()
    assert kinds == {"delete": n_b, "insert": n_b}
    assert n_b == scores.where(F.col(schema.RUN_ID) == "run-a").count() // 2


def test_tables_say_which_run_and_config_wrote_them(spark, two_runs):
    first, second, _ = two_runs
    scores = table_properties(spark, second.tables.path("scores"))
    assert scores["ulr_spark.run_id"] == "run-b"
    assert scores["ulr_spark.stage"] == "score"
    assert scores["ulr_spark.models"] == "additive"
    assert scores["ulr_spark.config_hash"] == second.fingerprint() != first.fingerprint()
    assert scores["delta.enableChangeDataFeed"] == "true"
    assert table_properties(spark, second.tables.path("scores_latest"))["delta.enableChangeDataFeed"] == "true"
    # Statistics of the filter columns only, from the first file written (docs/scaling.md, "score").
    for table in ("scores", "scores_latest"):
        assert table_properties(spark, second.tables.path(table))["delta.dataSkippingStatsColumns"] == "run_id,pairs_source,model"
        with open(os.path.join(second.tables.path(table), "_delta_log", "00000000000000000000.json")) as log:
            stats = [json.loads(json.loads(line)["add"]["stats"]) for line in log if '"add"' in line]
        assert stats and all(set(s["minValues"]) == {schema.RUN_ID, schema.PAIRS_SOURCE, schema.MODEL} for s in stats), table
    examples = table_properties(spark, first.tables.path("examples"))
    assert (examples["ulr_spark.run_id"], examples["ulr_spark.stage"]) == ("run-a", "build-examples")
