"""The ``simulate:`` section of a config: how the simulator draws a log with a known truth.

The config loader validates this section only when a config has one (the production stages
never read it); ``simulation_settings(config)`` gives the section, or the defaults.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from ulr_spark.config.loader import owned_settings
from ulr_spark.config.rules import Section, broken, date_as_text, require
from ulr_spark.constraints import interval

if TYPE_CHECKING:
    from ulr_spark.config import Config

PositiveInt = Annotated[int, Field(ge=1)]
Share = Annotated[float, interval(0, 1)]


class LoggingRankerConfig(Section):
    """The simulated production ranker: score = relevance_weight * f(x) + distractor_weight * u(x)
    + noise * N(0, 1) drawn per request; it shows its top ``slate_size`` candidates."""

    relevance_weight: float = 1.0
    distractor_weight: float = 1.0
    noise: Annotated[float, Field(ge=0)] = 1.0


class LetorConfig(Section):
    """A LETOR/svmlight ranking dataset to draw the truth and the features from."""

    train_path: str = ""
    # Queries of this file are held out (never logged); without it, heldout_fraction decides.
    test_path: str = ""
    # Query sizes come from `qid:` in the lines or, when the lines have none, from a
    # LightGBM-style "<file>.query" file next to the data.


class SimulateConfig(Section):
    # pbm: one examination curve. mixture: a share of requests come from people who click the
    # top slots whatever they show. context: the examination of a slot drops next to a very
    # attractive (or, with neighbour_signal salience, a salient) item: list neighbours, or
    # left/right/above/below on a grid; with layout blended the page alternates salient and plain
    # items. confounded: pbm clicks under a strong logging ranker (set in logging_ranker) that
    # also sees relevance no feature shows (hidden_relevance). trust: trust bias (Agarwal et
    # al., WWW 2019), P(click | k, y) = theta_k * (a(y) * (1 - (k + 1) / 100) + (1 - a(y)) *
    # 0.65 / k): people also click irrelevant items, the more so the higher they are shown.
    scenario: Literal["pbm", "mixture", "context", "confounded", "trust"] = "pbm"
    # synthetic: features and labels from a hidden function; letor: from the `letor` files.
    source: Literal["synthetic", "letor"] = "synthetic"
    letor: LetorConfig = Field(default_factory=LetorConfig)
    seed: int = 7
    num_queries: Annotated[int, Field(ge=2)] = 2000
    heldout_fraction: Annotated[float, interval(0, 1, low_open=True, high_open=True)] = 0.2
    candidates_per_query: PositiveInt = 20
    slate_size: PositiveInt = 10
    num_requests: PositiveInt = 100_000
    num_features: Annotated[int, Field(ge=2)] = 16
    # Examination of slots 1..slate_size: theta_k ** eta (docs/design.md, "Simulator").
    examination: list[Annotated[float, interval(0, 1, low_open=True)]] = Field(
        default_factory=lambda: [0.68, 0.61, 0.48, 0.34, 0.28, 0.20, 0.11, 0.10, 0.08, 0.06]
    )
    eta: Annotated[float, Field(gt=0)] = 1.0
    # eps in P(attracted | y) = eps + (1 - eps) (2^y - 1) / 15
    click_noise: Annotated[float, interval(0, 1, high_open=True)] = 0.1
    # Share of (query, item) pairs at each label 0..4.
    label_shares: list[float] = Field(default_factory=lambda: [0.45, 0.30, 0.15, 0.07, 0.03])
    logging_ranker: LoggingRankerConfig = Field(default_factory=LoggingRankerConfig)
    start_date: Annotated[str, BeforeValidator(date_as_text)] = "2026-01-01"
    days: PositiveInt = 7  # requests are spread over this many event_date partitions, in id order
    # How requests pick a training query: uniform, or zipf (head and tail queries, with
    # P(rank r) proportional to r ** -zipf_exponent).
    query_popularity: Literal["uniform", "zipf"] = "uniform"
    zipf_exponent: Annotated[float, Field(gt=0)] = 1.1
    # Share of requests whose slate is re-drawn with fresh ranker noise. The rest show the
    # query's usual slate (the ranker's noise is then a fixed error per query and item), as
    # production rankers mostly repeat themselves; 1.0 re-draws every slate.
    randomised_share: Share = 1.0
    partitions: PositiveInt = 8
    # mixture: share of requests from top clickers, and their click probability on slots 1..n
    # (0 below), whatever the item.
    mixture_share: Share = 0.3
    mixture_top_clicks: list[Share] = Field(default_factory=lambda: [0.7, 0.3, 0.1])
    # context: examination is multiplied by 1 - neighbour_effect * (largest signal among the
    # slot's neighbours); the signal is the neighbour's attraction P(attracted | y), or its
    # salient flag (0/1) with neighbour_signal salience.
    neighbour_effect: Share = 0.6
    neighbour_signal: Literal["attraction", "salience"] = "attraction"
    # context: sorted shows the logging ranker's top slate_size; blended alternates salient
    # items (slots 1, 3, 5, ...) and plain ones (2, 4, ...), each class in the ranker's order,
    # and fills with the other class in score order when one runs out.
    layout: Literal["sorted", "blended"] = "sorted"
    # Salient items: the top salient_share of the catalogue along a random feature direction
    # orthogonal to relevance (a badge, a thumbnail): visible in the features, not relevance.
    salient_share: Share = 0.3
    # Relevance the features do not show: true relevance = standardise(f(x) + hidden_relevance
    # * h), h ~ N(0, 1) per (query, item), before the labels are cut; the logging ranker's
    # relevance term sees it, no feature does. 0 keeps the catalogue as it was. Synthetic only.
    hidden_relevance: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> SimulateConfig:
        require(self.source != "letor" or bool(self.letor.train_path), "letor.train_path", "is required when source is 'letor'")
        require(self.candidates_per_query >= self.slate_size, "candidates_per_query", "must be >= slate_size")
        require(
            len(self.examination) >= self.slate_size,
            "examination",
            f"needs one value per slot (slate_size={self.slate_size})",
        )
        require(len(self.label_shares) == 5, "label_shares", "needs 5 values (labels 0..4)")
        require(
            all(v >= 0 for v in self.label_shares) and abs(sum(self.label_shares) - 1) < 1e-6,
            "label_shares",
            "must be non-negative and sum to 1",
        )
        for key, value, default in (("layout", self.layout, "sorted"), ("neighbour_signal", self.neighbour_signal, "attraction")):
            require(value == default or self.scenario == "context", key, f"{value!r} needs scenario 'context'")
        require(
            self.hidden_relevance == 0 or self.source == "synthetic",
            "hidden_relevance",
            "needs source 'synthetic' (a LETOR file's labels are given)",
        )
        # Trust bias's P(click | relevant, slot k) = 1 - (k + 1) / 100 must stay positive.
        require(self.scenario != "trust" or self.slate_size <= 98, "slate_size", "must be <= 98 under scenario 'trust'")
        try:
            datetime.date.fromisoformat(self.start_date)
        except ValueError:
            raise broken("start_date", "must be a date like 2026-01-01") from None
        return self


def simulation_settings(config: Config) -> SimulateConfig:
    """The config's ``simulate:`` section, or the defaults when it has none."""
    return owned_settings(config, "simulate", SimulateConfig)
