"""A log ulr-spark did not simulate, in the shapes teams bring (docs/own_logs.md): read and never
written, features from any mix of columns, a held-out split, and quality measured on held-out
clicks beside the classic baselines."""

import math
import os

import pandas as pd
import pytest
from pyspark.sql import functions as F

from tests.conftest import small_config
from ulr_spark import click_metrics, schema
from ulr_spark.evaluation import ndcg
from ulr_spark.examples.slates import build_examples
from ulr_spark.examples.splits import split_column
from ulr_spark.examples.validation import InvalidLogError
from ulr_spark.features.encoding import encoder_of_examples
from ulr_spark.io.delta import Provenance, overwrite_table, read_table, table_version
from ulr_spark.io.source import SourceNotFoundError, read_log
from ulr_spark.pipeline import run_all, run_stage
from ulr_spark.simulation.sample_logs import search_log, write_sample_log

SEARCH_COLUMNS = {
    "request_id": "session_id", "query_id": "query", "item_id": "url", "position": "rank", "clicked": "click",
    "event_date": "day", "features": "",
}


def _metric(metrics, model, metric, position=None):
    rows = [r for r in metrics if r[schema.MODEL] == model and r[schema.METRIC] == metric and r[schema.POSITION] == position]
    assert len(rows) == 1, (model, metric, position, metrics)
    return rows[0][schema.VALUE]


def test_baselines_and_perplexity_reproduce_a_hand_computed_case(spark):
    cols = list(click_metrics.ENTRY_COLUMNS)
    train = spark.createDataFrame(
        [("q", "a", "default", 1, 4.0, 2.0), ("q", "b", "default", 2, 4.0, 1.0),
         ("q", "b", "default", 1, 2.0, 2.0), ("q", "a", "default", 2, 2.0, 0.0)], cols,
    )
    test = spark.createDataFrame([("q", "a", "default", 1, 1.0, 1.0), ("q", "c", "default", 2, 1.0, 0.0)], cols)
    # Click rate by rank: rank 1 (2 + 2) / (4 + 2), rank 2 (1 + 0) / (4 + 2).
    by_rank = {r[schema.POSITION]: r["probability"] for r in click_metrics.click_rate_by_rank(train, test).collect()}
    assert by_rank == {1: pytest.approx(4 / 6), 2: pytest.approx(1 / 6)}

    # One EM step from alpha = gamma = 1/2 (no-click posteriors 1/3 each):
    # alpha_a = (2 + 2/3 + 0 + 2/3 + 1) / (6 + 2), alpha_b = (1 + 1 + 2 + 0 + 1) / (6 + 2);
    # gamma_1 = (2 + 2/3 + 2) / 6, gamma_2 = (1 + 1 + 0 + 2/3) / 6.
    alphas, gamma, unseen_alpha, unseen_gamma = click_metrics.fit_pbm(train, iterations=1)
    alpha = {r[schema.ITEM_ID]: r["alpha"] for r in alphas.collect()}
    assert alpha == {"a": pytest.approx((2 + 4 / 3 + 1) / 8), "b": pytest.approx(5 / 8)}
    assert gamma == {"default#1": pytest.approx((4 + 2 / 3) / 6), "default#2": pytest.approx((2 + 2 / 3) / 6)}
    assert unseen_alpha == pytest.approx((6 * alpha["a"] + 6 * alpha["b"]) / 12)
    assert unseen_gamma == pytest.approx((gamma["default#1"] + gamma["default#2"]) / 2)
    pbm = {r[schema.ITEM_ID]: r["probability"] for r in click_metrics.pbm_probabilities(test, (alphas, gamma, unseen_alpha, unseen_gamma)).collect()}
    assert pbm == {"a": pytest.approx(alpha["a"] * gamma["default#1"]), "c": pytest.approx(unseen_alpha * gamma["default#2"])}

    # Perplexity at rank r = 2^(-mean log2 P(observed)), overall = mean over ranks.
    scored = spark.createDataFrame(
        [("m", 1, 3.0, 1.0, 0.5), ("m", 2, 2.0, 0.0, 0.2)], [schema.MODEL, schema.POSITION, "sessions", "clicked", "probability"]
    )
    metrics = click_metrics.likelihood_metrics(scored).collect()
    rank1 = 2 ** -((1 * math.log2(0.5) + 2 * math.log2(0.5)) / 3)
    rank2 = 2 ** -(2 * math.log2(0.8) / 2)
    assert _metric(metrics, "m", "perplexity", 1) == pytest.approx(rank1)
    assert _metric(metrics, "m", "perplexity", 2) == pytest.approx(rank2)
    assert _metric(metrics, "m", "perplexity") == pytest.approx((rank1 + rank2) / 2)
    assert _metric(metrics, "m", "log_likelihood") == pytest.approx((3 * math.log(0.5) + 2 * math.log(0.8)) / 3)


