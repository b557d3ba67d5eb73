"""Versioned model artifacts: ``<models>/<run_id>/<model>/`` holds the weights and a JSON card
with the model spec, the feature schema, the contexts and the config that produced it, and
``<models>/<run_id>/run.json`` says that the run finished.

Training writes every model of a run into a staging folder; only when the whole stage has
succeeded (every model trained, its curves written) does :func:`publish_run` put the folder in
place and write ``run.json``, last. So a failed or killed run is never read: scoring and
evaluation only see runs with ``run.json``, and "the latest run" is the one that finished last
(by the time recorded in ``run.json``, not by a folder's modification time). A rerun of the same
run id replaces the run whole. Likewise a model's card is written after its weights, and a
folder without a card is no model.

``models_root`` may be a POSIX path or a URL of any storage that fsspec reaches
(:mod:`ulr_spark.io.storage`, which also says how the writes stay atomic there).
"""

from __future__ import annotations

import datetime
import re
import uuid
from dataclasses import dataclass

import torch

from ulr_spark.io.storage import (
    commit_folder,
    exists,
    isdir,
    join,
    json_bytes,
    list_names,
    open_file,
    read_bytes,
    read_json,
    read_marker,
    write_folder,
)
from ulr_spark.models.base import ClickModel
from ulr_spark.models.registry import build_model
from ulr_spark.models.spec import ModelSpec

WEIGHTS = "model.pt"
CARD = "model.json"
RUN = "run.json"
# Version of the artifact layout; a reader refuses a newer one instead of misreading it.
ARTIFACT_FORMAT = 1
# Run ids become folder names: letters, digits, '.', '_' and '-', starting with a letter or digit.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


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


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it can be a folder name and a table value.

    Raises:
        ValueError: it is empty, too long, or holds a character other than letters, digits,
            '.', '_' and '-' (a '/' or '..' would write outside the models folder).
    """
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id) or ".." in run_id:
        raise ValueError(
            f"run id {run_id!r} is not valid: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (it becomes a folder name)"
        )
    return run_id


def artifact_dir(models_root: str, run_id: str, model_name: str) -> str:
    return join(models_root, check_run_id(run_id), model_name)


def staging_run_dir(models_root: str, run_id: str) -> str:
    """A fresh folder to train a run into before :func:`publish_run` puts it in place."""
    return join(models_root, f".staging-{check_run_id(run_id)}-{uuid.uuid4().hex[:8]}")


def publish_run(staging: str, models_root: str, run_id: str, record: dict) -> str:
    """Mark a staged run finished (``run.json`` with ``record`` and the completion time) and
    put it in place as ``<models_root>/<run_id>``, replacing an earlier run of that id whole.
    Returns the run's folder. ``run.json`` is the commit: on POSIX it is written into the
    staging folder, which is then renamed; on an object store the earlier run's ``run.json`` is
    deleted first, the files are copied (each card after its weights) and ``run.json`` is
    written last."""
    final = join(models_root, check_run_id(run_id))
    completed = {**record, "run_id": run_id, "completed_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    commit_folder(staging, final, RUN, json_bytes(completed), inner_markers=(CARD,))
    return final


def run_record(models_root: str, run_id: str) -> dict:
    """The ``run.json`` of a finished run.

    Raises:
        FileNotFoundError: no run of that id, or the run did not finish.
    """
    run_dir = join(models_root, check_run_id(run_id))
    record = read_marker(run_dir, RUN)
    if record is None:
        if isdir(run_dir):
            raise FileNotFoundError(
                f"run {run_id!r} under {models_root} has no {RUN}: it did not finish training (or was trained by a "
                "version of ulr-spark before run.json, docs/decisions.md); retrain it"
            )
        raise FileNotFoundError(f"no trained models for run_id={run_id!r} under {models_root}")
    return dict(record)


def artifact_complete(path: str) -> bool:
    """Whether the artifact folder ``path`` holds its card, which is written after the weights."""
    return exists(join(path, CARD))


def save_artifact(path: str, model: ClickModel, card: dict) -> None:
    """Write a model's weights, then its card (the card commits the folder); an earlier
    artifact at ``path`` is replaced whole."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"spec": model.spec.to_dict(), "state_dict": state}
    full_card = {**card, "spec": model.spec.to_dict(), "artifact_format": ARTIFACT_FORMAT}
    write_folder(path, {WEIGHTS: lambda handle: torch.save(payload, handle)}, CARD, json_bytes(full_card))


