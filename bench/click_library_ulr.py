"""ulr-spark's side of the click-model library benchmark, in a fresh process (its own JVM) that
bench/click_library.py starts pinned to one core (``taskset -c 0``):

    .venv/bin/python -m bench.click_library_ulr --root DIR --json OUT.json [--set section.key=value ...]

The log is already under ``DIR/log`` (bench/click_log.py). Stages as the pipeline runs them on
``conf/bench_click_library.yaml`` (``local[1]``, one training process): the JVM start, then
build-examples from the impression log, train from the examples table, score. The train stage
is also broken down (the steps ``train`` takes, timed by wrapping the functions it calls; the
training loop's own time from the model card).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

RUN_ID = "clicklib"


def timed(seconds: dict, name: str, function):
    """``function`` with its wall time added to ``seconds[name]`` at each call."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started

    return wrapper


def instrument_train(breakdown: dict) -> None:
    """Time the parts of ``ulr_spark.training.driver.train`` by wrapping what it calls by name."""
    from ulr_spark.training import driver

    parts = {
        "make_converter": "petastorm_cache",  # the examples materialised into Petastorm's cache
        "sample_pages": "curve_sample",  # the pages the curves are read on, collected to the driver
        "validation_arrays": "validation_arrays",
        "_run_distributed": "torch_distributor",  # TorchDistributor: torchrun start + the training loop
        "learned_bias_curves": "curves",
        "replace_rows": "write_curves",
        "publish_run": "publish",
        "training_rows": "count_rows",
        "describe_examples": "describe_examples",
    }
    for attribute, name in parts.items():
        setattr(driver, attribute, timed(breakdown, name, getattr(driver, attribute)))


def learned_curve(spark, config, model: str) -> list[float]:
    from pyspark.sql import functions as F

    from ulr_spark import schema
    from ulr_spark.io.delta import read_table

    rows = (
        read_table(spark, config.tables.path("bias_curves"))
        .where((F.col(schema.RUN_ID) == RUN_ID) & (F.col(schema.MODEL) == model) & (F.col(schema.CONTEXT_KEY) == schema.DEFAULT_CONTEXT_KEY))
        .select(schema.POSITION, schema.EXAMINATION)
        .orderBy(schema.POSITION)
        .collect()
    )
    return [float(r[schema.EXAMINATION]) for r in rows]


def run(args) -> dict:
    from bench.click_log import curve_error, true_examination
    from ulr_spark.config import load_config
    from ulr_spark.examples.slates import build_examples
    from ulr_spark.io.artifacts import read_artifact
    from ulr_spark.io.spark import get_spark
    from ulr_spark.scoring import score
    from ulr_spark.training.driver import train
    from ulr_spark.training.loaders import quiet_petastorm_warnings

    quiet_petastorm_warnings()
    overrides = [f"tables.root={args.root}", *args.set]
    config = load_config(args.config, overrides)
    breakdown: dict[str, float] = {}
    instrument_train(breakdown)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    spark = get_spark(config.spark)
    seconds["jvm_start"] = time.perf_counter() - started

    def stage(name, action):
        began = time.perf_counter()
        value = action()
        seconds[name] = time.perf_counter() - began
        print(f"bench.click_library_ulr: {name} {seconds[name]:.1f}s", flush=True)
        return value

    summary = stage("build_examples", lambda: build_examples(config, spark, RUN_ID))
    artifacts = stage("train", lambda: train(config, spark, RUN_ID))
    scored = stage("score", lambda: score(config, spark, RUN_ID))
    model = config.train.models[0]
    curve = learned_curve(spark, config, model)
    card = read_artifact(artifacts[0]).card
    master = spark.sparkContext.master
    spark.stop()
    loop = float(card.get("train_seconds", 0.0))
    breakdown["training_loop"] = loop  # inside torch_distributor: from the first batch's wait to the last step
    breakdown["torchrun_start_and_exit"] = breakdown.get("torch_distributor", 0.0) - loop
    accounted = sum(v for k, v in breakdown.items() if k not in ("training_loop", "torchrun_start_and_exit"))
    breakdown["other"] = seconds["train"] - accounted
    return {
        "master": master, "config": args.config, "overrides": overrides, "model": model,
        "epochs": config.train.epochs, "batch_size": config.train.batch_size,
        "affinity": sorted(os.sched_getaffinity(0)),
        "examples": {"log_rows": summary.log_rows, "requests": summary.requests, "examples": summary.examples},
        "pairs_scored": scored.pairs_scored,
        "seconds": seconds, "train_breakdown": breakdown,
        "steps": card.get("steps"), "loss_history": card.get("loss_history"),
        "examination": curve, "curve_error": curve_error(curve, true_examination()) if len(curve) >= 10 else None,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="tables.root: the log is under ROOT/log")
    parser.add_argument("--json", required=True)
    parser.add_argument("--config", default="conf/bench_click_library.yaml")
    parser.add_argument("--set", action="append", default=[], help="config override section.key=value")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    outcome = run(arguments)
    with open(arguments.json, "w") as handle:
        json.dump(outcome, handle, indent=2)