def _search_config(root, **sections):
    # As conf/own_search_log.yaml: on an id-only log the flat start and a constant rate
    # (docs/own_logs.md, "Id-only logs train the old way").
    defaults = {
        "columns": SEARCH_COLUMNS,
        "features": {"query_item": True},
        "examples": {"partitions": 4, "split": {"test_days": 3, "validation_share": 0.1}},
        "train": {"num_processes": 2, "models": ["additive"], "epochs": 30, "batch_size": 256, "bias_curve_sample": 5000,
                  "model_options": {"bias_init": "zero"}, "learning_rate_schedule": "constant",
                  "bias_curve_bootstrap": 20},
        "score": {"source": "impressions"},
        "evaluate": {"pbm_iterations": 15},
    }
    for key, value in sections.items():
        defaults.setdefault(key, {}).update(value)
    return small_config(root, **defaults)


@pytest.mark.slow
def test_id_only_search_log_under_pbm_matches_em_and_leaves_the_log_untouched(spark, tmp_path):
    # 150 queries x 20 urls, each pair shown about 65 times, and a noisy logging ranker that
    # shows pairs at many ranks: the curve is identifiable from the log. With 400 queries and a
    # sharper ranker (the sample of docs/own_logs.md) rarely seen, rarely clicked pairs get
    # shrunk attractiveness and every model's curve comes out too steep (docs/own_logs.md).
    sample = search_log(sessions=20_000, queries=150, seed=3, logging_noise=2.0)
    config = _search_config(tmp_path)
    log_path = config.tables.path("impressions")
    # The team's own Delta log, written by someone else: ulr-spark must never change it.
    spark.createDataFrame(sample.log).write.format("delta").save(log_path)
    before = table_version(spark, log_path)

    run_all(config, spark, "own-search")

    assert table_version(spark, log_path) == before
    metrics = read_table(spark, config.tables.path("metrics")).where(F.col(schema.RUN_ID) == "own-search").collect()
    additive = _metric(metrics, "additive", "perplexity")
    by_rank = _metric(metrics, click_metrics.CLICK_RATE_BY_RANK, "perplexity")
    pbm = _metric(metrics, click_metrics.PBM_EM, "perplexity")
    print(f"held-out perplexity: additive {additive:.4f}, click rate by rank {by_rank:.4f}, pbm_em {pbm:.4f}")
    assert additive < by_rank, (additive, by_rank)
    assert additive <= pbm * 1.003, (additive, pbm)
    assert all(r[schema.SPLIT] == "test" for r in metrics)
    curve = read_table(spark, config.tables.path("bias_curves")).where(F.col(schema.MODEL) == "additive").toPandas()
    curve = curve.set_index(schema.POSITION).sort_index()
    truth = sample.examination["default"]
    errors = [abs(curve.loc[k, schema.EXAMINATION] - truth[k - 1] / truth[0]) / (truth[k - 1] / truth[0]) for k in range(2, 11)]
    print(f"additive curve: mean relative error {sum(errors) / len(errors):.4f} over ranks 2..10")
    assert sum(errors) / len(errors) < 0.10, errors
    # Each written cell carries its training impressions and an interval around it.
    assert (curve[schema.IMPRESSIONS] > 0).all()
    # Slot 1 is 1 by definition, its interval too: compare with a rounding tolerance.
    assert (curve[schema.EXAMINATION_LOW] <= curve[schema.EXAMINATION] + 1e-9).all()
    assert (curve[schema.EXAMINATION] <= curve[schema.EXAMINATION_HIGH] + 1e-9).all()


