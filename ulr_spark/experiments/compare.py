"""Every model on every scenario, over several seeds: ``ulr-spark compare``.

For each scenario and seed the whole pipeline runs in its own folder (``<root>/<scenario>/
seed<k>``, simulate.seed = train.seed = k, so the spread covers both the data and the
initialisation), the boosted-tree baselines add their scores, and ``evaluate`` measures all
models the same way. The per-seed metrics go to the ``comparison`` Delta table (one
transaction per comparison id); the mean and spread go to a Markdown report, and the true and
learned examination curves to a plot.

A claim "A beats B" is checked on paired differences: for each seed both models were trained
and measured on the same simulated data, so the gap is the mean over seeds of (A - B), the
spread is the standard deviation over seeds of (A - B), and a paired t-test
(``scipy.stats.ttest_rel``) gives its p-value. Unpaired standard deviations would also count
how hard each seed's data is, which moves both models together. The claim kinds are in
:class:`~ulr_spark.experiments.settings.CompareClaim`.

The report is rebuilt from the Delta tables alone (``--report-only``), so it can be redrawn
without training again.
"""

from __future__ import annotations

import copy
import datetime
import os
import platform
import time
from typing import Optional

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ulr_spark import schema
from ulr_spark.config import Config, config_from_dict, load_config
from ulr_spark.experiments.baselines import train_baselines
from ulr_spark.experiments.claims import ClaimResult, check_claims, claim_text, control_gaps
from ulr_spark.experiments.settings import CompareScenario, compare_settings
from ulr_spark.io.delta import Provenance, read_table, replace_rows, sql_string, table_exists

SCENARIO, SEED, COMPARE_ID = schema.SCENARIO, schema.SEED, schema.COMPARE_ID


def merge_settings(base: dict, settings: dict) -> dict:
    """``settings`` merged over ``base``, section by section (neither is changed)."""
    merged = copy.deepcopy(base)
    for key, value in settings.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def scenario_config(compare_config: Config, scenario: CompareScenario, seed: int) -> Config:
    """The runnable config of one scenario and seed, in its own tables folder."""
    data = load_config(scenario.config).to_dict()
    data = merge_settings(data, scenario.settings)
    data = merge_settings(
        data,
        {
            "spark": compare_config.to_dict()["spark"],
            "tables": {"root": os.path.join(compare_config.tables.path("comparison"), scenario.name, f"seed{seed}")},
            "simulate": {"seed": seed},
            "train": {"seed": seed},
        },
    )
    return config_from_dict(data)


def scenario_run_id(compare_id: str, scenario: str, seed: int) -> str:
    return f"{compare_id}-{scenario}-seed{seed}"


def run_scenario(spark: SparkSession, compare_config: Config, scenario: CompareScenario, seed: int, run_id: str) -> pd.DataFrame:
    """The whole pipeline and the baselines for one scenario and seed; returns its metrics."""
    from ulr_spark.pipeline import run_stage

    config = scenario_config(compare_config, scenario, seed)
    for stage in ("simulate", "build-examples", "train", "score"):
        run_stage(config, spark, stage, run_id)
    cc = compare_settings(compare_config)
    if cc.baselines:
        train_baselines(config, spark, run_id, list(cc.baselines), cc.baseline_rounds, cc.baseline_max_rows)
    metrics = run_stage(config, spark, "evaluate", run_id).select(schema.MODEL, schema.METRIC, schema.VALUE).toPandas()
    metrics[SCENARIO] = scenario.name
    metrics[SEED] = seed
    return metrics


