"""The ``compare:`` section of a config: which scenarios, seeds and baselines a comparison
runs, and which claims its report checks. Validated only when a config has this section."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

from pydantic import Field, model_validator

from ulr_spark.config.loader import owned_settings
from ulr_spark.config.rules import PositionalSection, Section, require

if TYPE_CHECKING:
    from ulr_spark.config import Config


# The boosted-tree baselines a comparison can train (ulr_spark.experiments.baselines).
BASELINES = ("lightgbm", "xgboost")


class CompareScenario(PositionalSection):
    """One scenario of a comparison: a runnable config file, and settings merged over it."""

    name: Annotated[str, Field(min_length=1)]
    config: Annotated[str, Field(min_length=1)]  # YAML path, relative to the working directory
    settings: dict[str, Any] = Field(default_factory=dict)
    # The scenario this one is a control of: the report shows it right after that one.
    control_of: str = ""


class CompareClaim(PositionalSection):
    """An expected result, checked in the report on the per-seed paired differences of
    ``model`` minus ``beats`` on ``metric`` in ``scenario`` (for bias_curve_error and
    distractor_leak lower is better, so the sign is turned):

    - ``beats``: the mean gap is at least ``min_gap`` and a paired t-test gives p < ``alpha``
      (with a single seed: the gap exceeds ``min_gap`` and 0);
    - ``not_beats``: ``model`` does not beat ``beats``: the gap is at most its spread, or p >= alpha
      (it may be worse);
    - ``no_gap``: no significant gap either way: |gap| is at most its spread, or p >= alpha;
    - ``below``: the mean of ``model`` on ``metric`` is below ``threshold`` (``beats`` unused);
    - ``near``: the mean of ``model`` on ``metric`` is within ``threshold`` of ``target``.
    """

    scenario: str = ""
    model: str = ""
    beats: str = ""
    metric: str = "ndcg@10"
    expect: Literal["beats", "not_beats", "no_gap", "below", "near"] = "beats"
    min_gap: Annotated[float, Field(ge=0)] = 0.0
    threshold: Optional[float] = None
    target: Optional[float] = None
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05


class CompareConfig(Section):
    scenarios: list[CompareScenario] = Field(default_factory=list)
    seeds: Annotated[list[int], Field(min_length=1)] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    baselines: list[str] = Field(default_factory=lambda: list(BASELINES))
    baseline_rounds: Annotated[int, Field(ge=1)] = 200
    baseline_max_rows: Annotated[int, Field(ge=1)] = 5_000_000  # the boosted trees train on the driver
    claims: list[CompareClaim] = Field(default_factory=list)
    report: str = "docs/comparison.md"
    plot: str = "docs/comparison_curves.png"

    @model_validator(mode="after")
    def _consistent(self) -> CompareConfig:
        names = [s.name for s in self.scenarios]
        require(len(set(names)) == len(names), "scenarios", "names must be distinct")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "must not repeat a seed")
        for name in self.baselines:
            require(name in BASELINES, "baselines", f"unknown baseline {name!r}; known: {list(BASELINES)}")
        for claim in self.claims:
            require(claim.scenario in names, "claims", f"scenario {claim.scenario!r} is not one of {names}")
            require(claim.expect not in ("below", "near") or claim.threshold is not None, "claims",
                    f"an expect: {claim.expect} claim needs a threshold")
            require(claim.expect != "near" or claim.target is not None, "claims", "an expect: near claim needs a target")
            require(claim.expect != "near" or (claim.threshold or 0) > 0, "claims", "an expect: near claim needs a threshold > 0")
            require(claim.expect in ("below", "near") or bool(claim.beats), "claims",
                    f"an expect: {claim.expect} claim names the model it is compared with (beats)")
        for scenario in self.scenarios:
            require(not scenario.control_of or scenario.control_of in names, "scenarios",
                    f"{scenario.name}: control_of {scenario.control_of!r} is not one of {names}")
            require(scenario.control_of != scenario.name, "scenarios", f"{scenario.name} cannot be its own control")
        return self


def compare_settings(config: Config) -> CompareConfig:
    """The config's ``compare:`` section, or the defaults when it has none."""
    return owned_settings(config, "compare", CompareConfig)
