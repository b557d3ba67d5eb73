import os

import pytest

from tests.conftest import ROOT
from ulr_spark.config import ConfigError, config_from_dict, load_config


def test_demo_config_loads_with_types():
    config = load_config(os.path.join(ROOT, "conf", "demo.yaml"))
    assert config.simulate.num_requests * config.simulate.slate_size >= 1_000_000
    assert config.train.models == ["naive", "additive"]
    assert isinstance(config.train.learning_rate, float)
    assert config.tables.path("scores").endswith(os.path.join("ulr-data", "demo", "scores"))


@pytest.mark.parametrize(
    "data, key",
    [
        ({"trian": {}}, "trian"),
        ({"train": {"epoch": 3}}, "train.epoch"),
        ({"simulate": {"logging_ranker": {"nosie": 1.0}}}, "simulate.logging_ranker.nosie"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(data, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        config_from_dict(data)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"epochs": "three"}}, "train.epochs"),
        ({"train": {"use_gpu": "yes"}}, "train.use_gpu"),
        ({"train": {"models": ["naive", "xgboost"]}}, "train.models"),
        ({"simulate": {"slate_size": 12}}, "simulate.examination"),
        ({"simulate": {"label_shares": [0.5, 0.5, 0.5, 0, 0]}}, "simulate.label_shares"),
        ({"simulate": {"start_date": "yesterday"}}, "simulate.start_date"),
        ({"score": {"source": "elsewhere"}}, "score.source"),
        ({"examples": {"partitions": 1}, "train": {"num_processes": 2}}, "examples.partitions"),
        ({"columns": {"item_id": "query_id"}}, "columns"),
    ],
)
def test_bad_values_are_errors_naming_the_key(data, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        config_from_dict(data)


def test_overrides_are_parsed_as_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n")
    config = load_config(str(path), ["train.epochs=5", "train.models=[additive]", "simulate.seed=11"])
    assert config.train.epochs == 5
    assert config.train.models == ["additive"]
    assert config.simulate.seed == 11


def test_fingerprint_changes_with_the_config():
    assert config_from_dict({}).fingerprint() == config_from_dict({}).fingerprint()
    assert config_from_dict({}).fingerprint() != config_from_dict({"train": {"epochs": 2}}).fingerprint()
