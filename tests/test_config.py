"""Config validation: every bad value is one clear line naming key, value and what is allowed."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict

from fedvq_app.config import ConfigError
from fedvq_app.registry import all_option_keys, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_give_a_complete_offline_demo(run_config):
    settings = load_settings(run_config())
    assert settings.method == "fedavg"
    assert settings.dataset.name == "digits"
    assert settings.partition.kind == "dirichlet"
    assert settings.partition.alpha == 0.5
    assert settings.train.local_epochs >= 1
    assert settings.num_server_rounds >= 10


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("method", "fedsgd", "'method' has invalid value 'fedsgd': expected one of 'fedavg'"),
        ("dataset.name", "mnist", "'dataset.name' has invalid value 'mnist': expected one of 'digits'"),
        ("partition.kind", "shards", "'partition.kind' has invalid value 'shards': expected one of 'iid'"),
        ("partition.alpha", -0.5, "'partition.alpha' has invalid value -0.5: expected a float > 0.0"),
        ("partition.alpha", 0, "'partition.alpha' has invalid value 0: expected a float > 0.0"),
        ("train.lr", "fast", "'train.lr' has invalid value 'fast': expected a float > 0.0"),
        ("train.batch-size", 0, "'train.batch-size' has invalid value 0: expected an int >= 1"),
        ("train.local-epochs", True, "'train.local-epochs' has invalid value True: expected an int >= 0"),
        ("fraction-train", 1.5, "'fraction-train' has invalid value 1.5: expected a float >= 0.0 and <= 1.0"),
        ("device", "tpu", "'device' has invalid value 'tpu': expected 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("experiment-name", "a/b", "'experiment-name' has invalid value 'a/b'"),
        ("model.name", "vgg", "'model.name' has invalid value 'vgg': expected one of 'cnn', 'resnet18'"),
    ],
)
def test_bad_value_is_a_one_line_error(run_config, key, value, expected):
    with pytest.raises(ConfigError) as err:
        load_settings(run_config(**{key: value}))
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_int_is_accepted_where_a_float_is_expected(run_config):
    assert load_settings(run_config(**{"train.lr": 1})).train.lr == 1.0


def test_node_config_data_dir_overrides_the_run_config(run_config):
    settings = load_settings(run_config(), {"data-dir": "/sites/hospital-a"})
    assert settings.dataset.data_dir == "/sites/hospital-a"


def test_pyproject_defaults_and_options_agree():
    """Every pyproject key is read by some option, with the same default, and vice versa."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = flatten_dict(pyproject["tool"]["flwr"]["app"]["config"])
    options = all_option_keys()
    assert sorted(set(declared) - set(options)) == []
    assert sorted(set(options) - set(declared)) == []
    mismatched = {k: (declared[k], options[k]) for k in options if declared[k] != options[k]}
    assert mismatched == {}


def test_method_options_are_parsed_for_the_chosen_method(run_config):
    settings = load_settings(run_config(method="fedprox", **{"fedprox.mu": 0.5}))
    assert settings.method_options.mu == 0.5
    with pytest.raises(ConfigError, match="'fedprox.mu' has invalid value -1.0"):
        load_settings(run_config(method="fedprox", **{"fedprox.mu": -1.0}))


def test_the_codebook_choices_name_exactly_the_implemented_aggregators():
    from fedvq_app.aggregation.codebook import AGGREGATORS, ALIGN_MODES
    from fedvq_app.aggregation.codebook_lloyd import LLOYD
    from fedvq_app.options import CODEBOOK_AGGREGATIONS, CODEBOOK_ALIGN_MODES

    assert CODEBOOK_AGGREGATIONS == (*AGGREGATORS, LLOYD)
    assert CODEBOOK_ALIGN_MODES == tuple(ALIGN_MODES)
