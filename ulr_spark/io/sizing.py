"""Spark and Petastorm settings that follow the size of the data (docs/scaling.md).

- Shuffle partitions: from the bytes a stage reads, about ``TARGET_SHUFFLE_PARTITION_BYTES``
  each, never fewer than two per core; adaptive query execution (AQE) then coalesces the small
  ones at run time, so setting too many costs little and too few spills.
- Example files and Petastorm row groups: Petastorm shards by row group, so every training
  process needs several row groups of equal size: equal files of one row group each, their
  number a multiple of the world size.
- Skew: the per-request aggregation keeps at most ``max_slate_size`` entries of a very long
  request, and the merge aggregation combines hot slates map-side, so neither needs AQE's
  skew-join splitting, which only acts on joins; it stays on for the joins of ``score``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyspark.sql import SparkSession

MIB = 1024 * 1024
TARGET_SHUFFLE_PARTITION_BYTES = 128 * MIB
ADVISORY_PARTITION_BYTES = 64 * MIB
TARGET_EXAMPLE_FILE_BYTES = 128 * MIB
MAX_ROW_GROUP_BYTES = 32 * MIB
MIN_ROW_GROUP_BYTES = 1 * MIB
ROW_GROUPS_PER_PROCESS = 4


def session_settings() -> dict[str, str]:
    """AQE settings every session gets (the shuffle partition count is set per stage)."""
    return {
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.adaptive.advisoryPartitionSizeInBytes": str(ADVISORY_PARTITION_BYTES),
        "spark.sql.adaptive.skewJoin.enabled": "true",
    }


# Delta keeps a table's file list (its snapshot) in this many partitions, and every query of the
# table scans them all: Delta's default of 50 costs a wave of 50 tasks per query on a small
# machine, for a list that is small unless the table has very many files.
DELTA_SNAPSHOT_PARTITIONS = "spark.databricks.delta.snapshotPartitions"
DELTA_DEFAULT_SNAPSHOT_PARTITIONS = 50
# Splits of a file scan: Spark cuts the input into at least this many per core (files and row
# groups permitting, and never more than 128 MiB each), so that a few large splits do not leave
# cores idle at the end of the scan.
MIN_SCAN_PARTITIONS = "spark.sql.files.minPartitionNum"
SCAN_SPLITS_PER_CORE = 4


def snapshot_partitions(cores: int) -> int:
    """Two per core, never more than Delta's default."""
    return min(DELTA_DEFAULT_SNAPSHOT_PARTITIONS, 2 * max(1, cores))


def scan_partitions(spark: SparkSession) -> int:
    return SCAN_SPLITS_PER_CORE * default_parallelism(spark)


def table_bytes(spark: SparkSession, path: str) -> int:
    """Size of a Delta table's current snapshot, from its log (no scan)."""
    from delta.tables import DeltaTable

    detail = DeltaTable.forPath(spark, path).detail().select("sizeInBytes").first()
    return int(detail["sizeInBytes"] or 0)


def default_parallelism(spark: SparkSession) -> int:
    return max(1, spark.sparkContext.defaultParallelism)


def shuffle_partitions(input_bytes: int, cores: int, minimum: int = 1) -> int:
    """Partitions of about TARGET_SHUFFLE_PARTITION_BYTES, at least two per core."""
    by_size = math.ceil(input_bytes / TARGET_SHUFFLE_PARTITION_BYTES)
    return max(minimum, 2 * cores, by_size)


def set_shuffle_partitions(spark: SparkSession, input_bytes: int, minimum: int = 1) -> int:
    n = shuffle_partitions(input_bytes, default_parallelism(spark), minimum)
    spark.conf.set("spark.sql.shuffle.partitions", str(n))
    return n


@dataclass(frozen=True)
class PetastormLayout:
    files: int  # a multiple of the world size
    row_group_bytes: int
    rows: int | None = None  # training rows, when known


def example_files(estimated_bytes: int, world_size: int, minimum: int) -> int:
    """Files of the examples table: about TARGET_EXAMPLE_FILE_BYTES each, a multiple of the
    number of training processes, and at least ``minimum``."""
    by_size = math.ceil(estimated_bytes / TARGET_EXAMPLE_FILE_BYTES)
    wanted = max(minimum, by_size, world_size)
    return math.ceil(wanted / world_size) * world_size


def petastorm_layout(data_bytes: int, world_size: int, minimum_files: int, rows: int | None = None) -> PetastormLayout:
    """Equal files of one row group each, at least ROW_GROUPS_PER_PROCESS per process.

    Petastorm hands out row groups to processes in turn. A file cut into one full row group
    and a small remainder would give one process every full group and the other every
    remainder, and with endless epochs the second loops over its few rows and overfits. So
    the number of files grows instead (each at most MAX_ROW_GROUP_BYTES), and the row-group
    limit is set well above the file size, so each file is exactly one row group. Given the
    number of ``rows``, the files are at most that many (rounded down to a multiple of the world
    size), so that none is empty.
    """
    per_file_limit = math.ceil(data_bytes / MAX_ROW_GROUP_BYTES)
    files = example_files(0, world_size, max(minimum_files, per_file_limit, world_size * ROW_GROUPS_PER_PROCESS))
    if rows is not None and rows >= world_size:
        # Never more files than rows: an empty partition writes no file, and Petastorm needs at
        # least one row group per process.
        files = min(files, rows // world_size * world_size)
    row_group = max(MIN_ROW_GROUP_BYTES, 4 * math.ceil(data_bytes / files))
    return PetastormLayout(files=files, row_group_bytes=row_group, rows=rows)


def example_row_bytes(max_slate_size: int, num_features: int) -> int:
    """A rough uncompressed width of one examples row (features dominate)."""
    return max_slate_size * (4 * num_features + 4 + 4 + 24) + 64


def is_shared_storage(url: str) -> bool:
    """Whether a cache URL is storage that every node reads (not a node's own disk).

    A ``file://`` path counts as shared only under ``/dbfs`` or when it is on a shared mount,
    which cannot be told from the path, so the caller warns instead of failing.
    """
    from urllib.parse import urlparse

    parsed = urlparse(url)
    scheme = parsed.scheme or "file"
    return scheme != "file" or parsed.path.startswith("/dbfs/")
