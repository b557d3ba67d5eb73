"""Model artifacts on any storage (ulr_spark.io.storage): the same round trip and the same commit
rules on a plain path, a file:// URL and an object store (fsspec's in-memory filesystem, which
renames by copying as object stores do). No Spark."""

import os
import uuid

import fsspec
import pytest
import torch

from ulr_spark.io import storage
from ulr_spark.io.artifacts import (
    CARD,
    RUN,
    WEIGHTS,
    artifact_complete,
    latest_run_id,
    load_model,
    publish_run,
    read_artifact,
    run_artifacts,
    run_record,
    save_artifact,
    staging_run_dir,
)
from ulr_spark.models.registry import build_model
from ulr_spark.models.spec import ModelSpec

MODELS = ("additive", "naive")


@pytest.fixture(params=["path", "file-url", "memory"])
def root(request, tmp_path):
    if request.param == "path":
        yield str(tmp_path / "models")
    elif request.param == "file-url":
        yield "file://" + str(tmp_path / "models")
    else:
        url = f"memory://ulr-test-{uuid.uuid4().hex}/models"
        yield url
        storage.remove_tree(url.rsplit("/", 1)[0])


def model(name, seed):
    torch.manual_seed(seed)
    return build_model(ModelSpec(name, 3, 4, 1, [4]))


def staged_run(root, run_id, seed=0, models=MODELS):
    staging = staging_run_dir(root, run_id)
    built = {name: model(name, seed + i) for i, name in enumerate(models)}
    for name, m in built.items():
        save_artifact(os.path.join(staging, name), m, {"contexts": {"0": "default"}})
    return staging, built


def publish(root, run_id, seed=0, models=MODELS):
    staging, built = staged_run(root, run_id, seed, models)
    publish_run(staging, root, run_id, {"models": list(models)})
    return built


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_published_run_reads_back_with_identical_weights(root):
    built = publish(root, "r1")
    artifacts = run_artifacts(root, "r1")
    assert [a.spec.name for a in artifacts] == list(MODELS)
    for artifact in artifacts:
        assert artifact.path == storage.join(root, "r1", artifact.spec.name), "paths keep the caller's URL form"
        assert same_weights(load_model(artifact), built[artifact.spec.name])
    assert run_record(root, "r1")["models"] == list(MODELS)
    assert storage.list_names(root) == ["r1"], "the staging folder is gone once the run is published"


def test_a_run_without_run_json_is_never_read(root):
    publish(root, "finished")
    # A crash after the models were written, before the commit: complete artifacts under the
    # run's own name, no run.json (what an object store holds mid-publish), and a staging folder.
    for name in MODELS:
        save_artifact(storage.join(root, "crashed", name), model(name, 1), {"contexts": {"0": "default"}})
    staged_run(root, "zz-staged-only")
    assert latest_run_id(root) == "finished"
    with pytest.raises(FileNotFoundError, match="did not finish training"):
        run_artifacts(root, "crashed")
    with pytest.raises(FileNotFoundError, match="no trained models"):
        run_artifacts(root, "zz-staged-only")


def test_a_model_folder_without_its_card_is_not_a_model(root):
    staging, _ = staged_run(root, "r1", models=("additive",))
    # Weights written, then the crash: no card.
    storage.write_bytes(storage.join(staging, "naive", WEIGHTS), b"half")
    publish_run(staging, root, "r1", {})  # no model list: run_artifacts lists the folders
    assert [a.spec.name for a in run_artifacts(root, "r1")] == ["additive"]
    assert not artifact_complete(storage.join(root, "r1", "naive"))
    with pytest.raises(FileNotFoundError, match="not written completely"):
        read_artifact(storage.join(root, "r1", "naive"))


def test_a_rerun_of_a_run_id_replaces_it_whole(root):
    publish(root, "r1", seed=0)
    rerun = publish(root, "r1", seed=7, models=("naive",))
    assert storage.list_names(storage.join(root, "r1")) == ["naive", RUN], "no model of the earlier run survives"
    [artifact] = run_artifacts(root, "r1")
    assert same_weights(load_model(artifact), rerun["naive"])
    assert storage.list_names(root) == ["r1"]


def test_save_artifact_replaces_an_earlier_artifact_whole(root):
    path = storage.join(root, "loose", "additive")
    save_artifact(path, model("additive", 0), {"contexts": {}})
    storage.write_bytes(storage.join(path, "stale.bin"), b"x")
    save_artifact(path, model("additive", 3), {"contexts": {}})
    assert storage.list_names(path) == sorted([WEIGHTS, CARD])
    assert same_weights(load_model(read_artifact(path)), model("additive", 3))


def test_the_latest_run_is_the_last_to_finish_not_the_largest_name(root):
    publish(root, "b-run", models=("naive",))
    publish(root, "a-run", models=("naive",))
    assert latest_run_id(root) == "a-run"
    publish(root, "b-run", models=("naive",))
    assert latest_run_id(root) == "b-run"


def test_a_failed_commit_on_an_object_store_leaves_the_id_uncommitted_never_mixed(monkeypatch):
    root = f"memory://ulr-test-{uuid.uuid4().hex}/models"
    publish(root, "other")
    publish(root, "r1", seed=0)
    staging, _ = staged_run(root, "r1", seed=5)
    real = storage.write_bytes

    def crash_at_run_json(url, data):
        if url.endswith(RUN):
            raise OSError("killed")
        real(url, data)

    monkeypatch.setattr(storage, "write_bytes", crash_at_run_json)
    with pytest.raises(OSError, match="killed"):
        publish_run(staging, root, "r1", {"models": list(MODELS)})
    monkeypatch.undo()
    # The new models were copied in whole, but without run.json nothing reads them.
    assert artifact_complete(storage.join(root, "r1", "naive"))
    with pytest.raises(FileNotFoundError, match="did not finish"):
        run_artifacts(root, "r1")
    assert latest_run_id(root) == "other"
    storage.remove_tree(root.rsplit("/", 1)[0])


def test_dbfs_paths_are_read_through_the_fuse_mount():
    assert storage.dbfs_fuse_path("dbfs:/ulr/models") == "/dbfs/ulr/models"
    assert storage.dbfs_fuse_path("dbfs:///ulr/models") == "/dbfs/ulr/models"
    if not os.path.isdir("/dbfs"):
        with pytest.raises(ValueError, match="/Volumes"):
            storage.filesystem("dbfs:/ulr/models")


def test_plain_paths_and_urls_reach_the_right_filesystem(tmp_path):
    fs, path = storage.filesystem(str(tmp_path))
    assert storage.renames_atomically(fs) and path == str(tmp_path)
    fs, path = storage.filesystem("memory://bucket/x")
    assert isinstance(fs, fsspec.implementations.memory.MemoryFileSystem) and not storage.renames_atomically(fs)
    assert storage.join("s3://bucket/models/", "r1", "m") == "s3://bucket/models/r1/m"
