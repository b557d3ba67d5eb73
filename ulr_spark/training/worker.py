"""What runs in each training process: TorchDistributor starts them (through torchrun) and
pickles :func:`train_worker` and its :class:`TrainJob` list to them. Nothing here touches
Spark; each process reads its Petastorm shard, trains with DDP (gloo on CPU, nccl on GPU),
and rank 0 saves the artifact.

``TorchDistributor(local_mode=True)`` returns the value of an arbitrary rank, so the workers
return nothing the driver relies on: the artifact path is decided before the job starts.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ulr_spark.io.artifacts import save_artifact
from ulr_spark.models.losses import summed_click_nll
from ulr_spark.models.mixem import MixEMTwoTower
from ulr_spark.models.registry import TrainingObjective, build_model
from ulr_spark.models.spec import ModelSpec
from ulr_spark.models.two_tower import DotProductTwoTower
from ulr_spark.training.loaders import SlateBatch, memory_batches, quiet_petastorm_warnings, shard_batches
from ulr_spark.training.progress import Progress, warm_start


@dataclass(frozen=True)
class TrainJob:
    """What every training process needs; pickled to the workers with the function."""

    spec: ModelSpec
    epochs: int
    steps_per_epoch: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    seed: int
    use_gpu: bool
    # CPU threads of each process: the driver knows the cores (local) or spark.task.cpus (cluster).
    cpu_threads: int
    artifact_path: str
    card: dict
    # The constant every step's summed loss is divided by: the slot impressions one process
    # sees per step on average (the driver's count over the examples). A batch's own count
    # would make a row's weight depend on what else landed in its batch.
    loss_normaliser: float = 1.0
    # Validation slates (ValidationSet.arrays) and early stopping's patience in epochs (0: off).
    validation: Optional[dict] = None
    early_stopping_patience: int = 0
    # Adagrad's rate for the embedding tables (categorical and id features).
    embedding_learning_rate: float = 0.05
    # How every rate moves over the planned epochs x steps_per_epoch steps: cosine or linear
    # decay to 0, or constant (learning_rate_factor).
    learning_rate_schedule: str = "cosine"
    # Impressions of each observed (context id, slot) cell of the training split: the weights
    # of the dot-product model's serving direction.
    cell_impressions: Optional[dict] = None
    # This model's checkpoint folder (training.checkpoints), its period in steps (0: at the end
    # of each epoch only), and whether to continue from the checkpoint found there.
    checkpoint_dir: str = ""
    checkpoint_every_steps: int = 0
    resume: bool = False
    # Warm start: the saved state of the same-named model of an earlier run (train.init_from).
    init_state: Optional[bytes] = None
    # train.input as the driver decided it: read the shard once into tensors, or stream it.
    in_memory: bool = False


def learning_rate_factor(schedule: str, step: int, total_steps: int) -> float:
    """The multiplier of the base rates at ``step`` (0-based) of ``total_steps``: 1 for
    ``constant``; 1 - t for ``linear`` and (1 + cos(pi t)) / 2 for ``cosine``, t = step / total,
    both decaying to 0 (Loshchilov and Hutter, "SGDR", ICLR 2017). A decayed rate ends training
    near a minimum rather than wherever the last noisy steps left it, so the seed matters less.

    Raises:
        ValueError: an unknown schedule.
    """
    t = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - t
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; known: constant, linear, cosine")


class Optimizers:
    """Adam for the dense weights and Adagrad for the embedding tables, stepped together.

    Adagrad moves only the rows a batch used (a zero gradient gives a zero step), while Adam's
    momentum keeps moving rows the batch did not touch and its per-step size (about the
    learning rate, whatever the gradient) is far too slow for an id seen a few times per epoch.
    """

    def __init__(self, model: torch.nn.Module, embedding_params: list, job: TrainJob):
        ids = {id(p) for p in embedding_params}
        dense = [p for p in model.parameters() if id(p) not in ids]
        self.optimizers: list[torch.optim.Optimizer] = [
            torch.optim.Adam(dense, lr=job.learning_rate, weight_decay=job.weight_decay)
        ]
        if embedding_params:
            self.optimizers.append(torch.optim.Adagrad(embedding_params, lr=job.embedding_learning_rate))
        total = job.epochs * job.steps_per_epoch
        self.schedulers = [
            torch.optim.lr_scheduler.LambdaLR(o, lambda step: learning_rate_factor(job.learning_rate_schedule, step, total))
            for o in self.optimizers
        ]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer, scheduler in zip(self.optimizers, self.schedulers):
            optimizer.step()
            scheduler.step()

    def state_dict(self) -> dict:
        """Every optimiser's and schedule's state (a checkpoint holds it)."""
        return {"optimizers": [o.state_dict() for o in self.optimizers], "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict) -> None:
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)
        for scheduler, saved in zip(self.schedulers, state["schedulers"]):
            scheduler.load_state_dict(saved)


@torch.no_grad()
def validation_loss(model: torch.nn.Module, arrays: dict, device: torch.device, chunk: int = 8192) -> float:
    """Mean negative log-likelihood per slot impression of the validation slates (the
    training objective, in eval mode: no dropout)."""
    was_training = model.training
    model.eval()
    total, weight = 0.0, 0.0
    n = arrays["positions"].shape[0]
    for start in range(0, n, chunk):
        part = {k: torch.from_numpy(np.ascontiguousarray(v[start:start + chunk])).to(device) for k, v in arrays.items()}
        # The click likelihood itself, not the training objective (which may add an adversary's
        # term, or be MixEM's EM surrogate): what evaluate reports on held-out clicks.
        logits = model(part["features"], part["positions"], part["context_ids"])
        loss, w = summed_click_nll(logits, part["clicks"], part["impressions"], part["positions"])
        total += float(loss)
        weight += float(w)
    model.train(was_training)
    return total / max(weight, 1e-12)


def _device(use_gpu: bool) -> torch.device:
    if use_gpu:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def train_step(
    objective: torch.nn.Module, optimizer: torch.optim.Optimizer | Optimizers, batch: SlateBatch, normaliser: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on the batch's summed loss divided by ``normaliser``, the same
    constant for every step and process (DDP then averages the processes' gradients), so the
    objective of an epoch is the mean loss per slot impression of the whole log, each merged
    row weighed by its impressions. Returns (summed loss, slot impressions of the batch)."""
    loss_sum, weight = objective(batch.features, batch.positions, batch.context_ids, batch.clicks, batch.impressions)
    optimizer.zero_grad(set_to_none=True)
    (loss_sum / normaliser).backward()
    optimizer.step()
    return loss_sum.detach(), weight


