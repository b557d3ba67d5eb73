"""Checkpoints, resume state and warm starts, without Spark: what a resumed or warm-started
training process loads must equal what was saved."""

import dataclasses
import io

import pytest
import torch

from ulr_spark.examples.incremental import extended_contexts
from ulr_spark.models.registry import build_model
from ulr_spark.models.spec import ModelSpec
from ulr_spark.training import checkpoints
from ulr_spark.training.progress import Progress, warm_start
from ulr_spark.training.worker import Optimizers, TrainJob


def job(tmp_path, spec, **changes):
    base = TrainJob(
        spec=spec, epochs=3, steps_per_epoch=4, batch_size=8, learning_rate=0.01, weight_decay=0.0, seed=1,
        use_gpu=False, cpu_threads=1, artifact_path=str(tmp_path / "artifact"), card={},
        checkpoint_dir=str(tmp_path / "checkpoints" / spec.name),
    )
    return dataclasses.replace(base, **changes)


def step(model, optimizer):
    features = torch.randn(5, 4, model.spec.num_features)
    positions = torch.arange(1, 5).repeat(5, 1)
    loss, _ = model.loss(features, positions, torch.zeros(5, dtype=torch.long), torch.randint(0, 2, (5, 4)).float(), torch.ones(5))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_a_resumed_process_continues_from_exactly_what_was_saved(tmp_path):
    spec = ModelSpec("additive", 3, 4, 1, [4])
    torch.manual_seed(0)
    model = build_model(spec)
    first = job(tmp_path, spec)
    optimizer = Optimizers(model, [], first)
    progress = Progress.start(first, model, optimizer, rank=0)
    for _ in range(6):  # one epoch of 4 steps and 2 more
        step(model, optimizer)
        progress.advance()
        if progress.step_in_epoch == first.steps_per_epoch:
            progress.history.append(0.5)
            progress.next_epoch()
    progress.save(first, model, optimizer, rank=0)
    rng_after_save = torch.get_rng_state()

    torch.manual_seed(123)  # a new process: other weights, other random state
    resumed_model = build_model(spec)
    resumed_optimizer = Optimizers(resumed_model, [], first)
    resumed = Progress.start(dataclasses.replace(first, resume=True), resumed_model, resumed_optimizer, rank=0)
    assert (resumed.epoch, resumed.step_in_epoch, resumed.global_step, resumed.resumed_at) == (1, 2, 6, 6)
    assert resumed.history == [0.5] and not resumed.finished
    for key, value in model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key
    assert torch.equal(torch.get_rng_state(), rng_after_save)
    saved, loaded = optimizer.state_dict(), resumed_optimizer.state_dict()
    assert loaded["schedulers"][0]["last_epoch"] == saved["schedulers"][0]["last_epoch"] == 6
    assert resumed_optimizer.optimizers[0].param_groups[0]["lr"] == pytest.approx(optimizer.optimizers[0].param_groups[0]["lr"])
    exp_avg = [s["exp_avg"] for s in optimizer.optimizers[0].state.values()]
    resumed_avg = [s["exp_avg"] for s in resumed_optimizer.optimizers[0].state.values()]
    assert all(torch.equal(a, b) for a, b in zip(exp_avg, resumed_avg)) and exp_avg


def test_no_checkpoint_means_a_fresh_start_and_a_finished_one_skips_training(tmp_path):
    spec = ModelSpec("additive", 3, 4, 1, [4])
    model = build_model(spec)
    resume = job(tmp_path, spec, resume=True)
    assert Progress.start(resume, model, Optimizers(model, [], resume), rank=0).global_step == 0
    done = Progress(epoch=3, global_step=12)
    done.save(resume, model, Optimizers(model, [], resume), rank=0, finished=True)
    assert Progress.start(resume, build_model(spec), Optimizers(model, [], resume), rank=0).finished
    checkpoints.remove(str(tmp_path / "checkpoints"))
    assert checkpoints.load_torch(checkpoints.join(resume.checkpoint_dir, checkpoints.STATE)) is None


def saved(model):
    buffer = io.BytesIO()
    torch.save({"state_dict": model.state_dict()}, buffer)
    return buffer.getvalue()


def test_a_warm_start_copies_every_weight_and_keeps_new_context_rows_fresh():
    torch.manual_seed(0)
    earlier = build_model(ModelSpec("additive", 3, 4, 1, [4]))
    with torch.no_grad():
        for parameter in earlier.parameters():
            parameter.add_(1.0)  # far from any fresh initialisation
    torch.manual_seed(1)
    grown = build_model(ModelSpec("additive", 3, 4, 2, [4]))  # a context seen since
    fresh = {k: v.clone() for k, v in grown.state_dict().items()}
    warm_start(grown, saved(earlier))
    grew = 0
    for key, value in earlier.state_dict().items():
        now = grown.state_dict()[key]
        if now.shape == value.shape:
            assert torch.equal(now, value), key
        else:
            grew += 1
            assert torch.equal(now[: value.shape[0]], value) and torch.equal(now[value.shape[0]:], fresh[key][value.shape[0]:]), key
    assert grew >= 1, "the bias table has a row per context"
    with pytest.raises(ValueError, match="shape"):
        warm_start(build_model(ModelSpec("additive", 5, 4, 1, [4])), saved(earlier))


def test_context_ids_once_given_never_change():
    assert extended_contexts({"default": 0, "device=mobile": 1}, ["device=tablet", "default", "device=desktop"]) == {
        "default": 0, "device=mobile": 1, "device=desktop": 2, "device=tablet": 3,
    }
