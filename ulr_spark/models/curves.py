"""The examination curve of a trained click model: what every model's learned curve means.

A curve gives, for one context, the examination of slots 1..K relative to slot 1 of the
reference context (context id 0). It is read on a sample of logged pages
(:class:`PageSample`) as a counterfactual click-through ratio, so that curves of models with
different bias towers are comparable:

- :func:`counterfactual_curve` (models whose bias depends only on slot and context): every
  logged item is placed in slot k of the context and in slot 1 of the reference context, and
  the mean click probabilities are compared. For PAL this is exactly
  sigma(o(k, c)) / sigma(o(1, ref)); for the additive model it is what the logit offsets
  imply on the logged items.
- :func:`page_curve` (models whose bias reads the page, XPA): the bias of slot k on page n
  does not depend on the item in slot k itself (attention reads the others), so each item of
  page n is placed in every slot of that page in turn, and the click probabilities are
  averaged over the pages of the context.

:func:`examination_curve` picks the one that fits the model (``ClickModel.bias_reads_page``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ulr_spark.models.base import ClickModel, TwoTowerModel


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

    def in_context(self, context_id: int) -> PageSample:
        keep = self.context_ids == context_id
        return PageSample(self.features[keep], self.positions[keep], self.context_ids[keep])


@torch.no_grad()
def counterfactual_curve(
    model: ClickModel, pages: PageSample, context_id: int, reference_context_id: int = 0
) -> torch.Tensor:
    """The curve [K] of a model whose bias depends only on (slot, context)."""
    model.eval()
    items = pages.items()
    n, k = items.shape[0], model.spec.max_slate_size
    placed = items.unsqueeze(1).expand(n, k, items.shape[-1])
    slots = torch.arange(1, k + 1, device=items.device).expand(n, k)
    in_context = torch.sigmoid(model(placed, slots, torch.full((n,), context_id, device=items.device)))
    first = torch.sigmoid(
        model(placed[:, :1], slots[:, :1], torch.full((n,), reference_context_id, device=items.device))
    )
    return in_context.mean(0) / first.mean()


@torch.no_grad()
def page_curve(
    model: TwoTowerModel, pages: PageSample, context_id: int, reference_context_id: int = 0
) -> torch.Tensor:
    """The curve [K] of a model whose bias of a slot reads the other items of the page; NaN
    where the context (or the reference context) has no page in the sample."""
    model.eval()

    def mean_click(sample: PageSample) -> tuple[torch.Tensor, torch.Tensor]:
        relevance, bias = model.towers(sample.features, sample.positions, sample.context_ids)  # [N, K] each
        real = (sample.positions > 0).to(relevance.dtype)
        # p[n, j, k]: item j of page n in slot k of page n.
        p = torch.sigmoid(model.combine(relevance.unsqueeze(-1), bias.unsqueeze(1)))
        weight = real.unsqueeze(-1) * real.unsqueeze(1)
        return (p * weight).sum((0, 1)), weight.sum((0, 1))

    own = pages.in_context(context_id)
    reference = pages.in_context(reference_context_id)
    if own.features.shape[0] == 0 or reference.features.shape[0] == 0:
        return torch.full((model.spec.max_slate_size,), float("nan"))
    total, count = mean_click(own)
    ref_total, ref_count = mean_click(reference)
    curve = total / count.clamp(min=1)
    curve[count == 0] = float("nan")
    return curve / (ref_total[0] / ref_count[0])


def examination_curve(
    model: ClickModel, pages: PageSample, context_id: int, reference_context_id: int = 0
) -> torch.Tensor:
    """Examination [K] of slots 1..K in ``context_id``, relative to slot 1 of the reference
    context, by the definition that fits the model (module docstring)."""
    if model.bias_reads_page:
        from ulr_spark.models.base import TwoTowerModel

        assert isinstance(model, TwoTowerModel)
        return page_curve(model, pages, context_id, reference_context_id)
    return counterfactual_curve(model, pages, context_id, reference_context_id)
