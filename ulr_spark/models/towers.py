"""Generic towers: the relevance MLP, the position-bias table, and gradient reversal."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class RelevanceTower(nn.Module):
    """r(x) = MLP([x_dense, E_1[i_1], ..., E_m[i_m]]) + sum_f w_f[i_f]: relevance features
    [..., D] -> ``outputs`` relevance values per item ([...] when scalar, [..., outputs] when
    ``vector``); a wide-and-deep tower (Cheng et al., "Wide & deep learning for recommender
    systems", DLRS 2016).

    The last m = len(categorical_buckets) values of x are category indices (exact integers
    stored as float32, :mod:`ulr_spark.features.encoding`); field f has its own embedding table
    E_f (``embedding_dims[f]`` wide, none when 0) and a scalar weight per value w_f, the "wide"
    part: for the (query, item) pair field, w is the per-pair attractiveness a classic click
    model fits. With no categorical field this is the plain MLP r(x) = MLP(x). ``hidden_sizes``
    empty makes the deep part linear: with the additive bias tower that is logistic regression
    on the features and a one-hot of the position.
    """

    def __init__(
        self, num_features: int, hidden_sizes: list[int], outputs: int = 1, vector: bool = False,
        categorical_buckets: list[int] | None = None, embedding_dims: list[int] | None = None,
    ):
        super().__init__()
        self.buckets = list(categorical_buckets or [])
        dims = list(embedding_dims or [0] * len(self.buckets))
        self.dense_width = num_features - len(self.buckets)
        self.embeddings = nn.ModuleList(nn.Embedding(b, d) for b, d in zip(self.buckets, dims) if d > 0)
        self.embedded_fields = [f for f, d in enumerate(dims) if d > 0]
        self.wide = nn.ModuleList(nn.Embedding(b, outputs) for b in self.buckets)
        for p in self.wide.parameters():
            nn.init.zeros_(p)
        for p in self.embeddings.parameters():
            nn.init.normal_(p, std=0.01)
        layers: list[nn.Module] = []
        width = self.input_width = self.dense_width + sum(d for d in dims if d > 0)
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, outputs))
        self.mlp = nn.Sequential(*layers)
        self.vector = vector or outputs > 1

    def indices(self, features: torch.Tensor) -> torch.Tensor:
        """The category indices [..., m] (int64), clamped into each table (padding is 0)."""
        raw = features[..., self.dense_width:].round().long()
        limits = torch.tensor([b - 1 for b in self.buckets], device=features.device)
        return torch.minimum(raw.clamp(min=0), limits)

    def inputs(self, features: torch.Tensor) -> torch.Tensor:
        """The deep part's input [..., input_width]: dense values and the fields' embeddings."""
        if not self.buckets:
            return features
        dense = features[..., : self.dense_width]
        index = self.indices(features)
        parts = [dense] + [table(index[..., f]) for table, f in zip(self.embeddings, self.embedded_fields)]
        return torch.cat(parts, -1) if len(parts) > 1 else dense

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.mlp(self.inputs(features))
        if self.buckets:
            index = self.indices(features)
            for f, table in enumerate(self.wide):
                out = out + table(index[..., f])
        return out if self.vector else out.squeeze(-1)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The tables indexed by category (trained by a sparse-friendly optimiser)."""
        return [p for m in (*self.embeddings, *self.wide) for p in m.parameters()]


class PositionBiasTower(nn.Module):
    """o(p, c) = b[c, p]: ``outputs`` free values per (context, slot), the shallow bias tower
    of Zhao et al., "Recommending what video to watch next" (RecSys 2019).

    positions [B, K] (1-based, 0 = padding) and context_ids [B] -> [B, K] (or [B, K, outputs]
    when ``vector``). Padding slots never receive a gradient through the masked loss.

    ``init`` is the starting value of every cell, or a curve over slots 0..max_slate_size
    (:func:`starting_curve`) repeated in every context and output.
    """

    def __init__(
        self, max_slate_size: int, num_contexts: int, outputs: int = 1, init: float | torch.Tensor = 0.0,
        vector: bool = False,
    ):
        super().__init__()
        self.slots = max_slate_size + 1
        self.outputs = outputs
        self.vector = vector or outputs > 1
        self.table = nn.Embedding(num_contexts * self.slots, outputs)
        with torch.no_grad():
            if isinstance(init, torch.Tensor):
                self.table.weight.copy_(init.to(self.table.weight.dtype).repeat(num_contexts).unsqueeze(-1).expand_as(self.table.weight))
            else:
                nn.init.constant_(self.table.weight, init)

    def forward(self, positions: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
        index = context_ids.unsqueeze(-1) * self.slots + positions
        out = self.table(index)
        return out if self.vector else out.squeeze(-1)


def starting_curve(max_slate_size: int, kind: str, steepness: float = 1.0) -> torch.Tensor:
    """Starting bias of slots 0..max_slate_size ([max_slate_size + 1], slot 0 = padding = 0):
    ``log_rank`` gives -steepness * log k, a decreasing curve (examination proportional to
    k^-steepness, the shape click logs show); ``zero`` a flat one. On a grid k is the
    row-major slot index.

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "zero":
        return torch.zeros(max_slate_size + 1)
    if kind != "log_rank":
        raise ValueError(f"bias_init must be 'log_rank' or 'zero', not {kind!r}")
    slots = torch.arange(max_slate_size + 1, dtype=torch.float32).clamp(min=1)
    return -steepness * torch.log(slots)


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
