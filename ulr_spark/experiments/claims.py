"""The claims of a comparison, checked on paired per-seed differences: for each seed both
models were trained and measured on the same simulated data, so the per-seed difference removes
how hard that seed's data is; its mean is the gap, its standard deviation the spread, and a
paired t-test (``scipy.stats.ttest_rel``) its p-value. The claim kinds are in
:class:`~ulr_spark.experiments.settings.CompareClaim`."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ulr_spark import schema
from ulr_spark.evaluation import BIAS_ERROR, DISTRACTOR_LEAK
from ulr_spark.experiments.settings import CompareClaim

SCENARIO, SEED = schema.SCENARIO, schema.SEED

# Metrics where lower is better: a claim's gap turns their sign.
LOWER_IS_BETTER = (BIAS_ERROR, DISTRACTOR_LEAK)


@dataclass(frozen=True)
class ClaimResult:
    claim: CompareClaim
    gap: float  # positive when the claim's direction holds; below: threshold - mean; near: threshold - |mean - target|
    spread: float
    holds: bool
    p_value: float = float("nan")  # paired t-test of the per-seed differences (nan: fewer than 2 seeds)


def paired_p_value(differences: pd.Series) -> float:
    """Two-sided p-value of a paired t-test that the mean difference is 0 (nan for < 2 seeds;
    0 when every seed has the same nonzero difference)."""
    from scipy import stats

    if len(differences) < 2:
        return float("nan")
    if float(differences.std()) == 0.0:
        return 0.0 if float(differences.mean()) != 0.0 else 1.0
    return float(stats.ttest_rel(differences.to_numpy(), [0.0] * len(differences)).pvalue)


def check_claims(metrics: pd.DataFrame, claims: list[CompareClaim]) -> list[ClaimResult]:
    """Each claim on the paired per-seed differences (see the module docstring)."""
    results = []
    for claim in claims:
        part = metrics[(metrics[SCENARIO] == claim.scenario) & (metrics[schema.METRIC] == claim.metric)]
        by_seed = part.pivot_table(index=SEED, columns=schema.MODEL, values=schema.VALUE)
        sign = -1.0 if claim.metric in LOWER_IS_BETTER else 1.0
        if claim.expect in ("below", "near"):
            if claim.model not in by_seed:
                results.append(ClaimResult(claim, float("nan"), float("nan"), False))
                continue
            values = by_seed[claim.model].dropna()
            assert claim.threshold is not None
            mean = float(values.mean())
            gap = claim.threshold - (abs(mean - float(claim.target or 0.0)) if claim.expect == "near" else mean)
            results.append(ClaimResult(claim, gap, float(values.std()) if len(values) > 1 else 0.0, gap > 0))
            continue
        if claim.model not in by_seed or claim.beats not in by_seed:
            results.append(ClaimResult(claim, float("nan"), float("nan"), False))
            continue
        differences = (sign * (by_seed[claim.model] - by_seed[claim.beats])).dropna()
        gap = float(differences.mean())
        spread = float(differences.std()) if len(differences) > 1 else 0.0
        p = paired_p_value(differences)
        significant = (p < claim.alpha) if len(differences) > 1 else gap > 0
        if claim.expect == "beats":
            holds = bool(gap > 0 and gap >= claim.min_gap and significant)
        elif claim.expect == "not_beats":
            holds = bool(gap <= spread or not significant)
        else:  # no_gap, either way
            holds = bool(abs(gap) <= spread or not significant)
        results.append(ClaimResult(claim, gap, spread, holds, p))
    return results


def claim_text(claim: CompareClaim) -> str:
    if claim.expect == "below":
        return f"{claim.model} below {claim.threshold:g}"
    if claim.expect == "near":
        return f"{claim.model} within {claim.threshold:g} of {claim.target:g}"
    if claim.expect == "not_beats":
        return f"{claim.model} does not beat {claim.beats}"
    if claim.expect == "no_gap":
        return f"{claim.model} no significant gap to {claim.beats}"
    return f"{claim.model} beats {claim.beats}" + (f" by >= {claim.min_gap:g}" if claim.min_gap else "")


def control_gaps(metrics: pd.DataFrame, controls: dict[str, str], metric: str = "ndcg@10") -> pd.DataFrame:
    """For each control scenario and each model trained in both it and the scenario it
    controls: the mean and spread over seeds of the paired difference (scenario - control) on
    ``metric``. Columns: scenario, control, model, gap, spread."""
    rows = []
    part = metrics[metrics[schema.METRIC] == metric]
    for control, scenario in controls.items():
        a = part[part[SCENARIO] == scenario].pivot_table(index=SEED, columns=schema.MODEL, values=schema.VALUE)
        b = part[part[SCENARIO] == control].pivot_table(index=SEED, columns=schema.MODEL, values=schema.VALUE)
        for model in sorted(set(a.columns) & set(b.columns)):
            difference = (a[model] - b[model]).dropna()
            if len(difference):
                spread = float(difference.std()) if len(difference) > 1 else 0.0
                rows.append((scenario, control, model, float(difference.mean()), spread))
    return pd.DataFrame(rows, columns=[SCENARIO, "control", schema.MODEL, "gap", "spread"])
