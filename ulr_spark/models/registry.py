"""Model names to classes, and the wrapper that lets DDP train a model's own objective."""

from __future__ import annotations

import torch
from torch import nn

from ulr_spark.models.base import ClickModel, NaiveModel
from ulr_spark.models.mixem import MixEMTwoTower
from ulr_spark.models.options import ARCHITECTURES
from ulr_spark.models.spec import ModelSpec
from ulr_spark.models.two_tower import AdditiveTwoTower, DotProductTwoTower, PALModel
from ulr_spark.models.xpa import XPATwoTower

# The architectures a config may name (train.models, train.variants[].model).
MODEL_CLASSES: dict[str, type[ClickModel]] = {
    "naive": NaiveModel,
    "additive": AdditiveTwoTower,
    "pal": PALModel,
    "dot_product": DotProductTwoTower,
    "mixem": MixEMTwoTower,
    "xpa": XPATwoTower,
}


def build_model(spec: ModelSpec) -> ClickModel:
    """A freshly initialised model of ``spec.architecture``; KeyError for an unknown one."""
    return MODEL_CLASSES[spec.architecture](spec)


class TrainingObjective(nn.Module):
    """Makes a model's :meth:`ClickModel.loss` its ``forward``, so DDP synchronises gradients
    of whatever objective the model defines."""

    def __init__(self, model: ClickModel):
        super().__init__()
        self.model = model

    def forward(
        self,
        features: torch.Tensor,
        positions: torch.Tensor,
        context_ids: torch.Tensor,
        clicks: torch.Tensor,
        impressions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.loss(features, positions, context_ids, clicks, impressions)

assert tuple(MODEL_CLASSES) == ARCHITECTURES, "keep ulr_spark.models.options.ARCHITECTURES in step"
