"""Delta reads and writes. Every data write is one Delta transaction tagged with the run id.

Reruns are idempotent: a stage either overwrites its whole table (inputs such as the log and the
examples) or replaces exactly the rows of its run (``replaceWhere``), never appends duplicates.

Each written table also carries, for downstream readers, column comments (from
:data:`ulr_spark.schema.COLUMN_COMMENTS`, in the same transaction as the data) and table
properties naming the newest write: run id, stage, models and config hash. Delta sets arbitrary
properties of an existing table only through ``ALTER TABLE``, so they follow in a second,
metadata-only commit with the same ``userMetadata``; the data commit never depends on it
(docs/decisions.md).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Optional, TypeVar

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ulr_spark import schema

PROPERTY_PREFIX = "ulr_spark."
CHANGE_FEED = "delta.enableChangeDataFeed"
STATS_COLUMNS_PROPERTY = "delta.dataSkippingStatsColumns"
# Delta computes min/max statistics of the first 32 columns of every row it writes. The score
# tables are filtered only by run, pairs source and model (replaceWhere, evaluate, the latest
# merge), and their ids are random strings whose file ranges skip nothing, so they keep
# statistics of those columns alone: the per-row cost of a scores write drops (docs/scaling.md).
STATS_COLUMNS = {
    table: ",".join((schema.RUN_ID, schema.PAIRS_SOURCE, schema.MODEL)) for table in ("scores", schema.SCORES_LATEST)
}
USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
AUTO_MERGE_SCHEMA = "spark.databricks.delta.schema.autoMerge.enabled"
# Columns Delta adds to a change feed.
CHANGE_TYPE = "_change_type"
COMMIT_VERSION = "_commit_version"


@dataclass(frozen=True)
class Provenance:
    """Who wrote a table: recorded in its commits and its properties."""

    run_id: str
    stage: str
    config_hash: str
    models: Sequence[str] = ()

    @classmethod
    def of(cls, config, run_id: str, stage: str, models: Sequence[str] = ()) -> Provenance:
        return cls(run_id=run_id, stage=stage, config_hash=config.fingerprint(), models=tuple(models))

    @property
    def user_metadata(self) -> str:
        return f"ulr-spark run_id={self.run_id}"

    def properties(self) -> dict[str, str]:
        values = {"run_id": self.run_id, "stage": self.stage, "config_hash": self.config_hash}
        if self.models:
            values["models"] = ",".join(self.models)
        return {PROPERTY_PREFIX + k: v for k, v in values.items()}


def read_table(spark: SparkSession, path: str, version: Optional[int] = None) -> DataFrame:
    """A Delta table, at its current version or at ``version`` (time travel), so that every
    read of one stage sees the same snapshot."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path)


def table_version(spark: SparkSession, path: str) -> int:
    """The table's current version (from its log)."""
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, path).history(1).first()["version"])


def run_rows(spark: SparkSession, path: str, run_id: str) -> DataFrame:
    """The rows one run wrote to a run-keyed table (metrics, scores, bias curves)."""
    return read_table(spark, path).where(F.col(schema.RUN_ID) == run_id)


def table_exists(spark: SparkSession, path: str) -> bool:
    """Whether ``path`` holds a Delta table, as Spark sees it. Delta is asked, never Python's
    ``os``: on Databricks the two name the same place differently (``dbfs:/x`` vs ``/dbfs/x``)."""
    from delta.tables import DeltaTable

    return bool(DeltaTable.isDeltaTable(spark, path))


# Delta's optimistic-concurrency conflicts: another job committed to the table between this
# write's read of it and its commit. Every write here recomputes from scratch when repeated
# (an overwrite, a replaceWhere of the run's rows, a MERGE, a property change), so each is
# retried. Creating a new table races the same way (the second creator finds it existing).
RETRYABLE_CONFLICTS = (
    "ConcurrentAppendException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException",
    "MetadataChangedException",
    "ProtocolChangedException",
    "DELTA_PATH_EXISTS",
    "PATH_ALREADY_EXISTS",
)
WRITE_ATTEMPTS = 6

T_ = TypeVar("T_")


class WriteConflictError(ValueError):
    """A Delta write kept conflicting with concurrent writers; nothing of it was committed."""


def conflict_kind(error: BaseException) -> Optional[str]:
    """The Delta conflict an exception reports, or None when it is not one."""
    names = {type(error).__name__, *(c.__name__ for c in type(error).__mro__)}
    text = f"{type(error).__name__}: {str(error)[:2000]}"
    for kind in RETRYABLE_CONFLICTS:
        if kind in names or kind in text:
            return kind
    return None


def with_retries(action: Callable[[], T_], table: str, attempts: int = WRITE_ATTEMPTS) -> T_:
    """Run a Delta write, repeating it when a concurrent writer made it conflict (with random,
    growing pauses).

    Raises:
        WriteConflictError: it still conflicted after ``attempts`` tries (one line, naming the
            table and the conflict).
    """
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as error:
            kind = conflict_kind(error)
            if kind is None:
                raise
            if attempt == attempts:
                raise WriteConflictError(
                    f"table {table} was changed by another job at the same time ({kind}) on each of {attempts} tries; "
                    "nothing of this write was committed: rerun when the other job has finished"
                ) from None
            time.sleep(random.uniform(0.5, 1.5) * min(8.0, 0.5 * 2**attempt))
    raise AssertionError("unreachable")


def with_column_comments(df: DataFrame) -> DataFrame:
    """Attach the documented comment of every known column (kept by Delta in the schema)."""
    for name in df.columns:
        comment = schema.COLUMN_COMMENTS.get(name)
        if comment:
            df = df.withMetadata(name, {**df.schema[name].metadata, "comment": comment})
    return df


