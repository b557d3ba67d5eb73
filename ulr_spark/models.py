"""Click models: a relevance tower, a bias tower, and the ways they combine (DESIGN section 3).

Shapes: ``features`` is [B, K, D] (K slots of a slate, D relevance features), ``positions``
[B, K] (1-based slots, 0 = padding) and ``context_ids`` [B]. Every model returns click logits
[B, K]; only :meth:`ClickModel.relevance` is used at serving time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model from its weights."""

    name: str
    num_features: int
    max_slate_size: int
    num_contexts: int
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 32])

    def to_dict(self) -> dict:
        return asdict(self)


class RelevanceTower(nn.Module):
    """r(x) = MLP(x): relevance features -> one relevance logit per item."""

    def __init__(self, num_features: int, hidden_sizes: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        width = num_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features).squeeze(-1)


class PositionBiasTower(nn.Module):
    """o(p, c) = b[c, p]: one free logit per (context, slot), the shallow bias tower of
    Zhao et al. (2019). Padding slots (p = 0) get a fixed 0 that never receives a gradient
    through the masked loss."""

    def __init__(self, max_slate_size: int, num_contexts: int):
        super().__init__()
        self.slots = max_slate_size + 1
        self.table = nn.Embedding(num_contexts * self.slots, 1)
        nn.init.zeros_(self.table.weight)

    def forward(self, positions: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
        index = context_ids.unsqueeze(-1) * self.slots + positions
        return self.table(index).squeeze(-1)


class ClickModel(nn.Module):
    """Base class: a relevance tower plus, in subclasses, a way to add position bias."""

    has_bias_tower = False

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.relevance_tower = RelevanceTower(spec.num_features, spec.hidden_sizes)

    def relevance(self, features: torch.Tensor) -> torch.Tensor:
        """The debiased relevance score used for serving."""
        return self.relevance_tower(features)

    def forward(self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class NaiveModel(ClickModel):
    """P(click) = sigma(r(x)). The baseline: whatever position did to clicks ends up in r."""

    def forward(self, features, positions, context_ids):
        return self.relevance(features)


class AdditiveTwoTower(ClickModel):
    """P(click) = sigma(r(x) + o(p, c)): relevance and position bias add in logit space."""

    has_bias_tower = True

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.bias_tower = PositionBiasTower(spec.max_slate_size, spec.num_contexts)

    def forward(self, features, positions, context_ids):
        return self.relevance(features) + self.bias_tower(positions, context_ids)


MODEL_CLASSES: dict[str, type[ClickModel]] = {
    "naive": NaiveModel,
    "additive": AdditiveTwoTower,
}


def build_model(spec: ModelSpec) -> ClickModel:
    return MODEL_CLASSES[spec.name](spec)


def weighted_click_loss(
    logits: torch.Tensor, clicks: torch.Tensor, impressions: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of merged slates, and the number of slot impressions.

    For a row merged from n requests with c_i clicks on slot i:
    -sum_i [c_i log p_i + (n - c_i) log(1 - p_i)], which equals the sum of the per-request
    losses it replaces. Padding slots (position 0) do not count.
    """
    mask = (positions > 0).to(logits.dtype)
    weight = impressions.to(logits.dtype).unsqueeze(-1) * mask
    target = clicks.to(logits.dtype) / impressions.to(logits.dtype).clamp(min=1).unsqueeze(-1)
    per_slot = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_slot * weight).sum(), weight.sum()


@torch.no_grad()
def examination_curve(
    model: ClickModel,
    features: torch.Tensor,
    context_id: int,
    reference_context_id: int = 0,
) -> torch.Tensor:
    """Examination of slots 1..K in one context, relative to slot 1 of the reference context.

    Defined for any click model as the counterfactual click-through ratio: the same items
    (``features``, [N, D]) are placed in slot k of context c and in slot 1 of the reference
    context, and the mean click probabilities are compared. For a product model this is exactly
    sigma(o(k, c)) / sigma(o(1, ref)); for the additive model it is what the logit offsets
    imply on the logged items, which is comparable across models.
    """
    model.eval()
    n, k = features.shape[0], model.spec.max_slate_size
    items = features.unsqueeze(1).expand(n, k, features.shape[-1])
    slots = torch.arange(1, k + 1, device=features.device).expand(n, k)
    in_context = torch.sigmoid(model(items, slots, torch.full((n,), context_id, device=features.device)))
    first = torch.sigmoid(
        model(items[:, :1], slots[:, :1], torch.full((n,), reference_context_id, device=features.device))
    )
    return in_context.mean(0) / first.mean()
