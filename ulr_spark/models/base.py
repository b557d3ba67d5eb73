"""The base click model and the base two-tower model.

Shapes: ``features`` is [B, K, D] (K slots of a slate, D relevance features), ``positions``
[B, K] (1-based slots in reading order, 0 = padding) and ``context_ids`` [B]. Every model
returns click logits [B, K]; only :meth:`ClickModel.relevance` is used at serving time.

Training goes through :meth:`ClickModel.loss`, so a model with its own objective (MixEM's EM
loss, the adversary of gradient reversal) keeps it next to its equation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from ulr_spark.models.losses import summed_click_nll
from ulr_spark.models.spec import ModelSpec
from ulr_spark.models.towers import RelevanceTower, reverse_gradient

if TYPE_CHECKING:
    from ulr_spark.models.curves import PageSample


class ClickModel(nn.Module):
    """A relevance tower and a way to turn a slate into click logits."""

    has_bias_tower = False
    vector_relevance = False  # the relevance tower outputs a vector, even of size 1

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.relevance_tower = RelevanceTower(
            spec.num_features, [] if spec.linear_relevance else spec.hidden_sizes, self.relevance_outputs(),
            vector=self.vector_relevance, categorical_buckets=spec.categorical_buckets, embedding_dims=spec.embedding_dims,
        )

    def relevance_outputs(self) -> int:
        return 1

    def relevance(self, features: torch.Tensor) -> torch.Tensor:
        """The debiased relevance score used for serving: [..., D] -> [...], one value per item."""
        out: torch.Tensor = self.relevance_tower(features)
        return out

    def forward(self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(
        self,
        features: torch.Tensor,
        positions: torch.Tensor,
        context_ids: torch.Tensor,
        clicks: torch.Tensor,
        impressions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed negative log-likelihood of the batch, slot impressions it stands for)."""
        return summed_click_nll(self(features, positions, context_ids), clicks, impressions, positions)

    def placed_click_probability(self, pages: PageSample, context_id: int, slots: torch.Tensor) -> torch.Tensor:
        """P(click) [N, J, S] of item j of page n placed in slot ``slots[s]`` (1-based) of
        context ``context_id``: the counterfactual that examination curves are read from
        (:mod:`ulr_spark.models.curves`). Here the bias depends on (slot, context) only, so each
        item is moved alone; a model whose bias reads the page overrides this."""
        real = pages.positions > 0
        contexts = torch.full_like(pages.context_ids, context_id)
        columns = []
        for slot in slots.tolist():
            placed = torch.where(real, slot, 0)
            columns.append(torch.sigmoid(self(pages.features, placed, contexts)))
        return torch.stack(columns, -1)

    def examination_curve(self, pages: PageSample, context_id: int, reference_context_id: int = 0) -> torch.Tensor:
        """Examination of slots 1..K in one context, relative to slot 1 of the reference
        context; see :func:`ulr_spark.models.curves.examination_curve`."""
        from ulr_spark.models.curves import examination_curve

        return examination_curve(self, pages, context_id, reference_context_id)


class NaiveModel(ClickModel):
    """P(click) = sigma(r(x)). The baseline: whatever position did to clicks ends up in r."""

    def forward(self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
        return self.relevance(features)


class TwoTowerModel(ClickModel):
    """A relevance tower r and a bias tower o combined by :meth:`combine`.

    Two options against a confounded logging ranker (Zhang et al., "Towards disentangling
    relevance and bias in unbiased learning to rank", KDD 2023), on every two-tower model:

    - ``bias_dropout`` p: while training, each item's bias output is replaced, with probability
      p, by :meth:`dropped_bias` (the value that leaves the click probability to relevance
      alone), so the relevance tower must explain clicks without the slot part of the time.
      The kept offsets are not rescaled: a 1/(1-p) rescale, as ``nn.Dropout`` does, would
      distort the learned curve that serving-time analysis reads.
    - ``gradient_reversal`` lambda: an adversary reads each item's bias output and predicts its
      (detached, batch-standardised) relevance output; the adversary minimises the bounded
      error rho(e) = e^2 / (1 + e^2), and its gradient into the bias tower is multiplied by
      -lambda, which pushes relevance out of the bias side. Bounded, so the bias tower cannot
      win by moving its output without limit.
    """

    has_bias_tower = True

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.adversary: Optional[nn.Module] = None
        if spec.gradient_reversal > 0:
            self.adversary = nn.Sequential(
                nn.Linear(self.bias_outputs(), 16), nn.ReLU(), nn.Linear(16, self.relevance_outputs())
            )

    def bias_outputs(self) -> int:
        return 1

    def towers(
        self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(relevance output, bias output) for every slot."""
        raise NotImplementedError

    def combine(self, relevance: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Click logits from the two towers' outputs."""
        raise NotImplementedError

    def dropped_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """What a dropped bias output is replaced by: here offset 0 (the click logit is the
        relevance alone); a model whose bias is not a logit offset overrides it."""
        return torch.zeros_like(bias)

    def drop_bias(self, bias: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The bias with each item's output dropped with probability ``bias_dropout`` (training only)."""
        p = self.spec.bias_dropout
        if not self.training or p <= 0:
            return bias
        dropped = torch.rand(positions.shape, device=bias.device) < p
        if bias.dim() > positions.dim():
            dropped = dropped.unsqueeze(-1)
        return torch.where(dropped, self.dropped_bias(bias), bias)

    def forward(self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
        relevance, bias = self.towers(features, positions, context_ids)
        return self.combine(relevance, self.drop_bias(bias, positions))

    def regulariser(self, impressions: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | float:
        """A penalty added to the summed loss of the last :meth:`towers` call, weighted by the
        impressions [B] of its rows (0: none)."""
        return 0.0

    def loss(
        self,
        features: torch.Tensor,
        positions: torch.Tensor,
        context_ids: torch.Tensor,
        clicks: torch.Tensor,
        impressions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        relevance, bias = self.towers(features, positions, context_ids)
        logits = self.combine(relevance, self.drop_bias(bias, positions))
        loss, weight = summed_click_nll(logits, clicks, impressions, positions)
        loss = loss + self.regulariser(impressions, positions)
        if self.adversary is not None:
            loss = loss + self.adversary_loss(relevance, bias, impressions, positions)
        return loss, weight

    def adversary_loss(
        self, relevance: torch.Tensor, bias: torch.Tensor, impressions: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Impression-weighted bounded error sum_i n rho(guess_i - z_i) of the adversary, z the
        relevance output standardised over the batch's real slots (see the class docstring)."""
        assert self.adversary is not None

        def per_item(t: torch.Tensor) -> torch.Tensor:
            return t.unsqueeze(-1) if t.dim() == positions.dim() else t

        real = (positions > 0).unsqueeze(-1)
        target = per_item(relevance.detach())
        count = real.sum().clamp(min=1)
        mean = (target * real).sum((0, 1)) / count
        std = (((target - mean) * real).pow(2).sum((0, 1)) / count).sqrt().clamp(min=1e-6)
        target = (target - mean) / std
        guess = self.adversary(reverse_gradient(per_item(bias), self.spec.gradient_reversal))
        squared = (guess - target).pow(2)
        error = (squared / (1.0 + squared)).sum(-1)
        weight = impressions.unsqueeze(-1) * (positions > 0)
        return (error * weight).sum()
