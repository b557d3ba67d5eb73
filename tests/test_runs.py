"""Runs and the tables they promise: what a scoring run replaces, scores_latest, table
existence as Spark sees it, concurrent runs, finished runs only, run ids, and errors that
read as one paragraph.

Models here are untrained (scoring does not care); each test builds its own small tables."""

import json
import os

import pytest
import torch
import yaml
from pyspark.sql import functions as F

from tests.conftest import run_at_once, small_config
from ulr_spark import schema
from ulr_spark.cli import main
from ulr_spark.io.artifacts import (
    CARD,
    check_run_id,
    latest_run_id,
    publish_run,
    read_artifact,
    run_artifacts,
    save_artifact,
    staging_run_dir,
)
from ulr_spark.io.delta import read_table, table_exists
from ulr_spark.models.registry import build_model
from ulr_spark.models.spec import ModelSpec
from ulr_spark.scoring import score, update_latest_scores

D = 3
MODELS = ("additive", "naive")


def publish_untrained_run(models_root, run_id, seed=0):
    torch.manual_seed(seed)
    staging = staging_run_dir(models_root, run_id)
    for name in MODELS:
        save_artifact(os.path.join(staging, name), build_model(ModelSpec(name, D, 4, 1, [4])), {"contexts": {"0": "default"}})
    return publish_run(staging, models_root, run_id, {"models": list(MODELS)})


def pairs_frame(spark, queries, items, offset=0.0, features=None):
    rows = [
        (f"q{q}", f"i{i}", features if features is not None else [float(q) + offset, float(i), 0.5])
        for q in range(queries) for i in range(items)
    ]
    return spark.createDataFrame(rows, f"{schema.QUERY_ID} string, {schema.ITEM_ID} string, {schema.FEATURES} array<double>")


@pytest.fixture()
def env(spark, tmp_path):
    config = small_config(tmp_path)
    pairs_frame(spark, 4, 5).write.format("delta").save(config.tables.path("candidates"))
    publish_untrained_run(config.tables.path("models"), "r1")
    return config


def run_rows(spark, config, run_id):
    return read_table(spark, config.tables.path("scores")).where(F.col(schema.RUN_ID) == run_id)


def latest(spark, config):
    return read_table(spark, config.tables.path("scores_latest"))


def test_scoring_another_pairs_table_under_the_same_run_keeps_the_first(spark, env):
    score(env, spark, "r1")
    summary = score(env, spark, "r1", pairs=pairs_frame(spark, 2, 3, offset=10.0).withColumn(
        schema.QUERY_ID, F.concat(F.lit("new-"), F.col(schema.QUERY_ID))), pairs_source="extra")
    assert summary.pairs_scored == 6
    assert run_rows(spark, env, "r1").count() == len(MODELS) * (20 + 6), "the first table's scores must stay"
    assert latest(spark, env).count() == len(MODELS) * (20 + 6)


def test_rescoring_a_pairs_table_replaces_what_its_last_scoring_wrote(spark, env):
    score(env, spark, "r1")
    smaller = pairs_frame(spark, 4, 5).where(F.col(schema.ITEM_ID) != "i4")
    smaller.write.format("delta").mode("overwrite").save(env.tables.path("candidates"))
    score(env, spark, "r1")
    assert run_rows(spark, env, "r1").count() == len(MODELS) * 16
    assert latest(spark, env).where(F.col(schema.ITEM_ID) == "i4").count() == 0, "pairs that left the table leave scores_latest"
    assert latest(spark, env).count() == len(MODELS) * 16


def test_duplicate_pairs_are_scored_once_and_counted(spark, env):
    doubled = pairs_frame(spark, 4, 5).unionByName(pairs_frame(spark, 2, 5))
    doubled.write.format("delta").mode("overwrite").save(env.tables.path("candidates"))
    for _ in range(2):  # the second run MERGEs into scores_latest
        summary = score(env, spark, "r1")
    assert (summary.rows_read, summary.duplicate_rows, summary.pairs_scored) == (30, 10, 20)
    for table in (run_rows(spark, env, "r1"), latest(spark, env)):
        assert table.count() == len(MODELS) * 20
        assert table.groupBy(schema.MODEL, schema.QUERY_ID, schema.ITEM_ID).count().where("count > 1").count() == 0


