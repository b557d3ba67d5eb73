"""MixEM: a mixture of two-tower components fitted by expectation-maximisation."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ulr_spark.models.base import TwoTowerModel
from ulr_spark.models.losses import per_row_click_nll, slot_impressions
from ulr_spark.models.spec import ModelSpec
from ulr_spark.models.towers import PositionBiasTower, starting_curve


class MixEMTwoTower(TwoTowerModel):
    """A mixture of M two-tower components fitted by EM (Yan et al., "Revisiting two-tower
    models for unbiased learning to rank", SIGIR 2022).

    Component m: P_m(click) = sigma(a_m * r(x) + o_m(p, c)), with one shared relevance tower r,
    a bias tower o_m per component and a relevance gain a_m = softplus(g_m) >= 0. A list
    (a request) comes from component m with prior pi_m = softmax(w)_m:
    P(clicks of the list) = sum_m pi_m prod_i P_m(c_i | slot i).

    The shared relevance tower gives one serving score r(x); the per-component gain lets a
    component ignore relevance (people who click the top slot whatever it shows), which a
    component with only its own bias tower could not express.

    With ``mixem_blind_component`` the last component's gain is fixed at 0: a relevance-blind
    component (people who click the top slots whatever they show), whose prior is the share of
    such requests. Every component's bias starts at a decreasing curve (``bias_init``), shifted
    apart so that EM can separate them; the blind one starts twice as steep.

    EM, run on each batch: the E-step computes each list's posterior over components from its
    log-likelihood under each component (no gradient through it); the M-step minimises the
    posterior-weighted negative log-likelihood, priors included. The posterior is a property of
    one request's clicks: a merged row of n requests shares one posterior, which is exact only
    when the n requests clicked alike. build-examples therefore merges on the click vector too
    when a MixEM model is configured (``examples.merge_on_clicks``, docs/models.md), and train
    warns when the examples were merged without it.
    With ``mixem_skip_unclicked`` lists without a click get zero weight, as in TF-Ranking.

    Forward (for reading curves and for anything that needs one click probability) returns
    the logit of the marginal sum_m pi_m P_m(click).
    """

    gain_mask: torch.Tensor

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        m = spec.mixem_components
        self.bias_tower = PositionBiasTower(spec.max_slate_size, spec.num_contexts, outputs=m, vector=True)
        blind = spec.mixem_blind_component and m > 1
        # Components must start apart or EM keeps them identical.
        curves = [starting_curve(spec.max_slate_size, spec.bias_init) + shift for shift in torch.linspace(-1.0, 1.0, m).tolist()]
        if blind:
            curves[-1] = starting_curve(spec.max_slate_size, spec.bias_init, steepness=2.0)
        start = torch.stack(curves, -1)  # [slots, m]
        with torch.no_grad():
            self.bias_tower.table.weight.copy_(start.repeat(spec.num_contexts, 1))
        self.gain_logits = nn.Parameter(torch.full((m,), math.log(math.e - 1.0)))  # softplus -> 1
        # Follows from the spec, so it is not saved (artifacts written before it existed load).
        self.register_buffer("gain_mask", torch.ones(m), persistent=False)
        if blind:
            self.gain_mask[-1] = 0.0
        self.prior_logits = nn.Parameter(torch.zeros(m))

    def drop_bias(self, bias: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Bias dropout on the components that read relevance; never on the relevance-blind
        component, whose bias is all it has (dropped, it would click every slot with
        probability 1/2)."""
        dropped = super().drop_bias(bias, positions)
        if self.gain_mask[-1] == 0:
            dropped = torch.cat([dropped[..., :-1], bias[..., -1:]], -1)
        return dropped

    def gains(self) -> torch.Tensor:
        """a_m [M]: softplus(g_m), and 0 for the relevance-blind component."""
        return F.softplus(self.gain_logits) * self.gain_mask

    def component_shares(self) -> torch.Tensor:
        """pi [M]: the prior share of requests of each component (the last is the blind one)."""
        return torch.softmax(self.prior_logits, -1)

    def bias_outputs(self) -> int:
        return self.spec.mixem_components

    def towers(
        self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.relevance(features), self.bias_tower(positions, context_ids)

    def combine(self, relevance: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Per-component logits [B, K, M]."""
        return self.gains() * relevance.unsqueeze(-1) + bias

    def forward(self, features: torch.Tensor, positions: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
        relevance, bias = self.towers(features, positions, context_ids)
        component_logits = self.combine(relevance, bias)
        log_prior = F.log_softmax(self.prior_logits, -1)
        log_p = torch.logsumexp(log_prior + F.logsigmoid(component_logits), -1)
        log_not_p = torch.logsumexp(log_prior + F.logsigmoid(-component_logits), -1)
        return log_p - log_not_p

    def component_nll(
        self, component_logits: torch.Tensor, clicks: torch.Tensor, impressions: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Negative log-likelihood of each row under each component, [B, M]."""
        m = component_logits.shape[-1]
        per_component = [
            per_row_click_nll(component_logits[..., j], clicks, impressions, positions) for j in range(m)
        ]
        return torch.stack(per_component, -1)

    def loss(
        self,
        features: torch.Tensor,
        positions: torch.Tensor,
        context_ids: torch.Tensor,
        clicks: torch.Tensor,
        impressions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        relevance, bias = self.towers(features, positions, context_ids)
        nll = self.component_nll(self.combine(relevance, self.drop_bias(bias, positions)), clicks, impressions, positions)  # [B, M]
        log_prior = F.log_softmax(self.prior_logits, -1)
        n = impressions.clamp(min=1).unsqueeze(-1)
        with torch.no_grad():  # E-step on one (mean) list per row, from the bias as it is (no dropout)
            exact = nll if self.spec.bias_dropout <= 0 else self.component_nll(self.combine(relevance, bias), clicks, impressions, positions)
            posterior = torch.softmax(log_prior - exact / n, -1)
            if self.spec.mixem_skip_unclicked:
                posterior = posterior * (clicks.sum(-1, keepdim=True) > 0)
        loss = (posterior * (nll - n * log_prior)).sum() + self.regulariser(impressions, positions)
        if self.adversary is not None:
            loss = loss + self.adversary_loss(relevance, bias, impressions, positions)
        return loss, slot_impressions(impressions, positions)
