"""The tracking section of the config: optional MLflow tracking and model registry."""

from __future__ import annotations

from pydantic import model_validator

from ulr_spark.config.rules import Section, require


class TrackingConfig(Section):
    """Optional MLflow tracking of params, metrics and model artifacts (off by default)."""

    mlflow: bool = False
    # Empty: MLflow's own choice (MLFLOW_TRACKING_URI, or the workspace on Databricks).
    tracking_uri: str = ""
    experiment: str = "ulr-spark"
    log_models: bool = True
    # After training, export each model's relevance model (docs/serving.md) into the MLflow run and
    # register it as a new version of the registered model "ulr-spark-<model>": a deployment
    # picks a version there instead of a folder. Needs mlflow on.
    register_model: bool = False

    @model_validator(mode="after")
    def _mlflow_is_installed(self) -> TrackingConfig:
        require(self.mlflow or not self.register_model, "register_model", "needs tracking.mlflow: true")
        if self.mlflow:
            import importlib.util

            require(
                importlib.util.find_spec("mlflow") is not None,
                "mlflow",
                "is true but mlflow is not installed (pip install mlflow-skinny, or set it to false)",
            )
            require(bool(self.experiment), "experiment", "must name an experiment")
        return self

