"""spark-submit entry point for the `simulate` stage.

    spark-submit jobs/simulate.py --config conf/demo.yaml [--run-id ID] [--set key=value ...]
"""

import sys

from ulr_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["simulate"] + sys.argv[1:]))
