"""The Databricks notebooks, executed cell by cell on local Spark.

Each notebook's code cells run in order in one namespace, with the globals Databricks
provides: ``spark`` (the test session), ``display`` (materialises and records what it is
given) and ``dbutils`` (widgets whose values are the test's parameters). Magic cells (prose,
``%pip``) are skipped. The quickstart runs once on a small simulated log; the diagnostics and
scoring notebooks then look at the run it produced.
"""

import os

import pandas as pd
import pytest
from matplotlib.figure import Figure
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from tests.conftest import ROOT
from ulr_spark import schema
from ulr_spark.config import LogColumns
from ulr_spark.diagnostics import (
    CTR,
    CTR_RELATIVE,
    NAIVE_CTR_CURVE,
    TRUTH_CURVE,
    click_through_by_position,
    curves_by_position,
    examination_curves,
    plot_examination_diagnostics,
)
from ulr_spark.io.delta import read_table
from ulr_spark.notebook import parse_overrides

NOTEBOOKS = os.path.join(ROOT, "notebooks")
HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"

CONFIG = os.path.join(ROOT, "conf", "demo.yaml")
MODELS = ("naive", "additive")  # train.models of conf/demo.yaml
MAX_SLATE = 10  # examples.max_slate_size of conf/demo.yaml
# The data sizes of conftest.small_config (20k impressions). Training is longer than there
# (20 epochs of 32 slates at learning rate 0.01; about 20 s) so the bias tower learns the curve:
# measured mean absolute error over slots 2..10 about 0.04, against 0.13 for the naive CTR,
# where 2 epochs of 128 leave the curve flat (0.62).
OVERRIDES = """simulate.num_queries=200, simulate.candidates_per_query=15, simulate.num_requests=2000,
simulate.partitions=2, simulate.days=2
examples.partitions=4, spark.shuffle_partitions=4
train.num_processes=2, train.epochs=20, train.batch_size=32, train.learning_rate=0.01, train.bias_curve_sample=2000"""


# ---------------------------------------------------------------------------------------------
# A notebook runner
# ---------------------------------------------------------------------------------------------


def notebook_cells(path):
    """The cells of a Databricks source-format notebook as (first line number, source)."""
    with open(path) as handle:
        lines = handle.read().splitlines()
    assert lines and lines[0] == HEADER, f"{path} must start with {HEADER!r}"
    cells, start, current = [], 2, []
    for number, line in enumerate(lines[1:], start=2):
        if line.strip() == SEPARATOR:
            cells.append((start, "\n".join(current)))
            start, current = number + 1, []
        else:
            current.append(line)
    cells.append((start, "\n".join(current)))
    return [(first, source) for first, source in cells if source.strip()]


def is_magic(source):
    """Prose and %pip cells: every non-blank line is a ``# MAGIC`` line."""
    lines = [line for line in source.splitlines() if line.strip()]
    return all(line.startswith("# MAGIC") for line in lines)


class Widgets:
    def __init__(self, params):
        self.params, self.defaults = dict(params), {}

    def text(self, name, default, label=None):
        self.defaults[name] = default

    def get(self, name):
        if name not in self.defaults:
            raise KeyError(f"widget {name!r} read before it was defined")
        return self.params.get(name, self.defaults[name])


class DBUtils:
    def __init__(self, params):
        self.widgets = Widgets(params)


class Display:
    """Records what a notebook displays, materialised as Databricks would render it."""

    def __init__(self):
        self.shown = []

    def __call__(self, obj):
        if isinstance(obj, DataFrame):
            obj = obj.toPandas()
        elif not isinstance(obj, (pd.DataFrame, Figure)):
            raise TypeError(f"display() of an unexpected {type(obj).__name__}")
        self.shown.append(obj)

    def frames(self):
        return [obj for obj in self.shown if isinstance(obj, pd.DataFrame)]


def run_notebook(name, spark, params):
    """Execute a notebook's code cells in order in one namespace; returns (namespace, display).

    Cells are compiled against the notebook file with their own line numbers, so a failure
    points at the notebook's line.
    """
    path = os.path.join(NOTEBOOKS, name)
    dbutils, display = DBUtils(params), Display()
    namespace = {"__name__": "__main__", "spark": spark, "dbutils": dbutils, "display": display}
    for first, source in notebook_cells(path):
        if is_magic(source):
            continue
        exec(compile("\n" * (first - 1) + source, path, "exec"), namespace)
    unknown = set(params) - set(dbutils.widgets.defaults)
    assert not unknown, f"{name} has no widget(s) {sorted(unknown)}"
    return namespace, display


# ---------------------------------------------------------------------------------------------
# Library checks that need no pipeline run
# ---------------------------------------------------------------------------------------------


