"""The benchmark suite in one command: every size in a fresh process, then docs/benchmarks.md.

    .venv/bin/python bench/run.py [--sizes 1M,10M,100M] [--throughput-at 10M] [--root ulr-data/bench]

Per size (bench/scale.py): simulate, build-examples against DuckDB on the same Parquet files,
train and score, with the peak memory of every process; at ``--throughput-at`` also training
(the trainer's inputs against in-memory tensors) and scoring (Spark against plain PyTorch)
throughput. Then, on one core, the whole job against a click-model library
(bench/click_library.py). The raw results go to docs/benchmarks.json next to the report, and
the per-core figures to their block in docs/scaling.md.
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

from bench.report import label, machine, parse_size, per_core_figures, render, replace_block  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M,100M", help="impressions per size, e.g. 1M,10M,100M")
    parser.add_argument("--throughput-at", default="10M", help="the size that also measures throughput")
    parser.add_argument("--root", default=os.path.join(ROOT, "ulr-data", "bench"))
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    parser.add_argument("--config", default="conf/scale.yaml")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--keep-data", action="store_true", help="keep each size's tables (they are large)")
    parser.add_argument("--click-library-sessions", type=int, default=1_000_000,
                        help="sessions of the one-core comparison with a click-model library (0: skip it)")
    parser.add_argument("--scaling", default=os.path.join(ROOT, "docs", "scaling.md"), help="whose per-core block to rewrite")
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
    library = None
    if args.click_library_sessions:
        out = os.path.join(args.root, "click_library.json")
        command = [sys.executable, "-m", "bench.click_library", "--root", os.path.join(args.root, "click_library"),
                   "--json", out, "--sessions", str(args.click_library_sessions)]
        commands.append("  " + " ".join(shlex.quote(c) for c in [".venv/bin/python"] + command[1:]))
        print(f"bench/run.py: one core against a click-model library, {args.click_library_sessions:,} sessions", flush=True)
        # A failure here (e.g. no network to install the library) must not lose the sizes' report.
        if subprocess.run(command, cwd=ROOT, env=env).returncode == 0:
            with open(out) as handle:
                library = json.load(handle)
        else:
            print("bench/run.py: the click-model library comparison failed; the report goes without it", flush=True)
        if not args.keep_data:
            shutil.rmtree(os.path.join(args.root, "click_library"), ignore_errors=True)
    total = time.time() - started
    report = render(results, machine(), commands, total)
    if library is not None:
        from bench.click_library import render_click_library

        head, tail = report.split("## Commands", 1)
        report = head + render_click_library(library) + "\n## Commands" + tail
    with open(args.output, "w") as handle:
        handle.write(report)
    with open(os.path.splitext(args.output)[0] + ".json", "w") as handle:
        json.dump({"sizes": results, "click_library": library}, handle, indent=2)
    with open(args.scaling) as handle:
        scaling = handle.read()
    with open(args.scaling, "w") as handle:
        handle.write(replace_block(scaling, per_core_figures(results, library)))
    print(report)
    print(f"bench/run.py: {total / 60:.1f} min; reproduce with:\n  {reproduce}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
