"""The relevance model as one TorchScript module: a run's feature transform followed by its
relevance tower, so that a model scores raw column values outside Spark.

The transform is :class:`ulr_spark.features.encoding.FeatureEncoder` redone on tensors and
strings, value for value as Spark computes it in :meth:`FeatureEncoder.column`: the array
column cast to float32; each numeric column standardised in float64 (null, NaN or infinite:
0 and, when the encoder has one, its missing indicator 1) then cast to float32; a pad 0 when
there is no dense value; each categorical field's index (vocabulary position + 1, else 0; or
``pmod(xxhash64(columns as text..., 42), buckets)``, :mod:`ulr_spark.serving.xxhash`) as
float32. The tower then reads that vector as it does in training and scoring.

``forward(array, numeric, text)`` takes plain tensors and lists (no pandas, no Arrow), so the
scripted file runs wherever ``torch`` does:

- ``array``: float32 [n, array_length] (array_length may be 0), finite;
- ``numeric``: float64 [n, len(numeric_columns)], NaN (or +-inf) where a value is missing;
- ``text``: one list of n ``Optional[str]`` per entry of ``text_columns``, the value as
  Spark's ``CAST(column AS STRING)`` writes it, ``None`` for null;

and returns float32 relevance scores [n]. Broken input raises ``ValueError`` naming the input.
"""

import warnings
from typing import Optional

import torch
from torch import nn

from ulr_spark.features.encoding import HASH_SEED, FeatureEncoder
from ulr_spark.io.artifacts import Artifact, load_model
from ulr_spark.models.base import ClickModel
from ulr_spark.serving.xxhash import pmod, spark_xxhash64


class RelevanceModule(nn.Module):
    """Feature transform + relevance tower (module docstring: the inputs and the output).

    ``tower`` maps the encoded vector [n, encoder.width] to [n] (or [n, d] with a
    ``direction`` [d] that the output is projected on: the dot-product model's serving
    direction)."""

    text_columns: list[str]
    numeric_columns: list[str]
    array_length: int
    indicators: list[int]
    pad: bool
    field_columns: list[list[int]]
    field_hashed: list[bool]
    field_buckets: list[int]
    vocabularies: list[dict[str, int]]
    hash_literal: int
    project: bool
    means: torch.Tensor
    stds: torch.Tensor
    direction: torch.Tensor

    def __init__(self, encoder: FeatureEncoder, tower: nn.Module, direction: Optional[torch.Tensor] = None):
        super().__init__()
        self.array_length = encoder.array_length
        self.numeric_columns = [n.column for n in encoder.numeric]
        self.indicators = [i for i, n in enumerate(encoder.numeric) if n.indicator]
        self.pad = encoder.array_length + encoder.numeric_width == 0
        self.text_columns = text_columns(encoder)
        self.field_columns = [[self.text_columns.index(c) for c in f.columns] for f in encoder.categorical]
        self.field_hashed = [f.kind == "hash" for f in encoder.categorical]
        self.field_buckets = [f.buckets for f in encoder.categorical]
        self.vocabularies = [{v: i + 1 for i, v in enumerate(f.values)} for f in encoder.categorical]
        self.hash_literal = HASH_SEED
        self.register_buffer("means", torch.tensor([n.mean for n in encoder.numeric], dtype=torch.float64))
        self.register_buffer("stds", torch.tensor([n.std for n in encoder.numeric], dtype=torch.float64))
        self.project = direction is not None
        self.register_buffer("direction", (direction if direction is not None else torch.zeros(0)).detach().float())
        self.tower = tower

    def category_indices(self, text: list[list[Optional[str]]], rows: int) -> torch.Tensor:
        """[rows, fields] float64: each field's index, as Spark's ``category_index``."""
        fields: list[list[int]] = []
        for f in range(len(self.field_hashed)):
            columns = self.field_columns[f]
            index: list[int] = []
            for r in range(rows):
                if self.field_hashed[f]:
                    values: list[Optional[str]] = [text[c][r] for c in columns]
                    index.append(pmod(spark_xxhash64(values, self.hash_literal), self.field_buckets[f]))
                else:
                    value = text[columns[0]][r]
                    index.append(0 if value is None else self.vocabularies[f].get(value, 0))
            fields.append(index)
        if len(fields) == 0:
            return torch.zeros((rows, 0), dtype=torch.float64)
        return torch.tensor(fields, dtype=torch.float64).reshape(len(fields), rows).t()

    def encode(self, array: torch.Tensor, numeric: torch.Tensor, text: list[list[Optional[str]]]) -> torch.Tensor:
        """The encoded vector [n, width] float32, the ``features`` Spark scoring feeds the tower."""
        if array.dim() != 2 or array.size(1) != self.array_length:
            raise ValueError(
                "input 'array' must be a [n, " + str(self.array_length) + "] tensor, got shape " + str(list(array.shape))
            )
        rows = array.size(0)
        if numeric.dim() != 2 or numeric.size(0) != rows or numeric.size(1) != len(self.numeric_columns):
            raise ValueError(
                "input 'numeric' must be a [" + str(rows) + ", " + str(len(self.numeric_columns))
                + "] tensor (columns " + str(self.numeric_columns) + "), got shape " + str(list(numeric.shape))
            )
        if len(text) != len(self.text_columns):
            raise ValueError(
                "input 'text' must hold " + str(len(self.text_columns)) + " lists (columns "
                + str(self.text_columns) + "), got " + str(len(text))
            )
        for c in range(len(text)):
            if len(text[c]) != rows:
                raise ValueError(
                    "input 'text': column '" + self.text_columns[c] + "' has " + str(len(text[c]))
                    + " values for " + str(rows) + " rows"
                )
        dense = array.to(torch.float32)
        broken = int((~torch.isfinite(dense)).any(1).sum())
        if broken > 0:
            raise ValueError("input 'array' must be finite as float32, broken in " + str(broken) + " row(s)")
        parts: list[torch.Tensor] = [dense]
        if len(self.numeric_columns) > 0:
            x = numeric.to(torch.float64)
            missing = ~torch.isfinite(x)
            parts.append(torch.where(missing, torch.zeros_like(x), (x - self.means) / self.stds).to(torch.float32))
            if len(self.indicators) > 0:
                parts.append(missing[:, self.indicators].to(torch.float32))
        if self.pad:
            parts.append(torch.zeros((rows, 1), dtype=torch.float32))
        parts.append(self.category_indices(text, rows).to(torch.float32))
        return torch.cat(parts, 1)

    def forward(self, array: torch.Tensor, numeric: torch.Tensor, text: list[list[Optional[str]]]) -> torch.Tensor:
        out = self.tower(self.encode(array, numeric, text))
        if self.project:
            out = out @ self.direction
        return out


