"""Where a training process stands (epoch, step, histories, early-stopping state), saved in and
restored from checkpoints (:mod:`ulr_spark.training.checkpoints`), and the warm start of a model
from an earlier run's weights (``train.init_from``)."""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ulr_spark.io.artifacts import upgrade_state_dict
from ulr_spark.training.checkpoints import STATE, join, load_torch, save_torch


@dataclass
class Progress:
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps completed in the current epoch
    global_step: int = 0
    history: list = dataclasses.field(default_factory=list)
    validation_history: list = dataclasses.field(default_factory=list)
    best_state: Optional[dict] = None
    best_epoch: int = 0
    since_best: int = 0
    finished: bool = False  # the checkpoint holds the final weights: nothing is left to train
    resumed_at: Optional[int] = None  # the step a resumed run continued from
    first_epoch: int = 0  # the epoch this process started in

    @classmethod
    def start(cls, job: Any, model: torch.nn.Module, optimizer: Any, rank: int) -> Progress:
        """A fresh start, or (``job.resume``) the state of the model's last checkpoint: its
        weights, optimiser and schedule state and this rank's random state are loaded."""
        if not (job.resume and job.checkpoint_dir):
            return cls()
        state = load_torch(join(job.checkpoint_dir, STATE))
        if state is None:
            if rank == 0:
                print(f"train[{job.spec.name}] --resume: no checkpoint of this model, training from the start", flush=True)
            return cls()
        model.load_state_dict(state["model"])
        if not state["finished"]:
            optimizer.load_state_dict(state["optimizers"])
        saved = load_torch(join(job.checkpoint_dir, f"rng-{rank}.pt"))
        if saved is not None and saved["step"] == state["global_step"]:
            torch.set_rng_state(saved["state"])
            if saved.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(saved["cuda"])
        else:  # killed between the two writes: a seed of its own for the rest of the run
            torch.manual_seed(job.seed * 1_000_003 + rank + state["global_step"])
        if rank == 0:
            where = "finished" if state["finished"] else f"epoch {state['epoch'] + 1}, step {state['step_in_epoch']}"
            print(f"train[{job.spec.name}] --resume: continuing at global step {state['global_step']} ({where})", flush=True)
        return cls(
            epoch=state["epoch"], step_in_epoch=state["step_in_epoch"], global_step=state["global_step"],
            history=list(state["history"]), validation_history=list(state["validation_history"]),
            best_state=state["best_state"], best_epoch=state["best_epoch"], since_best=state["since_best"],
            finished=state["finished"], resumed_at=state["global_step"], first_epoch=state["epoch"],
        )

    def advance(self) -> None:
        self.step_in_epoch += 1
        self.global_step += 1

    def next_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0

    def save(self, job: Any, model: torch.nn.Module, optimizer: Any, rank: int, finished: bool = False) -> None:
        """Rank 0 writes the state, every rank its random state, each file atomically."""
        self.finished = self.finished or finished
        if rank == 0:
            save_torch(join(job.checkpoint_dir, STATE), {
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizers": optimizer.state_dict(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step, "history": self.history, "validation_history": self.validation_history,
                "best_state": None if self.best_state is None else {k: v.detach().cpu() for k, v in self.best_state.items()},
                "best_epoch": self.best_epoch, "since_best": self.since_best, "finished": self.finished,
            })
        cuda = torch.cuda.get_rng_state() if job.use_gpu and torch.cuda.is_available() else None  # GPU dropout's
        save_torch(join(job.checkpoint_dir, f"rng-{rank}.pt"), {"step": self.global_step, "state": torch.get_rng_state(), "cuda": cuda})


@torch.no_grad()
def warm_start(model: torch.nn.Module, blob: bytes) -> None:
    """Load an earlier run's weights (``torch.save`` bytes of an artifact's ``model.pt``) into
    ``model``. A table that grew along its first dimension (contexts added since: the bias
    tables have a row per context) keeps its new rows as initialised and takes the old ones.

    Raises:
        ValueError: a weight the model lacks, or a shape that differs otherwise.
    """
    state = upgrade_state_dict(model, torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)["state_dict"])
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise ValueError(f"warm start: the earlier run's model has a weight {key!r} this model lacks")
        target = own[key]
        if value.shape == target.shape:
            target.copy_(value)
        elif value.dim() == target.dim() >= 1 and value.shape[1:] == target.shape[1:] and value.shape[0] <= target.shape[0]:
            target[: value.shape[0]].copy_(value)
        else:
            raise ValueError(
                f"warm start: weight {key!r} has shape {tuple(value.shape)} in the earlier run and {tuple(target.shape)} now"
            )
