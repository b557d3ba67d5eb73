"""One size of the scaling benchmark in one fresh Spark session; writes a JSON of the results.

    .venv/bin/python -m bench.scale --impressions 10000000 --root /tmp/ulr-bench/10M --json out.json

Stages run as the pipeline runs them (``conf/scale.yaml``): simulate, build-examples (and the
DuckDB reference on the same Parquet files), train, score. ``--throughput`` adds the training
and scoring throughput comparisons (bench/throughput.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from bench.duckdb_reference import run_duckdb_examples
from bench.memory import PeakMemory
from bench.throughput import parquet_files, score_throughput, training_throughput

SLATE_SIZE = 10


def run(args) -> dict:
    from ulr_spark.config import load_config
    from ulr_spark.examples.slates import build_examples
    from ulr_spark.io.artifacts import read_artifact
    from ulr_spark.io.spark import get_spark
    from ulr_spark.scoring import score
    from ulr_spark.simulation.simulator import simulate
    from ulr_spark.training.driver import train
    from ulr_spark.training.loaders import quiet_petastorm_warnings

    quiet_petastorm_warnings()
    requests = max(1, args.impressions // SLATE_SIZE)
    overrides = [f"simulate.num_requests={requests}", f"tables.root={args.root}", *args.set]
    config = load_config(args.config, overrides)
    cores = os.cpu_count() or 1
    memory = PeakMemory()
    result = {"impressions": requests * SLATE_SIZE, "cores": cores, "config": args.config, "overrides": overrides}
    timings = {}
    run_id = "bench"

    started = time.perf_counter()
    with memory.stage("jvm_start"):
        spark = get_spark(config.spark)
    timings["jvm_start"] = time.perf_counter() - started

    def stage(name, action):
        started = time.perf_counter()
        spark.sparkContext.setJobDescription(f"bench: {name}")
        with memory.stage(name):
            value = action()
        timings[name] = time.perf_counter() - started
        print(f"bench.scale {result['impressions']:,}: {name} {timings[name]:.1f}s", flush=True)
        return value

    stage("simulate", lambda: simulate(spark, config, run_id))
    summary = stage("build_examples", lambda: build_examples(config, spark, run_id))
    result["examples"] = {
        "log_rows": summary.log_rows, "requests": summary.requests, "examples": summary.examples,
        "compression": summary.compression, "share_of_pairs_in_several_slots": summary.share_of_pairs_in_several_slots,
    }
    files = parquet_files(spark, config.tables.path("impressions"))
    duck_tmp = os.path.join(args.root, "duckdb_tmp")

    def duckdb_reference():
        try:
            return run_duckdb_examples(
                files, config.examples.max_slate_size, summary.num_features,
                os.path.join(args.root, "duckdb_examples.parquet"), cores, duck_tmp, args.duckdb_memory,
            )
        except Exception as error:  # e.g. out of memory: reported, and the other stages still run
            return {"error": f"{type(error).__name__}: {error}"}

    duck = stage("duckdb_examples", duckdb_reference)
    shutil.rmtree(duck_tmp, ignore_errors=True)
    if "error" not in duck and (duck["examples"], duck["requests"]) != (summary.examples, summary.requests):
        raise RuntimeError(f"DuckDB built {duck} but Spark {summary}: the two are not the same transformation")
    result["duckdb"] = duck
    artifacts = stage("train", lambda: train(config, spark, run_id))
    stage("score", lambda: score(config, spark, run_id))
    if args.throughput:
        result["training_throughput"] = stage(
            "training_throughput", lambda: training_throughput(spark, config, args.train_steps, args.warmup_steps)
        )
        result["score_throughput"] = stage(
            "score_throughput", lambda: score_throughput(spark, config, read_artifact(artifacts[0]), args.root)
        )
    spark.stop()
    memory.close()
    result["seconds"] = timings
    result["memory"] = memory.stages
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impressions", type=int, required=True)
    parser.add_argument("--root", required=True, help="where this size's tables go")
    parser.add_argument("--json", required=True, help="where the results go")
    parser.add_argument("--config", default="conf/scale.yaml")
    parser.add_argument("--set", action="append", default=[], help="config override section.key=value")
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--duckdb-memory", default="14GB", help="DuckDB's memory_limit")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--warmup-steps", type=int, default=20)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    outcome = run(arguments)
    with open(arguments.json, "w") as handle:
        json.dump(outcome, handle, indent=2)
