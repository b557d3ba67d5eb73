"""What a run shows: the naive click-through rate by slot next to the learned and true
examination curves, and the small helpers the Databricks notebooks (``notebooks/``) call.

The naive click-through rate by slot mixes two things: how often a slot is looked at, and how
relevant the items the logging ranker put there are. It therefore falls faster than the true
examination curve whenever the ranker is any good. Plotting it next to the learned curves and,
for simulated logs, the true curve makes the point of the whole pipeline visible: the bias tower
should land near the truth, the naive curve should not.

The log is only ever aggregated in Spark (one row per context and slot comes back to the
driver); the learned and true curves are tiny tables and are read into pandas.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Optional

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from ulr_spark import schema as S
from ulr_spark.artifacts import latest_run_id, run_artifacts
from ulr_spark.config import Config, LogColumns, load_config
from ulr_spark.delta_io import read_table, table_exists
from ulr_spark.validate import context_key

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn
    from matplotlib.figure import Figure

# Columns of click_through_by_position (impressions and clicks reuse schema.IMPRESSIONS and
# schema.CLICKS: the same meaning as in the examples table, summed per context and slot).
CTR = "ctr"
CTR_RELATIVE = "ctr_relative_to_slot_1"

# The long table of curves: one row per (context, curve, slot). ``curve`` names a model of the
# run, or one of the two reference curves below.
CURVE = "curve"
NAIVE_CTR_CURVE = "naive_ctr"
TRUTH_CURVE = "truth"

CURVE_COLUMNS = [S.CONTEXT_KEY, CURVE, S.POSITION, S.EXAMINATION]


# ---------------------------------------------------------------------------------------------
# Notebook parameters
# ---------------------------------------------------------------------------------------------


def parse_overrides(text: Optional[str]) -> list[str]:
    """``key=value`` overrides from one widget: separated by commas or newlines.

    A widget is a single text box, so several overrides share it. Commas inside brackets,
    braces or quotes belong to the value (``train.models=[naive, additive]``), so the text is
    split only at commas outside them. Blank items are dropped; an item without ``=`` is an
    error here rather than a confusing one from the config loader.
    """
    items, current, depth, quote = [], [], 0, ""
    for char in text or "":
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth = max(0, depth - 1)
        elif char == "\n" or (char == "," and depth == 0):
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    overrides = [item.strip() for item in items if item.strip()]
    broken = [item for item in overrides if "=" not in item]
    if broken:
        raise ValueError(f"overrides must look like section.key=value, separated by commas or newlines; got {broken}")
    return overrides


def path_override(key: str, path: str) -> str:
    """``key=<path>`` with the path quoted, so YAML reads it as a string whatever it looks
    like (a path such as ``/x/2026`` or one with ``: `` in it must not turn into a number or a
    mapping)."""
    return f"{key}={json.dumps(path)}"


def find_config(path: str) -> str:
    """The config file ``path`` names; a relative path is looked up in the working directory,
    then in its parents.

    A notebook in a Databricks Git folder runs in the notebook's own folder (``notebooks/``),
    while the configs live in ``conf/`` at the repository root, so the same default
    (``conf/demo.yaml``) works there, locally and in the test.
    """
    if os.path.isabs(path) or os.path.exists(path):
        return path
    here = os.path.abspath(os.getcwd())
    while True:
        candidate = os.path.join(here, path)
        if os.path.exists(candidate):
            return candidate
        parent = os.path.dirname(here)
        if parent == here:
            raise FileNotFoundError(f"config {path!r} not found in {os.getcwd()} or any folder above it")
        here = parent


# The widgets every notebook shares: (name, default, label).
CONFIG_WIDGETS = (
    ("config", "conf/demo.yaml", "Config file"),
    ("tables_root", "/dbfs/tmp/ulr-spark-quickstart", "Tables root"),
    ("overrides", "", "Overrides (key=value, comma or newline separated)"),
)


def add_widgets(dbutils, extra: tuple = ()) -> None:
    """The shared widgets, then the notebook's own ``(name, default, label)`` ones."""
    for name, default, label in CONFIG_WIDGETS + tuple(extra):
        dbutils.widgets.text(name, default, label)


def config_from_widgets(dbutils, extra_overrides: tuple = ()) -> Config:
    """The config the shared widgets describe: the file, then the ``overrides`` widget, then
    ``tables_root``, then the notebook's own overrides."""
    get = dbutils.widgets.get
    overrides = parse_overrides(get("overrides")) + [path_override("tables.root", get("tables_root"))]
    return load_config(find_config(get("config")), overrides + list(extra_overrides))


