"""The domain-shift setting (aide_ray.experiments.domain_shift and settings/domain_shift.yaml) on a tiny folder.

The recipe runs for real (manifests, shifted images, Parquet shards); the pipeline test runs every stage with
the stand-in CLI of test_pipeline, so the pseudo-label step is exercised without training anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from aide_ray.config import from_dict, load_config
from aide_ray.data.manifest import read_manifest
from aide_ray.data.shards import read_slices_local
from aide_ray.exceptions import ConfigError
from aide_ray.experiments.catalogue import Inputs, get_setting, load_full_size, load_setting
from aide_ray.experiments.domain_shift import shenzhen_domain_shift
from aide_ray.experiments.pipeline import RunOptions, run_setting
from aide_ray.experiments.prepare import PrepareContext, ingest_once, prepare_setting

from .helpers import install_fake_cli, make_shenzhen

SIZE = Inputs(16, (2.0, 2.0))


def _cases(shards: Path) -> pd.DataFrame:
    return pd.DataFrame(json.loads((shards / "dataset.json").read_text())["cases"])


def _images_by_case(shards: Path) -> dict[str, np.ndarray]:
    rows = read_slices_local(shards)
    return {case: image for case, image in zip(rows["case_id"], rows["image"])}


def test_the_recipe_shifts_the_target_images_only_and_keeps_every_label(tmp_path: Path) -> None:
    data = make_shenzhen(tmp_path / "shenzhen")
    out = tmp_path / "exp"
    prepared = prepare_setting(get_setting("domain_shift"), PrepareContext(data, out, SIZE))
    d = out / "data"
    assert set(prepared.train) == {"source", "target_clean"} and prepared.reference == d / "domain_shift" / "manifest.csv"
    assert set(prepared.later) == {"target_pseudo"} and prepared.later["target_pseudo"].after_arm == "supervised_source"

    # The split of the other Shenzhen settings, by case; the train cases halved by case into source and target.
    clean, shifted = read_manifest(d / "clean.csv"), read_manifest(prepared.reference)
    assert (shifted["case_id"] == clean["case_id"]).all() and (shifted["split"] == clean["split"]).all()
    assert (shifted["label"] == clean["label"]).all() and set(shifted["label_kind"]) == {"hq"}  # labels untouched
    train = shifted["split"] == "train"
    assert shifted[train]["domain"].value_counts().to_dict() == {"source": 7, "target": 7}
    assert set(shifted[~train]["domain"]) == {"target"}  # validation and test: the target domain
    source = (shifted["domain"] == "source").to_numpy()
    assert (shifted["image"].to_numpy()[source] == clean["image"].to_numpy()[source]).all()
    for image, original in zip(shifted["image"].to_numpy()[~source], clean["image"].to_numpy()[~source]):
        assert Path(image).parent == d / "domain_shift" / "images"
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(p)) for p in (image, original))
        assert a.shape == b.shape and a.dtype == b.dtype and not np.array_equal(a, b)

    # "source": the target train cases unlabelled, their masks kept aside; its shards hold them as kind none.
    only = read_manifest(d / "source.csv")
    target_train = (train & (shifted["domain"] == "target")).to_numpy()
    assert set(only["label_kind"].to_numpy()[target_train]) == {"none"} and set(only["label"][target_train]) == {""}
    assert (only["clean_label"].to_numpy()[target_train] == clean["label"].to_numpy()[target_train]).all()
    assert (only["image"] == shifted["image"]).all()
    counts = json.loads((prepared.train["source"] / "dataset.json").read_text())["counts"]["split_label_kind"]
    assert counts["train"] == {"hq": 7, "none": 7} and counts["val"] == {"hq": 2} and counts["test"] == {"hq": 4}
    counts = json.loads((prepared.train["target_clean"] / "dataset.json").read_text())["counts"]["split_label_kind"]
    assert counts["train"] == {"hq": 14}
    assert set(_cases(prepared.train["target_clean"])["domain"]) == {"source", "target"}

    # In the shards, a target case's slices differ from the unshifted ingest, a source case's are the same.
    plain = _images_by_case(ingest_once(d / "clean.csv", tmp_path / "plain_shards", SIZE))
    for shards in (prepared.train["source"], prepared.train["target_clean"]):
        for _, case in _cases(shards).iterrows():
            same = np.array_equal(_images_by_case(shards)[case["case_id"]], plain[case["case_id"]])
            assert same == (case["domain"] == "source"), case["case_id"]

    assert prepared.note.startswith("Cases (train, val, test): train 14, val 2, test 4. Train cases split by case")
    assert "7 source cases" in prepared.note and "gamma 0.3, noise std 0.15" in prepared.note  # the setting's shift
    assert "`supervised_source` model" in prepared.note and "Validation and test: target domain" in prepared.note


def test_the_split_and_the_shifted_images_are_reproducible_and_made_once(tmp_path: Path) -> None:
    data = make_shenzhen(tmp_path / "shenzhen")
    ctx = PrepareContext(data, tmp_path / "a", SIZE)
    first = shenzhen_domain_shift(ctx, pseudo_labels_from="sup")
    second = shenzhen_domain_shift(PrepareContext(data, tmp_path / "b", SIZE), pseudo_labels_from="sup")
    a, b = (pd.read_csv(p.reference, dtype=str, keep_default_na=False) for p in (first, second))
    assert (a.drop(columns="image") == b.drop(columns="image")).all().all()
    for p, q in zip(a["image"], b["image"]):
        if not p.startswith("images/"):
            assert p == q
            continue
        assert (tmp_path / "a/data/domain_shift" / p).read_bytes() == (tmp_path / "b/data/domain_shift" / q).read_bytes()
    stamp = (first.train["source"] / "dataset.json").stat().st_mtime_ns
    images = sorted((tmp_path / "a/data/domain_shift/images").iterdir())
    stamps = [p.stat().st_mtime_ns for p in images]
    assert shenzhen_domain_shift(ctx, pseudo_labels_from="sup").note == first.note  # a rerun reuses what is there
    assert (first.train["source"] / "dataset.json").stat().st_mtime_ns == stamp
    assert [p.stat().st_mtime_ns for p in images] == stamps


@pytest.mark.parametrize("options, message", [
    ({"source_fraction": 1.0}, r"prepare\.options\.source_fraction must be in \(0, 1\)"),
    ({"source_fraction": 0.0}, r"prepare\.options\.source_fraction must be in \(0, 1\)"),
    ({"gamma": 0.0}, r"prepare\.options: scanner shift gamma must be > 0"),
    ({"resolution": 2.0}, r"prepare\.options: scanner shift resolution must be in \(0, 1\]"),
])
def test_bad_options_fail_before_any_data_is_made(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        shenzhen_domain_shift(PrepareContext(tmp_path, tmp_path / "exp", SIZE), pseudo_labels_from="sup", **options)
    assert not (tmp_path / "exp").exists()


def test_the_shipped_setting_trains_five_arms_at_both_sizes(tmp_path: Path) -> None:
    setting = get_setting("domain_shift")
    assert setting.arm_names == ["supervised_source", "supervised_pseudo", "aide_pseudo", "aide_from_start_k1",
                                 "supervised_target"]
    assert {a.name: a.data for a in setting.arms} == {"supervised_source": "source", "supervised_pseudo": "target_pseudo",
                                                     "aide_pseudo": "target_pseudo", "aide_from_start_k1": "target_pseudo",
                                                     "supervised_target": "target_clean"}
    assert setting.recipe_options["pseudo_labels_from"] == "supervised_source"
    assert ("aide_pseudo", "supervised_pseudo") in setting.comparisons
    assert setting.inputs["cpu"] == Inputs(64, (4.0, 4.0)) and setting.inputs["full"] == Inputs(256)
    full = setting.full_overrides(load_full_size())
    for arm in setting.arms:
        cfg = from_dict(setting.arm_config(arm.name), source=arm.name)
        assert cfg.method == ("aide" if arm.name.startswith("aide") else "supervised")
        assert cfg.workers == 1 and cfg.model.base_width == 16 and not cfg.use_gpu
        path = tmp_path / f"{arm.name}.yaml"
        path.write_text(yaml.safe_dump(setting.arm_config(arm.name)))
        big = load_config(path, full)
        assert big.use_gpu and big.epochs == 100 and big.model.base_width == 64
    aide = from_dict(setting.arm_config("aide_pseudo")).options_of("aide")
    assert aide.correct_hq is False and aide.supervised_epochs == 8 and aide.correct_where_agree
    big = load_config(tmp_path / "aide_pseudo.yaml", full).options_of("aide")
    assert (big.supervised_epochs, big.update_every, big.ramp_epochs, big.consistency_weight) == (40, 15, 60, 1.0)
    k1 = from_dict(setting.arm_config("aide_from_start_k1")).options_of("aide")
    assert (k1.supervised_epochs, k1.num_augmentations, k1.update_every, k1.correct_hq) == (0, 1, 7, False)


def test_the_pseudo_labels_come_from_the_source_arm_and_label_the_target_cases_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped setting's arms and recipe at 16 px, every stage by the stand-in CLI (which "predicts" a case's
    mask): the pseudo-label arms wait for the source arm, and their set has LQ labels on the target cases only."""
    calls_file = install_fake_cli(tmp_path, monkeypatch)
    raw = yaml.safe_load(get_setting("domain_shift").source.read_text())
    raw["inputs"] = {"cpu": {"size": 16, "spacing": 2.0}, "full": {"size": 32}}
    (tmp_path / "small_shift.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    setting = load_setting(tmp_path / "small_shift.yaml")
    data = make_shenzhen(tmp_path / "shenzhen")
    out = tmp_path / "exp"
    assert run_setting(setting, RunOptions(data=str(data), out=str(out), backend="local", parallel=2)) == 0
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]

    def at(stage: str, run: str, event: str) -> float:
        return next(c["time"] for c in calls if c["stage"] == stage and c["run"] == run and c["event"] == event)

    pseudo = [c for c in calls if c["stage"] == "predict" and c.get("split") == "train"]
    assert [c["run"] for c in pseudo] == ["supervised_source_s0"]
    for arm in ("supervised_pseudo", "aide_pseudo"):
        assert at("train", f"{arm}_s0", "start") > pseudo[0]["time"]
        train = next(c["argv"] for c in calls if c["stage"] == "train" and c["run"] == f"{arm}_s0")
        assert f"data.shards={out.resolve() / 'data' / 'shards_pseudo_s0'}" in train
    labelled = read_manifest(out / "data" / "pseudo_s0.csv")
    train_rows = labelled[labelled["split"] == "train"]
    kinds = train_rows.groupby("domain")["label_kind"].agg(set).to_dict()
    assert kinds == {"source": {"hq"}, "target": {"lq"}}  # the source labels stay HQ: AIDE never corrects them
    assert all(Path(p).parent == out.resolve() / "pseudo" / "s0" for p in train_rows[train_rows["domain"] == "target"]
               ["label"])
    counts = json.loads((out / "data" / "shards_pseudo_s0" / "dataset.json").read_text())["counts"]
    assert counts["split_label_kind"]["train"] == {"hq": 7, "lq": 7}
    # Every arm is tested on the target domain: the shifted test images, the original masks.
    for arm in setting.arm_names:
        assert (out / "eval" / f"{arm}_s0" / "per_case.csv").is_file()
        assert any(c["stage"] == "predict" and c["run"] == f"{arm}_s0" and c["split"] == "test" for c in calls)
    predicted = sorted(p.stem for p in (out / "pred" / "aide_pseudo_s0").iterdir())
    reference = read_manifest(out / "data" / "domain_shift" / "manifest.csv")
    assert predicted == sorted(reference[reference["split"] == "test"]["case_id"])
    info = json.loads((out / "experiment.json").read_text())
    assert info["setting"] == "small_shift" and "source cases" in info["data_note"]
