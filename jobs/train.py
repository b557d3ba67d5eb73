"""spark-submit entry point for the `train` stage.

    spark-submit jobs/train.py --config conf/demo.yaml [--run-id ID] [--set key=value ...]
"""

import sys

from ulr_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["train"] + sys.argv[1:]))
