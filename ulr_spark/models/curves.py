"""The examination curve of a trained click model: one definition for every model.

A curve gives, for one context c, the examination of each slot k relative to slot 1 of the
reference context (context id 0). It is read on a sample of logged pages
(:class:`PageSample`) as a counterfactual click-through ratio, so that curves of models with
different bias towers are comparable:

    curve(c, k) = sum_n w_n sum_j P(item j of page n in slot k, context c)
                  / sum_n w_n sum_j P(item j of page n in slot 1, reference context)

over the sampled pages n of context c, with w_n the impressions each sampled page stands for
(:func:`ulr_spark.training.driver.sample_pages` samples in proportion to impressions and sets
the weights so that the sums estimate sums over every impression of the log). "Item j in
slot k" is :meth:`ClickModel.placed_click_probability`: for a model whose bias depends only on
(slot, context) the item alone is moved there; for a model whose bias reads the page (XPA), the
bias of slot k is the one it has on page n (attending over the page's other items), whatever
array entry holds slot k, so a page with a gap (no item in slot 1) still has a slot-1 bias.

For PAL this is exactly sigma(o(k, c)) / sigma(o(1, ref)); for the additive model it is what
the logit offsets imply on the logged items. Slots are 1-based positions, never array entries.
Which (context, slot) cells are written is decided by the caller: only those the log shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    from ulr_spark.models.base import ClickModel


@dataclass
class PageSample:
    """Logged pages used to read a learned curve: features [N, K, D], positions [N, K]
    (1-based slots, 0 = padding), context ids [N], and the impressions each page stands for
    [N] (all ones when not given)."""

    features: torch.Tensor
    positions: torch.Tensor
    context_ids: torch.Tensor
    weights: Optional[torch.Tensor] = None

    def page_weights(self) -> torch.Tensor:
        if self.weights is None:
            return torch.ones(self.positions.shape[0], dtype=torch.float64)
        return self.weights.to(torch.float64)

    def in_context(self, context_id: int) -> PageSample:
        keep = self.context_ids == context_id
        return PageSample(self.features[keep], self.positions[keep], self.context_ids[keep], self.page_weights()[keep])


@torch.no_grad()
def page_click_sums(model: ClickModel, pages: PageSample, context_id: int, reference_context_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per page n of ``context_id``: the expected clicks of its items placed in each slot 1..K of
    the context [N, K], and in slot 1 of the reference context [N] (float64, unweighted)."""
    model.eval()
    k = model.spec.max_slate_size
    own = pages.in_context(context_id)
    slots = torch.arange(1, k + 1)
    real = (own.positions > 0).to(torch.float64).unsqueeze(-1)  # [N, J, 1]
    in_context = (model.placed_click_probability(own, context_id, slots).to(torch.float64) * real).sum(1)
    at_reference = (model.placed_click_probability(own, reference_context_id, slots[:1]).to(torch.float64) * real).sum(1)
    return in_context, at_reference[:, 0]


@torch.no_grad()
def examination_curve(
    model: ClickModel, pages: PageSample, context_id: int, reference_context_id: int = 0
) -> torch.Tensor:
    """Examination [K] of slots 1..K in ``context_id`` relative to slot 1 of the reference
    context, by the definition of the module docstring; NaN for every slot when the sample
    holds no page of the context. float64."""
    k = model.spec.max_slate_size
    own = pages.in_context(context_id)
    if own.features.shape[0] == 0:
        return torch.full((k,), float("nan"), dtype=torch.float64)
    in_context, at_reference = page_click_sums(model, pages, context_id, reference_context_id)
    w = own.page_weights()
    return (w @ in_context) / (w @ at_reference)


@torch.no_grad()
def bootstrap_interval(
    model: ClickModel, pages: PageSample, context_id: int, replicates: int, seed: int, reference_context_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(curve, 2.5th percentile, 97.5th percentile), each [K]: a Poisson bootstrap of the page
    sample (each page's weight times an independent Poisson(1) draw, ``replicates`` times;
    Hanley and MacGibbon, 2006; Chamandy et al., 2012). It measures how much the curve depends on
    which logged pages it is averaged over, not the model's training noise. NaN without pages."""
    k = model.spec.max_slate_size
    own = pages.in_context(context_id)
    nan = torch.full((k,), float("nan"), dtype=torch.float64)
    if own.features.shape[0] == 0:
        return nan, nan, nan
    in_context, at_reference = page_click_sums(model, pages, context_id, reference_context_id)
    w = own.page_weights()
    curve = (w @ in_context) / (w @ at_reference)
    if replicates <= 0:
        return curve, nan, nan
    generator = torch.Generator().manual_seed(seed)
    draws = torch.poisson(torch.ones((replicates, w.shape[0]), dtype=torch.float64), generator=generator) * w
    curves = (draws @ in_context) / (draws @ at_reference).unsqueeze(-1)
    low, high = torch.nanquantile(curves, torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
    return curve, low, high
