"""spark-submit entry point for the `evaluate` stage.

    spark-submit jobs/evaluate.py --config conf/demo.yaml [--run-id ID] [--set key=value ...]
"""

import sys

from ulr_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate"] + sys.argv[1:]))
