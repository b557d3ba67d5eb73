"""Score a pandas or Arrow batch with a run's relevance model, in plain Python (no Spark).

    from ulr_spark.serving import load_relevance_model
    scorer = load_relevance_model("/data/ulr/models", model="additive")   # the latest run
    scores = scorer.score(frame)   # numpy float64 [len(frame)]

The scorer wraps the same TorchScript module that :func:`ulr_spark.serving.export.export_relevance_model`
writes (built from the artifact, or loaded from an exported folder), so the transform outside
Spark has one implementation. This module only turns the batch's columns into that module's
inputs.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

import numpy as np
import torch

from ulr_spark.io.artifacts import latest_run_id, run_artifacts
from ulr_spark.serving.export import MODEL_FILE, read_signature, signature
from ulr_spark.serving.module import scripted_module


class RelevanceScorer:
    """A relevance model and the columns it reads (``signature``: docs/serving.md)."""

    def __init__(self, module: torch.jit.ScriptModule, signature: dict[str, Any]):
        self.module = module
        self.signature = signature
        inputs = {i["name"]: i for i in signature["inputs"]}
        self.array_columns: list[str] = inputs["array"]["columns"]
        self.array_length: int = int(inputs["array"]["shape"][1])
        self.numeric_columns: list[str] = inputs["numeric"]["columns"]
        self.text_columns: list[str] = inputs["text"]["columns"]

    @property
    def model(self) -> str:
        return str(self.signature["model"])

    @property
    def columns(self) -> list[str]:
        """The columns :meth:`score` reads."""
        return self.array_columns + self.numeric_columns + [c for c in self.text_columns if c not in self.numeric_columns]

    def inputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, list[list[Optional[str]]]]:
        """The module's (array [n, d] float32, numeric [n, m] float64, text) from a batch.

        Raises:
            ValueError: a column is missing, the array column has a null or a row of the wrong
                length, a numeric column is not numeric, or a categorical column is floating
                point (Spark's text form of those values is not reproduced) or of another type
                that is not text, integer or boolean.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        table = _as_arrow(batch)
        missing = [c for c in self.columns if c not in table.column_names]
        if missing:
            raise ValueError(f"score: the batch lacks the column(s) {missing} model {self.model!r} reads (it has {table.column_names})")
        rows = table.num_rows
        array = torch.zeros((rows, 0), dtype=torch.float32)
        if self.array_columns:
            name = self.array_columns[0]
            column = table.column(name).combine_chunks()
            if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type)):
                raise ValueError(f"score: column '{name}' must be a list of numbers, not {column.type}")
            lengths = pc.fill_null(pc.list_value_length(column), -1).to_numpy(zero_copy_only=False)
            broken = int((lengths != self.array_length).sum())
            if broken:
                raise ValueError(
                    f"score: column '{name}' must hold {self.array_length} values per row (not null), broken by {broken} of {rows} row(s)"
                )
            values = pc.list_flatten(column).cast(pa.float64()).to_numpy(zero_copy_only=False)
            array = torch.from_numpy(values.astype(np.float32).reshape(rows, self.array_length))
        numeric = np.zeros((rows, len(self.numeric_columns)), dtype=np.float64)
        for j, name in enumerate(self.numeric_columns):
            column = table.column(name)
            if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type)
                    or pa.types.is_decimal(column.type) or pa.types.is_null(column.type)):
                raise ValueError(f"score: numeric column '{name}' must hold numbers, not {column.type}")
            numeric[:, j] = pc.fill_null(column.cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False)
        text = [_spark_text(table.column(name), name) for name in self.text_columns]
        return array, torch.from_numpy(numeric), text

    def score(self, batch: Any) -> np.ndarray:
        """Relevance scores (numpy float64 [n]) of a pandas DataFrame or a pyarrow Table or
        RecordBatch holding :attr:`columns`, one row per (query, item); the same values
        ``ulr-spark score`` writes for these rows.

        Raises:
            ValueError: a broken batch (:meth:`inputs`).
        """
        array, numeric, text = self.inputs(batch)
        try:
            with torch.no_grad():
                out = self.module(array, numeric, text)
        except torch.jit.Error as error:  # a ValueError raised inside TorchScript
            lines = [line for line in str(error).splitlines() if line.strip()]
            raise ValueError(f"score: {re.sub(r'^.*ValueError: ', '', lines[-1] if lines else str(error))}") from None
        result: np.ndarray = out.double().numpy()
        return result


def _as_arrow(batch: Any):
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(batch, pd.DataFrame):
        return pa.Table.from_pandas(batch, preserve_index=False)
    raise ValueError(f"score: the batch must be a pandas DataFrame or a pyarrow Table or RecordBatch, not {type(batch).__name__}")


def _spark_text(column, name: str) -> list[Optional[str]]:
    """A categorical column as Spark's CAST(column AS STRING): text as is, integers as digits,
    booleans as true/false, null as None."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        values: list[Optional[str]] = column.to_pylist()
        return values
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        values = column.cast(pa.string()).to_pylist()
        return values
    raise ValueError(
        f"score: categorical column '{name}' must be text, integer or boolean, not {kind} (cast it to text as Spark's "
        "CAST(... AS STRING) writes it)"
    )


def load_relevance_model(models_root: str, run_id: Optional[str] = None, model: Optional[str] = None) -> RelevanceScorer:
    """The relevance model ``model`` of run ``run_id`` (None or ``"latest"``: the run that
    finished last) under ``models_root`` (``tables.path("models")``), ready to score batches.

    Raises:
        FileNotFoundError: no such run, or it did not finish.
        ValueError: the run has no model of that name, or ``model`` is None and the run holds
            more than one (the message lists them).
    """
    if run_id in (None, "latest"):
        run_id = latest_run_id(models_root)
    assert run_id is not None
    artifacts = run_artifacts(models_root, run_id)
    names = [a.spec.name for a in artifacts]
    if model is None and len(artifacts) > 1:
        raise ValueError(f"run {run_id!r} holds {len(names)} models {names}: pass model=<one of them>")
    chosen = [a for a in artifacts if model is None or a.spec.name == model]
    if not chosen:
        raise ValueError(f"run {run_id!r} has no model {model!r}; its models: {names}")
    return RelevanceScorer(scripted_module(chosen[0]), signature(chosen[0]))


def load_exported(directory: str) -> RelevanceScorer:
    """The scorer of a folder written by ``ulr-spark export`` (its two files).

    Raises:
        FileNotFoundError: the folder lacks ``relevance_model.pt`` or ``signature.json``.
    """
    module = torch.jit.load(os.path.join(directory, MODEL_FILE), map_location="cpu")
    return RelevanceScorer(module, read_signature(directory))
