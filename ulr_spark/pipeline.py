"""The stages in order, with the run id each one needs."""

from __future__ import annotations

import time
from typing import Callable, Optional

from pyspark.sql import SparkSession

from ulr_spark.artifacts import latest_run_id, new_run_id
from ulr_spark.config import Config
from ulr_spark.evaluate import evaluate, format_metrics
from ulr_spark.examples import build_examples
from ulr_spark.score import score
from ulr_spark.simulate import simulate
from ulr_spark.train import train

STAGES = ("simulate", "build-examples", "train", "score", "evaluate")


def resolve_run_id(config: Config, stage: str, run_id: Optional[str]) -> str:
    """Train starts a new run unless told otherwise; later stages default to the newest run."""
    if run_id:
        return run_id
    if stage in ("score", "evaluate"):
        return latest_run_id(config.tables.path("models"))
    return new_run_id()


def _describe(spark: SparkSession, stage: str, run_id: str) -> None:
    spark.sparkContext.setJobGroup(f"ulr-spark {stage}", f"ulr-spark {stage} run_id={run_id}", False)


def run_stage(config: Config, spark: SparkSession, stage: str, run_id: str) -> object:
    actions: dict[str, Callable[[], object]] = {
        "simulate": lambda: simulate(spark, config, run_id),
        "build-examples": lambda: build_examples(config, spark, run_id),
        "train": lambda: train(config, spark, run_id),
        "score": lambda: score(config, spark, run_id),
        "evaluate": lambda: evaluate(config, spark, run_id),
    }
    _describe(spark, stage, run_id)
    started = time.time()
    print(f"== {stage} (run_id={run_id})", flush=True)
    result = actions[stage]()
    if stage == "evaluate":
        print(format_metrics(result))
    else:
        print(f"{stage}: {result}")
    print(f"== {stage} done in {time.time() - started:.1f}s", flush=True)
    return result


def run_all(config: Config, spark: SparkSession, run_id: Optional[str] = None) -> str:
    run_id = run_id or new_run_id()
    for stage in STAGES:
        run_stage(config, spark, stage, run_id)
    return run_id
