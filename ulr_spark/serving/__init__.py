"""Relevance models served without ulr-spark: TorchScript export of a run's feature transform
and relevance tower (:mod:`.export`), and a Python API that scores pandas or Arrow batches
(:mod:`.api`). docs/serving.md describes both."""

from ulr_spark.serving.api import RelevanceScorer, load_exported, load_relevance_model
from ulr_spark.serving.export import export_relevance_model, export_run

__all__ = ["RelevanceScorer", "export_relevance_model", "export_run", "load_exported", "load_relevance_model"]