def test_parse_overrides_splits_on_commas_and_newlines_outside_brackets():
    text = "train.epochs=3, train.models=[naive, additive]\n\nsimulate.seed=1,tables.root='/a,b'\n"
    assert parse_overrides(text) == ["train.epochs=3", "train.models=[naive, additive]", "simulate.seed=1", "tables.root='/a,b'"]
    assert parse_overrides("") == [] and parse_overrides(None) == []
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides("train.epochs=3, oops")


def test_click_through_by_position_on_a_hand_made_log(spark):
    """Four requests; the log's own column names, a context column and a slot beyond the cap."""
    columns = LogColumns(position="slot", clicked="click", context=["device"])
    rows = [
        # request, device, slot, click
        ("r1", "mobile", 1, True), ("r1", "mobile", 2, False), ("r1", "mobile", 3, True),
        ("r2", "mobile", 1, False), ("r2", "mobile", 2, True),
        ("r3", "desktop", 1, True), ("r3", "desktop", 2, False), ("r3", "desktop", 3, False), ("r3", "desktop", 4, True),
        ("r4", "tablet", 1, False), ("r4", "tablet", 2, True),
    ]
    log = spark.createDataFrame(
        [(r, "q", f"{r}-{s}", s, c, d, [0.0]) for r, d, s, c in rows],
        "request_id string, query_id string, item_id string, slot int, click boolean, device string, features array<float>",
    )
    got = click_through_by_position(log, columns, max_slate_size=3).toPandas()
    assert list(got.columns) == [schema.CONTEXT_KEY, schema.POSITION, schema.IMPRESSIONS, schema.CLICKS, CTR, CTR_RELATIVE]
    expected = [
        # context, slot, impressions, clicks, ctr, relative to slot 1 (None: no click in slot 1)
        ("device=desktop", 1, 1, 1, 1.0, 1.0),
        ("device=desktop", 2, 1, 0, 0.0, 0.0),
        ("device=desktop", 3, 1, 0, 0.0, 0.0),
        ("device=mobile", 1, 2, 1, 0.5, 1.0),
        ("device=mobile", 2, 2, 1, 0.5, 1.0),
        ("device=mobile", 3, 1, 1, 1.0, 2.0),
        ("device=tablet", 1, 1, 0, 0.0, None),
        ("device=tablet", 2, 1, 1, 1.0, None),
    ]
    actual = [
        (r[schema.CONTEXT_KEY], r[schema.POSITION], r[schema.IMPRESSIONS], r[schema.CLICKS], r[CTR], None if pd.isna(r[CTR_RELATIVE]) else r[CTR_RELATIVE])
        for r in got.to_dict("records")
    ]
    assert actual == expected

    # Without context columns every row falls in the default context.
    plain = click_through_by_position(log, LogColumns(position="slot", clicked="click"), max_slate_size=2).toPandas()
    assert plain[schema.CONTEXT_KEY].tolist() == [schema.DEFAULT_CONTEXT_KEY] * 2
    assert plain[[schema.IMPRESSIONS, schema.CLICKS]].values.tolist() == [[4, 2], [4, 2]]
    assert plain[CTR_RELATIVE].tolist() == [1.0, 1.0]


def test_plot_has_one_panel_per_context_and_works_without_a_truth(tmp_path):
    ctr = pd.DataFrame(
        {schema.CONTEXT_KEY: ["device=a"] * 2 + ["device=b"] * 2, schema.POSITION: [1, 2, 1, 2], CTR_RELATIVE: [1.0, 0.5, 1.0, None]}
    )
    learned = pd.DataFrame(
        {schema.MODEL: ["additive"] * 2, schema.CONTEXT_KEY: ["device=a"] * 2, schema.POSITION: [1, 2], schema.EXAMINATION: [1.0, 0.7]}
    )
    curves = curves_by_position(examination_curves(ctr, learned, None))
    assert list(curves.columns) == [schema.CONTEXT_KEY, schema.POSITION, NAIVE_CTR_CURVE, "additive"]
    assert curves[NAIVE_CTR_CURVE].tolist()[:2] == [1.0, 0.5] and pd.isna(curves["additive"].iloc[2])

    path = tmp_path / "new" / "folder" / "plot.png"
    figure = plot_examination_diagnostics(ctr, learned, None, str(path))
    assert [ax.get_title() for ax in figure.axes] == ["device=a", "device=b"]
    assert path.read_bytes().startswith(b"\x89PNG")


# ---------------------------------------------------------------------------------------------
# The notebooks, end to end
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quickstart(spark, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("notebooks"))
    params = {"config": CONFIG, "tables_root": root, "overrides": OVERRIDES}
    namespace, display = run_notebook("quickstart.py", spark, params)
    return params, namespace, display


