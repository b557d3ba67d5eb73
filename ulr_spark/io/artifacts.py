"""Versioned model artifacts: ``<models>/<run_id>/<model>/`` holds the weights and a JSON card
with the model spec, the feature schema, the contexts and the config that produced it.

An artifact is written to a temporary folder and renamed into place, so a crashed run never
leaves a half-written artifact, and a rerun of the same run id replaces it whole.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import uuid
from dataclasses import dataclass

import torch

from ulr_spark.models.base import ClickModel
from ulr_spark.models.registry import build_model
from ulr_spark.models.spec import ModelSpec

WEIGHTS = "model.pt"
CARD = "model.json"


@dataclass(frozen=True)
class Artifact:
    path: str
    spec: ModelSpec
    card: dict

    @property
    def contexts(self) -> dict[int, str]:
        return {int(k): v for k, v in self.card["contexts"].items()}


def new_run_id() -> str:
    """Sortable by time: the newest run has the largest id."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def artifact_dir(models_root: str, run_id: str, model_name: str) -> str:
    return os.path.join(models_root, run_id, model_name)


def save_artifact(path: str, model: ClickModel, card: dict) -> None:
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".staging-{uuid.uuid4().hex}")
    os.makedirs(staging)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"spec": model.spec.to_dict(), "state_dict": state}, os.path.join(staging, WEIGHTS))
    with open(os.path.join(staging, CARD), "w") as handle:
        json.dump({**card, "spec": model.spec.to_dict()}, handle, indent=2, sort_keys=True)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(staging, path)


def read_artifact(path: str) -> Artifact:
    with open(os.path.join(path, CARD)) as handle:
        card = json.load(handle)
    return Artifact(path=path, spec=ModelSpec.from_dict(card["spec"]), card=card)


def load_model(artifact: Artifact, device: torch.device | str = "cpu") -> ClickModel:
    payload = torch.load(os.path.join(artifact.path, WEIGHTS), map_location=device, weights_only=True)
    model = build_model(artifact.spec)
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


def weights_bytes(artifact: Artifact) -> bytes:
    with open(os.path.join(artifact.path, WEIGHTS), "rb") as handle:
        return handle.read()


def run_artifacts(models_root: str, run_id: str) -> list[Artifact]:
    run_dir = os.path.join(models_root, run_id)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"no trained models for run_id={run_id!r} under {models_root}")
    names = sorted(n for n in os.listdir(run_dir) if os.path.exists(os.path.join(run_dir, n, CARD)))
    if not names:
        raise FileNotFoundError(f"run {run_id!r} has no complete model artifact under {run_dir}")
    return [read_artifact(os.path.join(run_dir, n)) for n in names]


def latest_run_id(models_root: str) -> str:
    runs = []
    if os.path.isdir(models_root):
        # Newest by modification time: run ids may be user-chosen and need not sort by time.
        runs = sorted(
            (os.path.getmtime(os.path.join(models_root, r)), r)
            for r in os.listdir(models_root)
            if not r.startswith(".") and os.path.isdir(os.path.join(models_root, r))
        )
    if not runs:
        raise FileNotFoundError(f"no trained run under {models_root}; run `ulr-spark train` first")
    return runs[-1][1]
