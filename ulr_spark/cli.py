"""``ulr-spark <stage> --config conf/demo.yaml``: one sub-command per stage, plus ``run``."""

from __future__ import annotations

import argparse
import io
import os
import re
import shlex
import sys
from typing import Optional

from ulr_spark.config import ConfigError, load_config
from ulr_spark.examples.validation import InvalidLogError
from ulr_spark.pipeline import STAGES, resolve_run_id, run_all, run_stage
from ulr_spark.training.loaders import quiet_petastorm_warnings

DESCRIPTIONS = {
    "sample-log": "Write a small sample log of one of three shapes (Parquet) and its truth, to try a config on.",
    "simulate": "Write a simulated impression log and its truth to Delta.",
    "build-examples": "Validate the log and build weighted position-context examples.",
    "train": "Train the configured models with Petastorm and TorchDistributor.",
    "score": "Score (query, item) pairs with the relevance towers of a run.",
    "evaluate": "NDCG and bias-curve error of a run against the simulated truth.",
    "run": "All stages in order: build-examples, train, score, evaluate (and first simulate, with --simulate).",
    "compare": "Every model on every scenario over several seeds, with boosted-tree baselines; "
    "writes the comparison table, a Markdown report and a plot.",
    "export": "Export a run's relevance models (feature transform + tower) to TorchScript files that score "
    "without ulr-spark or Spark (docs/serving.md).",
}

EXAMPLES = {
    "sample-log": [
        "ulr-spark sample-log --shape search --config conf/own_search_log.yaml",
        "ulr-spark sample-log --shape marketplace --config conf/own_marketplace_log.yaml --sessions 50000",
    ],
    "simulate": [
        "ulr-spark simulate --config conf/demo.yaml --set simulate.num_requests=10000",
        "ulr-spark simulate --config conf/context_grid.yaml --set tables.root=/tmp/grid",
    ],
    "build-examples": [
        "ulr-spark build-examples --config conf/demo.yaml",
        "ulr-spark build-examples --config my_log.yaml --set examples.max_slate_size=20",
        "ulr-spark build-examples --config conf/daily.yaml --full   # incremental config: rebuild every date",
    ],
    "train": [
        "ulr-spark train --config conf/demo.yaml --set train.epochs=2 --run-id try1",
        "ulr-spark train --config conf/demo.yaml --set 'train.models=[additive,xpa]' --set train.use_gpu=true",
        "ulr-spark train --config conf/demo.yaml --run-id try1 --resume   # continue a killed run",
    ],
    "score": [
        "ulr-spark score --config conf/demo.yaml --run-id try1",
        "ulr-spark score --config conf/demo.yaml   # the newest run; --set score.source=impressions",
    ],
    "evaluate": [
        "ulr-spark evaluate --config conf/demo.yaml   # the newest run",
        "ulr-spark evaluate --config conf/demo.yaml --run-id try1 --set evaluate.queries=all",
    ],
    "run": [
        "ulr-spark run --simulate --config conf/demo.yaml   # simulate a log, then every stage",
        "ulr-spark run --config conf/own_search_log.yaml     # your own log: read, never written",
        "ulr-spark run --simulate --config conf/demo.yaml --set tracking.mlflow=true   # also log to MLflow",
    ],
    "compare": [
        "ulr-spark compare --config conf/compare.yaml --set 'compare.seeds=[1]'",
        "ulr-spark compare --config conf/compare.yaml --report-only --run-id <compare id>",
    ],
    "export": [
        "ulr-spark export --config conf/demo.yaml --out /tmp/serving   # every model of the newest run",
        "ulr-spark export --config conf/demo.yaml --run-id try1 --model additive --out /tmp/serving",
    ],
}

WRITES = {
    "sample-log": "Parquet files at tables.impressions, tables truth/labels and truth/examination",
    "simulate": "tables impressions, candidates, truth/labels, truth/examination",
    "build-examples": "table examples (nothing when the log breaks a rule)",
    "train": "models/<run_id>/<model>/ and table bias_curves",
    "score": "tables scores (change data feed on) and scores_latest",
    "evaluate": "table metrics, and prints them",
    "run": "all of the above under one run id (the log only with --simulate)",
    "compare": "table comparison/metrics, a Markdown report and a plot",
    "export": "<out>/<model>/relevance_model.pt and signature.json; reads models/<run_id>/, starts no Spark",
}


