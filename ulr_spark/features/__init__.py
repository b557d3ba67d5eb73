"""Relevance features from the log's columns: what build-examples fits on the log (numeric
statistics, vocabularies) and the one transform that training and scoring both apply."""

from ulr_spark.features.encoding import (
    CategoricalEncoding,
    FeatureEncoder,
    NumericEncoding,
    encoder_of_examples,
    fit_encoder,
)

__all__ = ["CategoricalEncoding", "FeatureEncoder", "NumericEncoding", "encoder_of_examples", "fit_encoder"]
