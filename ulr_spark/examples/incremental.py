"""Incremental build-examples (``examples.incremental``): only the event dates of the log that
are new, or whose rows changed, are built; their rows of the examples table are replaced in one
transaction, and every other date's rows stay as they were (docs/operations.md).

A date's **fingerprint** is a digest of the log files that hold its rows, its row count, and the
settings that shape examples (columns, features, the examples section, the source's filter). The
examples table keeps each row's date and the fingerprint it was built from, in the same
transaction as the rows, so "which dates changed" is read from the table itself: a date whose
fingerprint differs (a file added, rewritten or removed, a row count changed) is rebuilt, and a
changed setting rebuilds every date (a full build: the transform must be refitted); a date the
log no longer holds (for instance, outside ``source.start_date``) is kept.

The feature transform and the context ids of the existing examples are reused, so rows built on
different days share one encoding: a categorical value first seen after the full build is out of
vocabulary (index 0) until the next full build (``build-examples --full``) refits the transform.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from typing import Optional

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from ulr_spark import schema
from ulr_spark.config import Config
from ulr_spark.examples.validation import InvalidLogError, Violation
from ulr_spark.features.encoding import FeatureEncoder, encoder_of_examples
from ulr_spark.io.delta import read_table, sql_string, table_exists


@dataclass(frozen=True)
class DatePlan:
    """What one incremental build does."""

    full: bool  # build every date and overwrite the table (first build, --full, or a format change)
    dates: tuple[datetime.date, ...]  # dates to build (all of them when full)
    fingerprints: dict[datetime.date, str]
    unchanged: int  # dates of the log left as they were
    reason: str
    encoder: Optional[FeatureEncoder] = None  # the transform to reuse (None: fit one)
    contexts: dict[str, int] = field(default_factory=dict)  # context ids to keep

    def restrict(self, log: DataFrame, date_column: str) -> DataFrame:
        """The log rows of the dates to build (a filter on the date, so a log partitioned by
        date is read only in those partitions)."""
        if self.full:
            return log
        return log.where(F.to_date(F.col(date_column)).isin(list(self.dates)))

    def predicate(self) -> str:
        """The examples rows this build replaces."""
        days = ", ".join(f"DATE {sql_string(d.isoformat())}" for d in self.dates)
        return f"{schema.EVENT_DATE} IN ({days})"


def settings_digest(config: Config) -> str:
    """A digest of every setting that changes the examples built from the same rows."""
    shaping = {
        "columns": config.columns.model_dump(),
        "features": config.features.model_dump(),
        "examples": config.examples.model_dump(exclude={"partitions"}),
        "source": config.source.model_dump(include={"format", "filter", "options"}),
        "models": sorted({config.train.variant(name)[0] for name in config.train.models}),  # merge_on_clicks follows them
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_fingerprints(log: DataFrame, date_column: str, settings: str) -> dict[datetime.date, str]:
    """The fingerprint of every event date of ``log``: one aggregation reading only the date
    and the file of each row (for a log partitioned by date, file metadata only).

    Raises:
        InvalidLogError: rows without a date (they belong to no date, so an incremental build
            could never place them).
    """
    rows = (
        log.select(F.to_date(F.col(date_column)).alias("day"), F.input_file_name().alias("file"))
        .groupBy("day", "file").count().collect()
    )
    undated = sum(int(r["count"]) for r in rows if r["day"] is None)
    if undated:
        raise InvalidLogError(
            [Violation(date_column, "must be a date on every row when examples.incremental is on", undated)],
            sum(int(r["count"]) for r in rows),
        )
    per_day: dict[datetime.date, list[tuple[str, int]]] = {}
    for r in rows:
        per_day.setdefault(r["day"], []).append((r["file"], int(r["count"])))
    # "<settings>:<files>": a changed setting is told apart from a changed date (plan_dates).
    return {day: f"{settings}:{hashlib.sha256(json.dumps(sorted(files)).encode()).hexdigest()[:24]}" for day, files in per_day.items()}


def built_fingerprints(examples: DataFrame) -> dict[datetime.date, str]:
    """The fingerprint each date of an incrementally built examples table was built from."""
    pairs = examples.select(schema.EVENT_DATE, schema.SOURCE_FINGERPRINT).distinct().collect()
    return {r[schema.EVENT_DATE]: r[schema.SOURCE_FINGERPRINT] for r in pairs}


def plan_dates(config: Config, spark: SparkSession, log: DataFrame, full: bool) -> DatePlan:
    """Which dates to build, and what to reuse from the examples already written.

    A full build happens on the first run, when asked (``full``), or when the examples table was
    not built incrementally (no date column)."""
    settings = settings_digest(config)
    current = source_fingerprints(log, config.columns.event_date, settings)
    path = config.tables.path("examples")
    every = tuple(sorted(current))
    if full:
        return DatePlan(True, every, current, 0, "a full rebuild was asked for (--full)")
    if not table_exists(spark, path):
        return DatePlan(True, every, current, 0, "no examples table yet")
    examples = read_table(spark, path)
    if schema.SOURCE_FINGERPRINT not in examples.columns:
        return DatePlan(True, every, current, 0, "the examples table was not built incrementally")
    built = built_fingerprints(examples)
    if any(not str(digest).startswith(settings + ":") for digest in built.values()):
        # Another transform, layout or slate size: every date must be re-encoded alike.
        return DatePlan(True, every, current, 0, "the settings that shape examples changed since they were built")
    changed = tuple(day for day in every if built.get(day) != current[day])
    encoder = encoder_of_examples(examples)
    contexts = {r[0]: int(r[1]) for r in examples.select(schema.CONTEXT_KEY, schema.CONTEXT_ID).distinct().collect()}
    new = sum(day not in built for day in changed)
    reason = f"{new} new and {len(changed) - new} changed date(s); {len(every) - len(changed)} unchanged"
    return DatePlan(False, changed, {d: current[d] for d in changed}, len(every) - len(changed), reason, encoder, contexts)


def request_date(date_column: str) -> Column:
    """The date of a log row, part of the request key of dated examples: a request logged across
    midnight makes one slate per date, so a date's examples never depend on another date's rows
    (in full and incremental builds alike)."""
    return F.to_date(F.col(date_column))


def with_fingerprints(examples: DataFrame, plan: DatePlan) -> DataFrame:
    """Each row's date fingerprint, written with it."""
    mapping = F.create_map(*[F.lit(v) for day, digest in plan.fingerprints.items() for v in (day, digest)])
    return examples.withColumn(schema.SOURCE_FINGERPRINT, mapping[F.col(schema.EVENT_DATE)])


def extended_contexts(existing: dict[str, int], keys: list[str]) -> dict[str, int]:
    """The existing context ids, with keys never seen before appended (sorted) after them: an
    id, once given, never changes, so a model trained earlier still reads its context."""
    out = dict(existing)
    for key in sorted(k for k in keys if k not in existing):
        out[key] = max(out.values(), default=-1) + 1
    return out