def test_only_changed_scores_new_and_changed_pairs_and_a_rerun_loses_nothing(spark, env):
    config = env.model_copy(update={"score": env.score.model_copy(update={"only_changed": True})})
    assert score(config, spark, "r1").pairs_scored == 20
    # The next day: 3 pairs' features changed, 2 pairs are new, a new run scores.
    changed = pairs_frame(spark, 4, 5).withColumn(
        schema.FEATURES, F.when(F.col(schema.ITEM_ID) == "i0", F.array(F.lit(9.0), F.lit(9.0), F.lit(9.0))).otherwise(F.col(schema.FEATURES))
    ).where(F.col(schema.QUERY_ID) != "q3").unionByName(pairs_frame(spark, 4, 5).where(F.col(schema.QUERY_ID) == "q3"))
    grown = changed.where(~((F.col(schema.QUERY_ID) == "q3") & (F.col(schema.ITEM_ID) == "i0"))).unionByName(
        pairs_frame(spark, 1, 2, offset=5.0).withColumn(schema.QUERY_ID, F.lit("q-new"))
    )
    grown.write.format("delta").mode("overwrite").save(config.tables.path("candidates"))
    publish_untrained_run(config.tables.path("models"), "r2", seed=1)
    summary = score(config, spark, "r2")
    assert (summary.pairs_scored, summary.pairs_unchanged) == (3 + 2, 16), summary
    assert run_rows(spark, config, "r2").count() == len(MODELS) * 5
    newest = {(r[schema.MODEL], r[schema.QUERY_ID], r[schema.ITEM_ID]): r[schema.RUN_ID] for r in latest(spark, config).collect()}
    # 21 pairs in the source, and (q3, i0), which left it, keeps its last score in this mode.
    assert len(newest) == len(MODELS) * 22 and latest(spark, config).count() == len(MODELS) * 22
    assert {k[1:] for k, run in newest.items() if run == "r2"} == {("q0", "i0"), ("q1", "i0"), ("q2", "i0"), ("q-new", "i0"), ("q-new", "i1")}
    # A rerun (after a kill, say) finds nothing left to score and keeps what the run wrote.
    assert score(config, spark, "r2").pairs_scored == 0
    assert run_rows(spark, config, "r2").count() == len(MODELS) * 5
    # Asked for all, every pair is scored and pairs that left the source leave scores_latest.
    assert score(config, spark, "r2", only_changed=False).pairs_scored == 21
    assert latest(spark, config).where(F.col(schema.ITEM_ID) == "i0").where(F.col(schema.QUERY_ID) == "q3").count() == 0


def test_scores_latest_changes_only_when_a_score_moves_beyond_the_tolerance(spark, env):
    from delta.tables import DeltaTable

    from ulr_spark.io.delta import Provenance

    score(env, spark, "r1")
    path = env.tables.path("scores_latest")
    provenance = Provenance.of(env, "r1", "score")

    def merge(shift):
        moved = latest(spark, env).withColumn(schema.SCORE, F.col(schema.SCORE) + F.lit(shift)).localCheckpoint()
        update_latest_scores(moved, path, provenance, env.tables.path("candidates"), list(MODELS), 1e-6)
        version = DeltaTable.forPath(spark, path).history().where("operation = 'MERGE'").orderBy(F.desc("version")).first()
        return int(version["operationMetrics"]["numTargetRowsUpdated"])

    assert merge(1e-12) == 0, "a recomputation that differs in the last bits is not a change"
    assert merge(0.5) == len(MODELS) * 20


def test_table_existence_is_asked_of_spark_not_of_pythons_os(spark, env, monkeypatch):
    """On Databricks `dbfs:/x` exists for Spark while Python's os only knows `/dbfs/x`."""
    score(env, spark, "r1")
    path = env.tables.path("scores_latest")
    real = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if str(p).startswith(str(env.tables.root)) else real(p))
    assert table_exists(spark, path)
    assert not table_exists(spark, os.path.join(str(env.tables.root), "nowhere"))


