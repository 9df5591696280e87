"""The data recipes of the settings (aide_ray.experiments.prepare) on tiny folders, and the recipe checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from aide_ray.exceptions import ConfigError
from aide_ray.experiments.catalogue import Inputs, get_setting, load_setting, settings
from aide_ray.data.shards import read_slices_local
from aide_ray.experiments.prepare import (PrepareContext, prepare_setting, qubiq_annotators, qubiq_scribbles,
                                          recipe_of, shenzhen_protocols)

from .helpers import make_qubiq, make_shenzhen


def test_annotator_manifests_hold_one_label_per_case(tmp_path: Path) -> None:
    """On a tiny QUBIQ-like folder: rater1 / random rater per case, train kind lq, no test rows."""
    data = make_qubiq(tmp_path / "qubiq")
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


@pytest.mark.parametrize("name", ["benchmark", "headroom", "methods_noisy", "methods_semi", "noisy", "annotators", "limited", "scribbles",
                                  "scribbles_qubiq", "domain_shift"])
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
     r"t\.yaml: prepare\.recipe must be one of \['qubiq_annotators', 'qubiq_scribbles', 'shenzhen_domain_shift', "
     r"'shenzhen_limited', "
     r"'shenzhen_noisy', "
     r"'shenzhen_protocols', 'shenzhen_scribbles'\], "
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


def _scribble_rows(manifest: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    return table[table["split"] == "train"], table[table["split"] != "train"]


def test_the_shenzhen_scribble_recipe_scribbles_train_masks_only(tmp_path: Path) -> None:
    data = make_shenzhen(tmp_path / "shenzhen")
    out = tmp_path / "exp"
    ctx = PrepareContext(data, out, Inputs(32))  # the drawing grid: 1 px strokes would not survive resampling
    prepared = prepare_setting(get_setting("scribbles"), ctx)
    assert set(prepared.train) == {"scribbles", "clean"} and prepared.reference == out / "data" / "clean.csv"
    train, held = _scribble_rows(out / "data" / "scribbles" / "manifest.csv")
    assert set(train["label_kind"]) == {"scribble"} and set(held["label_kind"]) == {"hq"}
    assert all(Path(p).parent.name == "masks" for p in train["clean_label"])  # the masks kept for diagnostics
    counts = json.loads((prepared.train["scribbles"] / "dataset.json").read_text())["counts"]["split_label_kind"]
    assert counts["train"] == {"scribble": 14} and counts["val"] == {"hq": 2}
    labels = read_slices_local(prepared.train["scribbles"], "train")["label"]
    assert set(np.unique(labels)) == {0, 1, 255}
    share = float(re.search(r"annotating ([0-9.]+)% of the train pixels", prepared.note).group(1))
    assert 0.5 < share < 50 and prepared.note.startswith("Cases (train, val, test): train 14, val 2, test 4.")
    assert "width 5, keep 0.8, background distance 8, border distance 8 px" in prepared.note
    stamp = (prepared.train["scribbles"] / "dataset.json").stat().st_mtime_ns
    assert prepare_setting(get_setting("scribbles"), ctx).note == prepared.note  # made once, the same again
    assert (prepared.train["scribbles"] / "dataset.json").stat().st_mtime_ns == stamp


def test_the_qubiq_scribble_recipe_trains_on_one_rater_and_tests_on_all(tmp_path: Path) -> None:
    data = make_qubiq(tmp_path / "qubiq")
    out = tmp_path / "exp"
    ctx = PrepareContext(data, out, Inputs(16))
    prepared = qubiq_scribbles(ctx, rater="rater2")
    assert len(pd.read_csv(prepared.reference)) == 30  # every rater: the test references
    train, held = _scribble_rows(out / "data" / "scribbles" / "manifest.csv")
    assert set(train["label_kind"]) == {"scribble"} and set(held["split"]) == {"val"}
    assert set(held["label_kind"]) == {"hq"} and set(train["annotator"]) == set(held["annotator"]) == {"rater2"}
    clean = pd.read_csv(out / "data" / "train_rater2.csv")
    assert set(clean["split"]) == {"train", "val"} and (prepared.train["clean"] / "dataset.json").is_file()
    assert "rater2's masks" in prepared.note
    with pytest.raises(ConfigError, match=r"prepare\.options\.rater must be one of \['rater1', 'rater2', 'rater3'\], "
                                          r"got 'rater9'"):
        qubiq_scribbles(ctx, rater="rater9")
    with pytest.raises(ConfigError, match=r"prepare\.options: scribble keep fraction must be in \(0, 1\]"):
        qubiq_scribbles(PrepareContext(data, tmp_path / "exp2", Inputs(16)), scribble_keep=0.0)
