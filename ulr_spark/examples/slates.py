"""From the impression log to position-context training examples (docs/design.md, "Examples").

One example per distinct slate: the query, the context, and the shown items in slot order with
their features. Identical slates are merged into one row whose ``impressions`` counts the
requests and whose ``clicks[i]`` sums the clicks on entry i, so the weighted log-likelihood of
the merged row equals the sum over the requests it replaces.

Arrays are padded to ``max_slate_size`` entries (position 0 marks padding) so Petastorm hands
the trainer dense tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ulr_spark import schema
from ulr_spark.config import Config, LogColumns
from ulr_spark.examples.incremental import extended_contexts, plan_dates, request_date, with_fingerprints
from ulr_spark.examples.splits import grid_position, log_extent, split_column, split_violations
from ulr_spark.examples.totals import SPLITS, context_vocabulary, merged_totals, share_of_pairs_in_several_slots, trainable_violations
from ulr_spark.examples.validation import InvalidLogError, RequestChecks, Violation, sampled_feature_length, schema_violations
from ulr_spark.features.encoding import fit_encoder, with_encoder_metadata
from ulr_spark.io.delta import Provenance, overwrite_table, replace_rows, session_setting
from ulr_spark.io.sizing import MIN_SCAN_PARTITIONS, example_files, example_row_bytes, scan_partitions, set_shuffle_partitions, table_bytes
from ulr_spark.io.source import read_log, source_location
from ulr_spark.io.spark import describe_step

# The encoded relevance features of a log row (FeatureEncoder.column) and the split of its request.
ENCODED = "__encoded_features"
ROW_SPLIT = "__split"
ENTRY = "__entry"  # a log row's slate entry (position, item, features, click)

# Below this share of (query, item) pairs logged in more than one slot, position and relevance
# can hardly be told apart (Hager et al., 2025), and build-examples says so.
MIN_SHARE_IN_SEVERAL_SLOTS = 0.05


@dataclass(frozen=True)
class ExamplesSummary:
    log_rows: int
    requests: int
    rows_beyond_max_slate: int
    # Requests whose every row sits beyond max_slate_size: they make no example (counted here).
    requests_beyond_max_slate: int
    clicks: int
    examples: int
    num_features: int
    contexts: int
    share_of_pairs_in_several_slots: float
    compression: float  # requests per example row, from merging identical slates
    split_requests: dict = None  # type: ignore[assignment]  # requests per split (train, validation, test)
    missing_values: dict = None  # type: ignore[assignment]  # nulls and NaN imputed, per numeric column
    grid_columns: int = 0
    # Incremental builds: the dates built, the dates left as they were, the log files read for them.
    dates_built: tuple = ()
    dates_unchanged: int = 0
    files_read: int = 0
    plan: str = ""


def requests_to_slates(
    log: DataFrame, cols: LogColumns, max_slate_size: int, checks: RequestChecks, width: int | None = None,
    features: str | None = None, dated: bool = False,
) -> DataFrame:
    """One row per request: query, context, split, the padded, slot-ordered slate arrays, and the
    request's rule counts (``check_*``). This is the one pass over the log.

    ``features`` names the column of each row's encoded feature vector (``width`` values;
    default: the array column as is) and a ``__split`` column, when present, the row's split.
    Rows beyond ``max_slate_size`` are counted but not collected, so a very long request
    (infinite scroll) costs a counter, not a huge array. ``dated`` adds the request's
    ``event_date`` to the request key (incremental builds: a request across midnight makes one
    slate per date).
    """
    k = max_slate_size
    d = checks.num_features if width is None else width
    no_features = F.array_repeat(F.lit(0.0).cast("float"), d)
    # Missing values are padded here, row by row, so the slate's arrays need no lambda.
    entry = F.when(
        F.col(cols.position) <= k,
        F.struct(
            F.coalesce(F.col(cols.position).cast("int"), F.lit(0)).alias("position"),
            F.coalesce(F.col(cols.item_id).cast("string"), F.lit("")).alias("item_id"),
            F.coalesce(F.col(features or cols.features).cast(T.ArrayType(T.FloatType())), no_features).alias("features"),
            F.coalesce(F.col(cols.clicked).cast("int"), F.lit(0)).alias("clicked"),
        ),
    )
    split = F.min(ROW_SPLIT) if ROW_SPLIT in log.columns else F.lit(schema.SPLIT_TRAIN)
    dates = [request_date(cols.event_date).alias(schema.EVENT_DATE)] if dated else []
    # The entry is a column of its own: inside collect_list Spark would interpret it row by row.
    per_request = log.withColumn(ENTRY, entry).groupBy(F.col(cols.request_id).alias("request_id"), *dates).agg(
        # Structs sort by their first field, the position; collect_list skips the nulls.
        F.sort_array(F.collect_list(ENTRY)).alias("slate"),
        split.alias(schema.SPLIT),
        *checks.aggregates(),
    )

    def padded(field: str, pad: F.Column) -> F.Column:
        """The first k entries' ``field``, padded to k with ``pad``."""
        return F.slice(F.concat(F.col("slate")[field], F.array_repeat(pad, k)), 1, k)

    return per_request.select(
        F.col("min_query").alias(schema.QUERY_ID),
        F.col("min_context").alias(schema.CONTEXT_KEY),
        F.col(schema.SPLIT),
        F.size("slate").cast("int").alias(schema.SLATE_SIZE),
        padded("item_id", F.lit("")).alias(schema.ITEM_IDS),
        padded("position", F.lit(0)).alias(schema.POSITIONS),
        F.flatten(padded("features", no_features)).alias(schema.FEATURES),
        padded("clicked", F.lit(0)).alias("request_clicks"),
        *([F.col(schema.EVENT_DATE)] if dated else []),
        *checks.counts(),
    )


