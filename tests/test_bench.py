"""The benchmark's DuckDB reference is the same transformation as build-examples: on the same
log it writes the same rows. Otherwise the ratio in docs/benchmarks.md would mean nothing."""

import duckdb

from bench.duckdb_reference import run_duckdb_examples
from bench.report import label, parse_size, targets
from bench.throughput import parquet_files
from tests.conftest import small_config
from ulr_spark.examples.slates import build_examples
from ulr_spark.io.delta import read_table
from ulr_spark.simulation.simulator import simulate


def test_duckdb_reference_builds_the_same_examples(spark, tmp_path):
    config = small_config(
        tmp_path,
        simulate={"num_queries": 60, "num_requests": 3000, "query_popularity": "zipf", "randomised_share": 0.2},
        # The reference holds no split: every request trains, as in conf/scale.yaml.
        examples={"max_slate_size": 8, "split": {"validation_share": 0.0}},
    )
    simulate(spark, config, "bench")
    summary = build_examples(config, spark, "bench")
    out = str(tmp_path / "duck.parquet")
    duck = run_duckdb_examples(
        parquet_files(spark, config.tables.path("impressions")), 8, summary.num_features, out, 2, str(tmp_path / "tmp")
    )
    assert (duck["examples"], duck["requests"], duck["broken_rows"]) == (summary.examples, 3000, 0)

    def rows(records):
        return sorted(
            (r[0], tuple(r[1]), tuple(r[2]), tuple(round(v, 6) for v in r[3]), r[4], tuple(r[5])) for r in records
        )

    columns = "query_id, item_ids, positions, features, impressions, clicks"
    spark_rows = read_table(spark, config.tables.path("examples")).selectExpr(*columns.split(", ")).collect()
    duck_rows = duckdb.sql(f"SELECT {columns} FROM '{out}'").fetchall()
    assert rows(spark_rows) == rows(duck_rows)


def test_size_labels_and_targets():
    assert [parse_size(s) for s in ("1M", "10M", "100k", "2B", "500")] == [10**6, 10**7, 10**5, 2 * 10**9, 500]
    assert [label(n) for n in (10**6, 10**8, 250_000, 1234)] == ["1M", "100M", "250k", "1234"]

    def result(impressions, seconds, compression):
        memory = {s: {"driver_python_peak_bytes": 700 * 2**20} for s in ("simulate", "build_examples", "train", "score")}
        return {
            "impressions": impressions, "cores": 2, "memory": memory,
            "seconds": {"simulate": seconds, "build_examples": seconds, "train": seconds, "score": seconds},
            "duckdb": {"seconds": seconds / 1.4}, "examples": {"compression": compression},
        }

    flat = {t: ok for t, _, ok in targets([result(10**7, 10.0, 12.0), result(10**8, 100.0, 15.0)])}
    assert all(flat.values()), flat
    grown = {t: ok for t, _, ok in targets([result(10**7, 10.0, 12.0), result(10**8, 200.0, 5.0)])}
    assert not grown["train: cost per impression at 100M within 1.25x of 10M"]
    assert not any(ok for t, ok in grown.items() if t.startswith("Zipf"))


def test_the_per_core_block_of_scaling_md_is_rewritten_in_place():
    from bench.report import SCALING_BEGIN, SCALING_END, per_core_figures, replace_block

    result = {"impressions": 10**7, "cores": 2, "seconds": {"simulate": 1.0, "build_examples": 20.0, "train": 10.0, "score": 5.0}}
    block = per_core_figures([result])
    assert "| build_examples | 4.00 | 250,000 |" in block, block  # 20 s x 2 cores / 10M impressions
    first = replace_block("# Scaling\n\ntext\n", block)
    again = replace_block(first.replace("250,000", "1"), block)
    assert again == first and again.count(SCALING_BEGIN) == again.count(SCALING_END) == 1
