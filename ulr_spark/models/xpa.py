"""XPA: a bias tower that attends over the other items of the page (lists and grids)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ulr_spark.models.base import TwoTowerModel
from ulr_spark.models.spec import ModelSpec
from ulr_spark.models.towers import PositionBiasTower


class CrossPositionalAttentionTower(nn.Module):
    """o_i = b[c, p_i] + w^T MLP(attend(q_i, {k_j, v_j : j != i})) (Zhuang et al.,
    "Cross-positional attention for debiasing clicks", WWW 2021).

    The query of slot i is its slot embedding; the keys and values of the other items j on
    the page are built from their relevance features, their (detached) relevance logit and
    their slot embeddings. On a grid a slot embedding is a row embedding plus a column
    embedding, so "left of" and "above" are different neighbours. The table b keeps the
    plain position effect; attention adds what the neighbours change.

    features [B, K, D], item_relevance [B, K], positions [B, K], context_ids [B] -> [B, K].
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        h = spec.attention_dim
        k = spec.max_slate_size
        self.grid_columns = spec.grid_columns
        self.base = PositionBiasTower(k, spec.num_contexts)
        if spec.grid_columns > 0:
            rows = math.ceil(k / spec.grid_columns)
            self.row_embedding = nn.Embedding(rows + 1, h)
            self.col_embedding = nn.Embedding(spec.grid_columns + 1, h)
        else:
            self.slot_embedding = nn.Embedding(k + 1, h)
        self.context_embedding = nn.Embedding(spec.num_contexts, h)
        self.item_projection = nn.Linear(spec.num_features + 1, h)
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.out = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, 1))
        last = self.out[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def slot_embeddings(self, positions: torch.Tensor) -> torch.Tensor:
        if self.grid_columns > 0:
            index = (positions - 1).clamp(min=0)
            row = torch.where(positions > 0, index // self.grid_columns + 1, 0)
            col = torch.where(positions > 0, index % self.grid_columns + 1, 0)
            embedded: torch.Tensor = self.row_embedding(row) + self.col_embedding(col)
            return embedded
        slot: torch.Tensor = self.slot_embedding(positions)
        return slot

    def forward(
        self, features: torch.Tensor, item_relevance: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor
    ) -> torch.Tensor:
        slots = self.slot_embeddings(positions) + self.context_embedding(context_ids).unsqueeze(1)
        items = self.item_projection(torch.cat([features, item_relevance.detach().unsqueeze(-1)], -1)) + slots
        q, k, v = self.query(slots), self.key(items), self.value(items)
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # [B, K(i), K(j)]
        n = positions.shape[1]
        others = (positions > 0).unsqueeze(1) & ~torch.eye(n, dtype=torch.bool, device=positions.device)
        scores = scores.masked_fill(~others, float("-inf"))
        attention = torch.nan_to_num(torch.softmax(scores, -1))  # a lone item attends to nothing
        context = attention @ v
        out: torch.Tensor = self.base(positions, context_ids) + self.out(torch.cat([slots, context], -1)).squeeze(-1)
        return out


class XPATwoTower(TwoTowerModel):
    """P(click) = sigma(r(x_i) + o(p_i, c, {(x_j, p_j) : j != i})): the additive model with a
    cross-positional attention bias tower, so the examination of a slot may depend on what
    is shown around it (lists and grids)."""

    bias_reads_page = True

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.bias_tower = CrossPositionalAttentionTower(spec)

    def towers(
        self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        relevance = self.relevance(features)
        return relevance, self.bias_tower(features, relevance, positions, context_ids)

    def combine(self, relevance: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return relevance + bias