def test_two_scoring_runs_at_once_both_land(spark, env):
    publish_untrained_run(env.tables.path("models"), "r2", seed=1)
    errors = run_at_once(lambda run_id: score(env, spark, run_id), ("r1", "r2"))
    assert not errors, errors
    scores = read_table(spark, env.tables.path("scores"))
    assert scores.where(F.col(schema.RUN_ID) == "r1").count() == scores.where(F.col(schema.RUN_ID) == "r2").count() == 40
    assert latest(spark, env).count() == len(MODELS) * 20


def write_yaml(config, path):
    path.write_text(yaml.safe_dump(config.to_dict()))
    return str(path)


def stray_parquet_files(spark, path):
    if not os.path.exists(path):
        return []
    committed = {os.path.basename(f) for f in read_table(spark, path).inputFiles()}
    on_disk = [f for f in os.listdir(path) if f.endswith(".parquet")]
    return sorted(set(on_disk) - committed)


@pytest.mark.parametrize("features", [[1.0, 2.0], [1.0, float("inf"), 0.0]], ids=["wrong-length", "infinite"])
def test_bad_features_at_scoring_end_in_one_paragraph_and_leave_no_file(spark, env, tmp_path, capsys, features):
    score(env, spark, "r1")  # the tables exist
    pairs_frame(spark, 2, 2, features=features).write.format("delta").save(os.path.join(str(env.tables.root), "bad"))
    config_path = write_yaml(env, tmp_path / "config.yaml")
    code = main(["score", "--config", config_path, "--run-id", "r1", "--set", "tables.candidates=bad"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and "column 'features'" in err and "broken by 4 of 4 pair(s)" in err, err
    assert stray_parquet_files(spark, env.tables.path("scores")) == []
    assert stray_parquet_files(spark, env.tables.path("scores_latest")) == []


def test_a_missing_table_ends_in_one_paragraph(spark, env, tmp_path, capsys):
    config_path = write_yaml(env, tmp_path / "config.yaml")
    assert main(["score", "--config", config_path, "--run-id", "r1", "--set", "tables.candidates=missing"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" in err, err


def test_a_run_that_did_not_finish_is_never_the_latest(tmp_path):
    root = str(tmp_path / "models")
    publish_untrained_run(root, "finished-first")
    publish_untrained_run(root, "finished-last")
    # A killed run leaves a folder without run.json, newer than every finished one.
    os.makedirs(os.path.join(root, "killed", "additive"))
    # Folder times say nothing: an old run's folder touched later is not the latest.
    os.utime(os.path.join(root, "finished-first"), (4_000_000_000, 4_000_000_000))
    assert latest_run_id(root) == "finished-last"
    with pytest.raises(FileNotFoundError, match="did not finish training"):
        run_artifacts(root, "killed")


@pytest.mark.parametrize("run_id", ["../elsewhere", "a/b", "", ".hidden", "x" * 129, "run id"])
def test_run_ids_that_cannot_be_folder_names_are_refused(run_id, tmp_path, capsys):
    with pytest.raises(ValueError, match="run id"):
        check_run_id(run_id)


def test_a_bad_run_id_on_the_command_line_is_one_line(tmp_path, capsys):
    config_path = write_yaml(small_config(tmp_path), tmp_path / "config.yaml")
    assert main(["evaluate", "--config", config_path, "--run-id", "../x"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_an_artifact_from_a_newer_version_is_refused(tmp_path):
    path = publish_untrained_run(str(tmp_path / "models"), "r1")
    card_path = os.path.join(path, "additive", CARD)
    card = json.load(open(card_path))
    card["spec"]["new_tower_option"] = 3
    json.dump(card, open(card_path, "w"))
    with pytest.raises(ValueError, match=r"'new_tower_option'.*newer version"):
        read_artifact(os.path.join(path, "additive"))
    card["spec"].pop("new_tower_option")
    card["artifact_format"] = 99
    json.dump(card, open(card_path, "w"))
    with pytest.raises(ValueError, match="newer than this version"):
        read_artifact(os.path.join(path, "additive"))
