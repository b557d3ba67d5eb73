"""Training checkpoints, so a killed ``train`` continues where it stopped (``train --resume``).

Layout, under ``tables.checkpoints`` (a path or URL the driver and every training process
reach, like the Petastorm cache)::

    <checkpoints>/<run_id>/plan.json          what the run trains on: the examples version and
                                              the config fingerprint (written by the driver)
    <checkpoints>/<run_id>/<model>/state.pt   rank 0: weights, optimiser and schedule state,
                                              epoch, step, histories, early-stopping state
    <checkpoints>/<run_id>/<model>/rng-<r>.pt rank r: its random state at that step

Each file is written under a temporary name and then moved onto its name, so a reader finds
the previous checkpoint or the new one, never half of one. A finished model's checkpoint is
marked ``finished``; once the run is published its checkpoints are deleted (the artifact is
then the checkpoint of the finished run).
"""

from __future__ import annotations

import io
import json
from typing import Any, Optional

import torch

from ulr_spark.io import storage
from ulr_spark.io.storage import join

PLAN = "plan.json"
STATE = "state.pt"


def read_bytes(url: str) -> Optional[bytes]:
    """The file's bytes, or None when it does not exist."""
    return storage.read_bytes(url) if storage.exists(url) else None


def save_torch(url: str, payload: Any) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    storage.replace_file(url, buffer.getvalue())


def load_torch(url: str) -> Optional[Any]:
    """A checkpoint file (tensors, numbers, strings, lists and dicts only), or None."""
    data = read_bytes(url)
    return None if data is None else torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def write_plan(run_dir: str, plan: dict) -> None:
    storage.replace_file(join(run_dir, PLAN), json.dumps(plan, indent=2, sort_keys=True).encode())


def read_plan(run_dir: str) -> Optional[dict]:
    data = read_bytes(join(run_dir, PLAN))
    return None if data is None else json.loads(data)


def remove(run_dir: str) -> None:
    """Delete a run's checkpoints (after it was published)."""
    storage.remove_tree(run_dir)
