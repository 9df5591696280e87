"""The data recipes of the settings (aide_ray.experiments.prepare) on tiny folders, and the recipe checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from aide_ray.exceptions import ConfigError
from aide_ray.experiments.catalogue import Inputs, get_setting, load_setting, settings
from aide_ray.experiments.prepare import (PrepareContext, prepare_setting, qubiq_annotators, recipe_of,
                                          shenzhen_protocols)

from .helpers import make_shenzhen


def test_annotator_manifests_hold_one_label_per_case(tmp_path: Path) -> None:
    """On a tiny QUBIQ-like folder: rater1 / random rater per case, train kind lq, no test rows."""
    data = tmp_path / "qubiq"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for c in range(1, 11):
        sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, (16, 16), dtype=np.uint8)),
                        str(data / "images" / f"case{c:02d}.png"))
        for r in range(1, 4):
            mask = np.zeros((16, 16), np.uint8)
            mask[4:10 + r, 4:10] = 255
            sitk.WriteImage(sitk.GetImageFromArray(mask), str(data / "masks" / f"case{c:02d}_rater{r}.png"))
    out = tmp_path / "exp"
    prepared = qubiq_annotators(PrepareContext(data, out, Inputs(16)))
    every = pd.read_csv(prepared.reference)
    assert len(every) == 30 and set(every["split"]) == {"train", "val", "test"}
    for name in ("rater1", "random"):
        table = pd.read_csv(out / "data" / f"train_{name}.csv")
        assert set(table["split"]) == {"train", "val"}
        assert table["case_id"].is_unique
        assert set(table["case_id"]) == set(every[every["split"] != "test"]["case_id"])
        assert set(table[table["split"] == "train"]["label_kind"]) == {"lq"}
        assert set(table[table["split"] == "val"]["label_kind"]) == {"hq"}
        assert (prepared.train[name] / "dataset.json").is_file()
    assert set(pd.read_csv(out / "data" / "train_rater1.csv")["annotator"]) == {"rater1"}
    assert pd.read_csv(out / "data" / "train_random.csv")["annotator"].nunique() > 1
    assert "3 raters" in prepared.note and not prepared.later


def test_the_noisy_recipe_makes_both_training_sets_once(tmp_path: Path) -> None:
    data = make_shenzhen(tmp_path / "shenzhen")
    out = tmp_path / "exp"
    ctx = PrepareContext(data, out, Inputs(16, (2.0, 2.0)))
    prepared = prepare_setting(get_setting("noisy"), ctx)
    assert set(prepared.train) == {"noisy", "clean"} and prepared.reference == out / "data" / "clean.csv"
    noisy = pd.read_csv(out / "data" / "noisy" / "manifest.csv")
    assert set(noisy[noisy["split"] == "train"]["label_kind"]) == {"hq", "lq"}
    assert prepared.note.startswith("Cases (train, val, test): train 14, val 2, test 4. Train labels: pymic-jsrt")
    stamp = (prepared.train["noisy"] / "dataset.json").stat().st_mtime_ns
    assert prepare_setting(get_setting("noisy"), ctx).note == prepared.note  # a rerun reuses what is there
    assert (prepared.train["noisy"] / "dataset.json").stat().st_mtime_ns == stamp


def test_the_protocols_recipe_makes_one_training_set_per_protocol(tmp_path: Path) -> None:
    data = make_shenzhen(tmp_path / "shenzhen")
    out = tmp_path / "exp"
    ctx = PrepareContext(data, out, Inputs(16, (2.0, 2.0)))
    prepared = shenzhen_protocols(ctx, protocols=["over-seg", "missed-structure"], clean_fraction=0.1, magnitude=16)
    assert set(prepared.train) == {"over-seg", "missed-structure", "clean"}
    for protocol in ("over-seg", "missed-structure"):
        noisy = pd.read_csv(out / "data" / f"noisy_{protocol}" / "manifest.csv")
        assert set(noisy["noise_protocol"]) == {protocol}
        assert (prepared.train[protocol] / "dataset.json").is_file()
    assert "mean Dice of noisy vs clean label: over-seg 0." in prepared.note
    with pytest.raises(ConfigError, match=r"protocols must be among .*got \['limited'\]"):
        shenzhen_protocols(ctx, protocols=["limited"], clean_fraction=0.1)


@pytest.mark.parametrize("name", ["benchmark", "headroom", "noisy", "annotators", "limited"])
def test_the_shipped_settings_name_recipes_that_make_their_training_sets(name: str) -> None:
    recipe = recipe_of(get_setting(name))
    assert {arm.data for arm in settings()[name].arms} <= set(recipe.data_keys)


def _setting(tmp_path: Path, prepare: dict, data: str = "hq10"):
    raw = {"title": "t", "prepare": prepare, "inputs": {"cpu": {"size": 16}, "full": {"size": 16}},
           "arms": [{"name": "a", "title": "A", "data": data}]}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(raw))
    return load_setting(tmp_path / "t.yaml")


@pytest.mark.parametrize("prepare, data, message", [
    ({"recipe": "shenzen_limited"}, "hq10",
     r"t\.yaml: prepare\.recipe must be one of \['qubiq_annotators', 'shenzhen_limited', 'shenzhen_noisy', 'shenzhen_protocols'\], "
     r"got 'shenzen_limited' \(did you mean 'shenzhen_limited'\?\)"),
    ({"recipe": "shenzhen_limited", "options": {"labeled_fraction": 0.1, "pseudo_labels_from": "a"}}, "hq10",
     r"t\.yaml: keys of prepare\.options must be among \['labelled_fraction', 'pseudo_labels_from'\] .*"
     r"got 'labeled_fraction' \(did you mean 'labelled_fraction'\?\)"),
    ({"recipe": "shenzhen_limited", "options": {"pseudo_labels_from": "a"}}, "hq10",
     r"t\.yaml: prepare\.options\.labelled_fraction is missing"),
    ({"recipe": "shenzhen_limited", "options": {"labelled_fraction": 0.1, "pseudo_labels_from": "b"}}, "hq10",
     r"prepare\.options\.pseudo_labels_from must be an arm of the setting \['a'\], got 'b'"),
    ({"recipe": "qubiq_annotators"}, "rater2",
     r"t\.yaml: arms \(a\)\.data must be one of \['rater1', 'random'\] .*got 'rater2' \(did you mean 'rater1'\?\)"),
])
def test_recipe_errors_name_the_file_and_key(tmp_path: Path, prepare: dict, data: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        recipe_of(_setting(tmp_path, prepare, data))