def run_or_latest(config: Config, run_id: Optional[str]) -> str:
    """The run a notebook looks at: the one named, or the newest trained run."""
    return run_id.strip() if run_id and run_id.strip() else latest_run_id(config.tables.path("models"))


# ---------------------------------------------------------------------------------------------
# Tables of a run
# ---------------------------------------------------------------------------------------------


def run_rows(spark: SparkSession, path: str, run_id: str) -> DataFrame:
    """The rows one run wrote to a run-keyed table (metrics, scores, bias curves)."""
    return read_table(spark, path).where(F.col(S.RUN_ID) == run_id)


def run_metrics(spark: SparkSession, config: Config, run_id: str) -> DataFrame:
    """The run's metrics, one row per model and metric, in a stable order for display."""
    return run_rows(spark, config.tables.path("metrics"), run_id).orderBy(S.MODEL, S.METRIC)


def run_scores(spark: SparkSession, config: Config, run_id: str) -> DataFrame:
    """The run's scores in ``tables.scores`` (all of them: callers limit what they show)."""
    return run_rows(spark, config.tables.path("scores"), run_id)


# ---------------------------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------------------------


def click_through_by_position(log: DataFrame, columns: LogColumns, max_slate_size: int) -> DataFrame:
    """Naive click-through rate per context and slot, and the same relative to slot 1.

    Returns (context_key, position, impressions, clicks, ctr, ctr_relative_to_slot_1), one row
    per context and slot 1..``max_slate_size``, ordered by both. The context key is built
    exactly as build-examples builds it, so these rows line up with the learned curves.
    Slots beyond ``max_slate_size`` are left out, as training leaves them out. Dividing by
    slot 1 of the same context puts the curve on the scale of the examination curves; it is
    null where slot 1 of the context has no clicks (or no impressions).
    """
    position = F.col(columns.position).cast("int")
    counts = (
        log.where((position >= 1) & (position <= max_slate_size))
        .groupBy(context_key(columns).alias(S.CONTEXT_KEY), position.alias(S.POSITION))
        .agg(
            F.count(F.lit(1)).cast("long").alias(S.IMPRESSIONS),
            F.sum(F.col(columns.clicked).cast("int")).cast("long").alias(S.CLICKS),
        )
        .withColumn(CTR, F.col(S.CLICKS) / F.col(S.IMPRESSIONS))
    )
    # Window over the aggregate (one row per context and slot), never over the log.
    slot_1 = F.max(F.when(F.col(S.POSITION) == 1, F.col(CTR))).over(Window.partitionBy(S.CONTEXT_KEY))
    return counts.withColumn(CTR_RELATIVE, F.try_divide(F.col(CTR), slot_1)).orderBy(S.CONTEXT_KEY, S.POSITION)


def naive_click_through(spark: SparkSession, config: Config) -> DataFrame:
    """:func:`click_through_by_position` of the configured impression log."""
    log = read_table(spark, config.tables.path("impressions"))
    return click_through_by_position(log, config.columns, config.examples.max_slate_size)


def learned_curves(spark: SparkSession, config: Config, run_id: str) -> pd.DataFrame:
    """The examination curves train wrote for the run: (model, context_key, position,
    examination), relative to slot 1 of the default context, slots up to max_slate_size.

    A run id with no trained models raises (a typo must not draw a plot without curves); a run
    whose models have no bias tower (only ``naive``) has no curves, and the frame is empty.
    """
    run_artifacts(config.tables.path("models"), run_id)  # raises FileNotFoundError for an unknown run
    columns = [S.MODEL, S.CONTEXT_KEY, S.POSITION, S.EXAMINATION]
    path = config.tables.path("bias_curves")
    if not table_exists(spark, path):
        return pd.DataFrame({name: pd.Series(dtype=float if name == S.EXAMINATION else object) for name in columns})
    curves = (
        run_rows(spark, path, run_id)
        .where(F.col(S.POSITION) <= config.examples.max_slate_size)
        .select(*columns)
        .toPandas()
    )
    return curves.sort_values([S.CONTEXT_KEY, S.MODEL, S.POSITION]).reset_index(drop=True)


