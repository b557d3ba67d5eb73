"""spark-submit entry point for the `score` stage.

    spark-submit jobs/score.py --config conf/demo.yaml [--run-id ID] [--set key=value ...]
"""

import sys

from ulr_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["score"] + sys.argv[1:]))
