"""Typed, validated configuration: the production sections (:mod:`.sections`) and the loader
(:mod:`.loader`). The simulator's and the comparison's sections live with their own code
(``ulr_spark.simulation.settings``, ``ulr_spark.experiments.settings``)."""

from ulr_spark.config.loader import OWNED_SECTIONS, Config, ConfigError, config_from_dict, load_config
from ulr_spark.config.sections import (
    CategoricalFeature,
    EvaluateConfig,
    ExamplesConfig,
    FeaturesConfig,
    LogColumns,
    ModelOptions,
    ModelVariant,
    ScoreConfig,
    SourceConfig,
    SparkConfig,
    SplitConfig,
    TablesConfig,
    TrainConfig,
)
from ulr_spark.config.tracking import TrackingConfig

__all__ = [
    "OWNED_SECTIONS",
    "Config",
    "ConfigError",
    "EvaluateConfig",
    "CategoricalFeature",
    "ExamplesConfig",
    "FeaturesConfig",
    "LogColumns",
    "ModelOptions",
    "ModelVariant",
    "ScoreConfig",
    "SourceConfig",
    "SplitConfig",
    "SparkConfig",
    "TablesConfig",
    "TrackingConfig",
    "TrainConfig",
    "config_from_dict",
    "load_config",
]
