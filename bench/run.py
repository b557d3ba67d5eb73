"""The benchmark suite in one command: every size in a fresh process, then docs/benchmarks.md.

    .venv/bin/python bench/run.py [--sizes 1M,10M,100M] [--throughput-at 10M] [--root ulr-data/bench]

Per size (bench/scale.py): simulate, build-examples against DuckDB on the same Parquet files,
train and score, with the peak memory of every process; at ``--throughput-at`` also training
(Petastorm against in-memory tensors) and scoring (Spark against plain PyTorch) throughput.
The raw results go to docs/benchmarks.json next to the report.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.report import label, machine, parse_size, render  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M,100M", help="impressions per size, e.g. 1M,10M,100M")
    parser.add_argument("--throughput-at", default="10M", help="the size that also measures throughput")
    parser.add_argument("--root", default=os.path.join(ROOT, "ulr-data", "bench"))
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    parser.add_argument("--config", default="conf/scale.yaml")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--keep-data", action="store_true", help="keep each size's tables (they are large)")
    args = parser.parse_args(argv)

    sizes = [parse_size(s) for s in args.sizes.split(",")]
    throughput_at = parse_size(args.throughput_at)
    reproduce = ".venv/bin/python bench/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    commands = [reproduce]
    results = []
    started = time.time()
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for impressions in sizes:
        root = os.path.join(args.root, label(impressions))
        shutil.rmtree(root, ignore_errors=True)
        out = os.path.join(args.root, f"{label(impressions)}.json")
        command = [
            sys.executable, "-m", "bench.scale", "--impressions", str(impressions), "--root", root, "--json", out,
            "--config", args.config, "--train-steps", str(args.train_steps),
        ] + (["--throughput"] if impressions == throughput_at else [])
        commands.append("  " + " ".join(shlex.quote(c) for c in [".venv/bin/python"] + command[1:]))
        print(f"bench/run.py: {label(impressions)} impressions", flush=True)
        subprocess.run(command, cwd=ROOT, env=env, check=True)
        with open(out) as handle:
            results.append(json.load(handle))
        if not args.keep_data:
            shutil.rmtree(root, ignore_errors=True)
    total = time.time() - started
    report = render(results, machine(), commands, total)
    with open(args.output, "w") as handle:
        handle.write(report)
    with open(os.path.splitext(args.output)[0] + ".json", "w") as handle:
        json.dump(results, handle, indent=2)
    print(report)
    print(f"bench/run.py: {total / 60:.1f} min; reproduce with:\n  {reproduce}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