def text_columns(encoder: FeatureEncoder) -> list[str]:
    """The distinct source columns of the categorical fields, in the encoder's order."""
    names: list[str] = []
    for f in encoder.categorical:
        names += [c for c in f.columns if c not in names]
    return names


def artifact_encoder(artifact: Artifact) -> FeatureEncoder:
    """The artifact's feature transform; a model trained on a plain features array gets the
    identity transform of that array (``features_column`` of its card, num_features long)."""
    data = artifact.card.get("feature_encoder")
    if data:
        return FeatureEncoder.from_dict(data)
    return FeatureEncoder(array_column=artifact.card.get("features_column") or "features", array_length=artifact.spec.num_features)


def relevance_head(model: ClickModel) -> tuple[nn.Module, Optional[torch.Tensor]]:
    """(relevance tower, projection direction or None) such that ``model.relevance(x)`` is
    ``tower(x)`` (projected on the direction when there is one).

    Raises:
        ValueError: the model's class computes relevance some other way (export not supported).
    """
    from ulr_spark.models.two_tower import DotProductTwoTower

    if type(model).relevance is ClickModel.relevance:
        return model.relevance_tower, None
    if isinstance(model, DotProductTwoTower) and type(model).relevance is DotProductTwoTower.relevance:
        return model.relevance_tower, model.base_bias().detach().clone()
    raise ValueError(f"model {model.spec.name!r} ({type(model).__name__}) has its own relevance(): it cannot be exported yet")


def scripted_module(artifact: Artifact) -> torch.jit.ScriptModule:
    """The artifact's transform and relevance tower as one scripted module (CPU, eval mode)."""
    model = load_model(artifact, "cpu").requires_grad_(False)
    encoder = artifact_encoder(artifact)
    if encoder.width != artifact.spec.num_features:
        raise ValueError(
            f"the artifact {artifact.path}: its feature encoder is {encoder.width} values wide, its model reads "
            f"{artifact.spec.num_features}"
        )
    tower, direction = relevance_head(model)
    with warnings.catch_warnings(), torch.no_grad():
        # The tower is traced (it iterates over its tables in Python); its shapes do not depend on
        # the batch size. torch.jit is deprecated in favour of torch.export, which takes no strings.
        warnings.simplefilter("ignore")
        example = torch.zeros((2, encoder.width))
        traced = torch.jit.trace(tower.eval(), example, check_trace=False)
        return torch.jit.script(RelevanceModule(encoder, traced, direction).eval())