def true_curves(spark: SparkSession, config: Config) -> Optional[pd.DataFrame]:
    """The true examination curve (context_key, position, examination relative to slot 1),
    or None when the log is not simulated and there is no truth to show."""
    path = config.tables.path("truth_examination")
    if not table_exists(spark, path):
        return None
    truth = (
        read_table(spark, path)
        .where(F.col(S.POSITION) <= config.examples.max_slate_size)
        .select(S.CONTEXT_KEY, S.POSITION, S.EXAMINATION)
        .toPandas()
    )
    return truth.sort_values([S.CONTEXT_KEY, S.POSITION]).reset_index(drop=True)


def examination_curves(
    ctr_pdf: pd.DataFrame, learned_pdf: pd.DataFrame, truth_pdf: Optional[pd.DataFrame] = None
) -> pd.DataFrame:
    """Every curve in one long table (context_key, curve, position, examination).

    ``ctr_pdf`` is :func:`click_through_by_position` in pandas (its relative CTR becomes the
    ``naive_ctr`` curve), ``learned_pdf`` is :func:`learned_curves` (one curve per model) and
    ``truth_pdf`` :func:`true_curves` (the ``truth`` curve), when there is one.
    """
    parts = [
        ctr_pdf.assign(**{CURVE: NAIVE_CTR_CURVE})[[S.CONTEXT_KEY, CURVE, S.POSITION, CTR_RELATIVE]].rename(
            columns={CTR_RELATIVE: S.EXAMINATION}
        ),
        learned_pdf.rename(columns={S.MODEL: CURVE})[CURVE_COLUMNS],
    ]
    if truth_pdf is not None:
        parts.append(truth_pdf.assign(**{CURVE: TRUTH_CURVE})[CURVE_COLUMNS])
    curves = pd.concat(parts, ignore_index=True)
    curves[S.POSITION] = curves[S.POSITION].astype(int)
    curves[S.EXAMINATION] = curves[S.EXAMINATION].astype(float)
    return curves.sort_values([S.CONTEXT_KEY, CURVE, S.POSITION]).reset_index(drop=True)


def curves_by_position(curves: pd.DataFrame) -> pd.DataFrame:
    """The long table of :func:`examination_curves` with one column per curve (truth and the
    naive CTR first), one row per context and slot: the form a reader compares by eye."""
    wide = curves.pivot_table(index=[S.CONTEXT_KEY, S.POSITION], columns=CURVE, values=S.EXAMINATION, aggfunc="first")
    first = [c for c in (TRUTH_CURVE, NAIVE_CTR_CURVE) if c in wide.columns]
    wide = wide[first + sorted(c for c in wide.columns if c not in first)]
    wide.columns.name = None
    return wide.reset_index()


def plot_examination_diagnostics(
    ctr_pdf: pd.DataFrame, learned_pdf: pd.DataFrame, truth_pdf: Optional[pd.DataFrame], path: str
) -> Figure:
    """Plot every curve, one panel per context, save it as a PNG at ``path`` (creating its
    folder) and return the figure for ``display``.

    The figure is built on an Agg canvas without pyplot: no GUI backend is needed on a
    cluster driver, and no figure is left open in pyplot's global registry by a notebook that
    is re-run many times.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = examination_curves(ctr_pdf, learned_pdf, truth_pdf)
    contexts = sorted(curves[S.CONTEXT_KEY].unique(), key=lambda key: (key != S.DEFAULT_CONTEXT_KEY, key))
    if not contexts:
        raise ValueError("plot_examination_diagnostics: there is no curve to plot")
    models = sorted(c for c in curves[CURVE].unique() if c not in (TRUTH_CURVE, NAIVE_CTR_CURVE))

    fig = Figure(figsize=(4.8 * len(contexts), 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(contexts), squeeze=False)[0]
    styles = {
        TRUTH_CURVE: {"color": "black", "linewidth": 2.5, "label": "truth"},
        NAIVE_CTR_CURVE: {"color": "grey", "linewidth": 1.5, "linestyle": "--", "marker": "x", "label": "naive CTR"},
    }
    palette = colormaps["tab10"]
    for i, model in enumerate(models):
        styles[model] = {"color": palette(i % 10), "linewidth": 1.3, "marker": ".", "label": f"learned: {model}"}
    for ax, context in zip(axes, contexts):
        part = curves[curves[S.CONTEXT_KEY] == context]
        for curve in [TRUTH_CURVE, NAIVE_CTR_CURVE] + models:
            line = part[part[CURVE] == curve].sort_values(S.POSITION)
            if not line.empty:
                ax.plot(line[S.POSITION], line[S.EXAMINATION], **styles[curve])
        ax.set_title(context)
        ax.set_xlabel("slot")
        ax.set_ylabel("relative to slot 1")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    return fig
