"""The typed configuration: loading, overrides and validation before any Ray work."""

from __future__ import annotations

import pytest

from aide_ray.config import Config, all_keys, demo_config, load_config
from aide_ray.exceptions import ConfigError

REQUIRED_KEYS = ["method", "epochs", "batch_size", "workers", "use_gpu", "data.shards", "aide.update_ratio",
                 "aide.temperature", "aide.warmup_epochs", "aide.consistency_weight", "run.storage_path",
                 "run.name"]


def test_the_documented_keys_exist():
    keys = set(all_keys())
    assert set(REQUIRED_KEYS) <= keys


def test_defaults_follow_the_reference_code():
    cfg = Config()
    assert (cfg.optim.lr, cfg.optim.amsgrad, cfg.optim.step_epochs, cfg.optim.gamma) == (1e-4, True, 30, 0.5)
    assert (cfg.options_of("aide").consistency_weight, cfg.options_of("aide").ramp_epochs, cfg.options_of("aide").update_ratio) == (10.0, 20, 0.25)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: coteaching\naide:\n  temperature: 0.3\nrun:\n  name: x\n")
    cfg = load_config(path, ["aide.temperature=0.7", "use_gpu=true", "epochs=3"])
    assert cfg.method == "coteaching" and cfg.options_of("aide").temperature == 0.7 and cfg.use_gpu and cfg.epochs == 3
    assert cfg.run.name == "x"
    assert load_config(None, [f"{k}={v}" for k, v in [("data.shards", "/x")]]).data.shards == "/x"


def test_round_trip_through_yaml(tmp_path):
    cfg = demo_config(["aide.update_ratio=0.3"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


@pytest.mark.parametrize("override, message", [
    ("aide.update_ratoi=0.3", r"unknown config key 'aide.update_ratoi'.*did you mean 'aide.update_ratio'"),
    ("aide.update_ratio=0", r"aide.update_ratio must be in \(0, 1\], got 0.0"),
    ("aide.update_ratio=1.5", r"aide.update_ratio must be in \(0, 1\], got 1.5"),
    ("aide.temperature=0", r"aide.temperature must be in \(0, inf\), got 0.0"),
    ("aide.warmup_epochs=-1", r"aide.warmup_epochs must be in \[0, inf\), got -1"),
    ("epochs=two", r"epochs must be an integer, got 'two'"),
    ("use_gpu=maybe", r"use_gpu must be true or false, got 'maybe'"),
    ("method=aidee", r"method must be one of .* \(did you mean 'aide'\?\), got 'aidee'"),
    ("epochs", r"override 'epochs' must look like key=value"),
    ("precision=fp16", r"precision must be one of \['fp32', 'bf16'\] \(did you mean 'bf16'\?\), got 'fp16'"),
    ("channels_last=2", r"channels_last must be true or false, got 2"),
    ("model.deep_supervision=true", r"model.deep_supervision must be false for method 'aide', which never reads the "
                                    r"heads \(DDP fails on parameters without gradients; urpc reads them"),
])
def test_bad_values_name_the_key_and_the_allowed_range(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("aide:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'aide.temprature' in .*bad.yaml.*'aide.temperature'"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_exponent_floats_without_a_dot_are_numbers():
    assert load_config(None, ["optim.lr=3e-3"]).optim.lr == 0.003


def test_precision_and_channels_last_are_top_level_keys():
    cfg = load_config(None, ["precision=bf16", "channels_last=true"])
    assert (cfg.precision, cfg.channels_last) == ("bf16", True)
    assert (Config().precision, Config().channels_last) == ("fp32", False)
    assert load_config(None, ["method=urpc", "model.deep_supervision=true"]).model.deep_supervision
    with pytest.raises(ConfigError, match=r"^model.deep_supervision must be false for method 'cct'"):
        load_config(None, ["method=cct", "model.deep_supervision=true"])