@pytest.mark.slow
def test_marketplace_log_of_numeric_and_categorical_columns_beats_naive(spark, tmp_path):
    config = small_config(
        tmp_path,
        source={"format": "parquet"},
        columns={
            "request_id": "page_view", "query_id": "search_term", "item_id": "listing_id", "position": "slot",
            "clicked": "is_click", "event_date": "dt", "features": "", "context": ["device"],
        },
        features={
            "numeric": ["price", "rating", "reviews", "shipping_days", "discount", "seller_score", "photos", "age_days"],
            "categorical": [{"column": "site", "vocabulary": 10}, {"column": "country", "vocabulary": 50},
                            {"column": "category", "buckets": 64}],
        },
        examples={"partitions": 4, "split": {"test_days": 2}},
        train={"num_processes": 2, "models": ["naive", "additive"], "epochs": 10, "batch_size": 256, "bias_curve_sample": 3000},
        score={"source": "impressions"},
    )
    sample = write_sample_log("marketplace", config.tables.path("impressions"), sessions=12_000, seed=5)
    log = sample.log
    assert log["price"].max() / log["seller_score"].abs().max() > 1000  # scales 1000x apart

    summary = build_examples(config, spark, "own-market")
    assert summary.missing_values["shipping_days"] == int(log["shipping_days"].isna().sum()) > 0
    assert summary.split_requests["test"] > 0 and summary.split_requests["train"] > 0
    encoder = encoder_of_examples(read_table(spark, config.tables.path("examples")))
    # Standardised with the training rows' statistics (the split as build-examples draws it).
    raw = read_log(config, spark)
    training = raw.where(split_column(config, raw.agg(F.max(F.to_date(F.col("dt")))).first()[0]) == schema.SPLIT_TRAIN)
    price = next(n for n in encoder.numeric if n.column == "price")
    assert price.mean == pytest.approx(training.agg(F.avg("price")).first()[0], rel=1e-9)
    assert price.mean != pytest.approx(log["price"].mean(), rel=1e-6)
    for stage in ("train", "score"):
        run_stage(config, spark, stage, "own-market")

    scores = read_table(spark, config.tables.path("scores")).where(F.col(schema.RUN_ID) == "own-market")
    labels = spark.createDataFrame(sample.truth[["query_id", "item_id", "label"]])
    scored = scores.join(labels, [schema.QUERY_ID, schema.ITEM_ID]).select(schema.MODEL, schema.QUERY_ID, schema.ITEM_ID, schema.SCORE, schema.LABEL)
    values = {r[schema.MODEL]: r[schema.VALUE] for r in ndcg(scored, [10]).collect()}
    print(f"NDCG@10 against the generator's labels: {values}")
    # Measured gaps over four runs: +0.005 to +0.017.
    assert values["additive"] > values["naive"], values


def _write_parquet(spark, path, frame):
    df = spark.createDataFrame(frame)
    if "vec" in df.columns:
        df = df.withColumn("vec", F.col("vec").cast("array<float>"))  # an all-empty column has no element type
    df.coalesce(1).write.mode("overwrite").parquet(path)


