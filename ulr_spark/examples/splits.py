"""The page layout and the held-out split of the log's rows (docs/own_logs.md, "Held-out
clicks"): Spark columns and checks that build-examples applies before grouping requests."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ulr_spark import schema
from ulr_spark.config import Config, LogColumns
from ulr_spark.examples.validation import Violation

SPLIT_TEST, SPLIT_VALIDATION = schema.SPLIT_TEST, schema.SPLIT_VALIDATION
# Seeds of the request-id hashes that draw the test and validation shares (fixed: a rerun
# draws the same requests).
TEST_HASH_SEED, VALIDATION_HASH_SEED = 17, 23


def grid_position(cols: LogColumns, width: int) -> F.Column:
    """The reading-order slot of a grid cell logged as 1-based (row, col): (row - 1) x width + col."""
    return ((F.col(cols.row).cast("long") - 1) * F.lit(width) + F.col(cols.col).cast("long")).cast("int")


def split_column(config: Config, last_day) -> F.Column:
    """The split of a log row: ``test`` (the last test_days days, or a hashed share of the
    requests), else ``validation`` (a hashed share of the rest), else ``train``."""
    split, cols = config.examples.split, config.columns
    request = F.col(cols.request_id).cast("string")

    def share(seed: int, fraction: float) -> F.Column:
        return F.pmod(F.xxhash64(request, F.lit(seed)), F.lit(1_000_000)) < F.lit(int(round(fraction * 1_000_000)))

    test = F.lit(False)
    if split.test_days:
        test = F.to_date(F.col(cols.event_date)) > F.date_sub(F.lit(last_day).cast("date"), split.test_days)
    elif split.test_share:
        test = share(TEST_HASH_SEED, split.test_share)
    validation = share(VALIDATION_HASH_SEED, split.validation_share) if split.validation_share else F.lit(False)
    return (
        F.when(test, F.lit(SPLIT_TEST)).when(validation, F.lit(SPLIT_VALIDATION)).otherwise(F.lit(schema.SPLIT_TRAIN))
    )


def log_extent(log: DataFrame, config: Config) -> tuple[int, object]:
    """(grid width, last event date): what the layout and the test split by days need, in one
    aggregation, only when they are needed."""
    cols, split = config.columns, config.examples.split
    aggregates = []
    if cols.grid_from_columns:
        aggregates.append(F.max(F.col(cols.col).cast("long")).alias("width"))
    if split.test_days:
        aggregates.append(F.max(F.to_date(F.col(cols.event_date))).alias("last_day"))
    if not aggregates:
        return config.examples.grid_columns, None
    row = log.agg(*aggregates).first()
    width = int(row["width"] or 1) if cols.grid_from_columns else config.examples.grid_columns
    return width, (row["last_day"] if split.test_days else None)


def split_violations(config: Config, split_requests: dict[str, int], total_rows: int) -> list[Violation]:
    """A split that leaves training, or a requested test split, without a request."""
    split, cols = config.examples.split, config.columns
    found = []
    rule_of_test = (
        f"the last test_days={split.test_days} day(s)" if split.test_days else f"test_share={split.test_share} of the requests"
    )
    if (split.test_days or split.test_share) and not split_requests[SPLIT_TEST]:
        found.append(Violation(
            cols.event_date if split.test_days else cols.request_id,
            f"the test split ({rule_of_test}) must hold at least one request; it is empty", total_rows,
        ))
    if not split_requests[schema.SPLIT_TRAIN] and split_requests[SPLIT_TEST] + split_requests[SPLIT_VALIDATION]:
        found.append(Violation(
            cols.event_date if split.test_days else cols.request_id,
            "the training split must hold at least one request; the test and validation splits took every one",
            total_rows,
        ))
    return found
