"""The Spark session, with Delta Lake configured.

Delta's jars are not in the delta-spark wheel: Spark resolves
``io.delta:delta-spark_2.13:<version>`` from Maven Central through Ivy on first use and caches it
(``~/.ivy2.5.2``). On a cluster, or under ``spark-submit --packages``, the session already exists
and is reused as it is, so the master and resources come from there.
"""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from ulr_spark.config import SparkConfig
from ulr_spark.sizing import session_settings

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def under_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands Python a gateway port."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(config: SparkConfig) -> SparkSession:
    """Return the active session, or build one with Delta configured.

    Under ``spark-submit`` the master, resources and jars come from the command line
    (``--master``, ``--packages io.delta:delta-spark_2.13:4.0.0``); only the Delta SQL
    settings are added. Otherwise the session runs on ``config.master``.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if under_spark_submit():
        builder = (
            SparkSession.builder.appName(config.app_name)
            .config("spark.sql.extensions", DELTA_EXTENSION)
            .config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
        )
        for key, value in session_settings().items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("WARN")
        return spark
    # Workers must run the same interpreter as the driver (the project's virtualenv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    builder = (
        SparkSession.builder.appName(config.app_name)
        .master(config.master)
        .config("spark.sql.extensions", DELTA_EXTENSION)
        .config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        .config("spark.driver.memory", config.driver_memory)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        # Delta's own retention checks stay on; only schema auto-merge is left off on purpose.
        .config("spark.databricks.delta.schema.autoMerge.enabled", "false")
    )
    for key, value in {**session_settings(), **config.conf}.items():
        builder = builder.config(key, value)

    from delta import configure_spark_with_delta_pip

    spark = configure_spark_with_delta_pip(builder).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
