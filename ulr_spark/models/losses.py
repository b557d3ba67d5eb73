"""Click log-likelihood of merged slates.

A row of the examples table stands for ``n`` requests that showed the same slate, with
``c_i`` clicks summed over them on slot ``i``; its negative log-likelihood under click
probabilities ``p_i = sigma(logit_i)`` is

    -sum_i [c_i log p_i + (n - c_i) log(1 - p_i)],

the sum of the per-request losses it replaces. Padding slots (position 0) do not count.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def per_row_click_nll(
    logits: torch.Tensor, clicks: torch.Tensor, impressions: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Negative log-likelihood of each merged row, shape [B].

    logits, clicks, positions: [B, K]; impressions: [B] (requests merged into each row).
    """
    mask = (positions > 0).to(logits.dtype)
    n = impressions.to(logits.dtype).unsqueeze(-1)
    target = clicks.to(logits.dtype) / n.clamp(min=1)
    per_slot = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_slot * n * mask).sum(-1)


def slot_impressions(impressions: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Number of slot impressions a batch stands for (a scalar): the sum over rows of
    impressions times real slots. It is the loss normaliser of a training step."""
    return (impressions.to(torch.float32).unsqueeze(-1) * (positions > 0)).sum()


def summed_click_nll(
    logits: torch.Tensor, clicks: torch.Tensor, impressions: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative log-likelihood summed over the batch, slot impressions of the batch), both
    scalars; shapes of the inputs as in :func:`per_row_click_nll`."""
    nll = per_row_click_nll(logits, clicks, impressions, positions).sum()
    return nll, slot_impressions(impressions, positions)
