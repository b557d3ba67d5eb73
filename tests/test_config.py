import os

import pytest

from tests.conftest import ROOT
from ulr_spark.config import ConfigError, config_from_dict, load_config
from ulr_spark.experiments.compare import scenario_config


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
        ({"examples": {"incremental": True, "split": {"test_days": 2}}}, "examples.incremental"),
        ({"train": {"init_from": "../elsewhere"}}, "train.init_from"),
        ({"train": {"window_days": -1}}, "train.window_days"),
        ({"train": {"checkpoint_every_steps": -5}}, "train.checkpoint_every_steps"),
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


def test_scenario_configs_load_and_name_their_scenario():
    for name, scenario in [("pbm", "pbm"), ("mixture", "mixture"), ("context", "context"),
                           ("context_grid", "context"), ("confounded", "confounded"), ("yahoo", "pbm"),
                           ("trust", "trust"), ("mixture_strong", "mixture"), ("context_blended", "context")]:
        config = load_config(os.path.join(ROOT, "conf", f"{name}.yaml"))
        assert config.simulate.scenario == scenario
    assert load_config(os.path.join(ROOT, "conf", "context_grid.yaml")).examples.grid_columns == 5
    compare = load_config(os.path.join(ROOT, "conf", "compare.yaml")).compare
    assert len(compare.seeds) == 5
    names = {s.name for s in compare.scenarios}
    assert names >= {"pbm", "mixture_strong", "trust", "context_blended", "confounded"}
    # Every control names a scenario of the comparison, and each loads as a runnable config.
    for s in compare.scenarios:
        assert not s.control_of or s.control_of in names
        scenario_config(load_config(os.path.join(ROOT, "conf", "compare.yaml")), s, seed=1)


def test_variants_inherit_options_and_override_some():
    config = config_from_dict(
        {
            "train": {
                "models": ["additive", "additive_dropout"],
                "model_options": {"dot_product_dim": 8, "bias_dropout": 0.1},
                "variants": [{"name": "additive_dropout", "model": "additive", "options": {"bias_dropout": 0.3}}],
            }
        }
    )
    architecture, options = config.train.variant("additive_dropout")
    assert architecture == "additive" and options.bias_dropout == 0.3 and options.dot_product_dim == 8
    assert config.train.variant("additive") == ("additive", config.train.model_options)


@pytest.mark.parametrize(
    "train, key, rule",
    [
        ({"models": ["lambdamart"]}, "train.models", "unknown model 'lambdamart'"),
        ({"variants": [{"name": "x", "model": "gbdt"}]}, r"train.variants\[0\].model", "must be one of"),
        ({"variants": [{"name": "x", "model": "additive", "options": {"dropout": 0.3}}]}, r"train.variants\[0\].options.dropout", ""),
        ({"variants": [{"name": "x", "model": "additive", "options": {"bias_dropout": 1.5}}]}, r"train.variants\[0\].options.bias_dropout", "in \\[0, 1\\)"),
        ({"variants": [{"name": "pal", "model": "additive"}]}, "train.variants", "is an architecture"),
        ({"model_options": {"mixem_components": 0}}, "train.model_options.mixem_components", ">= 1"),
        ({"models": ["mixem"], "model_options": {"mixem_blind_component": True, "mixem_components": 1}}, "train.models",
         "mixem_blind_component needs mixem_components >= 2"),
        ({"model_options": {"bias_init": "ones"}}, "train.model_options.bias_init", ""),
        ({"learning_rate_schedule": "step"}, "train.learning_rate_schedule", ""),
    ],
)
def test_bad_model_settings_are_errors(train, key, rule):
    with pytest.raises(ConfigError, match=f"'{key}'.*{rule}"):
        config_from_dict({"train": train})


@pytest.mark.parametrize(
    "data, key",
    [
        ({"simulate": {"scenario": "cascade"}}, "simulate.scenario"),
        ({"simulate": {"source": "letor"}}, "simulate.letor.train_path"),
        ({"simulate": {"mixture_share": 1.5}}, "simulate.mixture_share"),
        ({"examples": {"grid_columns": -1}}, "examples.grid_columns"),
        ({"compare": {"seeds": [1, 1]}}, "compare.seeds"),
        ({"compare": {"baselines": ["catboost"]}}, "compare.baselines"),
        ({"compare": {"claims": [{"scenario": "nowhere", "model": "a", "beats": "b"}]}}, "compare.claims"),
        ({"compare": {"scenarios": [{"name": "s", "config": "c.yaml"}], "claims": [{"scenario": "s", "model": "a"}]}}, "compare.claims"),
        ({"compare": {"scenarios": [{"name": "s", "config": "c.yaml", "control_of": "s"}]}}, "compare.scenarios"),
        ({"compare": {"scenarios": [{"name": "s", "config": "c.yaml"}],
                      "claims": [{"scenario": "s", "model": "a", "expect": "near", "target": 0.5}]}}, "compare.claims"),
    ],
)
def test_bad_scenario_and_compare_settings_are_errors(data, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        config_from_dict(data)


@pytest.mark.parametrize(
    "options, key",
    [
        ({"bias_dropout": "0.3"}, "bias_dropout"),
        ({"bias_dropout": True}, "bias_dropout"),
        ({"mixem_skip_unclicked": "yes"}, "mixem_skip_unclicked"),
        ({"mixem_skip_unclicked": 1}, "mixem_skip_unclicked"),
        ({"dot_product_dim": 2.0}, "dot_product_dim"),
    ],
)
def test_model_options_are_as_strict_as_every_other_key(options, key):
    with pytest.raises(ConfigError, match=rf"'train.model_options.{key}': expected"):
        config_from_dict({"train": {"model_options": options}})
    with pytest.raises(ConfigError, match=rf"'train.variants\[0\].options.{key}': expected"):
        config_from_dict({"train": {"variants": [{"name": "v", "model": "additive", "options": options}]}})


def test_a_section_with_all_its_keys_commented_out_takes_the_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  # epochs: 3\n  model_options:\nsimulate:\n  logging_ranker:\n")
    config = load_config(str(path))
    assert config.train == config_from_dict({}).train
    assert config.simulate.logging_ranker.noise == 1.0
