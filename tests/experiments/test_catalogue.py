"""The settings catalogue (aide_ray.experiments.catalogue): the shipped files, and the errors of bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aide_ray.config import from_dict, load_config
from aide_ray.exceptions import ConfigError, InputError
from aide_ray.experiments.catalogue import (SETTINGS_DIR, get_setting, load_full_size, load_setting, load_settings,
                                            settings)

SMALL = {
    "title": "Setting 9: a test",
    "prepare": {"recipe": "shenzhen_noisy", "options": {"clean_fraction": 0.1}},
    "inputs": {"cpu": {"size": 32, "spacing": 2.0}, "full": {"size": 64}},
    "config": {"epochs": 2, "model": {"base_width": 4}},
    "arms": [{"name": "sup", "title": "supervised", "data": "noisy", "config": {"method": "supervised"}},
             {"name": "aide", "title": "AIDE", "data": "noisy", "init_from": "sup",
              "config": {"method": "aide", "aide": {"ramp_epochs": 2}}}],
    "comparisons": [["aide", "sup"]],
}


def _write(tmp_path: Path, raw: dict, name: str = "small") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _edit(change) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(SMALL))  # a deep copy
    change(raw)
    return raw


def test_shipped_settings_in_the_order_of_their_titles() -> None:
    assert list(settings()) == ["benchmark_mixed", "benchmark", "headroom", "methods_noisy", "methods_semi", "scribbles", "scribbles_qubiq", "noisy", "annotators",
                              "limited", "domain_shift"]
    noisy = get_setting("noisy")
    assert noisy.source == SETTINGS_DIR / "noisy.yaml"
    assert noisy.arm("aide_pretrained").init_from == "supervised_noisy"
    assert ("aide", "supervised_noisy") in noisy.comparisons
    assert get_setting("annotators").per_annotator and not noisy.per_annotator
    assert noisy.inputs["cpu"].size == 128 and noisy.inputs["cpu"].spacing == (2.0, 2.0)
    assert noisy.inputs["full"].size == 256 and noisy.inputs["full"].spacing is None
    assert get_setting("annotators").inputs["full"].size == 128  # the QUBIQ copy has no larger version


@pytest.mark.parametrize("name", ["noisy", "annotators", "limited"])
def test_every_arm_config_loads_with_and_without_full(name: str, tmp_path: Path) -> None:
    setting = get_setting(name)
    full = setting.full_overrides(load_full_size())
    for arm in setting.arms:
        path = tmp_path / f"{arm.name}.yaml"
        path.write_text(yaml.safe_dump(setting.arm_config(arm.name)))
        cpu = load_config(path)
        big = load_config(path, full)
        assert cpu.model.base_width == 8 and not cpu.use_gpu and cpu.optim.lr == 0.003
        assert big.model.base_width == 64 and big.use_gpu and big.epochs == 100
        assert arm.name.startswith(cpu.method) or (arm.name.startswith("supervised") and cpu.method == "supervised")


@pytest.mark.parametrize("name", ["scribbles", "scribbles_qubiq"])
def test_every_scribble_arm_builds_its_config_at_both_sizes(name: str, tmp_path: Path) -> None:
    """Each arm of the scribble settings: a Config from the catalogue (from_dict), and with --full's overrides."""
    setting = get_setting(name)
    methods = {"supervised", "pce", "scribble_entmin", "tv", "mumford_shah", "gated_crf", "ustm", "dmpls", "aide"}
    assert {from_dict(setting.arm_config(arm.name)).method for arm in setting.arms} == methods
    full = setting.full_overrides(load_full_size())
    for arm in setting.arms:
        cfg = from_dict(setting.arm_config(arm.name), source=f"{name}:{arm.name}")
        assert cfg.method == ("supervised" if arm.name == "supervised_full" else arm.name)
        assert (arm.data == "clean") == (cfg.method == "supervised")  # every other arm trains on the scribbles
        assert cfg.model.base_width == 16 and cfg.workers == 1 and not cfg.use_gpu
        path = tmp_path / f"{arm.name}.yaml"
        path.write_text(yaml.safe_dump(setting.arm_config(arm.name)))
        big = load_config(path, full)
        assert big.use_gpu and big.epochs == 100 and big.model.base_width == 64
    assert {b for _, b in setting.comparisons} == {"pce"} and len(setting.comparisons) == len(setting.arms) - 1
    assert setting.per_annotator == (name == "scribbles_qubiq")
    shenzhen = get_setting("scribbles")
    assert shenzhen.inputs["cpu"].size == 64 and shenzhen.arm_config("pce")["epochs"] == 20


def test_arm_config_merges_the_arm_onto_the_setting_and_is_a_copy() -> None:
    limited = get_setting("limited")
    hq10 = limited.arm_config("supervised_hq10")
    assert (hq10["epochs"], hq10["batch_size"], hq10["workers"], hq10["model"]) == (10, 4, 2, {"base_width": 8})
    aide = limited.arm_config("aide_hq_lq")
    assert aide["epochs"] == 6 and aide["aide"]["correct_hq"] is False
    aide["model"]["base_width"] = 99
    assert limited.arm_config("aide_hq_lq")["model"]["base_width"] == 8
    # Setting 2's two AIDE arms share one YAML anchor and so one config.
    ann = get_setting("annotators")
    assert ann.arm_config("aide_rater1") == ann.arm_config("aide_random")


def test_full_overrides_apply_the_common_file_then_the_setting() -> None:
    common = load_full_size()
    assert common["use_gpu"] is True and common["batch_size"] == 8
    overrides = get_setting("annotators").full_overrides(common)
    assert "use_gpu=true" in overrides and overrides.count("batch_size=8") == 0 and "batch_size=4" in overrides
    assert get_setting("noisy").full_overrides(common)[0] == "epochs=100"


