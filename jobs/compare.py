"""spark-submit entry point: every model on every scenario (see ulr_spark.experiments.compare)."""

import sys

from ulr_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare"] + sys.argv[1:]))
