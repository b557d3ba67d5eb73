"""XPA: a bias tower that attends over the other items of the page (lists and grids)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ulr_spark.models.base import TwoTowerModel
from ulr_spark.models.curves import PageSample
from ulr_spark.models.spec import ModelSpec
from ulr_spark.models.towers import PositionBiasTower, starting_curve


class CrossPositionalAttentionTower(nn.Module):
    """o_i = b[c, p_i] + w^T MLP(attend(q_i, {k_j, v_j : j != i})) (Zhuang et al.,
    "Cross-positional attention for debiasing clicks", WWW 2021).

    The query of slot i is its slot embedding; the keys and values of the other items j on
    the page are built from their relevance features, their (detached) relevance logit and
    their slot embeddings. On a grid a slot embedding is a row embedding plus a column
    embedding, so "left of" and "above" are different neighbours. The table b keeps the
    plain position effect (starting at ``bias_init``); attention adds what the neighbours
    change. Regularised (``attention_dropout`` on the attention weights while training, and the
    model's L2 penalty on the attention offset), because with free attention XPA overfitted a
    sparse real search log.

    features [B, K, D], item_relevance [B, K], positions [B, K], context_ids [B] -> [B, K].
    """

    def __init__(self, spec: ModelSpec, item_width: int | None = None):
        super().__init__()
        h = spec.attention_dim
        k = spec.max_slate_size
        self.grid_columns = spec.grid_columns
        self.base = PositionBiasTower(k, spec.num_contexts, init=starting_curve(k, spec.bias_init))
        self.attention_dropout = nn.Dropout(spec.attention_dropout)
        self.last_offset: torch.Tensor | None = None  # what attention added, for the penalty
        if spec.grid_columns > 0:
            rows = math.ceil(k / spec.grid_columns)
            self.row_embedding = nn.Embedding(rows + 1, h)
            self.col_embedding = nn.Embedding(spec.grid_columns + 1, h)
        else:
            self.slot_embedding = nn.Embedding(k + 1, h)
        self.context_embedding = nn.Embedding(spec.num_contexts, h)
        # Items are read through the relevance tower's input (dense values and embeddings).
        self.item_projection = nn.Linear((spec.num_features if item_width is None else item_width) + 1, h)
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
        return self.slot_bias(features, item_relevance, positions, context_ids, positions)

    def slot_bias(
        self,
        features: torch.Tensor,
        item_relevance: torch.Tensor,
        positions: torch.Tensor,
        context_ids: torch.Tensor,
        query_positions: torch.Tensor,
    ) -> torch.Tensor:
        """The bias [B, Q] of slots ``query_positions`` [B, Q] (1-based) on each page, whether
        or not an item fills them: each attends over the page's real items in other slots."""
        context = self.context_embedding(context_ids).unsqueeze(1)
        queries = self.slot_embeddings(query_positions) + context
        items = self.item_projection(torch.cat([features, item_relevance.detach().unsqueeze(-1)], -1))
        items = items + self.slot_embeddings(positions) + context
        q, k, v = self.query(queries), self.key(items), self.value(items)
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # [B, Q(i), K(j)]
        # Slots are unique on a page, so "another slot" is "another item".
        others = (positions > 0).unsqueeze(1) & (positions.unsqueeze(1) != query_positions.unsqueeze(-1))
        scores = scores.masked_fill(~others, float("-inf"))
        attention = torch.nan_to_num(torch.softmax(scores, -1))  # a lone item attends to nothing
        attended = self.attention_dropout(attention) @ v
        offset = self.out(torch.cat([queries, attended], -1)).squeeze(-1)
        self.last_offset = offset
        out: torch.Tensor = self.base(query_positions, context_ids) + offset
        return out


class XPATwoTower(TwoTowerModel):
    """P(click) = sigma(r(x_i) + o(p_i, c, {(x_j, p_j) : j != i})): the additive model with a
    cross-positional attention bias tower, so the examination of a slot may depend on what
    is shown around it (lists and grids). Training adds attention_offset_penalty *
    sum_i n_i (o_i - b[c, p_i])^2, the L2 penalty on what attention adds to the position table."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.bias_tower = CrossPositionalAttentionTower(spec, self.relevance_tower.input_width)

    def item_inputs(self, features: torch.Tensor) -> torch.Tensor:
        """What the attention reads of each item: the relevance tower's input, detached."""
        return self.relevance_tower.inputs(features).detach()

    def towers(
        self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        relevance = self.relevance(features)
        return relevance, self.bias_tower(self.item_inputs(features), relevance, positions, context_ids)

    def combine(self, relevance: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return relevance + bias

    def regulariser(self, impressions: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | float:
        """attention_offset_penalty * sum over slot impressions of (attention offset)^2."""
        offset = self.bias_tower.last_offset
        if self.spec.attention_offset_penalty <= 0 or offset is None:
            return 0.0
        weight = impressions.to(offset.dtype).unsqueeze(-1) * (positions > 0)
        penalty: torch.Tensor = self.spec.attention_offset_penalty * (offset.pow(2) * weight).sum()
        return penalty

    def placed_click_probability(self, pages: PageSample, context_id: int, slots: torch.Tensor) -> torch.Tensor:
        """Item j of page n in slot s takes the bias slot s has on page n (attending over the
        page's items in other slots), indexed by position, not by array entry."""
        contexts = torch.full_like(pages.context_ids, context_id)
        relevance = self.relevance(pages.features)  # [N, J]
        queries = slots.to(pages.positions.device).expand(pages.positions.shape[0], -1)
        bias = self.bias_tower.slot_bias(self.item_inputs(pages.features), relevance, pages.positions, contexts, queries)  # [N, S]
        return torch.sigmoid(self.combine(relevance.unsqueeze(-1), bias.unsqueeze(1)))
