"""Click models: a relevance tower, a bias tower, and the ways they combine (DESIGN section 3).

Shapes: ``features`` is [B, K, D] (K slots of a slate, D relevance features), ``positions``
[B, K] (1-based slots in reading order, 0 = padding) and ``context_ids`` [B]. Every model
returns click logits [B, K]; only :meth:`ClickModel.relevance` is used at serving time.

Training goes through :meth:`ClickModel.loss`, so a model with its own objective (MixEM's EM
loss, the adversary of gradient reversal) keeps it next to its equation. DDP must see that
objective as a ``forward``: :class:`TrainingObjective` wraps a model for that.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model from its weights.

    ``name`` is what the model is called in tables (a configured variant may be called
    ``additive_dropout``); ``architecture`` is the class that implements it.
    """

    name: str
    num_features: int
    max_slate_size: int
    num_contexts: int
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 32])
    architecture: str = ""
    bias_dropout: float = 0.0
    gradient_reversal: float = 0.0
    dot_product_dim: int = 4
    mixem_components: int = 2
    mixem_skip_unclicked: bool = False
    attention_dim: int = 16
    grid_columns: int = 0  # 0: a list; n > 0: a grid n columns wide, positions in row-major order

    def __post_init__(self):
        if not self.architecture:
            object.__setattr__(self, "architecture", self.name)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> "ModelSpec":
        known = {f.name for f in fields(ModelSpec)}
        return ModelSpec(**{k: v for k, v in data.items() if k in known})