def _epilog(stage: str) -> str:
    job = "run" if stage == "run" else stage.replace("-", "_")
    lines = ["examples:"] + [f"  {e}" for e in EXAMPLES[stage]]
    if stage in ("sample-log", "export"):
        where = "" if stage == "export" else " (paths under tables.root)"
        return "\n".join(lines + ["", f"writes: {WRITES[stage]}{where}"])
    lines += [
        "  spark-submit --master spark://host:7077 --packages io.delta:delta-spark_2.13:4.0.0 \\",
        "    --archives ulr-spark-env.tar.gz#environment --conf spark.pyspark.python=./environment/bin/python \\",
        f"    jobs/{job}.py --config conf/demo.yaml",
        "    (cluster set-up: docs/cluster.md)",
        "",
        f"writes: {WRITES[stage]} (paths under tables.root; docs/tables.md)",
    ]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="ulr-spark",
        description="Remove position bias from click logs.",
        epilog="a run, stage by stage:\n  ulr-spark simulate --config conf/demo.yaml\n"
        "  ulr-spark build-examples --config conf/demo.yaml\n  ulr-spark train --config conf/demo.yaml --run-id try1\n"
        "  ulr-spark score --config conf/demo.yaml --run-id try1\n  ulr-spark evaluate --config conf/demo.yaml --run-id try1\n"
        "'ulr-spark STAGE --help' shows each stage's options, examples and outputs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subs = top.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage in list(STAGES) + ["run", "compare", "sample-log", "export"]:
        sub = subs.add_parser(
            stage,
            help=DESCRIPTIONS[stage],
            description=DESCRIPTIONS[stage],
            epilog=_epilog(stage),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--config", default="conf/demo.yaml", help="YAML config (default: conf/demo.yaml)")
        sub.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override a config key, e.g. --set train.epochs=3 (repeatable)",
        )
        sub.add_argument(
            "--run-id",
            help="run to write or read; train, run and compare start a new one by default, score, evaluate and "
            "export use the newest",
        )
        if stage == "sample-log":
            sub.add_argument("--shape", required=True, choices=["search", "marketplace", "grid"], help="shape of the log")
            sub.add_argument("--sessions", type=int, default=20_000, help="sessions (requests) to draw (default 20000)")
            sub.add_argument("--seed", type=int, default=0)
        if stage == "run":
            sub.add_argument(
                "--simulate", action="store_true",
                help="write a simulated log to tables.impressions first (never done unless asked)",
            )
        if stage in ("build-examples", "run"):
            sub.add_argument(
                "--full", action="store_true",
                help="with examples.incremental: rebuild every date and refit the feature transform",
            )
        if stage == "score":
            sub.add_argument(
                "--all", dest="all_pairs", action="store_true",
                help="with score.only_changed: score every pair, not only new or changed ones",
            )
        if stage == "train":
            sub.add_argument(
                "--resume", action="store_true",
                help="continue the run --run-id from its checkpoints (after it was killed or failed)",
            )
        if stage == "export":
            sub.add_argument("--out", required=True, help="folder to write <model>/relevance_model.pt and signature.json into")
            sub.add_argument("--model", help="export only this model of the run (default: every model)")
        if stage == "compare":
            sub.add_argument(
                "--report-only", action="store_true",
                help="rebuild the report and the plot of comparison --run-id from its tables, without training",
            )
    return top


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    quiet_petastorm_warnings()
    # Progress lines must show up as they happen, also when output goes to a log file.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        config = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as error:
        print(f"ulr-spark: {error}", file=sys.stderr)
        return 2
    if args.stage == "export":
        return export(config, args)

    from ulr_spark.io.spark import get_spark

    spark = get_spark(config.spark)
    try:
        if args.stage == "sample-log":
            from ulr_spark.simulation.sample_logs import write_sample

            print(f"sample-log: {write_sample(config, spark, args.shape, args.sessions, args.seed)}")
        elif args.stage == "run":
            run_all(config, spark, args.run_id, simulate=args.simulate, full=args.full)
        elif args.stage == "compare":
            from ulr_spark.experiments.compare import compare, write_report
            from ulr_spark.io.artifacts import check_run_id, new_run_id

            if args.run_id:
                check_run_id(args.run_id)  # before any scenario runs

            command = "ulr-spark " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
            if args.report_only:
                if not args.run_id:
                    raise ValueError("--report-only needs the --run-id of the comparison")
                write_report(config, spark, args.run_id, command)
            else:
                compare(config, spark, args.run_id or new_run_id(), command)
        else:
            if getattr(args, "resume", False) and not args.run_id:
                raise ValueError("train --resume needs the --run-id of the run to continue")
            run_stage(
                config, spark, args.stage, resolve_run_id(config, args.stage, args.run_id),
                full=getattr(args, "full", False), resume=getattr(args, "resume", False),
                all_pairs=getattr(args, "all_pairs", False),
            )
    except Exception as error:
        message = expected_failure(error)
        if message is None or os.environ.get("ULR_SPARK_TRACEBACK"):
            raise
        print(f"ulr-spark {args.stage}: {message}", file=sys.stderr)
        return 1
    return 0


def export(config, args: argparse.Namespace) -> int:
    """``ulr-spark export``: no Spark session, only the run's artifacts."""
    from ulr_spark.serving.export import export_run

    try:
        for path in export_run(config.tables.path("models"), args.out, args.run_id, args.model):
            print(f"export: {path}")
    except (FileNotFoundError, ValueError) as error:
        if os.environ.get("ULR_SPARK_TRACEBACK"):
            raise
        print(f"ulr-spark export: {error}", file=sys.stderr)
        return 1
    return 0


def job() -> None:
    """The ``ulr-spark-job`` entry point of scheduled jobs (Databricks ``python_wheel_task``):
    ``ulr-spark`` that fails the task when the command fails. A job runner calls an entry point
    and may ignore what it returns, so a failure must leave as an exception (``SystemExit``)."""
    code = main()
    if code:
        raise SystemExit(code)


def expected_failure(error: BaseException) -> Optional[str]:
    """The one-paragraph message of a failure a user can cause (bad input, a missing table or
    run, a concurrent writer, failed training), or None for a bug, whose traceback is shown
    (``ULR_SPARK_TRACEBACK=1`` shows it for every failure).

    Spark wraps an error raised in a Python worker (PythonException) and reports JVM-side ones
    (AnalysisException: a missing path or column) with long traces; only their first message
    is kept.
    """
    from pyspark.errors import AnalysisException, PythonException

    from ulr_spark.training.driver import TrainingFailedError

    if isinstance(error, (InvalidLogError, FileNotFoundError, ValueError, TrainingFailedError)):
        return str(error)
    if isinstance(error, PythonException):
        # The worker's own exception is the last "Name: message" line of its traceback.
        lines = [line for line in str(error).splitlines() if line.strip()]
        raised = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line.strip())]
        return (raised[-1] if raised else lines[-1]).strip() if lines else type(error).__name__
    if isinstance(error, AnalysisException):
        return str(error).strip().splitlines()[0]
    return None


if __name__ == "__main__":
    sys.exit(main())
