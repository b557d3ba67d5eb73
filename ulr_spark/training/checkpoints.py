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
import uuid
from typing import Any, Optional

import fsspec
import torch

PLAN = "plan.json"
STATE = "state.pt"


def _fs(url: str):
    return fsspec.core.url_to_fs(url)


def join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts)


def write_atomically(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` through a temporary name in the same folder, then move it on."""
    fs, path = _fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open(temporary, "wb") as handle:
        handle.write(data)
    fs.mv(temporary, path)


def read_bytes(url: str) -> Optional[bytes]:
    """The file's bytes, or None when it does not exist."""
    fs, path = _fs(url)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as handle:
        data: bytes = handle.read()
    return data


def save_torch(url: str, payload: Any) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomically(url, buffer.getvalue())


def load_torch(url: str) -> Optional[Any]:
    """A checkpoint file (tensors, numbers, strings, lists and dicts only), or None."""
    data = read_bytes(url)
    return None if data is None else torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def write_plan(run_dir: str, plan: dict) -> None:
    write_atomically(join(run_dir, PLAN), json.dumps(plan, indent=2, sort_keys=True).encode())


def read_plan(run_dir: str) -> Optional[dict]:
    data = read_bytes(join(run_dir, PLAN))
    return None if data is None else json.loads(data)


def remove(run_dir: str) -> None:
    """Delete a run's checkpoints (after it was published)."""
    fs, path = _fs(run_dir)
    if fs.exists(path):
        fs.rm(path, recursive=True)