def test_unknown_arm_and_setting_names_suggest_the_closest() -> None:
    with pytest.raises(InputError, match=r"setting 'noisy' has no arm 'aide_lamda1' \(did you mean 'aide_lambda1'\?\)"):
        get_setting("noisy").arm("aide_lamda1")
    with pytest.raises(InputError, match=r"setting must be one of \['annotators', 'benchmark', 'benchmark_mixed', "
                                         r"'domain_shift', 'headroom', 'limited', "
                                         r"'methods_noisy', 'methods_semi', 'noisy', 'scribbles', "
                                         r"'scribbles_qubiq'\], "
                                         r"got 'noisey' \(did you mean 'noisy'\?\)"):
        get_setting("noisey")


def test_a_small_catalogue_file_loads(tmp_path: Path) -> None:
    setting = load_setting(_write(tmp_path, SMALL))
    assert setting.name == "small" and setting.arm_names == ["sup", "aide"]
    assert setting.inputs["cpu"].spacing == (2.0, 2.0)  # one number means both axes
    assert setting.arm_config("aide") == {"epochs": 2, "model": {"base_width": 4}, "method": "aide",
                                          "aide": {"ramp_epochs": 2}}
    assert setting.recipe == "shenzhen_noisy" and dict(setting.recipe_options) == {"clean_fraction": 0.1}
    assert setting.full == {} and setting.notes == () and not setting.per_annotator


BAD = [
    (lambda r: r.update(titel="x"), r"small\.yaml: keys of a setting must be among .*, got 'titel' "
                                    r"\(did you mean 'title'\?\)"),
    (lambda r: r.pop("arms"), r"small\.yaml: arms is missing"),
    (lambda r: r.update(title=""), r"small\.yaml: title must be a non-empty string, got ''"),
    (lambda r: r["prepare"].update(recipie="x"), r"keys of prepare must be among \['recipe', 'options'\], "
                                                 r"got 'recipie' \(did you mean 'recipe'\?\)"),
    (lambda r: r["inputs"].pop("full"), r"small\.yaml: inputs\.full is missing"),
    (lambda r: r["inputs"]["cpu"].update(size=0), r"inputs\.cpu\.size must be a positive integer, got 0"),
    (lambda r: r["inputs"]["cpu"].update(spacing=[1, 2, 3]), r"inputs\.cpu\.spacing must be null, a positive number "
                                                             r"or a pair \[x, y\] of them, got \[1, 2, 3\]"),
    (lambda r: r["arms"][1].update(init_form="sup"), r"small\.yaml: keys of arms\[1\] must be among \['name', "
                                                     r"'title', 'data', 'config', 'init_from'\], got 'init_form' "
                                                     r"\(did you mean 'init_from'\?\)"),
    (lambda r: r["arms"][0].pop("title"), r"small\.yaml: arms\[0\]\.title is missing"),
    (lambda r: r["arms"][1].update(name="sup"), r"arms\[1\] \(sup\)\.name must be unique among the arms, got 'sup'"),
    (lambda r: r["arms"][1].update(name="a:b"), r"arms\[1\]\.name must be a name of letters, digits"),
    (lambda r: r["arms"][1]["config"]["aide"].update(ramp_epoch=2),
     r"small\.yaml: arms\[1\] \(aide\)\.config: .*aide\.ramp_epoch.*did you mean 'aide\.ramp_epochs'"),
    (lambda r: r["arms"][0]["config"].update(method="supervisd"),
     r"small\.yaml: arms\[0\] \(sup\)\.config: .*method must be one of .*did you mean 'supervised'"),
    (lambda r: r["arms"][1].update(init_from="nope"), r"arms\[1\] \(aide\)\.init_from must be another arm, one of "
                                                      r"\['sup', 'aide'\], got 'nope'"),
    (lambda r: r["arms"][0].update(init_from="aide"),
     r"arms\[0\] \(sup\)\.init_from must be free of cycles, got 'sup -> aide -> sup'"),
    (lambda r: r.update(comparisons=[["aide", "supp"]]), r"comparisons\[0\] must be arms of the setting "
                                                         r"\['sup', 'aide'\] \(did you mean 'sup'\?\), got 'supp'"),
    (lambda r: r.update(comparisons=[["aide", "aide"]]), r"comparisons\[0\] must be a pair \[arm, other arm\]"),
    (lambda r: r.update(full={"model.base_widht": 64}), r"keys of full must be config keys, got 'model\.base_widht' "
                                                        r"\(did you mean 'model\.base_width'\?\)"),
    (lambda r: r.update(full={"model": {"base_width": 64}}), r"keys of full must be config keys, got 'model'"),
    (lambda r: r.update(per_annotator="yes"), r"per_annotator must be true or false, got 'yes'"),
]


@pytest.mark.parametrize("change, message", BAD)
def test_bad_catalogue_files_fail_naming_the_file_and_key(tmp_path: Path, change, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_setting(_write(tmp_path, _edit(change)))


def test_unreadable_files_and_empty_folders(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("title: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml is not valid YAML"):
        load_setting(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: the file must be a mapping of keys, got \['a'\]"):
        load_setting(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_setting(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="holds no setting"):
        load_settings(tmp_path / "none")
    (tmp_path / "full.yaml").write_text("epoch: 100\n")
    with pytest.raises(ConfigError, match=r"full\.yaml: keys of the file must be config keys, got 'epoch' "
                                          r"\(did you mean 'epochs'\?\)"):
        load_full_size(tmp_path / "full.yaml")
