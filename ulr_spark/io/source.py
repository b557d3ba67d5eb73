"""The user's impression log, read and never written (docs/own_logs.md, "The source log").

``tables.impressions`` names the log in the form ``source.format`` says: a Delta path, a table
of the metastore or Unity Catalog (``catalog.schema.table``), or Parquet or CSV files. The
optional ``source.filter`` (SQL) and event-date range are applied on read, so every stage that
reads the log (build-examples, score from impressions) sees the same rows.
"""

from __future__ import annotations

import glob

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ulr_spark.config import Config


class SourceNotFoundError(FileNotFoundError):
    """The configured impression log does not exist."""


def source_location(config: Config) -> str:
    """The path or table name of the log."""
    if config.source.format == "table":
        return config.tables.impressions
    return config.tables.path("impressions")


def read_log(config: Config, spark: SparkSession) -> DataFrame:
    """The impression log with ``source.filter`` and the date range applied.

    Raises:
        SourceNotFoundError: the path or table does not exist.
        ValueError: the date range is set but the log has no ``columns.event_date`` column, or
            the filter does not parse against the log's columns.
    """
    source, where = config.source, source_location(config)
    if source.format == "table":
        if not spark.catalog.tableExists(where):
            raise SourceNotFoundError(f"source: table {where!r} (tables.impressions, source.format=table) does not exist")
        log = spark.read.table(where)
    else:
        if "://" not in where and not glob.glob(where):
            raise SourceNotFoundError(f"source: {where} (tables.impressions, source.format={source.format}) does not exist")
        reader = spark.read.format(source.format)
        if source.format == "csv":
            reader = reader.options(header="true", inferSchema="true")
        log = reader.options(**source.options).load(where)
    if source.start_date or source.end_date:
        date = config.columns.event_date
        if date not in log.columns:
            raise ValueError(
                f"source: the date range needs column '{date}' (columns.event_date), which the log at {where} lacks"
            )
        day = F.to_date(F.col(date))
        if source.start_date:
            log = log.where(day >= F.lit(source.start_date).cast("date"))
        if source.end_date:
            log = log.where(day <= F.lit(source.end_date).cast("date"))
    if source.filter:
        try:
            log = log.where(F.expr(source.filter))
            _ = log.schema  # resolve now: a bad filter fails here, naming the key
        except Exception as error:
            raise ValueError(f"source.filter {source.filter!r} does not apply to the log at {where}: {str(error).splitlines()[0]}") from None
    return log