def read_curves(spark: SparkSession, compare_config: Config, compare_id: str) -> pd.DataFrame:
    """Learned (default context) and true curves of every scenario and seed of a comparison."""
    frames = []
    for scenario in compare_settings(compare_config).scenarios:
        for seed in compare_settings(compare_config).seeds:
            tables = scenario_config(compare_config, scenario, seed).tables
            run_id = scenario_run_id(compare_id, scenario.name, seed)
            if table_exists(spark, tables.path("bias_curves")):
                learned = (
                    read_table(spark, tables.path("bias_curves"))
                    .where((F.col(schema.RUN_ID) == run_id) & (F.col(schema.CONTEXT_KEY) == schema.DEFAULT_CONTEXT_KEY))
                    .select(schema.MODEL, schema.POSITION, schema.EXAMINATION)
                    .toPandas()
                )
                frames.append(learned.assign(**{SCENARIO: scenario.name, SEED: seed}))
            if table_exists(spark, tables.path("truth_examination")):
                truth = read_table(spark, tables.path("truth_examination")).select(schema.POSITION, schema.EXAMINATION).toPandas()
                frames.append(truth.assign(**{schema.MODEL: "truth", SCENARIO: scenario.name, SEED: seed}))
    columns = [SCENARIO, SEED, schema.MODEL, schema.POSITION, schema.EXAMINATION]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def summarise(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count over seeds of every (scenario, model, metric)."""
    grouped = metrics.groupby([SCENARIO, schema.MODEL, schema.METRIC])[schema.VALUE]
    return grouped.agg(["mean", "std", "count"]).reset_index().fillna({"std": 0.0})


def _metric_order(metric: str) -> tuple:
    return (not metric.startswith("ndcg@"), int(metric.split("@")[1]) if metric.startswith("ndcg@") else 0)


def beside_controls(scenarios: list[str], controls: dict[str, str]) -> list[str]:
    """The scenarios in order, each control right after the scenario it controls."""
    ordered: list[str] = []
    for scenario in scenarios:
        if scenario in controls and controls[scenario] in scenarios:
            continue
        ordered.append(scenario)
        ordered += [c for c in scenarios if controls.get(c) == scenario]
    return ordered


def markdown_report(
    summary: pd.DataFrame, claims: list[ClaimResult], compare_id: str, command: str, seeds: list[int],
    seconds: Optional[float], plot_path: Optional[str], controls: Optional[dict[str, str]] = None,
    gaps: Optional[pd.DataFrame] = None, order: Optional[list[str]] = None,
) -> str:
    took = f", in {seconds / 60:.1f} minutes" if seconds is not None else ""
    lines = [
        "# Model comparison",
        "",
        f"Comparison `{compare_id}`, written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"on {platform.node() or 'this machine'} ({os.cpu_count()} cores){took}.",
        "",
        f"Command: `{command}`",
        "",
        f"Seeds: {seeds}. Each cell is the mean ± the standard deviation over seeds. NDCG is "
        "measured on held-out queries over all their candidates; bias_curve_error is the mean "
        "relative error of the learned examination curve (slots 2..10, relative to slot 1); "
        "distractor_leak is b_d / b_r of the within-query least-squares fit of the relevance score "
        "on the true relevance and the distractor (0: no leak); blind_share is MixEM's learned "
        "share of relevance-blind requests.",
        "",
    ]
    if claims:
        lines += [
            "## Expected results", "", "| scenario | claim | metric | gap | spread | p | holds |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in claims:
            lines.append(
                f"| {r.claim.scenario} | {claim_text(r.claim)} | {r.claim.metric} | {r.gap:+.4f} | {r.spread:.4f} | "
                f"{'-' if r.p_value != r.p_value else f'{r.p_value:.3g}'} | {'yes' if r.holds else '**no**'} |"
            )
        lines += [
            "",
            "Gap: the mean over seeds of the paired difference (model minus the one it is compared with; "
            "for bias_curve_error and distractor_leak, the other way round); for a threshold claim, the "
            "threshold minus the mean. Spread: the standard deviation of that difference over seeds. p: "
            "two-sided paired t-test (scipy.stats.ttest_rel). \"beats\" holds when the gap is positive, at "
            "least the claim's minimum and p < 0.05; \"does not beat\" holds when the gap is at most its spread "
            "or p >= 0.05 (the model may be worse); \"no significant gap\" asks the same of |gap|, either way.",
            "",
        ]
    metrics = sorted(summary[schema.METRIC].unique(), key=_metric_order)
    controls = controls or {}
    present_scenarios = list(summary[SCENARIO].unique())
    if order:  # the config's order, scenarios it no longer lists last
        present_scenarios.sort(key=lambda name: order.index(name) if name in order else len(order))
    for scenario in beside_controls(present_scenarios, controls):
        part = summary[summary[SCENARIO] == scenario]
        title = f"## {scenario}" + (f" (control of {controls[scenario]})" if scenario in controls else "")
        present = [m for m in metrics if m in set(part[schema.METRIC])]
        lines += [title, "", "| model | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
        ndcg10 = part[part[schema.METRIC] == "ndcg@10"].set_index(schema.MODEL)["mean"]
        for model in sorted(part[schema.MODEL].unique(), key=lambda m: -ndcg10.get(m, -1)):
            cells = []
            for metric in present:
                row = part[(part[schema.MODEL] == model) & (part[schema.METRIC] == metric)]
                cells.append("-" if row.empty else f"{row['mean'].iloc[0]:.4f} ± {row['std'].iloc[0]:.4f}")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    if gaps is not None and len(gaps):
        lines += [
            "## Scenario minus its control (ndcg@10, paired by seed)", "",
            "| scenario | control | model | gap | spread |", "|---|---|---|---|---|",
        ]
        for g in gaps.itertuples(index=False):
            lines.append(f"| {g[0]} | {g.control} | {g.model} | {g.gap:+.4f} | {g.spread:.4f} |")
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
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 3.8), squeeze=False)
    mean = curves.groupby([SCENARIO, schema.MODEL, schema.POSITION])[schema.EXAMINATION].mean().reset_index()
    # One colour per model across all panels.
    learned_models = sorted(m for m in mean[schema.MODEL].unique() if m != "truth")
    palette = plt.get_cmap("tab10")
    colours = {m: palette(i % 10) for i, m in enumerate(learned_models)}
    for ax, scenario in zip(axes[0], scenarios):
        part = mean[mean[SCENARIO] == scenario]
        for model in sorted(part[schema.MODEL].unique(), key=lambda m: (m != "truth", m)):
            line = part[part[schema.MODEL] == model].sort_values(schema.POSITION)
            if model == "truth":
                style = {"color": "black", "linewidth": 2.5}
            else:
                style = {"color": colours[model], "linewidth": 1.2, "marker": "."}
            ax.plot(line[schema.POSITION], line[schema.EXAMINATION], label=model, **style)
        ax.set_title(scenario)
        ax.set_xlabel("slot")
        ax.set_ylabel("examination / slot 1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    config: Config, spark: SparkSession, compare_id: str, command: str, seconds: Optional[float] = None
) -> pd.DataFrame:
    """The report and the plot of a comparison, from its Delta tables; returns the summary."""
    cc = compare_settings(config)
    table = read_table(spark, comparison_table(config)).where(F.col(COMPARE_ID) == compare_id)
    metrics = table.select(SCENARIO, SEED, schema.MODEL, schema.METRIC, schema.VALUE).toPandas()
    if metrics.empty:
        raise ValueError(f"compare: no results for compare id {compare_id!r} in {comparison_table(config)}")
    summary = summarise(metrics)
    claims = check_claims(metrics, list(cc.claims))
    if cc.plot:
        plot_curves(read_curves(spark, config, compare_id), cc.plot)
    if cc.report:
        os.makedirs(os.path.dirname(os.path.abspath(cc.report)), exist_ok=True)
        with open(cc.report, "w") as handle:
            controls = {s.name: s.control_of for s in cc.scenarios if s.control_of}
            handle.write(markdown_report(
                summary, claims, compare_id, command, list(cc.seeds), seconds, cc.plot, controls, control_gaps(metrics, controls),
                [s.name for s in cc.scenarios],
            ))
        print(f"compare: report written to {cc.report}")
    for r in claims:
        c = r.claim
        verdict = "holds" if r.holds else "does NOT hold"
        print(f"claim [{c.scenario}] {claim_text(c)} on {c.metric}: gap {r.gap:+.4f}, spread {r.spread:.4f}, p {r.p_value:.3g} -> {verdict}")
    return summary


def comparison_table(config: Config) -> str:
    return os.path.join(config.tables.path("comparison"), "metrics")


def compare(config: Config, spark: SparkSession, compare_id: str, command: str) -> pd.DataFrame:
    """Run the comparison, write the table, the report and the plot; returns the summary."""
    cc = compare_settings(config)
    if not cc.scenarios:
        raise ValueError("compare: compare.scenarios is empty; see conf/compare.yaml")
    started = time.time()
    runs = []
    for scenario in cc.scenarios:
        for seed in cc.seeds:
            print(f"== compare: scenario {scenario.name}, seed {seed}", flush=True)
            begun = time.time()
            runs.append(run_scenario(spark, config, scenario, seed, scenario_run_id(compare_id, scenario.name, seed)))
            print(f"== compare: scenario {scenario.name}, seed {seed} done in {time.time() - begun:.0f}s", flush=True)
    metrics = pd.concat(runs, ignore_index=True)
    table = spark.createDataFrame(metrics[[SCENARIO, SEED, schema.MODEL, schema.METRIC, schema.VALUE]]).select(
        F.lit(compare_id).alias(COMPARE_ID), SCENARIO, F.col(SEED).cast("int"), schema.MODEL, schema.METRIC,
        F.col(schema.VALUE).cast("double"), F.current_timestamp().alias(schema.EVALUATED_AT),
    )
    replace_rows(
        table.coalesce(1), comparison_table(config), "comparison", Provenance.of(config, compare_id, "compare"),
        f"{COMPARE_ID} = {sql_string(compare_id)}",
    )
    return write_report(config, spark, compare_id, command, time.time() - started)
