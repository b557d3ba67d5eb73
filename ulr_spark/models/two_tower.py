"""Two-tower models whose bias depends on the slot and the context: sum of logits (additive),
product of probabilities (PAL), and dot product of vectors."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ulr_spark.models.base import TwoTowerModel
from ulr_spark.models.spec import ModelSpec
from ulr_spark.models.towers import PositionBiasTower


class AdditiveTwoTower(TwoTowerModel):
    """P(click) = sigma(r(x) + o(p, c)): relevance and position bias add in logit space."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.bias_tower = PositionBiasTower(spec.max_slate_size, spec.num_contexts)

    def towers(
        self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.relevance(features), self.bias_tower(positions, context_ids)

    def combine(self, relevance: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return relevance + bias


def _logit_of_product(log_p: torch.Tensor) -> torch.Tensor:
    """logit(p) from log p, stable for p < 1: log p - log(1 - p)."""
    log_p = log_p.clamp(max=-1e-6)
    return log_p - torch.log(-torch.expm1(log_p))


class PALModel(TwoTowerModel):
    """P(click) = sigma(r(x)) * sigma(o(p, c)): P(relevant) times P(examined), as in PAL
    (Guo et al., "PAL: a position-bias aware learning framework for CTR prediction in live
    recommender systems", RecSys 2019). Not the same model as the sum of logits: the bias
    multiplies probabilities, so a rarely examined slot scales every item's click rate by one
    factor."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        # Start at sigma(0) = 1/2, where sigma(o) has its largest gradient. Starting near 1
        # (o = 2) left the top slots saturated and the learned curve flat over slots 1-3
        # (docs/models.md, "PAL's bias starts at 0").
        self.bias_tower = PositionBiasTower(spec.max_slate_size, spec.num_contexts, init=0.0)

    def towers(
        self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.relevance(features), self.bias_tower(positions, context_ids)

    def combine(self, relevance: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return _logit_of_product(F.logsigmoid(relevance) + F.logsigmoid(bias))


class DotProductTwoTower(TwoTowerModel):
    """P(click) = sigma(<r_vec(x), o_vec(p, c)>), r_vec and o_vec in R^d (Chen et al.,
    "Scalar is not enough: vectorization-based unbiased learning to rank", KDD 2022; Yan et
    al., SIGIR 2022). With
    d > 1 bias and relevance interact: how much a slot rewards relevance can differ from how
    much it rewards other traits of an item.

    Serving: s(x) = <r_vec(x), o_vec(1, c0)>, the click logit the item would have in slot 1 of
    the reference context, so scores are comparable across items.
    """

    vector_relevance = True

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        d = spec.dot_product_dim
        self.bias_tower = PositionBiasTower(spec.max_slate_size, spec.num_contexts, outputs=d, vector=True)
        nn.init.normal_(self.bias_tower.table.weight, mean=1.0 / math.sqrt(d), std=0.1)

    def relevance_outputs(self) -> int:
        return self.spec.dot_product_dim

    def bias_outputs(self) -> int:
        return self.spec.dot_product_dim

    def base_bias(self) -> torch.Tensor:
        """o_vec of slot 1 in context 0 ([d]): the direction scores are projected on."""
        return self.bias_tower.table.weight[1]

    def relevance(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relevance_tower(features) @ self.base_bias()
        return out

    def towers(
        self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.relevance_tower(features), self.bias_tower(positions, context_ids)

    def combine(self, relevance: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return (relevance * bias).sum(-1)
