"""Benchmark of model quality: every model on every scenario, 3 seeds, with the boosted-tree
baselines, side by side in one run (ulr_spark.experiments.compare). Writes docs/comparison.md and
docs/comparison_curves.png and prints the command that reproduces them.

    .venv/bin/python bench/compare.py [--config conf/compare.yaml] [--set key=value ...]
"""

import shlex
import sys
import time

from ulr_spark.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--config" not in args:
        args = ["--config", "conf/compare.yaml"] + args
    started = time.time()
    code = main(["compare"] + args)
    print(f"bench/compare.py: {time.time() - started:.0f}s; reproduce with:")
    print("  .venv/bin/python bench/compare.py " + " ".join(shlex.quote(a) for a in args))
    sys.exit(code)
