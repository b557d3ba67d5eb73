"""The Spark session, with Delta Lake configured.

Delta's jars are not in the delta-spark wheel: Spark resolves
``io.delta:delta-spark_2.13:<version>`` from Maven Central through Ivy on first use and caches it
(``~/.ivy2.5.2``). On a cluster, under ``spark-submit --packages`` or in a Databricks notebook,
the session already exists or is started by spark-submit, so the master, resources and jars come
from there; only the settings the library relies on are applied (``RUNTIME_SETTINGS``).
"""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from ulr_spark.config import SparkConfig
from ulr_spark.io.sizing import DELTA_SNAPSHOT_PARTITIONS, default_parallelism, session_settings, snapshot_partitions

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
DELTA_PACKAGE = "io.delta:delta-spark_2.13:4.0.0"

# Settings the stages rely on, whoever started the session: Arrow for pandas <-> Spark (the
# simulator's array columns cannot be inferred without it), no silent schema merges into tables.
RUNTIME_SETTINGS = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.databricks.delta.schema.autoMerge.enabled": "false",
    **session_settings(),
}


STAGE_PROPERTY = "ulr_spark.stage"


def stage_group(spark: SparkSession, stage: str, run_id: str) -> None:
    """Group the Spark jobs of a stage (Spark UI: Jobs, by group) under its name and run id."""
    description = f"ulr-spark {stage} run_id={run_id}"
    spark.sparkContext.setJobGroup(f"ulr-spark {stage}", description, False)
    spark.sparkContext.setLocalProperty(STAGE_PROPERTY, description)


def describe_step(spark: SparkSession, step: str) -> None:
    """Name the next Spark jobs after the step of the stage that runs them, so a person watching
    the Spark UI of a long run sees where it is (e.g. "ulr-spark score run_id=...: write scores")."""
    stage = spark.sparkContext.getLocalProperty(STAGE_PROPERTY) or "ulr-spark"
    spark.sparkContext.setJobDescription(f"{stage}: {step}")


def under_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands Python a gateway port."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _apply_runtime_settings(spark: SparkSession, extra: dict[str, str]) -> SparkSession:
    for key, value in {**RUNTIME_SETTINGS, **extra}.items():
        spark.conf.set(key, value)
    return _size_delta_snapshots(spark)


def _size_delta_snapshots(spark: SparkSession) -> SparkSession:
    """Delta's snapshot partitions from the cores (sizing.snapshot_partitions), unless whoever
    started the session set them."""
    if spark.conf.get(DELTA_SNAPSHOT_PARTITIONS, None) is None:
        spark.conf.set(DELTA_SNAPSHOT_PARTITIONS, str(snapshot_partitions(default_parallelism(spark))))
    return spark


def get_spark(config: SparkConfig) -> SparkSession:
    """Return the active session, or build one with Delta configured.

    An active session (a notebook's, or a test's) and one started by ``spark-submit`` keep their
    master, resources and jars (``--master``, ``--packages io.delta:delta-spark_2.13:4.0.0``); they
    get ``RUNTIME_SETTINGS`` and, for spark-submit, the Delta SQL extension. Otherwise the session
    runs on ``config.master`` with ``config.conf`` on top.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return _apply_runtime_settings(active, {})
    if under_spark_submit():
        spark = (
            SparkSession.builder.appName(config.app_name)
            .config("spark.sql.extensions", DELTA_EXTENSION)
            .config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("WARN")
        return _apply_runtime_settings(spark, {})
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
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in {**RUNTIME_SETTINGS, **config.conf}.items():
        builder = builder.config(key, value)

    from delta import configure_spark_with_delta_pip

    spark = configure_spark_with_delta_pip(builder).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return _size_delta_snapshots(spark)


def runs_on_cluster(spark: SparkSession) -> bool:
    """The session's master decides, not the config: spark-submit may have chosen another."""
    return not spark.sparkContext.master.startswith("local")


def cpu_threads_per_process(spark: SparkSession, num_processes: int) -> int:
    """Locally the driver's cores are shared by the processes; on a cluster each process is one
    barrier task and owns ``spark.task.cpus`` cores of its executor."""
    if runs_on_cluster(spark):
        return int(spark.conf.get("spark.task.cpus", "1"))
    # The cores this process may run on (taskset, a cgroup's cpuset), where the OS says (Linux).
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    return max(1, cores // num_processes)
