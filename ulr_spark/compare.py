"""Every model on every scenario, over several seeds: ``ulr-spark compare``.

For each scenario and seed the whole pipeline runs in its own folder (``<root>/<scenario>/
seed<k>``, simulate.seed = train.seed = k, so the spread covers both the data and the
initialisation), the boosted-tree baselines add their scores, and ``evaluate`` measures all
models the same way. The per-seed metrics go to the ``comparison`` Delta table (one
transaction per comparison id); the mean and spread go to a Markdown report, and the true and
learned examination curves to a plot.

A claim "A beats B" holds only when the gap of the means is larger than the sum of the two
standard deviations over seeds (DESIGN section 5 asks for gap > spread; the sum is the
cautious reading).
"""

from __future__ import annotations

import copy
import datetime
import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ulr_spark import schema as S
from ulr_spark.baselines import train_baselines
from ulr_spark.config import CompareClaim, CompareScenario, Config, config_from_dict, load_config
from ulr_spark.delta_io import read_table, replace_rows, sql_string, table_exists
from ulr_spark.evaluate import BIAS_ERROR

SCENARIO = "scenario"
SEED = "seed"
COMPARE_ID = "compare_id"


def _merge(base: dict, settings: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in settings.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def scenario_config(compare_config: Config, scenario: CompareScenario, seed: int) -> Config:
    """The runnable config of one scenario and seed, in its own tables folder."""
    data = load_config(scenario.config).to_dict()
    data = _merge(data, scenario.settings)
    data = _merge(
        data,
        {
            "spark": compare_config.to_dict()["spark"],
            "tables": {"root": os.path.join(compare_config.tables.path("comparison"), scenario.name, f"seed{seed}")},
            "simulate": {"seed": seed},
            "train": {"seed": seed},
        },
    )
    return config_from_dict(data)


@dataclass
class ScenarioRun:
    metrics: pd.DataFrame  # scenario, seed, model, metric, value
    curves: pd.DataFrame  # scenario, seed, model, position, examination (model "truth" too)
    seconds: float


def run_scenario(spark: SparkSession, compare_config: Config, scenario: CompareScenario, seed: int, run_id: str) -> ScenarioRun:
    from ulr_spark.pipeline import run_stage

    config = scenario_config(compare_config, scenario, seed)
    started = time.time()
    for stage in ("simulate", "build-examples", "train", "score"):
        run_stage(config, spark, stage, run_id)
    cc = compare_config.compare
    if cc.baselines:
        train_baselines(config, spark, run_id, list(cc.baselines), cc.baseline_rounds, cc.baseline_max_rows)
    metrics = run_stage(config, spark, "evaluate", run_id).select(S.MODEL, S.METRIC, S.VALUE).toPandas()
    tables = config.tables
    learned = (
        read_table(spark, tables.path("bias_curves"))
        .where((F.col(S.RUN_ID) == run_id) & (F.col(S.CONTEXT_KEY) == S.DEFAULT_CONTEXT_KEY))
        .select(S.MODEL, S.POSITION, S.EXAMINATION)
        .toPandas()
        if table_exists(spark, tables.path("bias_curves"))
        else pd.DataFrame(columns=[S.MODEL, S.POSITION, S.EXAMINATION])
    )
    truth = read_table(spark, tables.path("truth_examination")).select(S.POSITION, S.EXAMINATION).toPandas()
    truth[S.MODEL] = "truth"
    curves = pd.concat([learned, truth], ignore_index=True)
    for frame in (metrics, curves):
        frame[SCENARIO] = scenario.name
        frame[SEED] = seed
    return ScenarioRun(metrics=metrics, curves=curves, seconds=time.time() - started)


def summarise(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count over seeds of every (scenario, model, metric)."""
    grouped = metrics.groupby([SCENARIO, S.MODEL, S.METRIC])[S.VALUE]
    return grouped.agg(["mean", "std", "count"]).reset_index().fillna({"std": 0.0})


@dataclass(frozen=True)
class ClaimResult:
    claim: CompareClaim
    gap: float  # positive when the claim's direction holds
    spread: float
    holds: bool


def check_claims(summary: pd.DataFrame, claims: list[CompareClaim]) -> list[ClaimResult]:
    results = []
    for claim in claims:
        def stat(model: str) -> Optional[pd.Series]:
            row = summary[(summary[SCENARIO] == claim.scenario) & (summary[S.MODEL] == model) & (summary[S.METRIC] == claim.metric)]
            return None if row.empty else row.iloc[0]

        a, b = stat(claim.model), stat(claim.beats)
        if a is None or b is None:
            results.append(ClaimResult(claim, float("nan"), float("nan"), False))
            continue
        sign = -1.0 if claim.metric == BIAS_ERROR else 1.0
        gap = sign * (a["mean"] - b["mean"])
        spread = a["std"] + b["std"]
        results.append(ClaimResult(claim, gap, spread, bool(gap > spread)))
    return results


def _metric_order(metric: str) -> tuple:
    return (not metric.startswith("ndcg@"), int(metric.split("@")[1]) if metric.startswith("ndcg@") else 0)


def markdown_report(
    summary: pd.DataFrame, claims: list[ClaimResult], compare_id: str, command: str, seeds: list[int],
    seconds: float, plot_path: Optional[str],
) -> str:
    lines = [
        "# Model comparison",
        "",
        f"Comparison `{compare_id}`, written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"on {platform.node() or 'this machine'} ({os.cpu_count()} cores), in {seconds / 60:.1f} minutes.",
        "",
        f"Command: `{command}`",
        "",
        f"Seeds: {seeds}. Each cell is the mean ± the standard deviation over seeds. NDCG is "
        "measured on held-out queries over all their candidates; bias_curve_error is the mean "
        "relative error of the learned examination curve (slots 2..10, relative to slot 1).",
        "",
    ]
    if claims:
        lines += ["## Expected results", "", "| scenario | claim | metric | gap | spread | holds |", "|---|---|---|---|---|---|"]
        for r in claims:
            c = r.claim
            lines.append(
                f"| {c.scenario} | {c.model} beats {c.beats} | {c.metric} | {r.gap:+.4f} | {r.spread:.4f} | "
                f"{'yes' if r.holds else '**no**'} |"
            )
        lines += ["", "A claim holds when the gap of the means exceeds the sum of the two standard deviations.", ""]
    metrics = sorted(summary[S.METRIC].unique(), key=_metric_order)
    for scenario in summary[SCENARIO].unique():
        part = summary[summary[SCENARIO] == scenario]
        lines += [f"## {scenario}", "", "| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        ndcg10 = part[part[S.METRIC] == "ndcg@10"].set_index(S.MODEL)["mean"]
        for model in sorted(part[S.MODEL].unique(), key=lambda m: -ndcg10.get(m, -1)):
            cells = []
            for metric in metrics:
                row = part[(part[S.MODEL] == model) & (part[S.METRIC] == metric)]
                cells.append("-" if row.empty else f"{row['mean'].iloc[0]:.4f} ± {row['std'].iloc[0]:.4f}")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    if plot_path:
        lines += [f"![true and learned examination curves]({os.path.basename(plot_path)})", ""]
    return "\n".join(lines)


def plot_curves(curves: pd.DataFrame, path: str) -> None:
    """True versus learned examination curves (mean over seeds), one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(curves[SCENARIO]))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 3.6), squeeze=False)
    mean = curves.groupby([SCENARIO, S.MODEL, S.POSITION])[S.EXAMINATION].mean().reset_index()
    for ax, scenario in zip(axes[0], scenarios):
        part = mean[mean[SCENARIO] == scenario]
        for model in sorted(part[S.MODEL].unique(), key=lambda m: (m != "truth", m)):
            line = part[part[S.MODEL] == model].sort_values(S.POSITION)
            style = {"color": "black", "linewidth": 2.5} if model == "truth" else {"linewidth": 1.2, "marker": "."}
            ax.plot(line[S.POSITION], line[S.EXAMINATION], label=model, **style)
        ax.set_title(scenario)
        ax.set_xlabel("slot")
        ax.set_ylabel("examination / slot 1")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(config: Config, spark: SparkSession, compare_id: str, command: str) -> pd.DataFrame:
    """Run the comparison, write the table, the report and the plot; returns the summary."""
    cc = config.compare
    if not cc.scenarios:
        raise ValueError("compare: compare.scenarios is empty; see conf/compare.yaml")
    started = time.time()
    runs = []
    for scenario in cc.scenarios:
        for seed in cc.seeds:
            print(f"== compare: scenario {scenario.name}, seed {seed}", flush=True)
            runs.append(run_scenario(spark, config, scenario, seed, f"{compare_id}-{scenario.name}-seed{seed}"))
            print(f"== compare: scenario {scenario.name}, seed {seed} done in {runs[-1].seconds:.0f}s", flush=True)
    metrics = pd.concat([r.metrics for r in runs], ignore_index=True)
    curves = pd.concat([r.curves for r in runs], ignore_index=True)
    table = spark.createDataFrame(metrics[[SCENARIO, SEED, S.MODEL, S.METRIC, S.VALUE]]).select(
        F.lit(compare_id).alias(COMPARE_ID), SCENARIO, F.col(SEED).cast("int"), S.MODEL, S.METRIC,
        F.col(S.VALUE).cast("double"), F.current_timestamp().alias(S.EVALUATED_AT),
    )
    replace_rows(
        table.coalesce(1), os.path.join(config.tables.path("comparison"), "metrics"), compare_id,
        f"{COMPARE_ID} = {sql_string(compare_id)}",
    )
    summary = summarise(metrics)
    claims = check_claims(summary, list(cc.claims))
    if cc.plot:
        plot_curves(curves, cc.plot)
    if cc.report:
        os.makedirs(os.path.dirname(os.path.abspath(cc.report)), exist_ok=True)
        with open(cc.report, "w") as handle:
            handle.write(markdown_report(summary, claims, compare_id, command, list(cc.seeds), time.time() - started, cc.plot))
        print(f"compare: report written to {cc.report}")
    for r in claims:
        c = r.claim
        print(f"claim [{c.scenario}] {c.model} beats {c.beats} on {c.metric}: gap {r.gap:+.4f}, spread {r.spread:.4f} -> {'holds' if r.holds else 'does NOT hold'}")
    return summary
