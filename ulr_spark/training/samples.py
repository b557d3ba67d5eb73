"""What the driver reads from the examples besides the training rows: the validation slates
(early stopping) and the page sample the learned examination curves are read on, and the
curves themselves as rows of the bias table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ulr_spark import schema
from ulr_spark.config import Config
from ulr_spark.io.artifacts import Artifact, load_model
from ulr_spark.models.curves import PageSample, bootstrap_interval

if TYPE_CHECKING:
    from ulr_spark.training.driver import ExamplesShape

# Validation slates scored after every epoch on each process: a larger validation split is
# sampled down to about this many rows.
VALIDATION_ROWS = 50_000


def learned_bias_curves(
    model_artifact: Artifact, pages: PageSample, shape: ExamplesShape, run_id: str, replicates: int = 0, seed: int = 0
) -> pd.DataFrame:
    """The examination curve of every context, as rows of the bias table: only the (context,
    slot) cells the training log shows, indexed by position (:mod:`ulr_spark.models.curves`),
    each with its training impressions and a 95% Poisson-bootstrap interval over the page
    sample (:func:`~ulr_spark.models.curves.bootstrap_interval`; null with no replicate)."""
    model = load_model(model_artifact)
    rows = []
    for context_id, slots in sorted(shape.observed_slots.items()):
        curve, low, high = (t.numpy() for t in bootstrap_interval(model, pages, context_id, replicates, seed))
        for slot in slots:
            value = curve[slot - 1]
            if np.isfinite(value):
                interval = [float(b[slot - 1]) for b in (low, high)]  # NaN without a bootstrap: null in the table
                rows.append((
                    model_artifact.spec.name, run_id, shape.contexts[context_id], slot, float(value),
                    shape.cell_impressions.get((context_id, slot), 0), *interval,
                ))
    return pd.DataFrame(rows, columns=[
        schema.MODEL, schema.RUN_ID, schema.CONTEXT_KEY, schema.POSITION, schema.EXAMINATION, schema.IMPRESSIONS,
        schema.EXAMINATION_LOW, schema.EXAMINATION_HIGH,
    ])


def validation_arrays(validation: DataFrame, shape: ExamplesShape, seed: int, rows: Optional[int] = None) -> Optional[dict]:
    """The validation slates as numpy arrays (features [N, K, D], positions, context ids,
    clicks, impressions), sampled down to about VALIDATION_ROWS rows; None when there is none.
    Merged rows keep their weight: the loss is the same as over the requests they merge.
    ``rows``: the validation rows when the caller has counted them (else they are counted)."""
    rows = validation.count() if rows is None else rows
    if not rows:
        return None
    if rows > VALIDATION_ROWS:
        validation = validation.sample(fraction=VALIDATION_ROWS / rows, seed=seed)
    frame = validation.select(schema.FEATURES, schema.POSITIONS, schema.CONTEXT_ID, schema.CLICKS, schema.IMPRESSIONS).toPandas()
    if frame.empty:
        return None
    k, d = shape.max_slate_size, shape.num_features
    return {
        "features": np.stack(frame[schema.FEATURES].to_numpy()).astype(np.float32).reshape(-1, k, d),
        "positions": np.stack(frame[schema.POSITIONS].to_numpy()).astype(np.int64),
        "context_ids": frame[schema.CONTEXT_ID].to_numpy().astype(np.int64),
        "clicks": np.stack(frame[schema.CLICKS].to_numpy()).astype(np.float32),
        "impressions": frame[schema.IMPRESSIONS].to_numpy().astype(np.float32),
    }


def sample_pages(examples: DataFrame, shape: ExamplesShape, sample_slates: int, seed: int) -> PageSample:
    """About ``sample_slates`` logged slates to read the learned curves on, drawn in proportion
    to their impressions (a row of n impressions with probability min(1, n q)) and weighted by
    n over that probability, so weighted sums estimate sums over every impression of the log."""
    q = sample_slates / max(shape.impressions, 1)
    chance = F.least(F.lit(1.0), F.col(schema.IMPRESSIONS) * F.lit(q))
    rows = (
        examples.withColumn("chance", chance)
        .where(F.rand(seed) < F.col("chance"))
        .select(schema.POSITIONS, schema.FEATURES, schema.CONTEXT_ID, (F.col(schema.IMPRESSIONS) / F.col("chance")).alias("weight"))
        .toPandas()
    )
    k, d = shape.max_slate_size, shape.num_features
    if rows.empty:
        return PageSample(torch.zeros((0, k, d)), torch.zeros((0, k), dtype=torch.int64), torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    return PageSample(
        features=torch.from_numpy(np.stack(rows[schema.FEATURES].to_numpy()).astype(np.float32).reshape(-1, k, d)),
        positions=torch.from_numpy(np.stack(rows[schema.POSITIONS].to_numpy()).astype(np.int64)),
        context_ids=torch.from_numpy(rows[schema.CONTEXT_ID].to_numpy().astype(np.int64)),
        weights=torch.from_numpy(rows["weight"].to_numpy().astype(np.float64)),
    )


def warn_if_mixem_rows_mix_clicks(config: Config, examples: DataFrame) -> int:
    """Rows whose merged requests clicked differently (0 < clicks < impressions on an entry):
    MixEM's E-step gives such a row one posterior, an approximation. Prints a warning when a
    MixEM model is configured and there are any; returns their count (0 when none is)."""
    if not any(config.train.variant(name)[0] == "mixem" for name in config.train.models):
        return 0
    mixed = examples.where(
        F.exists(schema.CLICKS, lambda c: (c > 0) & (c < F.col(schema.IMPRESSIONS)))
    ).count()
    if mixed:
        print(
            f"train: WARNING {mixed} example row(s) merge requests that clicked differently, so MixEM's E-step is "
            "approximate on them: rebuild the examples with examples.merge_on_clicks (on by default when a mixem "
            "model is configured)", flush=True,
        )
    return mixed
