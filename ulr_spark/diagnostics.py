"""What a run shows: the naive click-through rate by slot next to the learned and true
examination curves. The notebooks' widget and table helpers are in :mod:`ulr_spark.notebook`.

The naive click-through rate by slot mixes two things: how often a slot is looked at, and how
relevant the items the logging ranker put there are. It therefore falls faster than the true
examination curve whenever the ranker is any good. Plotting it next to the learned curves and,
for simulated logs, the true curve makes the point of the whole pipeline visible: the bias tower
should land near the truth, the naive curve should not.

The log is only ever aggregated in Spark (one row per context and slot comes back to the
driver); the learned and true curves are tiny tables and are read into pandas.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from ulr_spark import schema
from ulr_spark.config import Config, LogColumns
from ulr_spark.examples.validation import context_key
from ulr_spark.io.artifacts import run_artifacts
from ulr_spark.io.delta import read_table, run_rows, table_exists

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

CURVE_COLUMNS = [schema.CONTEXT_KEY, CURVE, schema.POSITION, schema.EXAMINATION]


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
        .groupBy(context_key(columns).alias(schema.CONTEXT_KEY), position.alias(schema.POSITION))
        .agg(
            F.count(F.lit(1)).cast("long").alias(schema.IMPRESSIONS),
            F.sum(F.col(columns.clicked).cast("int")).cast("long").alias(schema.CLICKS),
        )
        .withColumn(CTR, F.col(schema.CLICKS) / F.col(schema.IMPRESSIONS))
    )
    # Window over the aggregate (one row per context and slot), never over the log.
    slot_1 = F.max(F.when(F.col(schema.POSITION) == 1, F.col(CTR))).over(Window.partitionBy(schema.CONTEXT_KEY))
    return counts.withColumn(CTR_RELATIVE, F.try_divide(F.col(CTR), slot_1)).orderBy(schema.CONTEXT_KEY, schema.POSITION)


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
    columns = [schema.MODEL, schema.CONTEXT_KEY, schema.POSITION, schema.EXAMINATION]
    path = config.tables.path("bias_curves")
    if not table_exists(spark, path):
        return pd.DataFrame({name: pd.Series(dtype=float if name == schema.EXAMINATION else object) for name in columns})
    curves = (
        run_rows(spark, path, run_id)
        .where(F.col(schema.POSITION) <= config.examples.max_slate_size)
        .select(*columns)
        .toPandas()
    )
    return curves.sort_values([schema.CONTEXT_KEY, schema.MODEL, schema.POSITION]).reset_index(drop=True)


def true_curves(spark: SparkSession, config: Config) -> Optional[pd.DataFrame]:
    """The true examination curve (context_key, position, examination relative to slot 1),
    or None when the log is not simulated and there is no truth to show."""
    path = config.tables.path("truth_examination")
    if not table_exists(spark, path):
        return None
    truth = (
        read_table(spark, path)
        .where(F.col(schema.POSITION) <= config.examples.max_slate_size)
        .select(schema.CONTEXT_KEY, schema.POSITION, schema.EXAMINATION)
        .toPandas()
    )
    return truth.sort_values([schema.CONTEXT_KEY, schema.POSITION]).reset_index(drop=True)


def examination_curves(
    ctr_pdf: pd.DataFrame, learned_pdf: pd.DataFrame, truth_pdf: Optional[pd.DataFrame] = None
) -> pd.DataFrame:
    """Every curve in one long table (context_key, curve, position, examination).

    ``ctr_pdf`` is :func:`click_through_by_position` in pandas (its relative CTR becomes the
    ``naive_ctr`` curve), ``learned_pdf`` is :func:`learned_curves` (one curve per model) and
    ``truth_pdf`` :func:`true_curves` (the ``truth`` curve), when there is one.
    """
    parts = [
        ctr_pdf.assign(**{CURVE: NAIVE_CTR_CURVE})[[schema.CONTEXT_KEY, CURVE, schema.POSITION, CTR_RELATIVE]].rename(
            columns={CTR_RELATIVE: schema.EXAMINATION}
        ),
        learned_pdf.rename(columns={schema.MODEL: CURVE})[CURVE_COLUMNS],
    ]
    if truth_pdf is not None:
        parts.append(truth_pdf.assign(**{CURVE: TRUTH_CURVE})[CURVE_COLUMNS])
    curves = pd.concat(parts, ignore_index=True)
    curves[schema.POSITION] = curves[schema.POSITION].astype(int)
    curves[schema.EXAMINATION] = curves[schema.EXAMINATION].astype(float)
    return curves.sort_values([schema.CONTEXT_KEY, CURVE, schema.POSITION]).reset_index(drop=True)


def curves_by_position(curves: pd.DataFrame) -> pd.DataFrame:
    """The long table of :func:`examination_curves` with one column per curve (truth and the
    naive CTR first), one row per context and slot: the form a reader compares by eye."""
    wide = curves.pivot_table(index=[schema.CONTEXT_KEY, schema.POSITION], columns=CURVE, values=schema.EXAMINATION, aggfunc="first")
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
    contexts = sorted(curves[schema.CONTEXT_KEY].unique(), key=lambda key: (key != schema.DEFAULT_CONTEXT_KEY, key))
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
        part = curves[curves[schema.CONTEXT_KEY] == context]
        for curve in [TRUTH_CURVE, NAIVE_CTR_CURVE] + models:
            line = part[part[CURVE] == curve].sort_values(schema.POSITION)
            if not line.empty:
                ax.plot(line[schema.POSITION], line[schema.EXAMINATION], **styles[curve])
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
