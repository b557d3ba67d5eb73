"""Where build-examples spends its time: every Spark job it runs, with its duration, and the
DuckDB reference on the same files, in one Spark session.

    flock /tmp/spark.lock .venv/bin/python -m bench.profile_examples --impressions 1000000 \
        --root /tmp/prof-1M --repeat 3

The log is simulated into ``--root`` once (``conf/scale.yaml``) and reused by later runs. Each
repetition builds the examples again (the first one also warms the JVM up); the jobs are read
from the Spark UI's REST API, labelled with the step that ran them (``describe_step``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
import urllib.request

SLATE_SIZE = 10


def ui_jobs(spark) -> list[dict]:
    """Every job of the application so far (Spark UI REST API), oldest first."""
    url = f"{spark.sparkContext.uiWebUrl}/api/v1/applications/{spark.sparkContext.applicationId}/jobs"
    with urllib.request.urlopen(url) as response:
        return sorted(json.load(response), key=lambda job: job["jobId"])


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc): less sensitive than wall
    time to other work on the machine."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def seconds_between(start: str, end: str) -> float:
    from datetime import datetime

    def parse(text: str) -> datetime:
        return datetime.strptime(text.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")

    return (parse(end) - parse(start)).total_seconds()


def run(args) -> dict:
    from bench.duckdb_reference import run_duckdb_examples
    from bench.throughput import parquet_files
    from ulr_spark.config import load_config
    from ulr_spark.examples.slates import build_examples
    from ulr_spark.io.delta import table_exists
    from ulr_spark.io.spark import get_spark, stage_group

    requests = max(1, args.impressions // SLATE_SIZE)
    overrides = [f"simulate.num_requests={requests}", f"tables.root={args.root}", *args.set]
    config = load_config(args.config, overrides)
    spark = get_spark(config.spark)
    if args.simulate_only or not table_exists(spark, config.tables.path("impressions")):
        from ulr_spark.simulation.simulator import simulate

        started = time.perf_counter()
        simulate(spark, config, "profile")
        print(f"simulated {requests:,} requests in {time.perf_counter() - started:.1f}s", flush=True)
    if args.simulate_only:
        spark.stop()
        return {}
    files = parquet_files(spark, config.tables.path("impressions"))
    builds, duck, cpu = [], [], []
    jvm = spark.sparkContext._jvm.ProcessHandle.current().pid()
    examples_path = config.tables.path("examples")
    for repetition in range(args.repeat):
        shutil.rmtree(examples_path, ignore_errors=True)  # each build is a first build, as in bench/scale.py
        seen = {job["jobId"] for job in ui_jobs(spark)}
        stage_group(spark, "build-examples", f"profile-{repetition}")
        started, used = time.perf_counter(), cpu_seconds(jvm)
        summary = build_examples(config, spark, f"profile-{repetition}")
        builds.append(time.perf_counter() - started)
        cpu.append(cpu_seconds(jvm) - used)
        jobs = [job for job in ui_jobs(spark) if job["jobId"] not in seen]
        print(f"build-examples #{repetition}: {builds[-1]:.2f}s (JVM CPU {cpu[-1]:.1f}s), {len(jobs)} jobs, {summary.examples:,} examples")
        if args.jobs:
            for job in jobs:
                took = seconds_between(job["submissionTime"], job["completionTime"]) if "completionTime" in job else -1
                label = (job.get("description") or job.get("name", "")).split(": ", 1)[-1][:110]
                print(f"  job {job['jobId']:4d} {took:6.2f}s tasks={job['numTasks']:4d} {label} | {job['name'][:50]}")
        if args.duckdb:
            tmp = os.path.join(args.root, "duckdb_tmp")
            out = run_duckdb_examples(
                files, config.examples.max_slate_size, summary.num_features,
                os.path.join(args.root, "duckdb_examples.parquet"), os.cpu_count() or 1, tmp, args.duckdb_memory,
            )
            shutil.rmtree(tmp, ignore_errors=True)
            duck.append(out["seconds"])
            print(f"duckdb #{repetition}: {out['seconds']:.2f}s", flush=True)
    spark.stop()
    timed = builds[1:] if len(builds) > 1 else builds
    result = {"impressions": requests * SLATE_SIZE, "build_examples": builds, "jvm_cpu": cpu, "duckdb": duck,
              "median_build_examples_after_first": statistics.median(timed)}
    if duck:
        result["median_duckdb"] = statistics.median(duck)
        result["ratio"] = result["median_build_examples_after_first"] / result["median_duckdb"]
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impressions", type=int, required=True)
    parser.add_argument("--root", required=True, help="where the simulated log (kept) and the examples go")
    parser.add_argument("--config", default="conf/scale.yaml")
    parser.add_argument("--set", action="append", default=[], help="config override section.key=value")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-jobs", dest="jobs", action="store_false", help="do not list the Spark jobs")
    parser.add_argument("--no-duckdb", dest="duckdb", action="store_false")
    parser.add_argument("--simulate-only", action="store_true", help="(re)simulate the log and stop")
    parser.add_argument("--duckdb-memory", default="14GB")
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(run(parse_args()), indent=2))
