"""What the Python workers of a Spark job run to apply trained models: the models rebuilt once
per worker from a broadcast of their weights, and Arrow columns turned into tensors. Used by
scoring (:mod:`ulr_spark.scoring`) and by the held-out click metrics
(:mod:`ulr_spark.click_metrics`); nothing here touches the driver's Spark session."""

from __future__ import annotations

import io
import uuid
import warnings

import torch

from ulr_spark import schema
from ulr_spark.io.artifacts import weights_bytes
from ulr_spark.models.registry import build_model
from ulr_spark.models.spec import ModelSpec


def broadcast_models(spark, artifacts):
    """Broadcast the specs and weights of ``artifacts`` once, with a token that names this
    broadcast (see :func:`models_from_broadcast`)."""
    payload = [(a.spec.to_dict(), weights_bytes(a)) for a in artifacts]
    return spark.sparkContext.broadcast((uuid.uuid4().hex, payload))


# Models rebuilt in this Python worker, keyed by a token of the broadcast: one rebuild per
# worker and scoring job, however many batches it scores.
_WORKER_MODELS: dict[str, list] = {}


def models_from_broadcast(broadcast) -> list:
    token, payload = broadcast.value
    if token not in _WORKER_MODELS:
        torch.set_num_threads(1)
        models = []
        for spec_dict, blob in payload:
            model = build_model(ModelSpec.from_dict(spec_dict))
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)["state_dict"]
            model.load_state_dict(state)
            models.append(model.eval())
        _WORKER_MODELS.clear()
        _WORKER_MODELS[token] = models
    return _WORKER_MODELS[token]


def feature_matrix(features, num_features: int) -> torch.Tensor:
    """An Arrow list<float> column as a read-only [rows, num_features] float32 tensor over the
    column's value buffer: no copy when the values are float32 (only read, under no_grad)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.list_value_length(features)
    broken = len(features) - pc.sum(pc.equal(lengths, num_features)).as_py() if len(features) else 0
    if broken or features.null_count:
        raise ValueError(
            f"score: column '{schema.FEATURES}' must hold {num_features} values per row (the model's input), "
            f"broken by {max(broken, features.null_count)} row(s) in a batch"
        )
    values = pc.list_flatten(features)
    if values.type != pa.float32():
        values = values.cast(pa.float32())
    matrix = values.to_numpy(zero_copy_only=False).reshape(len(features), num_features)
    with warnings.catch_warnings():
        # torch warns that the buffer is not writable; the tensor is only read.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(matrix)