def overwrite_table(
    df: DataFrame,
    path: str,
    table: str,
    provenance: Provenance,
    partition_by: Optional[list[str]] = None,
    change_feed: bool = False,
) -> None:
    """Replace the whole table in one transaction (the schema too). ``table`` is the name the
    table is documented under (:data:`ulr_spark.schema.TABLE_COMMENTS`)."""
    writer = (
        with_column_comments(df)
        .write.format("delta")
        .mode("overwrite")
        .option("overwriteSchema", "true")
        .option("userMetadata", provenance.user_metadata)
    )
    if change_feed:
        writer = writer.option(CHANGE_FEED, "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    with_retries(lambda: writer.save(path), path)
    set_table_properties(df.sparkSession, path, table, provenance, change_feed)


def replace_rows(
    df: DataFrame, path: str, table: str, provenance: Provenance, predicate: str, change_feed: bool = False,
    merge_schema: bool = False,
) -> None:
    """Replace the rows matching ``predicate`` with ``df`` in one transaction.

    ``df`` must only hold rows that match the predicate (Delta checks it). On a table that does
    not exist yet this creates it, with the change feed on from its first version if asked.
    ``merge_schema`` lets ``df`` add columns to an existing table (older rows read them as null).
    A conflict with a concurrent writer is retried (:func:`with_retries`).
    """
    spark = df.sparkSession

    def write() -> None:
        writer = with_column_comments(df).write.format("delta").option("userMetadata", provenance.user_metadata)
        if table_exists(spark, path):
            if merge_schema:
                writer = writer.option("mergeSchema", "true")
            writer.mode("overwrite").option("replaceWhere", predicate).save(path)
        else:
            if change_feed:
                writer = writer.option(CHANGE_FEED, "true")
            create_table(with_stats_columns(writer, table), path)

    with_retries(write, path)
    set_table_properties(spark, path, table, provenance, change_feed)


def with_stats_columns(writer, table: str):
    """``writer`` creating ``table`` with its statistics columns (STATS_COLUMNS), if it has any."""
    return writer.option(STATS_COLUMNS_PROPERTY, STATS_COLUMNS[table]) if table in STATS_COLUMNS else writer


def create_table(writer, path: str) -> None:
    """Save a new Delta table at ``path`` (``errorifexists``).

    Raises:
        ValueError: ``path`` holds files that are not a Delta table (not retried: no other job
            will make them one).
        Exception: Delta's or Spark's error when another job created the table first, which
            :func:`with_retries` repeats (the repeat then finds the table).
    """
    try:
        writer.mode("errorifexists").save(path)
    except Exception as error:
        spark = SparkSession.getActiveSession()
        if conflict_kind(error) in ("DELTA_PATH_EXISTS", "PATH_ALREADY_EXISTS") and spark and not table_exists(spark, path):
            raise ValueError(f"{path} holds files that are not a Delta table; move them away or point the table elsewhere") from None
        raise


def set_table_properties(
    spark: SparkSession, path: str, table: str, provenance: Provenance, change_feed: bool = False
) -> None:
    """The newest writer's properties (and the table's description) in one metadata commit."""
    properties = {**provenance.properties(), "comment": schema.TABLE_COMMENTS.get(table, "")}
    if change_feed:
        properties[CHANGE_FEED] = "true"
    if table in STATS_COLUMNS:  # tables created before the setting get it too (new files only)
        properties[STATS_COLUMNS_PROPERTY] = STATS_COLUMNS[table]
    assignments = ", ".join(f"{sql_string(k)} = {sql_string(v)}" for k, v in properties.items() if v)
    with tag_sql_commits(spark, provenance.user_metadata):
        with_retries(lambda: spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({assignments})"), path)


@contextlib.contextmanager
def session_setting(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    """Within the block, the Spark session has ``key`` set to ``value``; its previous setting
    comes back after."""
    previous = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def tag_sql_commits(spark: SparkSession, user_metadata: str) -> contextlib.AbstractContextManager[None]:
    """Within the block, Delta commits of SQL statements (MERGE, ALTER TABLE), which take no
    writer options, carry ``user_metadata``."""
    return session_setting(spark, USER_METADATA_CONF, user_metadata)


def table_properties(spark: SparkSession, path: str) -> dict[str, str]:
    return dict(spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()["properties"])


def commits_of_run(spark: SparkSession, path: str, run_id: str) -> list[int]:
    """The versions of the table whose commit carries the run id."""
    from delta.tables import DeltaTable

    history = DeltaTable.forPath(spark, path).history().select("version", "userMetadata")
    tag = Provenance(run_id, "", "").user_metadata
    return sorted(r["version"] for r in history.where(F.col("userMetadata") == tag).collect())


def read_changes_since_run(spark: SparkSession, path: str, run_id: str) -> DataFrame:
    """The table's change feed after the last commit of ``run_id``: what later runs changed.

    Rows carry Delta's ``_change_type`` (insert, delete, update_preimage, update_postimage) and
    ``_commit_version``. Empty when nothing was committed after the run.
    """
    from delta.tables import DeltaTable

    versions = commits_of_run(spark, path, run_id)
    if not versions:
        raise ValueError(f"no commit of run_id={run_id!r} in {path}")
    latest = DeltaTable.forPath(spark, path).history(1).first()["version"]
    start = versions[-1] + 1
    reader = spark.read.format("delta").option("readChangeFeed", "true")
    if start > latest:
        return reader.option("startingVersion", latest).load(path).where(F.lit(False))
    return reader.option("startingVersion", start).load(path)


def sql_string(value: str) -> str:
    """Quote a value for a SQL predicate."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
