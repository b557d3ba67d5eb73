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


def test_context_grid_xpa_recovers_the_page_averaged_curve_better_than_additive(spark, tmp_path):
    """On the grid, where "left of" and "above" are different neighbours. The list layout runs
    the same code with one slot embedding instead of two; it is left to the comparison, which
    measures both layouts over 3 seeds, and to the unit tests of XPA (tests/test_models.py,
    tests/test_curves.py), to keep the suite within its time."""
    m = run_small(spark, tmp_path, "context_grid", ["naive", "additive", "xpa"])
    assert m[("xpa", "bias_curve_error")] < m[("additive", "bias_curve_error")], m
    assert m[("xpa", "ndcg@10")] > m[("naive", "ndcg@10")], m


# The confounded scenario (bias dropout, gradient reversal) is measured by the comparison only:
# its expected result (dropout helps additive) held in one comparison run and not in the rerun
# after the correctness fixes (docs/models.md), and a two-seed version of it took 150 s.


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
                "baseline_rounds": 40,
                "report": str(report),
                "plot": str(plot),
                "scenarios": [
                    {
                        "name": "yahoo_pbm",
                        "config": os.path.join(ROOT, "conf", "yahoo.yaml"),
                        "settings": merge_settings(SMALL, {"simulate": {"letor": {
                            "train_path": os.path.join(YAHOO, "rank.train"),
                            "test_path": os.path.join(YAHOO, "rank.test"),
                        }}, "train": {"models": ["naive", "additive"], "epochs": 5}}),
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
