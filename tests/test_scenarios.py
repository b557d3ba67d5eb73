"""Small, fixed-seed versions of the comparison (docs/comparison.md): each scenario runs the
real pipeline (Spark, Delta, Petastorm, TorchDistributor) and checks the direction of a result
that the full comparison (3 seeds) confirmed. Where the comparison did not confirm what the
design expected (MixEM and dot-product over additive on `mixture`, XPA over additive on NDCG
under `context`), the test checks what it did confirm instead; docs/comparison.md says why."""

import os

import pytest
from pyspark.sql import functions as F

from tests.conftest import ROOT
from ulr_spark import schema
from ulr_spark.config import config_from_dict
from ulr_spark.experiments.compare import COMPARE_ID, compare, merge_settings, scenario_config
from ulr_spark.experiments.settings import CompareScenario
from ulr_spark.io.delta import read_table
from ulr_spark.pipeline import run_stage

pytestmark = pytest.mark.slow

SMALL = {
    "spark": {"shuffle_partitions": 4},
    "simulate": {"num_queries": 500, "heldout_fraction": 0.4, "num_requests": 12000, "partitions": 2, "days": 2},
    "examples": {"partitions": 4},
    "train": {"epochs": 8, "bias_curve_sample": 3000},
}


def run_small(spark, tmp_path, conf_name, models, seed=11, **settings):
    base = config_from_dict({"tables": {"root": str(tmp_path)}, "spark": {"master": "local[2]", "shuffle_partitions": 4}})
    scenario = CompareScenario(conf_name, os.path.join(ROOT, "conf", f"{conf_name}.yaml"), merge_settings(SMALL, {"train": {"models": models}, **settings}))
    config = scenario_config(base, scenario, seed)
    for stage in ("simulate", "build-examples", "train", "score", "evaluate"):
        run_stage(config, spark, stage, "scenario-test")
    rows = read_table(spark, config.tables.path("metrics")).where(F.col(schema.RUN_ID) == "scenario-test").collect()
    return {(r[schema.MODEL], r[schema.METRIC]): r[schema.VALUE] for r in rows}


def test_mixture_every_two_tower_model_beats_naive(spark, tmp_path):
    m = run_small(spark, tmp_path, "mixture", ["naive", "additive", "dot_product", "mixem"])
    for model in ("additive", "dot_product", "mixem"):
        assert m[(model, "ndcg@10")] > m[("naive", "ndcg@10")] + 0.01, m


@pytest.mark.parametrize("layout", ["context", "context_grid"])
def test_context_xpa_recovers_the_page_averaged_curve_better_than_additive(spark, tmp_path, layout):
    m = run_small(spark, tmp_path, layout, ["naive", "additive", "xpa"])
    assert m[("xpa", "bias_curve_error")] < m[("additive", "bias_curve_error")], m
    assert m[("xpa", "ndcg@10")] > m[("naive", "ndcg@10")], m


def test_confounded_two_tower_ranking_stays_close_to_naive(spark, tmp_path):
    """Under a strong logging ranker without a distractor naive is the best model (the
    comparison: NDCG@10 naive 0.990, additive 0.984, additive with bias dropout 0.987). That
    bias dropout *helps* additive held in one comparison run (+0.006, spread 0.003) but not in the
    rerun after the correctness fixes (+0.003, spread 0.004), so it is not asserted here; what
    both runs confirm is that the bias tower does not absorb so much relevance that the ranking
    breaks, as gradient reversal's does."""
    m = run_small(spark, tmp_path, "confounded", ["naive", "additive", "additive_dropout"])
    for model in ("additive", "additive_dropout"):
        assert m[(model, "ndcg@10")] > m[("naive", "ndcg@10")] - 0.02, m


YAHOO = os.path.join(os.path.dirname(ROOT), "shared", "data", "yahoo_ltr_sample")


@pytest.mark.skipif(not os.path.isdir(YAHOO), reason="the Yahoo LTR sample in ../shared is absent")
def test_compare_on_the_yahoo_sample_against_boosted_trees(spark, tmp_path):
    report, plot = tmp_path / "report.md", tmp_path / "curves.png"
    config = config_from_dict(
        {
            "spark": {"master": "local[2]", "shuffle_partitions": 4},
            "tables": {"root": str(tmp_path)},
            "compare": {
                "seeds": [3],
                "baseline_rounds": 100,
                "report": str(report),
                "plot": str(plot),
                "scenarios": [
                    {
                        "name": "yahoo_pbm",
                        "config": os.path.join(ROOT, "conf", "yahoo.yaml"),
                        "settings": merge_settings(SMALL, {"simulate": {"letor": {
                            "train_path": os.path.join(YAHOO, "rank.train"),
                            "test_path": os.path.join(YAHOO, "rank.test"),
                        }}, "train": {"models": ["naive", "additive"]}}),
                    }
                ],
                "claims": [{"scenario": "yahoo_pbm", "model": "additive", "beats": "lightgbm_lambdamart"}],
            },
        }
    )
    summary = compare(config, spark, "cmp-test", "pytest")
    table = read_table(spark, os.path.join(config.tables.path("comparison"), "metrics"))
    rows = {(r[schema.MODEL], r[schema.METRIC]): r[schema.VALUE] for r in table.where(F.col(COMPARE_ID) == "cmp-test").collect()}
    for model in ("naive", "additive", "lightgbm_lambdamart", "xgboost_unbiased_lambdamart"):
        assert 0.3 < rows[(model, "ndcg@10")] <= 1.0, rows
    assert "| yahoo_pbm | additive beats lightgbm_lambdamart | ndcg@10 |" in report.read_text()
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert len(summary) == len(rows)
