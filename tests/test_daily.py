"""Daily runs on real Spark, Delta, Petastorm and TorchDistributor: incremental build-examples
and warm starts against a full rebuild; a training process killed and the run resumed; each
stage's process killed during each of its writes (docs/operations.md). The tests share one
growing log and run in file order."""

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import yaml
from pyspark.sql import functions as F

from tests.conftest import ROOT, small_config
from ulr_spark import schema
from ulr_spark.examples.slates import build_examples
from ulr_spark.io.artifacts import latest_run_id, run_artifacts
from ulr_spark.io.delta import read_table, table_exists, table_version
from ulr_spark.pipeline import run_stage
from ulr_spark.training.driver import TrainingFailedError

pytestmark = pytest.mark.slow


def daily_config(root, **train):
    return small_config(
        root,
        tables={"impressions": os.path.join(str(root), "daily_log")},
        simulate={"num_queries": 200, "heldout_fraction": 0.3, "num_requests": 6000, "days": 3, "seed": 3},
        examples={"partitions": 2, "incremental": True},
        train={"models": ["additive"], "epochs": 3, "batch_size": 128, "learning_rate": 0.01, "bias_curve_sample": 500,
               "bias_curve_bootstrap": 0, "early_stopping_patience": 0, **train},
        evaluate={"pbm_iterations": 5},
    )


