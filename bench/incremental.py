"""An incremental day against a full run, side by side in one Spark session (docs/operations.md).

    .venv/bin/python -m bench.incremental --impressions 10000000 --days 100 --root /tmp/ulr-bench/incremental

The log (``conf/scale.yaml``: Zipf queries, 16 features) is simulated over ``--days`` days, so the
last day holds about 1/days of the requests (1% at 100 days). Days 1 .. D-1 become the
operator's log, partitioned by date, and yesterday's run is made on them (incremental examples,
training, scoring of the candidate pairs). Then day D is appended and both ways of running the
day are timed, stage by stage:

- incremental: build-examples (the new date only), train warm-started from yesterday's run on the
  last ``--window-days`` dates, score only the pairs whose features changed;
- full: build-examples ``--full`` (every date, into another table), train from scratch on every
  date, score every pair.

Prints the ratio incremental / full and the command that reproduces it. Not a test: timings
belong here, never in the test suite.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SLATE_SIZE = 10


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impressions", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--window-days", type=int, default=7)
    parser.add_argument("--root", default=os.path.join(ROOT, "ulr-data", "bench-incremental"))
    parser.add_argument("--config", default="conf/scale.yaml")
    args = parser.parse_args(argv)

    from pyspark.sql import functions as F

    from ulr_spark import schema
    from ulr_spark.config import load_config
    from ulr_spark.examples.slates import build_examples
    from ulr_spark.io.delta import read_table
    from ulr_spark.io.spark import get_spark
    from ulr_spark.scoring import score
    from ulr_spark.simulation.simulator import simulate
    from ulr_spark.training.driver import train
    from ulr_spark.training.loaders import quiet_petastorm_warnings

    quiet_petastorm_warnings()
    shutil.rmtree(args.root, ignore_errors=True)
    requests = max(1, args.impressions // SLATE_SIZE)
    overrides = [
        f"simulate.num_requests={requests}", f"simulate.days={args.days}", f"tables.root={args.root}",
        "tables.impressions=daily_log", "examples.incremental=true", "score.source=candidates", "score.only_changed=true",
    ]
    config = load_config(os.path.join(ROOT, args.config), overrides)
    spark = get_spark(config.spark)
    simulated = config.model_copy(update={"tables": config.tables.model_copy(update={"impressions": "simulated_log"})})
    simulate(spark, simulated, "bench")
    log = read_table(spark, simulated.tables.path("impressions"))
    last = log.agg(F.max(schema.EVENT_DATE)).first()[0]
    where = config.tables.path("impressions")
    log.where(F.col(schema.EVENT_DATE) < last).write.format("delta").partitionBy(schema.EVENT_DATE).save(where)
    build_examples(config, spark, "yesterday")
    train(config, spark, "yesterday")
    score(config, spark, "yesterday")
    log.where(F.col(schema.EVENT_DATE) == last).write.format("delta").mode("append").partitionBy(schema.EVENT_DATE).save(where)
    new_requests = log.where(F.col(schema.EVENT_DATE) == last).select(config.columns.request_id).distinct().count()

    daily = config.model_copy(update={"train": config.train.model_copy(update={"init_from": "yesterday", "window_days": args.window_days})})
    full = config.model_copy(update={"tables": config.tables.model_copy(update={"examples": "examples_full"})})
    timings: dict[str, dict[str, float]] = {"incremental": {}, "full": {}}

    def timed(way: str, stage: str, action) -> None:
        started = time.perf_counter()
        result = action()
        timings[way][stage] = time.perf_counter() - started
        print(f"bench.incremental {way} {stage}: {timings[way][stage]:.1f}s  {result}", flush=True)

    timed("incremental", "build_examples", lambda: build_examples(daily, spark, "today").dates_built)
    timed("incremental", "train", lambda: train(daily, spark, "today"))
    timed("incremental", "score", lambda: score(daily, spark, "today"))
    timed("full", "build_examples", lambda: build_examples(full, spark, "full", full=True).examples)
    timed("full", "train", lambda: train(full, spark, "full"))
    timed("full", "score", lambda: score(full, spark, "full", only_changed=False))
    spark.stop()

    totals = {way: sum(stages.values()) for way, stages in timings.items()}
    print(f"\n{requests * SLATE_SIZE:,} impressions over {args.days} days; the new day: {new_requests:,} requests "
          f"({new_requests / requests:.1%}); {os.cpu_count()} cores")
    print("| stage | incremental (s) | full (s) | ratio |\n|---|---|---|---|")
    for stage in ("build_examples", "train", "score"):
        inc, whole = timings["incremental"][stage], timings["full"][stage]
        print(f"| {stage} | {inc:.1f} | {whole:.1f} | {inc / whole:.2f} |")
    ratio = totals["incremental"] / totals["full"]
    print(f"| the day | {totals['incremental']:.1f} | {totals['full']:.1f} | **{ratio:.2f}** (target <= 0.10: "
          f"{'met' if ratio <= 0.10 else 'not met'}) |")
    print("\nreproduce: .venv/bin/python -m bench.incremental " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
