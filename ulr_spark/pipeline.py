"""The stages in order, with the run id each one needs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Optional

from pyspark.sql import SparkSession

from ulr_spark import schema
from ulr_spark.config import Config
from ulr_spark.evaluation import evaluate, format_metrics
from ulr_spark.examples.slates import build_examples
from ulr_spark.io.artifacts import check_run_id, latest_run_id, new_run_id, read_artifact
from ulr_spark.io.spark import stage_group
from ulr_spark.scoring import score
from ulr_spark.training.driver import train

STAGES = ("simulate", "build-examples", "train", "score", "evaluate")


def resolve_run_id(config: Config, stage: str, run_id: Optional[str]) -> str:
    """Train starts a new run unless told otherwise; later stages default to the run that
    finished training last.

    Raises:
        ValueError: ``run_id`` cannot be a folder name (:func:`check_run_id`).
        FileNotFoundError: no finished run to score or evaluate.
    """
    if run_id:
        return check_run_id(run_id)
    if stage in ("score", "evaluate"):
        return latest_run_id(config.tables.path("models"))
    return new_run_id()


def _track(config: Config, stage: str, run_id: str, result: Any) -> None:
    """MLflow, when ``tracking.mlflow`` is on: training params, losses and models; metrics."""
    from ulr_spark.io import tracking

    if not tracking.enabled(config):
        return
    if stage == "train":
        tracking.log_training(config, run_id, [read_artifact(path) for path in result])
        if config.tracking.register_model:
            tracking.register_relevance_models(config, run_id, [read_artifact(path) for path in result])
    elif stage == "evaluate":
        rows = result.collect()
        overall = [r for r in rows if schema.POSITION not in r.asDict() or r[schema.POSITION] is None]
        tracking.log_metrics(config, run_id, {(r[schema.MODEL], r[schema.METRIC]): r[schema.VALUE] for r in overall})


def _simulate(config: Config, spark: SparkSession, run_id: str) -> object:
    """The simulator is imported only when a simulation is asked for: production stages never
    load it."""
    from ulr_spark.simulation.simulator import simulate

    return simulate(spark, config, run_id)


def run_stage(
    config: Config, spark: SparkSession, stage: str, run_id: str, full: bool = False, resume: bool = False, all_pairs: bool = False,
) -> Any:
    """Run one stage. ``full``: build-examples rebuilds every date (with ``examples.incremental``);
    ``resume``: train continues ``run_id`` from its checkpoints; ``all_pairs``: score every pair
    (with ``score.only_changed``)."""
    actions: dict[str, Callable[[], object]] = {
        "simulate": lambda: _simulate(config, spark, run_id),
        "build-examples": lambda: build_examples(config, spark, run_id, full=full),
        "train": lambda: train(config, spark, run_id, resume=resume),
        "score": lambda: score(config, spark, run_id, only_changed=False if all_pairs else None),
        "evaluate": lambda: evaluate(config, spark, run_id),
    }
    stage_group(spark, stage, run_id)
    started = time.time()
    print(f"== {stage} (run_id={run_id})", flush=True)
    result = actions[stage]()
    _track(config, stage, run_id, result)
    if stage == "evaluate":
        print(format_metrics(result))
    else:
        print(f"{stage}: {result}")
    print(f"== {stage} done in {time.time() - started:.1f}s", flush=True)
    return result


def run_all(config: Config, spark: SparkSession, run_id: Optional[str] = None, simulate: bool = False, full: bool = False) -> str:
    """Every stage under one run id. The log is simulated only when ``simulate`` is set: by
    default the stages read the log ``tables.impressions`` names and never write it."""
    run_id = check_run_id(run_id) if run_id else new_run_id()
    for stage in STAGES:
        if stage == "simulate" and not simulate:
            print(f"== simulate skipped: reading the log at {config.tables.impressions} (pass --simulate to write one)")
            continue
        run_stage(config, spark, stage, run_id, full=full)
    return run_id
