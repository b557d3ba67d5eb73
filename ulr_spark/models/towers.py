"""Generic towers: the relevance MLP, the position-bias table, and gradient reversal."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class RelevanceTower(nn.Module):
    """r(x) = MLP(x): relevance features [..., D] -> ``outputs`` relevance values per item
    ([...] when scalar, [..., outputs] when ``vector``)."""

    def __init__(self, num_features: int, hidden_sizes: list[int], outputs: int = 1, vector: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        width = num_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, outputs))
        self.mlp = nn.Sequential(*layers)
        self.vector = vector or outputs > 1

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.mlp(features)
        return out if self.vector else out.squeeze(-1)


class PositionBiasTower(nn.Module):
    """o(p, c) = b[c, p]: ``outputs`` free values per (context, slot), the shallow bias tower
    of Zhao et al., "Recommending what video to watch next" (RecSys 2019).

    positions [B, K] (1-based, 0 = padding) and context_ids [B] -> [B, K] (or [B, K, outputs]
    when ``vector``). Padding slots never receive a gradient through the masked loss.
    """

    def __init__(
        self, max_slate_size: int, num_contexts: int, outputs: int = 1, init: float = 0.0, vector: bool = False
    ):
        super().__init__()
        self.slots = max_slate_size + 1
        self.outputs = outputs
        self.vector = vector or outputs > 1
        self.table = nn.Embedding(num_contexts * self.slots, outputs)
        nn.init.constant_(self.table.weight, init)

    def forward(self, positions: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
        index = context_ids.unsqueeze(-1) * self.slots + positions
        out = self.table(index)
        return out if self.vector else out.squeeze(-1)


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.factor * grad, None


def reverse_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; the gradient flowing back is multiplied by -factor (Ganin and
    Lempitsky, "Unsupervised domain adaptation by backpropagation", ICML 2015)."""
    out: torch.Tensor = _ReverseGradient.apply(x, factor)
    return out