def _market_rows(**changes):
    rows = []
    for r in range(6):
        for p in range(1, 4):
            row = {"rid": f"r{r}", "q": f"q{r % 2}", "item": f"i{p}", "pos": p, "click": int(p == 1),
                   "day": pd.Timestamp(2026, 1, 1 + r).date(), "price": 10.0 * p, "kind": f"k{p}", "vec": [0.5 * p]}
            row.update({k: v(r, p) for k, v in changes.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def _market_config(root, **sections):
    base = {
        "source": {"format": "parquet"},
        "columns": {"request_id": "rid", "query_id": "q", "item_id": "item", "position": "pos", "clicked": "click",
                    "event_date": "day", "features": "vec"},
        "features": {"numeric": ["price"], "categorical": [{"column": "kind", "vocabulary": 5}]},
        "examples": {"partitions": 2, "split": {"validation_share": 0.0}},
    }
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return small_config(root, **base)


@pytest.mark.parametrize(
    "changes, sections, column, rule",
    [
        ({}, {"features": {"numeric": ["price", "weight"]}}, "weight", "required column is missing"),
        ({"price": lambda r, p: f"{p}"}, {}, "price", "numeric feature must be a number"),
        ({"vec": lambda r, p: []}, {}, "vec", "must not be empty"),
        ({}, {"features": {"categorical": [{"column": "kind", "vocabulary": 2}]}}, "kind", "has 3 distinct values, more than its vocabulary=2"),
        ({"price": lambda r, p: None}, {}, "price", "entirely null, NaN or infinite"),
        ({}, {"examples": {"split": {"test_days": 6, "validation_share": 0.0}}}, "day", "training split must hold at least one request"),
        ({}, {"examples": {"split": {"test_share": 0.0001, "validation_share": 0.0}}}, "rid", "test split (test_share=0.0001 of the requests) must hold"),
    ],
    ids=["missing-column", "wrong-type", "empty-array", "vocabulary-overflow", "all-null", "train-empty", "test-empty"],
)
def test_bad_feature_or_split_input_is_named_and_nothing_is_written(spark, tmp_path, changes, sections, column, rule):
    config = _market_config(tmp_path, **sections)
    frame = _market_rows(**changes)
    if "price" in changes and frame["price"].isna().all():
        frame["price"] = frame["price"].astype("float64")
    _write_parquet(spark, config.tables.path("impressions"), frame)
    with pytest.raises(InvalidLogError) as caught:
        build_examples(config, spark, "bad")
    assert any(v.column == column and rule in v.rule for v in caught.value.violations), str(caught.value)
    assert not os.path.exists(config.tables.path("examples"))


def test_source_filters_dates_and_refuses_what_does_not_exist(spark, tmp_path):
    config = _market_config(tmp_path, source={"format": "csv", "filter": "q = 'q0'", "start_date": "2026-01-02", "end_date": "2026-01-05"})
    frame = _market_rows().drop(columns=["vec"])
    spark.createDataFrame(frame).coalesce(1).write.option("header", "true").csv(config.tables.path("impressions"))
    log = read_log(config, spark)
    # Requests r0..r5 are on days 1..6 and alternate queries: q0 on days 3 and 5 within the range.
    assert sorted({r["rid"] for r in log.collect()}) == ["r2", "r4"]
    missing = _market_config(tmp_path / "none", source={"format": "parquet"})
    with pytest.raises(SourceNotFoundError, match="does not exist"):
        read_log(missing, spark)


def test_grid_positions_come_from_row_and_col(spark, tmp_path):
    config = _market_config(
        tmp_path, columns={"position": "position", "row": "r", "col": "c"}, examples={"max_slate_size": 6},
    )
    frame = _market_rows()
    frame["r"] = (frame["pos"] - 1) // 2 + 1
    frame["c"] = 3 - frame["pos"]  # columns 2, 1, 2 ... a grid two columns wide
    frame["c"] = frame["c"].where(frame["pos"] != 3, 1)
    frame = frame.drop(columns=["pos"])
    _write_parquet(spark, config.tables.path("impressions"), frame)
    summary = build_examples(config, spark, "grid")
    assert summary.grid_columns == 2
    examples = read_table(spark, config.tables.path("examples"))
    slots = {tuple(p for p in r[schema.POSITIONS] if p) for r in examples.collect()}
    # (row, col) = (1, 2), (1, 1), (2, 1) -> slots 2, 1, 3 in reading order.
    assert slots == {(1, 2, 3)}
    assert encoder_of_examples(examples).grid_columns == 2


def test_simulate_refuses_to_overwrite_a_log_it_did_not_write(spark, tmp_path):
    from ulr_spark.simulation.simulator import simulate

    config = small_config(tmp_path)
    path = config.tables.path("impressions")
    frame = spark.createDataFrame(_market_rows().drop(columns=["day", "vec"]))
    overwrite_table(frame, path, "impressions", Provenance.of(config, "theirs", "their-own-etl"))
    before = table_version(spark, path)
    with pytest.raises(ValueError, match="simulate did not write"):
        simulate(spark, config, "sim")
    assert table_version(spark, path) == before


def test_sample_log_never_deletes_a_folder_it_did_not_write(tmp_path):
    theirs = tmp_path / "their_log"
    theirs.mkdir()
    (theirs / "part-0.parquet").write_bytes(b"their data")
    with pytest.raises(ValueError, match="not written by sample-log"):
        write_sample_log("search", str(theirs), sessions=50)
    assert (theirs / "part-0.parquet").read_bytes() == b"their data"
    ours = tmp_path / "sample"
    write_sample_log("search", str(ours), sessions=50)
    write_sample_log("search", str(ours), sessions=60)  # its own folder is replaced
    assert len(pd.read_parquet(ours)) == 600
