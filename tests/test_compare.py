import os

import pandas as pd
import pytest

from tests.conftest import ROOT
from ulr_spark import schema
from ulr_spark.config import config_from_dict
from ulr_spark.experiments.compare import SCENARIO, SEED, check_claims, markdown_report, plot_curves, scenario_config, summarise
from ulr_spark.experiments.settings import CompareClaim, CompareScenario


def metrics_frame():
    rows = []
    for seed, (a, b, err) in enumerate([(0.80, 0.70, 0.05), (0.82, 0.71, 0.07), (0.78, 0.69, 0.06)], start=1):
        rows += [
            ("pbm", seed, "additive", "ndcg@10", a),
            ("pbm", seed, "naive", "ndcg@10", b),
            ("pbm", seed, "additive", "bias_curve_error", err),
            ("pbm", seed, "pal", "bias_curve_error", err + 0.3),
            ("pbm", seed, "close", "ndcg@10", b + 0.01),
        ]
    return pd.DataFrame(rows, columns=[SCENARIO, SEED, schema.MODEL, schema.METRIC, schema.VALUE])


def test_summary_has_mean_and_spread_over_seeds():
    summary = summarise(metrics_frame())
    row = summary[(summary[schema.MODEL] == "additive") & (summary[schema.METRIC] == "ndcg@10")].iloc[0]
    assert row["mean"] == pytest.approx(0.80) and row["std"] == pytest.approx(0.02) and row["count"] == 3


def test_a_claim_holds_only_when_the_paired_gap_exceeds_its_spread():
    results = check_claims(
        metrics_frame(),
        [
            CompareClaim("pbm", "additive", "naive", "ndcg@10"),
            CompareClaim("pbm", "close", "naive", "ndcg@10"),  # +0.01 on every seed: no spread
            CompareClaim("pbm", "naive", "additive", "ndcg@10"),
            CompareClaim("pbm", "additive", "pal", "bias_curve_error"),  # lower error is better
            CompareClaim("pbm", "xpa", "naive", "ndcg@10"),  # never measured
        ],
    )
    assert [r.holds for r in results] == [True, True, False, True, False]
    assert results[0].gap == pytest.approx(0.10) and results[0].spread == pytest.approx(0.01)
    assert results[3].gap == pytest.approx(0.30)
    # A gap that changes sign between seeds does not hold, although its mean is positive.
    flip = metrics_frame()
    for seed, naive, difference in [(1, 0.70, 0.05), (2, 0.71, 0.05), (3, 0.69, -0.03)]:
        flip.loc[(flip[SEED] == seed) & (flip[schema.MODEL] == "close"), schema.VALUE] = naive + difference
    result = check_claims(flip, [CompareClaim("pbm", "close", "naive", "ndcg@10")])[0]
    assert result.gap > 0 and not result.holds


def test_report_and_plot(tmp_path):
    summary = summarise(metrics_frame())
    claims = check_claims(metrics_frame(), [CompareClaim("pbm", "additive", "naive", "ndcg@10")])
    report = markdown_report(summary, claims, "cmp1", "ulr-spark compare --config x.yaml", [1, 2, 3], 60.0, "curves.png")
    assert "`ulr-spark compare --config x.yaml`" in report
    assert "| pbm | additive beats naive | ndcg@10 | +0.1000 |" in report
    assert "| model | ndcg@10 | bias_curve_error |" in report
    assert "| additive | 0.8000 ± 0.0200 | 0.0600 ± 0.0100 |" in report
    curves = pd.DataFrame(
        [("pbm", 1, m, k, v) for m, vals in {"truth": [1, .9, .7], "additive": [1, .85, .72]}.items() for k, v in enumerate(vals, 1)],
        columns=[SCENARIO, SEED, schema.MODEL, schema.POSITION, schema.EXAMINATION],
    )
    path = tmp_path / "plots" / "curves.png"
    plot_curves(curves, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scenario_config_merges_settings_and_gives_each_seed_its_own_tables(tmp_path):
    base = config_from_dict({"tables": {"root": str(tmp_path)}, "spark": {"shuffle_partitions": 3}})
    scenario = CompareScenario("mix", os.path.join(ROOT, "conf", "mixture.yaml"), {"simulate": {"num_requests": 99}})
    config = scenario_config(base, scenario, seed=2)
    assert config.simulate.scenario == "mixture" and config.simulate.num_requests == 99
    assert config.simulate.seed == 2 and config.train.seed == 2
    assert config.spark.shuffle_partitions == 3
    assert config.tables.path("scores") == os.path.join(str(tmp_path), "comparison", "mix", "seed2", "scores")


def test_claim_kinds_use_a_paired_t_test():
    from scipy import stats

    from ulr_spark.experiments.compare import beside_controls

    metrics = metrics_frame()
    results = check_claims(
        metrics,
        [
            CompareClaim("pbm", "additive", "naive", "ndcg@10", expect="beats", min_gap=0.2),  # gap 0.10 < 0.2
            CompareClaim("pbm", "naive", "additive", "ndcg@10", expect="no_gap"),  # naive is significantly worse: a gap
            CompareClaim("pbm", "additive", "naive", "ndcg@10", expect="no_gap"),  # additive does beat naive
            CompareClaim("pbm", "naive", "additive", "ndcg@10", expect="not_beats"),  # worse, so it does not beat
            CompareClaim("pbm", "additive", "naive", "ndcg@10", expect="not_beats"),
            CompareClaim("pbm", "additive", metric="bias_curve_error", expect="below", threshold=0.065),
            CompareClaim("pbm", "pal", metric="bias_curve_error", expect="below", threshold=0.1),
            CompareClaim("pbm", "additive", metric="bias_curve_error", expect="near", target=0.1, threshold=0.05),
            CompareClaim("pbm", "additive", metric="bias_curve_error", expect="near", target=0.0, threshold=0.05),
        ],
    )
    assert [r.holds for r in results] == [False, False, False, True, False, True, False, True, False]
    flip = metrics_frame()
    for seed, difference in [(1, 0.05), (2, 0.05), (3, -0.03)]:
        flip.loc[(flip[SEED] == seed) & (flip[schema.MODEL] == "close"), schema.VALUE] = 0.7 + difference
        flip.loc[(flip[SEED] == seed) & (flip[schema.MODEL] == "naive"), schema.VALUE] = 0.7
    assert check_claims(flip, [CompareClaim("pbm", "close", "naive", "ndcg@10", expect="no_gap")])[0].holds
    additive = metrics[(metrics[schema.MODEL] == "additive") & (metrics[schema.METRIC] == "ndcg@10")][schema.VALUE].to_numpy()
    naive = metrics[(metrics[schema.MODEL] == "naive") & (metrics[schema.METRIC] == "ndcg@10")][schema.VALUE].to_numpy()
    assert results[0].p_value == pytest.approx(stats.ttest_rel(additive, naive).pvalue)
    assert results[5].gap == pytest.approx(0.005)
    assert beside_controls(["a", "b", "a_ctl", "c", "b_ctl"], {"a_ctl": "a", "b_ctl": "b"}) == ["a", "a_ctl", "b", "b_ctl", "c"]