def seed_process(seed: int, rank: int) -> None:
    """Seed this process's random draws (dropout masks) apart from the other ranks'. The model's
    initial weights need no common seed: DDP copies rank 0's to every process."""
    torch.manual_seed(seed * 1_000_003 + rank)


def _train_one(job: TrainJob, converter, rank: int, world: int, device: torch.device) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    seed_process(job.seed, rank)
    model = build_model(job.spec).to(device)
    if job.init_state is not None:
        warm_start(model, job.init_state)  # before DDP, which copies rank 0's weights to all
    if isinstance(model, DotProductTwoTower) and job.cell_impressions:
        model.set_cell_impressions(job.cell_impressions)  # a dropped bias is the mean bias vector
    objective = DistributedDataParallel(TrainingObjective(model), device_ids=[device.index] if job.use_gpu else None)
    optimizer = Optimizers(objective, model.relevance_tower.embedding_parameters(), job)
    k = job.spec.max_slate_size
    run = Progress.start(job, model, optimizer, rank)

    def checkpoint(finished: bool = False) -> None:
        if job.checkpoint_dir:
            run.save(job, model, optimizer, rank, finished)

    started = time.time()
    # A resumed stream starts a new shuffle at the checkpoint's step: the step count and every
    # state are restored, the order of the rows is not (docs/operations.md).
    loader = memory_batches if job.in_memory else shard_batches
    with loader(converter, job.batch_size, rank, world, k, device, job.seed + run.global_step) as batches:
        for epoch in range(run.epoch, job.epochs if not run.finished else 0):
            epoch_start = time.time()
            loss_total = torch.zeros((), dtype=torch.float64, device=device)
            weight_total = torch.zeros((), dtype=torch.float64, device=device)
            slates = 0
            objective.train()
            for _ in range(run.step_in_epoch, job.steps_per_epoch):
                batch: SlateBatch = next(batches)
                loss_sum, weight = train_step(objective, optimizer, batch, job.loss_normaliser)
                loss_total += loss_sum
                weight_total += weight
                slates += batch.positions.shape[0]
                run.advance()
                if job.checkpoint_every_steps and run.global_step % job.checkpoint_every_steps == 0 and run.step_in_epoch < job.steps_per_epoch:
                    checkpoint()
            # One all-reduce per epoch for the log line, not one per step.
            totals = torch.stack([loss_total, weight_total, torch.tensor(float(slates), dtype=torch.float64, device=device)])
            dist.all_reduce(totals)
            seconds = time.time() - epoch_start
            mean_loss = (totals[0] / totals[1]).item()
            run.history.append(mean_loss)
            if not math.isfinite(mean_loss):
                raise FloatingPointError(
                    f"train[{job.spec.name}]: the loss is {mean_loss} in epoch {epoch + 1}; no model is saved "
                    "(check the features for extreme values, or lower train.learning_rate)"
                )
            stop, note = False, ""
            if job.validation is not None:
                # Every rank scores the same slates with the same weights; the all-reduce makes
                # the value, and so the decision to stop, identical on every rank.
                value = torch.tensor([validation_loss(model, job.validation, device)], dtype=torch.float64, device=device)
                dist.all_reduce(value)
                val = value.item() / world
                run.validation_history.append(val)
                if run.best_state is None or val < min(run.validation_history[:-1]) - 1e-7:
                    run.best_state, run.best_epoch, run.since_best = copy.deepcopy(model.state_dict()), epoch + 1, 0
                else:
                    run.since_best += 1
                stop = job.early_stopping_patience > 0 and run.since_best >= job.early_stopping_patience
                note = f" validation_loss={val:.5f}" + (" (best)" if run.since_best == 0 else "")
            run.next_epoch()
            if rank == 0:
                eta = (time.time() - started) / (epoch + 1 - run.first_epoch) * (job.epochs - epoch - 1)
                print(
                    f"train[{job.spec.name}] epoch {epoch + 1}/{job.epochs} loss={mean_loss:.5f}{note} "
                    f"slates/s={totals[2].item() / max(seconds, 1e-9):,.0f} "
                    f"({totals[2].item() / world / max(seconds, 1e-9):,.0f} per process) eta={eta:.0f}s",
                    flush=True,
                )
            if stop:
                if rank == 0:
                    print(
                        f"train[{job.spec.name}] early stop: no better validation loss for {job.early_stopping_patience} "
                        f"epoch(s); keeping epoch {run.best_epoch}", flush=True,
                    )
                break
            checkpoint()
    if not run.finished:
        if run.best_state is not None and job.early_stopping_patience > 0:
            model.load_state_dict(run.best_state)
        if isinstance(model, DotProductTwoTower) and job.cell_impressions:
            model.set_serving_direction(job.cell_impressions)
        checkpoint(finished=True)
    if rank == 0:
        card = {
            **job.card, "loss_history": run.history, "validation_loss_history": run.validation_history,
            "best_epoch": run.best_epoch if job.early_stopping_patience > 0 and run.best_epoch else len(run.history),
            "world_size": world, "train_seconds": time.time() - started, "steps": run.global_step,
            "resumed_at_step": run.resumed_at, "warm_started": job.init_state is not None,
        }
        if isinstance(model, MixEMTwoTower):  # MixEM: the learned share of requests per component
            card["component_shares"] = [float(v) for v in model.component_shares().detach().cpu()]
        save_artifact(job.artifact_path, model, card)
    dist.barrier()


def train_worker(jobs: list[TrainJob], converter) -> None:
    """Body of one DDP process (run by TorchDistributor through torchrun): trains the models
    one after the other in one process group, so the start-up is paid once per run."""
    import torch.distributed as dist

    quiet_petastorm_warnings()
    use_gpu = jobs[0].use_gpu
    dist.init_process_group("nccl" if use_gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = _device(use_gpu)
    if use_gpu:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(jobs[0].cpu_threads)
    try:
        for job in jobs:
            _train_one(job, converter, rank, world, device)
    finally:
        dist.destroy_process_group()
