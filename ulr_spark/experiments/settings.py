"""The ``compare:`` section of a config: which scenarios, seeds and baselines a comparison
runs, and which claims its report checks. Validated only when a config has this section."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

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


class CompareClaim(PositionalSection):
    """An expected result, checked in the report: ``model`` beats ``beats`` on ``metric`` in
    ``scenario`` by more than the spread over seeds (for bias_curve_error: lower is better)."""

    scenario: str = ""
    model: str = ""
    beats: str = ""
    metric: str = "ndcg@10"


class CompareConfig(Section):
    scenarios: list[CompareScenario] = Field(default_factory=list)
    seeds: Annotated[list[int], Field(min_length=1)] = Field(default_factory=lambda: [1, 2, 3])
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
        return self


def compare_settings(config: Config) -> CompareConfig:
    """The config's ``compare:`` section, or the defaults when it has none."""
    return owned_settings(config, "compare", CompareConfig)