def read_artifact(path: str) -> Artifact:
    """Read a model's card.

    Raises:
        ValueError: the artifact was written by a newer version of ulr-spark (a newer layout, or
            spec keys this version does not know).
    """
    try:
        card = read_json(join(path, CARD))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the artifact {path} has no {CARD}: it was not written completely (its training stopped before the card, "
            "which is written last)"
        ) from None
    written = card.get("artifact_format", 1)
    if not isinstance(written, int) or written > ARTIFACT_FORMAT:
        raise ValueError(
            f"the artifact {path} has format {written!r}, newer than this version of ulr-spark reads "
            f"({ARTIFACT_FORMAT}); use the version that wrote it (ulr_spark_version {card.get('ulr_spark_version')!r}), or retrain"
        )
    try:
        spec = ModelSpec.from_dict(card["spec"])
    except ValueError as error:
        raise ValueError(f"the artifact {path}: {error}") from None
    return Artifact(path=path, spec=spec, card=card)


# State added after format 1 artifacts were first written, and what a model saved without it
# means: the dot product's serving direction (unset: the slot-1 projection it was trained with),
# and the gradient-reversal adversary, which only trains and never serves (it was one linear
# layer reading the relevance output, now an MLP reading the bias output).
_ADDED_STATE = ("serving_direction", "has_serving_direction")
_TRAINING_ONLY_PREFIX = "adversary."


def upgrade_state_dict(model: torch.nn.Module, state: dict) -> dict:
    """``state`` with the entries of :data:`_ADDED_STATE` and the adversary's taken from the
    freshly built ``model`` where the saved state lacks them, and saved adversary entries that
    the model no longer has dropped; so a model saved by an earlier version loads and scores
    as it did. Any other mismatch is left for ``load_state_dict`` to report."""
    fresh = model.state_dict()
    upgraded = {k: v for k, v in state.items() if not (k.startswith(_TRAINING_ONLY_PREFIX) and k not in fresh)}
    for key, value in fresh.items():
        if key not in upgraded and (key.split(".")[-1] in _ADDED_STATE or key.startswith(_TRAINING_ONLY_PREFIX)):
            upgraded[key] = value
    return upgraded


def load_model(artifact: Artifact, device: torch.device | str = "cpu") -> ClickModel:
    with open_file(join(artifact.path, WEIGHTS)) as handle:
        payload = torch.load(handle, map_location=device, weights_only=True)
    model = build_model(artifact.spec)
    model.load_state_dict(upgrade_state_dict(model, payload["state_dict"]))
    return model.to(device).eval()


def weights_bytes(artifact: Artifact) -> bytes:
    return read_bytes(join(artifact.path, WEIGHTS))


def run_artifacts(models_root: str, run_id: str) -> list[Artifact]:
    """The models of a finished run.

    Raises:
        FileNotFoundError: no such run, or it did not finish (no ``run.json``).
        ValueError: the run id is not valid, or an artifact was written by a newer version.
    """
    record = run_record(models_root, run_id)
    run_dir = join(models_root, run_id)
    names = sorted(record.get("models") or (
        n for n in list_names(run_dir) if not n.startswith(".") and artifact_complete(join(run_dir, n))
    ))
    if not names:
        raise FileNotFoundError(f"run {run_id!r} has no model artifact under {run_dir}")
    return [read_artifact(join(run_dir, n)) for n in names]


def latest_run_id(models_root: str) -> str:
    """The run that finished last (by the completion time in its ``run.json``); runs that did
    not finish are never chosen."""
    finished = []
    for name in list_names(models_root):
        if name.startswith(".") or not RUN_ID_PATTERN.fullmatch(name):
            continue
        record = read_marker(join(models_root, name), RUN)
        if record is not None:
            finished.append((record.get("completed_at", ""), name))
    if not finished:
        raise FileNotFoundError(f"no finished training run under {models_root}; run `ulr-spark train` first")
    return max(finished)[1]
