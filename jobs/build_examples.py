"""spark-submit entry point for the `build-examples` stage.

    spark-submit jobs/build_examples.py --config conf/demo.yaml [--run-id ID] [--set key=value ...]
"""

import sys

from ulr_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-examples"] + sys.argv[1:]))
