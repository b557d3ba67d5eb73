"""spark-submit entry point for the `run` stage.

    spark-submit jobs/run.py --config conf/demo.yaml [--run-id ID] [--set key=value ...]
"""

import sys

from ulr_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["run"] + sys.argv[1:]))
