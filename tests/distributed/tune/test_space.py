"""Tests of aide_ray.distributed.tune.space: parsing and validating a search space, search algorithms."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Categorical, Float, Integer

from aide_ray.config import Config, load_config
from aide_ray.distributed.tune.space import (
    DEFAULT_SPACE,
    check_search,
    default_space,
    load_space,
    parse_space,
    tune_param_space,
)
from aide_ray.distributed.tune.sweep import trial_config
from aide_ray.exceptions import ConfigError

REPO = Path(__file__).resolve().parents[3]
HAS_OPTUNA = importlib.util.find_spec("optuna") is not None


def test_default_space_file_matches_default_space():
    assert load_space(REPO / "jobs/configs/space.default.yaml", Config()) == default_space()
    space = default_space()
    assert list(space) == list(DEFAULT_SPACE)
    assert space["aide.update_ratio"].values == (0.05, 0.5)
    assert space["aide.temperature"].values == (0.1, 1.0)
    # randint's upper bound is excluded: warm-up 5 ... 30.
    assert space["aide.warmup_epochs"].candidates() == (5, 30)
    assert space["aide.consistency_weight"].values == (1.0, 20.0)


def test_kuberay_tune_config_and_default_space_load_together():
    cfg = load_config(REPO / "jobs/configs/kuberay_tune.yaml")
    load_space(REPO / "jobs/configs/space.default.yaml", cfg)


@pytest.mark.parametrize("raw, match", [
    ({"aide.update_rato": {"uniform": [0.1, 0.2]}},
     r"unknown config key 'aide.update_rato'.*did you mean 'aide.update_ratio'"),
    ({"epochs": {"randint": [2, 5]}}, r"epochs cannot be swept: it is the ASHA budget"),
    ({"run.name": {"choice": ["a", "b"]}}, r"run.name cannot be swept"),
    ({"aide.temperature": {"unifrom": [0.1, 0.2]}},
     r"aide.temperature: distribution must be one of .*did you mean 'uniform'"),
    ({"aide.temperature": [0.1, 0.2]}, r"aide.temperature must be one distribution"),
    ({"aide.temperature": {"uniform": [0.5, 0.1]}}, r"aide.temperature: uniform must be \[lo, hi\] with lo < hi"),
    ({"aide.temperature": {"uniform": [0.1]}}, r"aide.temperature: uniform must be \[lo, hi\] with two finite numbers"),
    ({"aide.temperature": {"loguniform": [0.0, 1.0]}}, r"aide.temperature: loguniform needs 0 < lo < hi"),
    ({"aide.warmup_epochs": {"uniform": [1, 5]}}, r"aide.warmup_epochs is an integer setting; use randint"),
    ({"aide.warmup_epochs": {"randint": [1.5, 5]}}, r"aide.warmup_epochs: randint bounds must be integers"),
    ({"aide.correct_hq": {"uniform": [0, 1]}}, r"aide.correct_hq is a bool setting; use choice or grid"),
    ({"aide.update_ratio": {"uniform": [0.0, 0.5]}},
     r"aide.update_ratio: uniform .* rejects: aide.update_ratio must be in \(0, 1\], got 0.0"),
    ({"aide.warmup_epochs": {"choice": [3, -1]}},
     r"aide.warmup_epochs: choice .* rejects: aide.warmup_epochs must be in \[0, inf[\])], got -1"),
    ({"aide.correct_hq": {"grid": [True, "maybe"]}}, r"aide.correct_hq: grid .* must be true or false"),
    ({"aide.temperature": {"choice": []}}, r"aide.temperature: choice must list at least one value"),
    ({"aide.temperature": {"grid": [0.5, 0.5]}}, r"aide.temperature: grid values must be distinct"),
    ({}, r"must be a non-empty mapping"),
])
def test_parse_space_rejects_naming_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_space(raw, Config())


def test_parse_space_checks_values_against_the_base_config(tmp_path):
    # method 'supervised' is a valid value; 'aid' is not, and the message says which key.
    space = parse_space({"method": {"choice": ["aide", "supervised"]}}, Config())
    assert space["method"].values == ("aide", "supervised")
    path = tmp_path / "space.yaml"
    path.write_text("method: {choice: [aide, aid]}\n")
    with pytest.raises(ConfigError, match=rf"{path}: method: choice .*did you mean 'aide'"):
        load_space(path, Config())
    path.write_text("aide.temperature: {uniform: [0.1, 0.2]\n")
    with pytest.raises(ConfigError, match=rf"search space file {path} is not valid YAML"):
        load_space(path, Config())
    with pytest.raises(ConfigError, match="does not exist"):
        load_space(tmp_path / "missing.yaml", Config())


def test_tune_param_space_grid_only_under_grid_search():
    space = parse_space({"aide.temperature": {"grid": [0.3, 0.6]}, "aide.update_ratio": {"loguniform": [0.05, 0.5]},
                         "aide.warmup_epochs": {"randint": [0, 3]}}, Config())
    grid = tune_param_space(space, "grid")
    assert grid["aide.temperature"] == {"grid_search": [0.3, 0.6]}
    assert isinstance(grid["aide.update_ratio"], Float)
    assert isinstance(grid["aide.warmup_epochs"], Integer)
    assert (grid["aide.warmup_epochs"].lower, grid["aide.warmup_epochs"].upper) == (0, 3)
    random = tune_param_space(space, "random")
    assert isinstance(random["aide.temperature"], Categorical)
    assert random["aide.temperature"].categories == [0.3, 0.6]


def test_check_search():
    space = default_space()
    with pytest.raises(ConfigError, match=r"--search grid needs at least one '\{grid: \[...\]\}' entry"):
        check_search("grid", space, 1)
    with pytest.raises(ConfigError, match="--search must be one of"):
        check_search("bayes", space, 1)
    with pytest.raises(ConfigError, match="--num-samples must be >= 1, got 0"):
        check_search("random", space, 0)
    check_search("random", space, 3)


@pytest.mark.skipif(HAS_OPTUNA, reason="optuna is installed")
def test_optuna_missing_names_the_install_command():
    with pytest.raises(ConfigError, match=r"optuna package.*pip install optuna .*pip install -e '\.\[tune\]'"):
        check_search("optuna", default_space(), 4)


@pytest.mark.skipif(not HAS_OPTUNA, reason="optuna is not installed (pip install -e '.[tune]')")
def test_optuna_search_samples_inside_the_space():
    space = default_space()
    check_search("optuna", space, 4)
    searcher = OptunaSearch(seed=0)
    assert searcher.set_search_properties("val_dice", "max", tune_param_space(space, "optuna"))
    params = searcher.suggest("trial-1")
    assert 0.05 <= params["aide.update_ratio"] <= 0.5
    assert 5 <= params["aide.warmup_epochs"] <= 30
    trial_config(Config(), params, name="t", storage_path="/tmp", shards="/tmp/shards")
