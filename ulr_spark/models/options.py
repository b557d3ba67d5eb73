"""The settings of the model family, defined once: the config's ``train.model_options`` and
each variant's ``options`` are validated against :class:`ModelOptions`, and every
:class:`~ulr_spark.models.spec.ModelSpec` carries the same fields."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Annotated, ClassVar

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
    # Lambda of the adversary's reversed gradient into the relevance tower; 0 turns it off.
    gradient_reversal: Annotated[float, Strict(), Field(ge=0)] = 0.0
    # Width of the relevance and bias vectors of the dot-product model.
    dot_product_dim: Annotated[int, Strict(), Field(ge=1)] = 4
    mixem_components: Annotated[int, Strict(), Field(ge=1)] = 2
    # MixEM: lists without a click get zero weight in the M-step.
    mixem_skip_unclicked: Annotated[bool, Strict()] = False
    # A linear relevance tower (no hidden layer): with the additive model's bias table this is
    # plain logistic regression on the features and a one-hot of the position, a cheap reference.
    linear_relevance: Annotated[bool, Strict()] = False
    # Width of the XPA attention.
    attention_dim: Annotated[int, Strict(), Field(ge=1)] = 16


# The architectures a config may name; ulr_spark.models.registry maps each to its class.
ARCHITECTURES = ("naive", "additive", "pal", "dot_product", "mixem", "xpa")