@pytest.fixture(scope="module")
def daily(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("daily")
    simulated = small_config(root / "sim", simulate=daily_config(root).simulate.model_dump())
    run_stage(simulated, spark, "simulate", "sim")
    log = read_table(spark, simulated.tables.path("impressions"))
    days = sorted(r[0] for r in log.select(schema.EVENT_DATE).distinct().collect())
    config = daily_config(root, init_from="latest")
    # The truth and candidates of the simulation, read by score and evaluate.
    for table in ("candidates", "truth_labels", "truth_examination"):
        os.makedirs(os.path.dirname(config.tables.path(table)), exist_ok=True)
        os.symlink(simulated.tables.path(table), config.tables.path(table))
    return config, log, days


def ndcg10(spark, config, run_id):
    rows = read_table(spark, config.tables.path("metrics")).where(
        (F.col(schema.RUN_ID) == run_id) & (F.col(schema.MODEL) == "additive") & (F.col(schema.METRIC) == "ndcg@10")
    ).collect()
    return rows[0][schema.VALUE]


def test_three_days_incremental_with_warm_start_and_kills_on_day_two_match_a_full_rebuild(spark, daily, tmp_path):
    """Day 1 full; day 2 incremental with every stage first killed (SIGKILL) during each of its
    writes, then rerun; day 3 incremental; then a full rebuild of the three days to compare."""
    config, log, days = daily
    assert len(days) == 3
    where = config.tables.impressions
    config_path = str(tmp_path / "daily.yaml")
    with open(config_path, "w") as handle:
        yaml.safe_dump(config.to_dict(), handle)
    summaries, landed = [], []
    for number, day in enumerate(days, start=1):
        # The operator's log grows by one date partition a day; earlier files are never rewritten.
        log.where(F.col(schema.EVENT_DATE) == day).write.format("delta").mode("append").partitionBy(schema.EVENT_DATE).save(where)
        run_id = f"day{number}"
        if number == 2:
            landed.append(kill_and_check(spark, config, config_path, "build-examples", run_id, "examples"))
        summary = build_examples(config, spark, run_id)
        summaries.append(summary)
        files_today = set(read_table(spark, where).where(F.col(schema.EVENT_DATE) == day).inputFiles())
        if number == 1:
            assert summary.plan == "no examples table yet" and summary.dates_built == (day.isoformat(),)
        else:
            # Only the new date is read: its own files, none of the earlier partitions'.
            assert summary.dates_built == (day.isoformat(),) and summary.dates_unchanged == number - 1, summary
            assert summary.files_read == len(files_today), (summary.files_read, files_today)
        for stage, writes in (("train", ("models", "bias_curves")), ("score", ("scores", "scores_latest")), ("evaluate", ("metrics",))):
            if number == 2:
                landed += [kill_and_check(spark, config, config_path, stage, run_id, table) for table in writes]
            if number > 1 or stage == "train":
                run_stage(config, spark, stage, run_id)
    # Every kill landed before its process finished, so each write was really interrupted.
    assert landed == [True] * 6, landed
    pairs = read_table(spark, config.tables.path("candidates")).count()
    for run_id in ("day2", "day3"):
        assert read_table(spark, config.tables.path("scores")).where(F.col(schema.RUN_ID) == run_id).count() == pairs
    assert duplicated_keys(spark, config.tables.path("scores_latest"), [schema.MODEL, schema.QUERY_ID, schema.ITEM_ID]) == 0
    # A day with nothing new builds nothing and writes nothing.
    version = table_version(spark, config.tables.path("examples"))
    again = build_examples(config, spark, "day3-again")
    assert again.dates_built == () and again.dates_unchanged == 3
    assert table_version(spark, config.tables.path("examples")) == version
    examples = read_table(spark, config.tables.path("examples"))
    per_day = {r[0]: r[1] for r in examples.groupBy(schema.EVENT_DATE).agg(F.sum(schema.IMPRESSIONS)).collect()}
    assert sum(per_day.values()) == sum(s.requests - s.requests_beyond_max_slate for s in summaries)
    # Warm starts: day 2 started from day 1's model, day 3 from day 2's.
    models = config.tables.path("models")
    assert [run_artifacts(models, f"day{n}")[0].card["init_from"] for n in (1, 2, 3)] == [None, "day1", "day2"]

    # The same three days rebuilt and trained from scratch.
    full = config.model_copy(update={
        "tables": config.tables.model_copy(update={"examples": "examples_full"}),
        "train": config.train.model_copy(update={"init_from": None}),
    })
    build_examples(full, spark, "full", full=True)
    # Row for row, the examples built day by day are those of a full build.
    columns = [schema.EVENT_DATE, schema.QUERY_ID, schema.CONTEXT_KEY, schema.SPLIT, schema.ITEM_IDS, schema.POSITIONS,
               schema.FEATURES, schema.IMPRESSIONS, schema.CLICKS]
    rebuilt_rows = read_table(spark, full.tables.path("examples")).select(*columns)
    assert rebuilt_rows.count() == examples.count()
    assert rebuilt_rows.exceptAll(examples.select(*columns)).count() == 0
    for stage in ("train", "score", "evaluate"):
        run_stage(full, spark, stage, "full")
    daily_ndcg, rebuilt = ndcg10(spark, config, "day3"), ndcg10(spark, full, "full")
    assert daily_ndcg > 0.7 and abs(daily_ndcg - rebuilt) < 0.03, (daily_ndcg, rebuilt)


def training_workers():
    """The processes torchrun started for this test process's TorchDistributor."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            parent = child.parent()
            if parent is not None and "torch.distributed.run" in " ".join(parent.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_a_killed_training_process_fails_the_stage_and_resume_finishes_the_run(spark, daily):
    config, _, _ = daily
    config = config.model_copy(update={"train": config.train.model_copy(update={"checkpoint_every_steps": 5, "init_from": None, "epochs": 8})})
    state = os.path.join(config.tables.path("checkpoints"), "resumed", "additive", "state.pt")
    outcome = {}

    def run():
        try:
            run_stage(config, spark, "train", "resumed")
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 180
    while not os.path.exists(state) and time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
    assert os.path.exists(state), "training never wrote a checkpoint"
    workers = training_workers()
    assert workers, "no training process found to kill (training ended already?)"
    workers[-1].send_signal(signal.SIGKILL)
    killed = time.time()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the train stage hangs after a training process was killed"
    assert isinstance(outcome.get("error"), TrainingFailedError), outcome
    assert "--resume" in str(outcome["error"]), outcome["error"]
    print(f"the stage failed {time.time() - killed:.1f}s after the kill")
    with pytest.raises(FileNotFoundError):
        run_artifacts(config.tables.path("models"), "resumed")

    from ulr_spark.training.driver import train

    train(config, spark, "resumed", resume=True)
    card = run_artifacts(config.tables.path("models"), "resumed")[0].card
    steps_per_epoch = -(-card["impressions_per_epoch"] // (config.train.batch_size * config.train.num_processes))
    planned = config.train.epochs * steps_per_epoch
    assert 5 <= card["resumed_at_step"] < planned and card["steps"] == planned, card
    assert not os.path.exists(os.path.join(config.tables.path("checkpoints"), "resumed"))


def new_files(folder, before):
    found = set()
    for parent, _, names in os.walk(folder):
        if "_delta_log" in parent:
            continue
        found.update(os.path.join(parent, n) for n in names if n.endswith((".parquet", "model.pt")))
    return found - before


def kill_during_write(config_path, stage, run_id, folder):
    """Run ``stage`` in its own process and SIGKILL it as soon as a data file appears under
    ``folder`` (before Delta commits it, or before the artifact's card is written). Returns
    whether the kill landed before the process finished."""
    before = new_files(folder, set()) if os.path.exists(folder) else set()
    command = [sys.executable, "-m", "ulr_spark.cli", stage, "--config", config_path, "--run-id", run_id]
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    while process.poll() is None:
        if os.path.exists(folder) and new_files(folder, before):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.01)
    return False


def duplicated_keys(spark, path, key):
    return read_table(spark, path).groupBy(*key).count().where(F.col("count") > 1).count()


# The key no two rows of a table may share.
KEYS = {
    "examples": [schema.EVENT_DATE, schema.QUERY_ID, schema.CONTEXT_KEY, schema.SPLIT, schema.ITEM_IDS, schema.POSITIONS, schema.FEATURES],
    "bias_curves": [schema.RUN_ID, schema.MODEL, schema.CONTEXT_KEY, schema.POSITION],
    "scores": [schema.RUN_ID, schema.MODEL, schema.QUERY_ID, schema.ITEM_ID],
    "scores_latest": [schema.MODEL, schema.QUERY_ID, schema.ITEM_ID],
    "metrics": [schema.RUN_ID, schema.MODEL, schema.METRIC, schema.SPLIT, schema.POSITION],
}


def kill_and_check(spark, config, config_path, stage, run_id, table):
    """Kill ``stage`` during its write of ``table`` (``models``: the artifact), then check what it
    left: a table readable at its previous version or complete at a new one, without duplicated
    rows (or absent, when the kill hit its first write); a killed training never published."""
    folder = config.tables.path(table)
    models = config.tables.path("models")
    existed = table != "models" and table_exists(spark, folder)
    version = table_version(spark, folder) if existed else None
    latest = latest_run_id(models)
    landed = kill_during_write(config_path, stage, run_id, folder)
    assert latest_run_id(models) == latest, "a killed run must never become the latest"
    if stage == "train":
        with pytest.raises(FileNotFoundError):
            run_artifacts(models, run_id)
    if table != "models" and table_exists(spark, folder):
        assert read_table(spark, folder).count() >= 0
        assert version is None or table_version(spark, folder) >= version
        assert duplicated_keys(spark, folder, KEYS[table]) == 0, (stage, table)
    return landed
