"""The settings of the model family, defined once: the config's ``train.model_options`` and
each variant's ``options`` are validated against :class:`ModelOptions`, and every
:class:`~ulr_spark.models.spec.ModelSpec` carries the same fields."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, Strict

from ulr_spark.constraints import interval


@dataclass(frozen=True)
class ModelOptions:
    """Options a configured model (or a named variant) may change. Keyword-only, so a
    :class:`ModelSpec` that extends them keeps its own fields first."""

    # pydantic reads this when the options are part of the config: an unknown key is an error.
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    _: KW_ONLY
    # Dropout on the bias tower's output while training (against a confounded logging ranker).
    # Strict() on each field: as in every config section, "0.3" is not a number and "yes" is
    # not a boolean (a dataclass cannot be strict as a whole and still take a mapping).
    bias_dropout: Annotated[float, Strict(), interval(0, 1, high_open=True)] = 0.0
    # Lambda of gradient reversal on the bias side: an adversary reads the bias output and
    # predicts the (detached) relevance; its gradient into the bias tower is multiplied by
    # -lambda. 0 turns it off. (Reversing into the relevance tower destroyed the ranking at
    # every lambda tried: docs/models.md, "Gradient reversal".)
    gradient_reversal: Annotated[float, Strict(), Field(ge=0)] = 0.0
    # Where the bias tables start. log_rank: a decreasing curve, -log k in logit space (PAL:
    # examination 1/(2k)); zero: flat, i.e. training starts from the naive model, which left
    # the rarely clicked low slots under-trained and let the relevance tower keep part of what
    # the logging ranker rewarded (docs/models.md, "Fair training").
    bias_init: Literal["log_rank", "zero"] = "log_rank"
    # Width of the relevance and bias vectors of the dot-product model.
    dot_product_dim: Annotated[int, Strict(), Field(ge=1)] = 4
    mixem_components: Annotated[int, Strict(), Field(ge=1)] = 2
    # MixEM: lists without a click get zero weight in the M-step.
    mixem_skip_unclicked: Annotated[bool, Strict()] = False
    # MixEM: the last component ignores relevance (its gain is fixed at 0) and starts from a
    # steeper curve: people who click the top slots whatever they show.
    mixem_blind_component: Annotated[bool, Strict()] = False
    # A linear relevance tower (no hidden layer): with the additive model's bias table this is
    # plain logistic regression on the features and a one-hot of the position, a cheap reference.
    linear_relevance: Annotated[bool, Strict()] = False
    # Width of the XPA attention.
    attention_dim: Annotated[int, Strict(), Field(ge=1)] = 16
    # XPA regularisation: dropout on the attention weights, and an optional L2 penalty on what
    # attention adds to the position table (per slot impression). Without regularisation XPA
    # overfitted a sparse search log (held-out perplexity 1.499 against 1.442 for additive);
    # the penalty also shrank the neighbour effect XPA exists to learn, so it is off by default
    # (docs/models.md, "XPA is regularised").
    attention_dropout: Annotated[float, Strict(), interval(0, 1, high_open=True)] = 0.1
    attention_offset_penalty: Annotated[float, Strict(), Field(ge=0)] = 0.0


# The architectures a config may name; ulr_spark.models.registry maps each to its class.
ARCHITECTURES = ("naive", "additive", "pal", "dot_product", "mixem", "xpa")
