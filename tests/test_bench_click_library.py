"""The click-model library benchmark's log (bench/click_log.py) follows its PBM truth, and its
report renders (no Spark, no library: the measured parts are faked)."""

import numpy as np

from bench.click_library import render_click_library
from bench.click_log import curve_error, generate, true_examination


def test_clicks_follow_the_pbm_truth():
    log = generate(200_000, seed=3)
    alpha = log.attractiveness[log.query[:, None], log.doc]
    # Click rate of each rank over its expected attractiveness is the examination of the rank.
    examination = log.clicks.mean(axis=0) / alpha.mean(axis=0)
    assert np.allclose(examination, true_examination(), rtol=0.05)
    # Every document is shown at every rank: what a PBM needs to tell the two apart.
    assert len(np.unique(log.doc[:, -1])) == 20 and len(np.unique(log.doc[:, 0])) == 20
    assert curve_error(true_examination() * 0.5, true_examination()) == 0.0


def test_the_report_section_renders():
    truth = list(true_examination())
    library = {"seconds": 60.0, "curve_error": 0.03, "learning_rate": 0.003, "examination": truth}
    result = {
        "sessions": 1000, "impressions": 10_000, "queries": 1000, "documents_per_query": 20, "shown": 10, "epochs": 3,
        "batch_size": 1024, "cores": 1, "versions": {"clax-models": "0.1.1", "jax": "0.7.2", "flax": "0.11.2"},
        "library": {"own": library, "memory": {**library, "seconds": 10.0}}, "commands": ["x"],
        "ulr": {
            "model": "additive", "curve_error": 0.01, "seconds": {"jvm_start": 1.0, "build_examples": 2.0, "train": 50.0, "score": 3.0},
            "train_breakdown": {"training_loop": 40.0, "torchrun_start_and_exit": 5.0, "other": 5.0},
        },
    }
    text = render_click_library(result)
    assert text.startswith("## Against a click-model library, on one core")
    assert "| train stage faster per core-second than the library's own loader | 1.20x" in text
    assert "0.0100 vs 0.0300 | yes |" in text