def sigmoid_click_loss(
    logits: torch.Tensor, clicks: torch.Tensor, impressions: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Per-row negative log-likelihood [B] of merged slates:
    -sum_i [c_i log p_i + (n - c_i) log(1 - p_i)] over the real slots of each row."""
    mask = (positions > 0).to(logits.dtype)
    n = impressions.to(logits.dtype).unsqueeze(-1)
    target = clicks.to(logits.dtype) / n.clamp(min=1)
    per_slot = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_slot * n * mask).sum(-1)


def slot_weight(impressions: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Number of slot impressions a batch stands for (the loss normaliser)."""
    return (impressions.to(torch.float32).unsqueeze(-1) * (positions > 0)).sum()


def weighted_click_loss(
    logits: torch.Tensor, clicks: torch.Tensor, impressions: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of merged slates, and the number of slot impressions.

    For a row merged from n requests with c_i clicks on slot i:
    -sum_i [c_i log p_i + (n - c_i) log(1 - p_i)], which equals the sum of the per-request
    losses it replaces. Padding slots (position 0) do not count.
    """
    return sigmoid_click_loss(logits, clicks, impressions, positions).sum(), slot_weight(impressions, positions)


class RelevanceTower(nn.Module):
    """r(x) = MLP(x): relevance features -> ``outputs`` relevance values per item."""

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
    of Zhao et al. (2019). Padding slots (p = 0) never receive a gradient through the masked
    loss."""

    def __init__(self, max_slate_size: int, num_contexts: int, outputs: int = 1, init: float = 0.0, vector: bool = False):
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
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.factor * grad, None


def reverse_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; the gradient flowing back is multiplied by -factor."""
    return _ReverseGradient.apply(x, factor)


# ---------------------------------------------------------------------------------------------
# Base classes
# ---------------------------------------------------------------------------------------------


class ClickModel(nn.Module):
    """A relevance tower and a way to turn a slate into click logits."""

    has_bias_tower = False
    vector_relevance = False  # the relevance tower outputs a vector, even of size 1

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.relevance_tower = RelevanceTower(
            spec.num_features, spec.hidden_sizes, self.relevance_outputs(), vector=self.vector_relevance
        )

    def relevance_outputs(self) -> int:
        return 1

    def relevance(self, features: torch.Tensor) -> torch.Tensor:
        """The debiased relevance score used for serving, one value per item."""
        return self.relevance_tower(features)

    def forward(self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, features, positions, context_ids, clicks, impressions) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed negative log-likelihood of the batch, slot impressions it stands for)."""
        return weighted_click_loss(self(features, positions, context_ids), clicks, impressions, positions)

    @torch.no_grad()
    def examination_curve(self, pages: "PageSample", context_id: int, reference_context_id: int = 0) -> torch.Tensor:
        """Examination of slots 1..K in one context, relative to slot 1 of the reference context.

        Defined for any click model as a counterfactual click-through ratio: the same logged
        items are placed in slot k of context c and in slot 1 of the reference context, and
        their mean click probabilities are compared. For PAL this is exactly
        sigma(o(k, c)) / sigma(o(1, ref)); for the additive model it is what the logit offsets
        imply on the logged items, so curves of different models are comparable.
        """
        self.eval()
        items = pages.items()
        n, k = items.shape[0], self.spec.max_slate_size
        placed = items.unsqueeze(1).expand(n, k, items.shape[-1])
        slots = torch.arange(1, k + 1, device=items.device).expand(n, k)
        in_context = torch.sigmoid(self(placed, slots, torch.full((n,), context_id, device=items.device)))
        first = torch.sigmoid(self(placed[:, :1], slots[:, :1], torch.full((n,), reference_context_id, device=items.device)))
        return in_context.mean(0) / first.mean()


@dataclass
class PageSample:
    """Logged pages used to read a learned bias curve: features [N, K, D], positions [N, K]
    (0 = padding) and context ids [N]."""

    features: torch.Tensor
    positions: torch.Tensor
    context_ids: torch.Tensor

    def items(self) -> torch.Tensor:
        """The real (non-padding) items of all pages, [M, D]."""
        return self.features[self.positions > 0]

    def in_context(self, context_id: int) -> "PageSample":
        keep = self.context_ids == context_id
        return PageSample(self.features[keep], self.positions[keep], self.context_ids[keep])


class NaiveModel(ClickModel):
    """P(click) = sigma(r(x)). The baseline: whatever position did to clicks ends up in r."""

    def forward(self, features, positions, context_ids):
        return self.relevance(features)


class TwoTowerModel(ClickModel):
    """A relevance tower r and a bias tower o combined by :meth:`combine`.

    Two options against confounding (Zhang et al., KDD 2023), on every two-tower model:

    - ``bias_dropout``: dropout on the bias tower's output while training, so the relevance
      tower must explain clicks without it part of the time.
    - ``gradient_reversal`` (lambda): an adversary reads the relevance output and predicts the
      item's bias output (a detached target); its gradient into the relevance tower is
      multiplied by -lambda, which pushes position information out of the relevance score.
    """

    has_bias_tower = True

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.bias_dropout = nn.Dropout(spec.bias_dropout) if spec.bias_dropout > 0 else nn.Identity()
        self.adversary: Optional[nn.Module] = None
        if spec.gradient_reversal > 0:
            self.adversary = nn.Linear(self.relevance_outputs(), self.bias_outputs())

    def bias_outputs(self) -> int:
        return 1

    def towers(self, features, positions, context_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """(relevance output, bias output) for every slot."""
        raise NotImplementedError

    def combine(self, relevance: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Click logits from the two towers' outputs."""
        raise NotImplementedError

    def forward(self, features, positions, context_ids):
        relevance, bias = self.towers(features, positions, context_ids)
        return self.combine(relevance, self.bias_dropout(bias))

    def loss(self, features, positions, context_ids, clicks, impressions):
        relevance, bias = self.towers(features, positions, context_ids)
        logits = self.combine(relevance, self.bias_dropout(bias))
        loss, weight = weighted_click_loss(logits, clicks, impressions, positions)
        if self.adversary is not None:
            loss = loss + self.adversary_loss(relevance, bias, impressions, positions)
        return loss, weight

    def adversary_loss(self, relevance, bias, impressions, positions) -> torch.Tensor:
        def per_item(t: torch.Tensor) -> torch.Tensor:
            return t.unsqueeze(-1) if t.dim() == positions.dim() else t

        guess = self.adversary(per_item(reverse_gradient(relevance, self.spec.gradient_reversal)))
        error = (guess - per_item(bias.detach())).pow(2).sum(-1)
        weight = impressions.unsqueeze(-1) * (positions > 0)
        return (error * weight).sum()


# ---------------------------------------------------------------------------------------------
# Two-tower models
# ---------------------------------------------------------------------------------------------


class AdditiveTwoTower(TwoTowerModel):
    """P(click) = sigma(r(x) + o(p, c)): relevance and position bias add in logit space."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.bias_tower = PositionBiasTower(spec.max_slate_size, spec.num_contexts)

    def towers(self, features, positions, context_ids):
        return self.relevance(features), self.bias_tower(positions, context_ids)

    def combine(self, relevance, bias):
        return relevance + bias


def _logit_of_product(log_p: torch.Tensor) -> torch.Tensor:
    """logit(p) from log p, stable for p < 1: log p - log(1 - p)."""
    log_p = log_p.clamp(max=-1e-6)
    return log_p - torch.log(-torch.expm1(log_p))


class PALModel(TwoTowerModel):
    """P(click) = sigma(r(x)) * sigma(o(p, c)): P(relevant) times P(examined), as in PAL
    (Guo et al., 2019). Not the same model as the sum of logits: the bias multiplies
    probabilities, so a rarely examined slot scales every item's click rate by one factor."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        # Start at sigma(0) = 1/2, where sigma(o) has its largest gradient. Starting near 1
        # (o = 2) left the top slots saturated: on pbm the curve came out flat over slots 1-3
        # (error 0.81 against 0.21 from 0, and a higher training loss); docs/models.md.
        self.bias_tower = PositionBiasTower(spec.max_slate_size, spec.num_contexts, init=0.0)

    def towers(self, features, positions, context_ids):
        return self.relevance(features), self.bias_tower(positions, context_ids)

    def combine(self, relevance, bias):
        return _logit_of_product(F.logsigmoid(relevance) + F.logsigmoid(bias))


class DotProductTwoTower(TwoTowerModel):
    """P(click) = sigma(<r_vec(x), o_vec(p, c)>), r_vec and o_vec in R^d (Chen et al., KDD 2022;
    Yan et al., SIGIR 2022). With d > 1 bias and relevance interact: how much a slot rewards
    relevance can differ from how much it rewards other traits of an item.

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
        """o_vec of slot 1 in context 0: the direction scores are projected on."""
        return self.bias_tower.table.weight[1]

    def relevance(self, features):
        return self.relevance_tower(features) @ self.base_bias()

    def towers(self, features, positions, context_ids):
        return self.relevance_tower(features), self.bias_tower(positions, context_ids)

    def combine(self, relevance, bias):
        return (relevance * bias).sum(-1)


class MixEMTwoTower(TwoTowerModel):
    """A mixture of M two-tower components fitted by EM (Yan et al., SIGIR 2022).

    Component m: P_m(click) = sigma(a_m * r(x) + o_m(p, c)), with one shared relevance tower r,
    a bias tower o_m per component and a relevance gain a_m = softplus(g_m) >= 0. A list
    (a request) comes from component m with prior pi_m = softmax(w)_m:
    P(clicks of the list) = sum_m pi_m prod_i P_m(c_i | slot i).

    The shared relevance tower gives one serving score r(x); the per-component gain lets a
    component ignore relevance (people who click the top slot whatever it shows), which a
    component with only its own bias tower could not express.

    EM, run on each batch: the E-step computes each list's posterior over components from its
    log-likelihood under each component (no gradient through it); the M-step minimises the
    posterior-weighted negative log-likelihood, priors included. A merged row of n identical
    slates is treated as n lists that share one posterior, computed from their mean
    log-likelihood: exact when the merged requests clicked alike, an approximation otherwise.
    With ``mixem_skip_unclicked`` lists without a click get zero weight, as in TF-Ranking.

    Forward (for reading curves and for anything that needs one click probability) returns
    the logit of the marginal sum_m pi_m P_m(click).
    """

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        m = spec.mixem_components
        self.bias_tower = PositionBiasTower(spec.max_slate_size, spec.num_contexts, outputs=m, vector=True)
        # Components must start apart or EM keeps them identical.
        with torch.no_grad():
            self.bias_tower.table.weight.copy_(torch.linspace(-1.0, 1.0, m).expand_as(self.bias_tower.table.weight))
        self.gain_logits = nn.Parameter(torch.full((m,), math.log(math.e - 1.0)))  # softplus -> 1
        self.prior_logits = nn.Parameter(torch.zeros(m))

    def bias_outputs(self) -> int:
        return self.spec.mixem_components

    def towers(self, features, positions, context_ids):
        return self.relevance(features), self.bias_tower(positions, context_ids)

    def combine(self, relevance, bias):
        """Per-component logits [B, K, M]."""
        return F.softplus(self.gain_logits) * relevance.unsqueeze(-1) + bias

    def forward(self, features, positions, context_ids):
        relevance, bias = self.towers(features, positions, context_ids)
        component_logits = self.combine(relevance, bias)
        log_prior = F.log_softmax(self.prior_logits, -1)
        log_p = torch.logsumexp(log_prior + F.logsigmoid(component_logits), -1)
        log_not_p = torch.logsumexp(log_prior + F.logsigmoid(-component_logits), -1)
        return log_p - log_not_p

    def component_nll(self, component_logits, clicks, impressions, positions) -> torch.Tensor:
        """Negative log-likelihood of each row under each component, [B, M]."""
        m = component_logits.shape[-1]
        per_component = [
            sigmoid_click_loss(component_logits[..., j], clicks, impressions, positions) for j in range(m)
        ]
        return torch.stack(per_component, -1)

    def loss(self, features, positions, context_ids, clicks, impressions):
        relevance, bias = self.towers(features, positions, context_ids)
        component_logits = self.combine(relevance, self.bias_dropout(bias))
        nll = self.component_nll(component_logits, clicks, impressions, positions)  # [B, M]
        log_prior = F.log_softmax(self.prior_logits, -1)
        n = impressions.clamp(min=1).unsqueeze(-1)
        with torch.no_grad():  # E-step on one (mean) list per row
            posterior = torch.softmax(log_prior - nll / n, -1)
            if self.spec.mixem_skip_unclicked:
                posterior = posterior * (clicks.sum(-1, keepdim=True) > 0)
        loss = (posterior * (nll - n * log_prior)).sum()
        if self.adversary is not None:
            loss = loss + self.adversary_loss(relevance, bias, impressions, positions)
        return loss, slot_weight(impressions, positions)


class CrossPositionalAttentionTower(nn.Module):
    """o_i = b[c, p_i] + w^T MLP(attend(q_i, {k_j, v_j : j != i})) (Zhuang et al., WWW 2021).

    The query of slot i is its slot embedding; the keys and values of the other items j on
    the page are built from their relevance features, their (detached) relevance logit and
    their slot embeddings. On a grid a slot embedding is a row embedding plus a column
    embedding, so "left of" and "above" are different neighbours. The table b keeps the
    plain position effect; attention adds what the neighbours change.
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
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def slot_embeddings(self, positions: torch.Tensor) -> torch.Tensor:
        if self.grid_columns > 0:
            index = (positions - 1).clamp(min=0)
            row = torch.where(positions > 0, index // self.grid_columns + 1, 0)
            col = torch.where(positions > 0, index % self.grid_columns + 1, 0)
            return self.row_embedding(row) + self.col_embedding(col)
        return self.slot_embedding(positions)

    def forward(self, features, item_relevance, positions, context_ids) -> torch.Tensor:
        slots = self.slot_embeddings(positions) + self.context_embedding(context_ids).unsqueeze(1)
        items = self.item_projection(torch.cat([features, item_relevance.detach().unsqueeze(-1)], -1)) + slots
        q, k, v = self.query(slots), self.key(items), self.value(items)
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # [B, K(i), K(j)]
        n = positions.shape[1]
        others = (positions > 0).unsqueeze(1) & ~torch.eye(n, dtype=torch.bool, device=positions.device)
        scores = scores.masked_fill(~others, float("-inf"))
        attention = torch.nan_to_num(torch.softmax(scores, -1))  # a lone item attends to nothing
        context = attention @ v
        return self.base(positions, context_ids) + self.out(torch.cat([slots, context], -1)).squeeze(-1)


class XPATwoTower(TwoTowerModel):
    """P(click) = sigma(r(x_i) + o(p_i, c, {(x_j, p_j) : j != i})): the additive model with a
    cross-positional attention bias tower, so the examination of a slot may depend on what
    is shown around it (lists and grids)."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.bias_tower = CrossPositionalAttentionTower(spec)

    def towers(self, features, positions, context_ids):
        relevance = self.relevance(features)
        return relevance, self.bias_tower(features, relevance, positions, context_ids)

    def combine(self, relevance, bias):
        return relevance + bias

    @torch.no_grad()
    def examination_curve(self, pages: PageSample, context_id: int, reference_context_id: int = 0) -> torch.Tensor:
        """The counterfactual click ratio averaged over the logged pages: the bias of slot k
        on page n does not depend on the item in slot k itself (attention reads the others),
        so each item of page n is placed in every slot of that page in turn."""
        self.eval()

        def mean_click(sample: PageSample) -> tuple[torch.Tensor, torch.Tensor]:
            relevance = self.relevance(sample.features)  # [N, K]
            bias = self.bias_tower(sample.features, relevance, sample.positions, sample.context_ids)  # [N, K]
            real = (sample.positions > 0).to(relevance.dtype)
            # p[n, j, k]: item j of page n in slot k of page n.
            p = torch.sigmoid(relevance.unsqueeze(-1) + bias.unsqueeze(1))
            weight = real.unsqueeze(-1) * real.unsqueeze(1)
            total = (p * weight).sum((0, 1))
            count = weight.sum((0, 1))
            return total, count

        own = pages.in_context(context_id)
        reference = pages.in_context(reference_context_id)
        if own.features.shape[0] == 0 or reference.features.shape[0] == 0:
            return torch.full((self.spec.max_slate_size,), float("nan"))
        total, count = mean_click(own)
        ref_total, ref_count = mean_click(reference)
        curve = total / count.clamp(min=1)
        curve[count == 0] = float("nan")
        return curve / (ref_total[0] / ref_count[0])


MODEL_CLASSES: dict[str, type[ClickModel]] = {
    "naive": NaiveModel,
    "additive": AdditiveTwoTower,
    "pal": PALModel,
    "dot_product": DotProductTwoTower,
    "mixem": MixEMTwoTower,
    "xpa": XPATwoTower,
}


def build_model(spec: ModelSpec) -> ClickModel:
    return MODEL_CLASSES[spec.architecture](spec)


class TrainingObjective(nn.Module):
    """Makes a model's :meth:`ClickModel.loss` its ``forward``, so DDP synchronises gradients
    of whatever objective the model defines."""

    def __init__(self, model: ClickModel):
        super().__init__()
        self.model = model

    def forward(self, features, positions, context_ids, clicks, impressions):
        return self.model.loss(features, positions, context_ids, clicks, impressions)