@pytest.mark.slow
def test_quickstart_runs_the_pipeline_and_shows_the_metrics(quickstart):
    params, namespace, display = quickstart
    run_id, config = namespace["run_id"], namespace["config"]
    assert config.tables.root == params["tables_root"] and config.simulate.num_requests == 2000
    [metrics] = display.frames()
    assert len(metrics) > 0 and set(metrics[schema.RUN_ID]) == {run_id}
    ndcg = metrics[metrics[schema.METRIC] == "ndcg@10"].set_index(schema.MODEL)[schema.VALUE]
    assert sorted(ndcg.index) == sorted(MODELS)
    assert ndcg.between(0, 1).all()


@pytest.mark.slow
def test_bias_diagnostics_shows_the_learned_curve_near_the_truth(spark, quickstart, tmp_path):
    params, started, _ = quickstart
    plot_path = str(tmp_path / "plots" / "curves.png")  # the folder does not exist yet
    # run_id left empty: the notebook picks the newest run, the quickstart's.
    namespace, display = run_notebook("bias_diagnostics.py", spark, {**params, "plot_path": plot_path})
    assert namespace["run_id"] == started["run_id"]

    with open(plot_path, "rb") as handle:
        png = handle.read()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert any(isinstance(obj, Figure) for obj in display.shown)

    ctr, curves = display.frames()
    assert ctr[schema.POSITION].tolist() == list(range(1, MAX_SLATE + 1))
    assert set(ctr[schema.CONTEXT_KEY]) == {schema.DEFAULT_CONTEXT_KEY}
    assert ctr[schema.IMPRESSIONS].sum() == 2000 * MAX_SLATE  # every request fills the 10 slots

    curves = curves.set_index(schema.POSITION)
    assert curves.index.tolist() == list(range(1, MAX_SLATE + 1))
    naive, truth, additive = curves[NAIVE_CTR_CURVE], curves[TRUTH_CURVE], curves["additive"]
    # The simulated examination decays with the slot, so does the naive CTR.
    assert naive[1] == 1.0 and truth[1] == pytest.approx(1.0) and additive[1] == pytest.approx(1.0)
    assert naive[MAX_SLATE] < naive[5] < naive[2] < naive[1], naive.tolist()
    # The point of the plot: the additive model's curve is nearer the truth than the naive CTR.
    slots = list(range(2, MAX_SLATE + 1))
    learned_error = (additive[slots] - truth[slots]).abs().mean()
    naive_error = (naive[slots] - truth[slots]).abs().mean()
    assert learned_error < naive_error, curves


@pytest.mark.slow
def test_scoring_writes_one_row_per_pair_and_model_to_the_chosen_table(spark, quickstart, tmp_path):
    params, started, _ = quickstart
    run_id, config = started["run_id"], started["config"]
    candidates = read_table(spark, config.tables.path("candidates"))
    queries = sorted(r[0] for r in candidates.select(schema.QUERY_ID).distinct().collect())[:5]
    pairs = candidates.where(F.col(schema.QUERY_ID).isin(queries)).select(
        schema.QUERY_ID, schema.ITEM_ID, F.col(schema.FEATURES).cast(T.ArrayType(T.FloatType()))
    )
    pairs_path, scores_path = str(tmp_path / "pairs"), str(tmp_path / "my_scores")
    pairs.write.format("delta").save(pairs_path)
    expected_pairs = {(r[schema.QUERY_ID], r[schema.ITEM_ID]) for r in pairs.collect()}
    assert len(expected_pairs) == 5 * config.simulate.candidates_per_query

    namespace, display = run_notebook(
        "scoring.py", spark, {**params, "run_id": run_id, "pairs_table": pairs_path, "scores_table": scores_path}
    )
    assert namespace["config"].tables.path("scores") == scores_path
    written = read_table(spark, scores_path).toPandas()
    assert set(written[schema.RUN_ID]) == {run_id}
    assert len(written) == namespace["summary"].pairs_scored * len(MODELS) == len(expected_pairs) * len(MODELS)
    assert set(written[schema.PAIRS_SOURCE]) == {pairs_path}
    keys = list(zip(written[schema.QUERY_ID], written[schema.ITEM_ID], written[schema.MODEL]))
    assert len(set(keys)) == len(keys)
    assert set(keys) == {(q, i, m) for q, i in expected_pairs for m in MODELS}

    [sample] = display.frames()
    assert 0 < len(sample) <= 20 and set(sample[schema.RUN_ID]) == {run_id}

    # The same model on the same features gives the quickstart's scores.
    main = read_table(spark, config.tables.path("scores")).where(
        (F.col(schema.RUN_ID) == run_id) & (F.col(schema.MODEL) == "additive") & F.col(schema.QUERY_ID).isin(queries)
    ).toPandas()
    mine = written[written[schema.MODEL] == "additive"]
    both = mine.merge(main, on=[schema.QUERY_ID, schema.ITEM_ID], suffixes=("", "_main"))
    assert len(both) == len(expected_pairs)
    assert (both[schema.SCORE] - both[f"{schema.SCORE}_main"]).abs().max() < 1e-6
