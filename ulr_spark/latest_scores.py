"""The tables scoring keeps up to date besides the run's rows: ``scores_latest``, the newest
score of every (model, query, item), and, when ``score.only_changed`` is on, which pairs need
no new score because their features did not change since their newest score
(docs/operations.md, "Scoring only what changed").

A pair's features are compared through ``features_digest``, Spark's ``xxhash64`` of the encoded
feature vector the models read, written with every score.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ulr_spark import schema
from ulr_spark.io.delta import (
    AUTO_MERGE_SCHEMA,
    CHANGE_FEED,
    Provenance,
    create_table,
    read_table,
    session_setting,
    set_table_properties,
    sql_string,
    table_exists,
    tag_sql_commits,
    with_column_comments,
    with_retries,
    with_stats_columns,
)


def features_digest() -> F.Column:
    """The digest of a pair's encoded features (64-bit)."""
    return F.xxhash64(F.col(schema.FEATURES))


def unchanged_pairs(spark: SparkSession, latest_path: str, pairs_source: str, models: list[str]) -> DataFrame:
    """(query_id, item_id, features_digest) of the pairs whose newest score, for every one of
    ``models``, came from ``pairs_source`` with the same features: they need no new score.
    Empty when ``scores_latest`` does not exist or predates the digest."""
    key = [schema.QUERY_ID, schema.ITEM_ID, schema.FEATURES_DIGEST]
    empty = spark.createDataFrame([], f"{schema.QUERY_ID} string, {schema.ITEM_ID} string, {schema.FEATURES_DIGEST} long")
    if not table_exists(spark, latest_path):
        return empty
    latest = read_table(spark, latest_path)
    if schema.FEATURES_DIGEST not in latest.columns:
        return empty
    return (
        latest.where((F.col(schema.PAIRS_SOURCE) == pairs_source) & F.col(schema.MODEL).isin(models))
        .groupBy(*key).agg(F.countDistinct(schema.MODEL).alias("models"))
        .where(F.col("models") == len(models)).select(*key)
    )


def create_with_change_feed(df: DataFrame, path: str, table: str, provenance: Provenance) -> bool:
    """Create the table at ``path`` from ``df`` with its change feed on, unless it exists (then
    False: the caller's MERGE follows). A concurrent creator makes this fail and
    :func:`with_retries` repeat it, and the repeat finds the table."""
    if table_exists(df.sparkSession, path):
        return False
    writer = with_column_comments(df).write.format("delta").option("userMetadata", provenance.user_metadata)
    create_table(with_stats_columns(writer.option(CHANGE_FEED, "true"), table), path)
    return True


def upsert_run_scores(scores: DataFrame, path: str, provenance: Provenance) -> None:
    """Insert or replace the given (run, source, model, query, item) rows of ``scores`` in one
    MERGE (retried on conflicts), leaving the run's other rows as they are: a rerun after a kill
    rescores what ``scores_latest`` lacks and never duplicates a row."""
    from delta.tables import DeltaTable

    spark = scores.sparkSession
    key = (schema.RUN_ID, schema.PAIRS_SOURCE, schema.MODEL, schema.QUERY_ID, schema.ITEM_ID)

    def write() -> None:
        if create_with_change_feed(scores, path, "scores", provenance):
            return
        on = " AND ".join(f"old.{c} = new.{c}" for c in key)
        DeltaTable.forPath(spark, path).alias("old").merge(scores.alias("new"), on).whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()

    with tag_sql_commits(spark, provenance.user_metadata), session_setting(spark, AUTO_MERGE_SCHEMA, "true"):
        with_retries(write, path)
    set_table_properties(spark, path, "scores", provenance, change_feed=True)


LATEST_KEY = (schema.MODEL, schema.QUERY_ID, schema.ITEM_ID)


def update_latest_scores(
    run_scores: DataFrame, path: str, provenance: Provenance, pairs_source: str, models: list[str], tolerance: float,
    delete_missing: bool = True,
) -> None:
    """Merge a run's scores into the table of the newest score per (model, query, item).

    One MERGE transaction (retried on conflicts): pairs new to the table are inserted; a pair's
    row is replaced when its score moved by more than ``tolerance`` x max(1, |score|), or when
    it came from another source; with ``delete_missing``, rows of this source and these models
    that the run did not score are deleted (not when only changed pairs were scored). So the
    table's change feed holds the scores that really changed.
    """
    from delta.tables import DeltaTable

    spark = run_scores.sparkSession

    if with_retries(lambda: create_with_change_feed(run_scores, path, schema.SCORES_LATEST, provenance), path):
        set_table_properties(spark, path, schema.SCORES_LATEST, provenance, change_feed=True)
        return
    on = " AND ".join(f"latest.{c} = run.{c}" for c in LATEST_KEY)
    moved = (
        f"NOT (abs(latest.{schema.SCORE} - run.{schema.SCORE}) <= {float(tolerance)!r} * greatest(1.0, abs(latest.{schema.SCORE}))) "
        f"OR NOT (latest.{schema.PAIRS_SOURCE} <=> run.{schema.PAIRS_SOURCE})"
    )
    names = ", ".join(sql_string(m) for m in models)
    gone = f"latest.{schema.PAIRS_SOURCE} = {sql_string(pairs_source)} AND latest.{schema.MODEL} IN ({names})"

    def merge() -> None:
        builder = (
            DeltaTable.forPath(spark, path)
            .alias("latest")
            .merge(run_scores.alias("run"), on)
            .whenMatchedUpdateAll(condition=moved)
            .whenNotMatchedInsertAll()
        )
        (builder.whenNotMatchedBySourceDelete(condition=gone) if delete_missing else builder).execute()

    # A scores_latest written before the pairs_source column gains it (older rows read null).
    with tag_sql_commits(spark, provenance.user_metadata), session_setting(spark, AUTO_MERGE_SCHEMA, "true"):
        with_retries(merge, path)
    set_table_properties(spark, path, schema.SCORES_LATEST, provenance, change_feed=True)
