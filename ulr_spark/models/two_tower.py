"""Two-tower models whose bias depends on the slot and the context: sum of logits (additive),
product of probabilities (PAL), and dot product of vectors."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ulr_spark.models.base import TwoTowerModel
from ulr_spark.models.spec import ModelSpec
from ulr_spark.models.towers import PositionBiasTower, starting_curve


class AdditiveTwoTower(TwoTowerModel):
    """P(click) = sigma(r(x) + o(p, c)): relevance and position bias add in logit space."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.bias_tower = PositionBiasTower(
            spec.max_slate_size, spec.num_contexts, init=starting_curve(spec.max_slate_size, spec.bias_init)
        )

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
        # Slot 1 starts at sigma(0) = 1/2, where sigma(o) has its largest gradient (starting
        # near 1 left the top slots saturated: docs/models.md, "PAL's bias starts at 0"); with
        # bias_init log_rank slot k starts at examination 1/(2k), logit(1/(2k)) = -log(2k - 1).
        curve = starting_curve(spec.max_slate_size, spec.bias_init)
        start = -torch.log(2.0 * torch.exp(-curve) - 1.0)
        self.bias_tower = PositionBiasTower(spec.max_slate_size, spec.num_contexts, init=start)

    def towers(
        self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.relevance(features), self.bias_tower(positions, context_ids)

    def combine(self, relevance: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return _logit_of_product(F.logsigmoid(relevance) + F.logsigmoid(bias))

    def dropped_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """Examination 1 (sigma(30) = 1 - 1e-13): the click probability is sigma(r) alone."""
        return torch.full_like(bias, 30.0)


class DotProductTwoTower(TwoTowerModel):
    """P(click) = sigma(<r_vec(x), o_vec(p, c)>), r_vec and o_vec in R^d (Chen et al.,
    "Scalar is not enough: vectorization-based unbiased learning to rank", KDD 2022; Yan et
    al., SIGIR 2022). With d > 1 bias and relevance interact: how much a slot rewards relevance
    can differ from how much it rewards other traits of an item.

    Serving: s(x) = <r_vec(x), o_bar>, with o_bar the impression-weighted mean of o_vec over the
    (slot, context) cells of the training log (:meth:`set_serving_direction`, called once
    training ends). Because the logit is linear in o_vec, s(x) is exactly the model's own click
    logit averaged over where the log showed items, so it orders items as their average click
    logit over the log's slots does. Projecting on slot 1 alone (the first choice) ranked
    documents of a real search log far from an EM-fitted PBM (Spearman 0.61): a d-dimensional
    model may order items differently in each slot, and slot 1 is one slot of ten.
    Before :meth:`set_serving_direction` runs, o_bar is slot 1 of context 0.

    A dropped bias output (``bias_dropout``) is replaced by o_bar: the logit is then the
    serving score.
    """

    vector_relevance = True
    serving_direction: torch.Tensor
    has_serving_direction: torch.Tensor

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        d = spec.dot_product_dim
        self.bias_tower = PositionBiasTower(spec.max_slate_size, spec.num_contexts, outputs=d, vector=True)
        # A logit <r, o> has no additive offset to start from a decreasing curve, so bias_init
        # does not apply: the vectors start around one direction, equal in every slot.
        nn.init.normal_(self.bias_tower.table.weight, mean=1.0 / math.sqrt(d), std=0.1)
        self.register_buffer("serving_direction", torch.zeros(d))
        self.register_buffer("has_serving_direction", torch.zeros((), dtype=torch.bool))
        self.cell_weights: torch.Tensor | None = None

    def relevance_outputs(self) -> int:
        return self.spec.dot_product_dim

    def bias_outputs(self) -> int:
        return self.spec.dot_product_dim

    def base_bias(self) -> torch.Tensor:
        """o_bar ([d]): the direction serving scores are projected on."""
        fallback = self.bias_tower.table.weight[1]
        return torch.where(self.has_serving_direction, self.serving_direction, fallback)

    def set_cell_impressions(self, cell_impressions: dict[tuple[int, int], int]) -> None:
        """The weights of o_bar: impressions per (context id, slot) cell of the training split.
        Set before training (a dropped bias is o_bar of the current table) and kept out of the
        saved state (the serving direction is saved instead).

        Raises:
            ValueError: no cell has an impression.
        """
        total = sum(cell_impressions.values())
        if total <= 0:
            raise ValueError("dot_product: no (context, slot) cell has an impression; the serving direction is undefined")
        weights = torch.zeros(self.bias_tower.table.num_embeddings, device=self.serving_direction.device)
        for (context, slot), n in cell_impressions.items():
            weights[context * self.bias_tower.slots + slot] += n / total
        self.cell_weights = weights

    def mean_bias(self) -> torch.Tensor:
        """o_bar of the current bias table ([d]), weighted by :meth:`set_cell_impressions`
        (slot 1 of context 0 before they are set)."""
        if self.cell_weights is None:
            return self.bias_tower.table.weight[1]
        mean: torch.Tensor = self.cell_weights.to(self.bias_tower.table.weight.device) @ self.bias_tower.table.weight
        return mean

    @torch.no_grad()
    def set_serving_direction(self, cell_impressions: dict[tuple[int, int], int]) -> None:
        """Fix the serving direction to o_bar = sum_cells n_cell o_vec(cell) / sum n_cell, over
        {(context id, slot): impressions}; called once training ends.

        Raises:
            ValueError: no cell has an impression.
        """
        self.set_cell_impressions(cell_impressions)
        self.serving_direction.copy_(self.mean_bias())
        self.has_serving_direction.fill_(True)

    def relevance(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relevance_tower(features) @ self.base_bias()
        return out

    def towers(
        self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.relevance_tower(features), self.bias_tower(positions, context_ids)

    def combine(self, relevance: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return (relevance * bias).sum(-1)

    def dropped_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """o_bar of the current table, detached: the logit of a dropped item is its serving
        score, and no gradient flows from dropped items into the cells o_bar averages."""
        return self.mean_bias().detach().expand_as(bias)
