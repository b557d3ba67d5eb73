"""Export a run's relevance models to files that score without ulr-spark (docs/serving.md).

Each model becomes a folder holding two files:

- ``relevance_model.pt``: the TorchScript module of :mod:`ulr_spark.serving.module` (the
  feature transform and the relevance tower), loaded with ``torch.jit.load`` alone;
- ``signature.json``: what its ``forward`` takes and returns (input names in order, types,
  shapes, the log column each value comes from), and which run and model it is.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import uuid
from typing import Any, Optional

import torch

from ulr_spark import __version__
from ulr_spark.io.artifacts import Artifact, latest_run_id, run_artifacts
from ulr_spark.serving.module import artifact_encoder, scripted_module, text_columns

MODEL_FILE = "relevance_model.pt"
SIGNATURE_FILE = "signature.json"
# Version of signature.json; a reader refuses a newer one.
SIGNATURE_FORMAT = 1


def signature(artifact: Artifact) -> dict[str, Any]:
    """The ``signature.json`` of an artifact's exported relevance model (docs/serving.md)."""
    encoder = artifact_encoder(artifact)
    numeric = [n.column for n in encoder.numeric]
    return {
        "format": SIGNATURE_FORMAT,
        "file": MODEL_FILE,
        "model": artifact.spec.name,
        "architecture": artifact.spec.architecture,
        "run_id": os.path.basename(os.path.dirname(os.path.normpath(artifact.path))),
        "trained_with_ulr_spark": artifact.card.get("ulr_spark_version"),
        "exported_with_ulr_spark": __version__,
        "exported_with_torch": torch.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "inputs": [
            {
                "name": "array", "type": "Tensor", "dtype": "float32", "shape": ["n", encoder.array_length],
                "columns": [encoder.array_column] if encoder.array_length else [],
                "description": "the array column's values, finite (an empty [n, 0] tensor when the model has none)",
            },
            {
                "name": "numeric", "type": "Tensor", "dtype": "float64", "shape": ["n", len(numeric)], "columns": numeric,
                "description": "one column per numeric feature, in this order; NaN (or +-inf) where a value is missing",
            },
            {
                "name": "text", "type": "List[List[Optional[str]]]", "shape": [len(text_columns(encoder)), "n"],
                "columns": text_columns(encoder),
                "description": "one list per categorical column, in this order: the value as Spark's CAST(column AS STRING) "
                "writes it (an integer as its digits, a boolean as true/false), None for null",
            },
        ],
        "output": {
            "name": "relevance", "type": "Tensor", "dtype": "float32", "shape": ["n"],
            "description": "the debiased relevance score of each row (ClickModel.relevance), as ulr-spark score writes it",
        },
        "errors": "ValueError (a RuntimeError carrying it when called from TorchScript) for a wrong shape, a non-finite "
        "array value or a text list of the wrong length",
        "feature_encoder": json.loads(encoder.to_json()),
    }


def export_relevance_model(artifact: Artifact, directory: str) -> str:
    """Write ``relevance_model.pt`` and ``signature.json`` of ``artifact`` into ``directory``
    (created; files of an earlier export replaced whole). Returns the model file's path.

    Raises:
        ValueError: the model computes relevance in a way export does not support, or its card's
            encoder does not match its input width.
    """
    module = scripted_module(artifact)
    os.makedirs(directory, exist_ok=True)
    staging = os.path.join(directory, f".staging-{uuid.uuid4().hex[:8]}")
    os.makedirs(staging)
    try:
        module.save(os.path.join(staging, MODEL_FILE))
        with open(os.path.join(staging, SIGNATURE_FILE), "w") as handle:
            json.dump(signature(artifact), handle, indent=2, sort_keys=True, ensure_ascii=False)
        for name in (MODEL_FILE, SIGNATURE_FILE):
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return os.path.join(directory, MODEL_FILE)


def export_run(models_root: str, out: str, run_id: Optional[str] = None, model: Optional[str] = None) -> list[str]:
    """Export every model of a run (the latest finished one by default), or only ``model``, to
    ``<out>/<model>/``. Returns the model files written.

    Raises:
        FileNotFoundError: no such run, or it did not finish.
        ValueError: the run has no model of that name (the message lists its models).
    """
    run_id = run_id or latest_run_id(models_root)
    artifacts = run_artifacts(models_root, run_id)
    if model is not None:
        names = [a.spec.name for a in artifacts]
        artifacts = [a for a in artifacts if a.spec.name == model]
        if not artifacts:
            raise ValueError(f"export: run {run_id!r} has no model {model!r}; its models: {names}")
    return [export_relevance_model(a, os.path.join(out, a.spec.name)) for a in artifacts]


def read_signature(directory: str) -> dict[str, Any]:
    """The ``signature.json`` of an exported model.

    Raises:
        FileNotFoundError: no signature in ``directory``.
        ValueError: it was written by a newer version of ulr-spark.
    """
    with open(os.path.join(directory, SIGNATURE_FILE)) as handle:
        data: dict[str, Any] = json.load(handle)
    if int(data.get("format", 0)) > SIGNATURE_FORMAT:
        raise ValueError(f"{directory}: signature format {data['format']} is newer than this version reads ({SIGNATURE_FORMAT})")
    return data
