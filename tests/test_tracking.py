"""Optional MLflow tracking: off by default, a clear start-up error without mlflow, and one
MLflow run per ulr-spark run holding the params, losses, metrics and model artifacts."""

import importlib.util
import os

import pytest
from pyspark.sql import functions as F

from tests.conftest import small_config
from ulr_spark import schema
from ulr_spark.config import ConfigError, load_config
from ulr_spark.io.artifacts import read_artifact, run_artifacts
from ulr_spark.io.delta import read_table
from ulr_spark.io.tracking import RUN_ID_TAG, flatten, metric_name
from ulr_spark.pipeline import run_stage


def test_tracking_is_off_by_default_and_needs_mlflow_when_on(monkeypatch):
    assert load_config(os.path.join(os.path.dirname(__file__), "..", "conf", "demo.yaml")).tracking.mlflow is False
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="tracking.mlflow.*mlflow is not installed"):
        load_config(None, ["tracking.mlflow=true"])


def test_params_and_metric_names_follow_mlflow_rules():
    assert flatten({"train": {"epochs": 3, "models": ["a", "b"]}}) == {"train.epochs": "3", "train.models": "['a', 'b']"}
    assert metric_name("additive", "ndcg@10") == "additive/ndcg_at_10"


@pytest.mark.slow
def test_a_run_is_tracked_in_one_mlflow_run(spark, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    # mlflow-skinny has no database backend; its file store is enough for a test.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = "file://" + str(tmp_path / "mlruns")
    config = small_config(
        tmp_path / "tables",
        simulate={"num_requests": 1000},
        train={"models": ["naive", "additive"], "num_processes": 1, "epochs": 2},
        tracking={"mlflow": True, "tracking_uri": uri, "experiment": "ulr-test"},
    )
    for stage in ("simulate", "build-examples", "train", "score", "evaluate", "evaluate"):
        run_stage(config, spark, stage, "tracked")

    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name("ulr-test")
    (run,) = mlflow.search_runs([experiment.experiment_id], f"tags.`{RUN_ID_TAG}` = 'tracked'", output_format="list")
    assert run.data.params["train.epochs"] == "2" and run.data.params["train.num_processes"] == "1"
    assert run.data.tags["ulr_spark.config_hash"] == config.fingerprint()
    metrics = read_table(spark, config.tables.path("metrics")).where(F.col(schema.RUN_ID) == "tracked").collect()
    for row in metrics:
        assert run.data.metrics[metric_name(row[schema.MODEL], row[schema.METRIC])] == pytest.approx(row[schema.VALUE])
    client = mlflow.tracking.MlflowClient()
    for artifact in run_artifacts(config.tables.path("models"), "tracked"):
        losses = [m.value for m in client.get_metric_history(run.info.run_id, f"{artifact.spec.name}/train_loss")]
        assert losses == pytest.approx(read_artifact(artifact.path).card["loss_history"])
        files = {os.path.basename(f.path) for f in client.list_artifacts(run.info.run_id, f"models/{artifact.spec.name}")}
        assert files == {"model.pt", "model.json"}