SLATE_KEY = [schema.QUERY_ID, schema.CONTEXT_KEY, schema.SPLIT, schema.SLATE_SIZE, schema.ITEM_IDS, schema.POSITIONS, schema.FEATURES]


def slate_key(slates: DataFrame) -> list[str]:
    """The columns two requests must share to merge: with dates, only requests of one date merge
    (so a date's rows can be replaced alone)."""
    return SLATE_KEY + ([schema.EVENT_DATE] if schema.EVENT_DATE in slates.columns else [])


def merge_identical_slates(slates: DataFrame, max_slate_size: int, on_clicks: bool = False) -> DataFrame:
    """Merge requests that showed the same slate in the same context into weighted rows; with
    ``on_clicks`` only requests that also clicked the same entries (MixEM's exact E-step).

    Counts and sums are combined map-side before the shuffle, so a hot query that repeats one
    slate millions of times leaves each task as one partial row.
    """
    checks = RequestChecks.count_columns(slates)
    sums = [F.sum(F.col("request_clicks")[i]).alias(f"clicks_of_entry_{i}") for i in range(max_slate_size)]
    key = slate_key(slates) + (["request_clicks"] if on_clicks else [])
    merged = slates.groupBy(*key).agg(
        F.count(F.lit(1)).alias(schema.IMPRESSIONS), *sums, *[F.sum(c).alias(c) for c in checks]
    )
    clicks = F.array(*[F.col(f"clicks_of_entry_{i}").cast("int") for i in range(max_slate_size)])
    return merged.select(*slate_key(slates), F.col(schema.IMPRESSIONS).cast("long"), clicks.alias(schema.CLICKS), *checks)


def merges_on_clicks(config: Config) -> bool:
    """``examples.merge_on_clicks``, or (when null) whether a configured model is a MixEM."""
    if config.examples.merge_on_clicks is not None:
        return config.examples.merge_on_clicks
    return any(config.train.variant(name)[0] == "mixem" for name in config.train.models)


def unmerged_slates(slates: DataFrame) -> DataFrame:
    """One row per request (weight 1): what training sees without merging."""
    checks = RequestChecks.count_columns(slates)
    return slates.select(
        *slate_key(slates), F.lit(1).cast("long").alias(schema.IMPRESSIONS), F.col("request_clicks").alias(schema.CLICKS), *checks
    )


