"""Optional MLflow tracking (``tracking.mlflow: true``; off by default).

One MLflow run per ulr-spark run id, found again by its tag, so stages that run in separate
processes (``train`` now, ``evaluate`` later) add to the same MLflow run. ``train`` logs the
flattened config as params, each model's loss per epoch and the model artifacts; ``evaluate``
logs the metrics. The Delta tables stay the record; MLflow is a view for people who use it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

from ulr_spark.config import Config

RUN_ID_TAG = "ulr_spark.run_id"
CONFIG_HASH_TAG = "ulr_spark.config_hash"
# MLflow's limits: at most 100 params per call and 6000 characters per value.
PARAMS_PER_CALL = 100
MAX_PARAM_LENGTH = 6000


def enabled(config: Config) -> bool:
    return config.tracking.mlflow


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": "3"}``; lists stay one value."""
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: str(value)[:MAX_PARAM_LENGTH]}


def metric_name(model: str, metric: str) -> str:
    """MLflow metric names allow letters, digits and ``_-. /``: ``ndcg@10`` -> ``ndcg_at_10``."""
    return re.sub(r"[^\w.\- /]", "_", f"{model}/{metric.replace('@', '_at_')}")


@contextlib.contextmanager
def mlflow_run(config: Config, run_id: str) -> Iterator[Any]:
    """The MLflow run of ``run_id``: resumed when a stage already started it, else created."""
    import mlflow

    tc = config.tracking
    if tc.tracking_uri:
        mlflow.set_tracking_uri(tc.tracking_uri)
    experiment = mlflow.set_experiment(tc.experiment)
    found = mlflow.search_runs(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'",
        output_format="list",
        max_results=1,
    )
    if found:
        run = mlflow.start_run(run_id=found[0].info.run_id)
    else:
        run = mlflow.start_run(run_name=run_id, tags={RUN_ID_TAG: run_id, CONFIG_HASH_TAG: config.fingerprint()})
    with run:
        yield mlflow


def log_training(config: Config, run_id: str, artifacts: list) -> None:
    """Params, each model's loss per epoch, and (with ``log_models``) the artifact folders."""
    with mlflow_run(config, run_id) as mlflow:
        params = sorted(flatten(config.to_dict()).items())
        for start in range(0, len(params), PARAMS_PER_CALL):
            mlflow.log_params(dict(params[start : start + PARAMS_PER_CALL]))
        for artifact in artifacts:
            for epoch, loss in enumerate(artifact.card.get("loss_history", []), start=1):
                mlflow.log_metric(metric_name(artifact.spec.name, "train_loss"), loss, step=epoch)
            if config.tracking.log_models:
                mlflow.log_artifacts(artifact.path, artifact_path=f"models/{artifact.spec.name}")


def log_metrics(config: Config, run_id: str, metrics: dict[tuple[str, str], float]) -> None:
    """``{(model, metric): value}`` from ``evaluate``."""
    with mlflow_run(config, run_id) as mlflow:
        mlflow.log_metrics({metric_name(model, metric): value for (model, metric), value in metrics.items()})


REGISTERED_MODEL_PREFIX = "ulr-spark-"


def register_relevance_models(config: Config, run_id: str, artifacts: list) -> list[tuple[str, str]]:
    """With ``tracking.register_model``: export each artifact's relevance model
    (:func:`ulr_spark.serving.export.export_relevance_model`), log the folder under
    ``relevance/<model>`` of the run's MLflow run, and register it as a new version of the
    registered model ``ulr-spark-<model>`` (created when missing), tagged with the run id.
    Returns (registered model, version) per artifact."""
    import tempfile

    from mlflow import MlflowClient

    from ulr_spark.serving.export import export_relevance_model

    registered = []
    with mlflow_run(config, run_id) as mlflow, tempfile.TemporaryDirectory() as folder:
        client = MlflowClient()
        active = mlflow.active_run().info.run_id
        for artifact in artifacts:
            model, path = artifact.spec.name, f"relevance/{artifact.spec.name}"
            export_relevance_model(artifact, os.path.join(folder, model))
            mlflow.log_artifacts(os.path.join(folder, model), artifact_path=path)
            name = REGISTERED_MODEL_PREFIX + model
            if not client.search_registered_models(filter_string=f"name = '{name}'"):
                client.create_registered_model(name, description="ulr-spark relevance model (docs/serving.md)")
            version = client.create_model_version(
                name, source=mlflow.get_artifact_uri(path), run_id=active, tags={RUN_ID_TAG: run_id},
            )
            registered.append((name, str(version.version)))
    return registered
