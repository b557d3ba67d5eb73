"""Delta reads and writes. Every write is one Delta transaction tagged with the run id.

Reruns are idempotent: a stage either overwrites its whole table (inputs such as the log and the
examples) or replaces exactly the rows of its run (``replaceWhere``), never appends duplicates.
"""

from __future__ import annotations

import os
from typing import Optional

from pyspark.sql import DataFrame, SparkSession


def read_table(spark: SparkSession, path: str) -> DataFrame:
    return spark.read.format("delta").load(path)


def table_exists(spark: SparkSession, path: str) -> bool:
    from delta.tables import DeltaTable

    local = path[len("file:") :] if path.startswith("file:") else path
    if "://" not in path and not os.path.exists(os.path.join(local, "_delta_log")):
        return False
    return DeltaTable.isDeltaTable(spark, path)


def overwrite_table(
    df: DataFrame,
    path: str,
    run_id: str,
    partition_by: Optional[list[str]] = None,
) -> None:
    """Replace the whole table in one transaction (the schema too)."""
    writer = (
        df.write.format("delta")
        .mode("overwrite")
        .option("overwriteSchema", "true")
        .option("userMetadata", _user_metadata(run_id))
    )
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(path)


def replace_rows(df: DataFrame, path: str, run_id: str, predicate: str) -> None:
    """Replace the rows matching ``predicate`` with ``df`` in one transaction.

    ``df`` must only hold rows that match the predicate (Delta checks it). On a table that does
    not exist yet this creates it.
    """
    spark = df.sparkSession
    writer = df.write.format("delta").option("userMetadata", _user_metadata(run_id))
    if table_exists(spark, path):
        writer.mode("overwrite").option("replaceWhere", predicate).save(path)
    else:
        writer.mode("errorifexists").save(path)


def sql_string(value: str) -> str:
    """Quote a value for a SQL predicate."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _user_metadata(run_id: str) -> str:
    return f"ulr-spark run_id={run_id}"