def with_context_ids(examples: DataFrame, vocab: dict[str, int]) -> DataFrame:
    mapping = F.create_map(*[F.lit(v) for pair in vocab.items() for v in pair])
    return examples.select(
        schema.QUERY_ID, schema.CONTEXT_KEY, mapping[F.col(schema.CONTEXT_KEY)].cast("int").alias(schema.CONTEXT_ID), schema.SPLIT,
        schema.SLATE_SIZE,
        schema.ITEM_IDS, schema.POSITIONS, schema.FEATURES, schema.IMPRESSIONS, schema.CLICKS,
        *[c for c in (schema.EVENT_DATE, schema.SOURCE_FINGERPRINT) if c in examples.columns],
    )


def build_examples(config: Config, spark, run_id: str, full: bool = False) -> ExamplesSummary:
    """Validate the log, build the examples and write them in one transaction.

    With ``examples.incremental`` only the event dates that are new or changed are read and
    built, and exactly their rows are replaced (:mod:`ulr_spark.examples.incremental`);
    ``full`` rebuilds every date and refits the feature transform.

    The log is read (never written): the rules are counted inside the per-request aggregation,
    the merged rows are cached, and nothing is written unless every rule holds. Fitting the
    feature transform (numeric statistics, vocabularies) and, for a grid of rows and columns or
    a test split by days, the log's extent add one aggregation each. The log's scan is cut into
    several splits per core (``sizing.scan_partitions``).
    """
    with session_setting(spark, MIN_SCAN_PARTITIONS, str(scan_partitions(spark))):
        return _build_examples(config, spark, run_id, full)


def _build_examples(config: Config, spark, run_id: str, full: bool) -> ExamplesSummary:
    cols, k, fc = config.columns, config.examples.max_slate_size, config.features
    describe_step(spark, "check the log's schema")
    log = read_log(config, spark)
    where = source_location(config)
    plan = None
    if config.examples.incremental:
        if cols.event_date not in log.columns:
            rule = "required by examples.incremental (examples are built and replaced by date): column is missing"
            rows = log.count()
            raise InvalidLogError([Violation(cols.event_date, rule, rows)], rows)
        plan = plan_dates(config, spark, log, full)
        print(f"build-examples: incremental: {plan.reason}" + (": nothing to build" if not plan.dates else ""))
        if not plan.dates:
            return ExamplesSummary(0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, {}, {}, dates_unchanged=plan.unchanged, plan=plan.reason)
        log = plan.restrict(log, cols.event_date)
    total = log.count()
    if total == 0:
        raise InvalidLogError([Violation("<all>", "the log must not be empty (after source.filter and the date range)", 0)], 0)
    categorical_columns = tuple(c.column for c in fc.categorical)
    broken_schema = schema_violations(log, cols, total, tuple(fc.numeric), categorical_columns)
    if config.examples.split.test_days and cols.event_date not in log.columns:
        broken_schema.append(Violation(cols.event_date, "required by examples.split.test_days: column is missing", total))
    if broken_schema:
        raise InvalidLogError(broken_schema, total)

    if config.source.format == "delta":
        set_shuffle_partitions(spark, table_bytes(spark, where), config.spark.shuffle_partitions)
    describe_step(spark, "fit the feature transform")
    reused = plan.encoder if plan is not None and not plan.full else None
    width, last_day = log_extent(log, config)
    if reused is not None:
        if width > reused.grid_columns and cols.grid_from_columns:
            rule = f"must not exceed the grid width {reused.grid_columns} the examples were built with (rebuild with --full)"
            raise InvalidLogError([Violation(cols.col, rule, log.where(F.col(cols.col) > reused.grid_columns).count())], total)
        width = reused.grid_columns
    if cols.grid_from_columns:
        derived = f"{cols.row},{cols.col}"
        log = log.withColumn(derived, grid_position(cols, width))
        cols = cols.model_copy(update={"position": derived})
    array_length = sampled_feature_length(log, cols)
    log = log.withColumn(ROW_SPLIT, split_column(config, last_day))
    # Fitted on the training rows only: a value first seen in validation or test is out of
    # vocabulary there, as it would be for a model serving new data.
    training = F.col(ROW_SPLIT) == schema.SPLIT_TRAIN
    missing: dict[str, int] = {}
    unfit: list[tuple[str, str, int]] = []
    if reused is not None:  # one transform for every date (module docstring of examples.incremental)
        encoder, array_length = reused, reused.array_length
    else:
        encoder, missing, unfit = fit_encoder(log, cols.features, array_length, fc, cols.query_id, cols.item_id, width, training)
    if unfit:
        raise InvalidLogError([Violation(c, rule, rows) for c, rule, rows in unfit], total)
    log = log.withColumn(ENCODED, encoder.column())
    checks = RequestChecks(cols, array_length, k)
    slates = requests_to_slates(log, cols, k, checks, encoder.width, ENCODED, dated=plan is not None)
    merged = (
        merge_identical_slates(slates, k, merges_on_clicks(config))
        if config.examples.merge_identical_slates else unmerged_slates(slates)
    )
    merged = merged.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        describe_step(spark, "group requests into slates, count the rules, merge identical slates")
        totals = merged_totals(merged, k)
        split_requests = {name: int(totals[f"requests_{name}"] or 0) for name in SPLITS}
        broken = checks.violations(totals) + trainable_violations(totals, cols, k, total)
        broken += split_violations(config, split_requests, total)
        if broken:
            raise InvalidLogError(broken, total)
        share = share_of_pairs_in_several_slots(merged)
        if share < MIN_SHARE_IN_SEVERAL_SLOTS:
            print(
                f"build-examples: WARNING only {share:.1%} of (query, item) pairs were shown in more than one slot; "
                "unless item features overlap across slots, the bias and relevance towers cannot be told apart"
            )
        beyond, empty_requests = int(totals["check_beyond_rows"]), int(totals["empty_requests"])
        if beyond:
            print(
                f"build-examples: {beyond} log row(s) sit beyond max_slate_size={k} and are not used; "
                f"{empty_requests} request(s) have no row within it and make no example"
            )
        for name, count in missing.items():
            if count:
                print(f"build-examples: numeric feature '{name}': {count} null or NaN value(s) imputed with the mean "
                      "(and flagged by its missing-value indicator)")
        files = example_files(
            int(totals["examples"]) * example_row_bytes(k, encoder.width),
            config.train.num_processes,
            config.examples.partitions,
        )
        describe_step(spark, "write the examples")
        empty = F.col(schema.SLATE_SIZE) == 0
        vocabulary = context_vocabulary(totals["contexts"])
        if reused is not None and plan is not None:
            vocabulary = extended_contexts(plan.contexts, list(vocabulary))
        examples = with_context_ids(merged.where(~empty), vocabulary)
        examples = with_fingerprints(examples, plan) if plan is not None else examples
        examples = with_encoder_metadata(examples, encoder).repartition(files)
        # Context ids (beside context_key) and the transform (the features' metadata) travel in
        # the rows: one transaction writes everything the trainer needs.
        provenance = Provenance.of(config, run_id, "build-examples")
        if plan is not None and not plan.full:
            replace_rows(examples, config.tables.path("examples"), "examples", provenance, plan.predicate())
        else:
            overwrite_table(examples, config.tables.path("examples"), "examples", provenance, [schema.EVENT_DATE] if plan else None)
    finally:
        merged.unpersist()
    n_examples, requests = int(totals["examples"]), int(totals["requests"])
    return ExamplesSummary(
        log_rows=int(totals["check_log_rows"]),
        requests=requests,
        rows_beyond_max_slate=beyond,
        requests_beyond_max_slate=empty_requests,
        clicks=int(totals["clicks"]),
        examples=n_examples,
        num_features=encoder.width,
        contexts=len(vocabulary),
        share_of_pairs_in_several_slots=share,
        compression=(requests - empty_requests) / n_examples if n_examples else 0.0,
        split_requests=split_requests,
        missing_values=missing,
        grid_columns=width,
        dates_built=tuple(d.isoformat() for d in plan.dates) if plan else (), dates_unchanged=plan.unchanged if plan else 0,
        files_read=len(log.inputFiles()) if plan else 0, plan=plan.reason if plan else "",
    )
