"""`aide-ray manifest` (and `aide-ray ingest DATASET_DIR`): a layout folder to an editable manifest, errors in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from aide_ray.cli.main import main


def _nifti(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))


def _nnunet(root: Path, classes: dict | None = None) -> Path:
    """nnU-Net v2 folder: 2 channels, 2 labelled cases (8 x 8 x 4), 1 test case."""
    rng = np.random.default_rng(0)
    label = np.zeros((4, 8, 8), np.uint8)
    label[:, 2:6, 2:6] = 1
    for folder, case in (("imagesTr", "c0"), ("imagesTr", "c1"), ("imagesTs", "c2")):
        for ch in range(2):
            _nifti(root / folder / f"{case}_{ch:04d}.nii.gz", rng.random((4, 8, 8)).astype(np.float32))
        if folder == "imagesTr":
            _nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2", "1": "ADC"}, "labels": classes or {"background": 0, "prostate": 1},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    return root


def test_manifest_writes_a_relative_csv_and_counts_the_splits(tmp_path, capsys):
    root = _nnunet(tmp_path / "Dataset001_Prostate")
    out = tmp_path / "manifest.csv"
    assert main(["manifest", str(root), "--out", str(out), "--val-fraction", "0.5", "--seed", "1"]) == 0
    line = capsys.readouterr().out
    assert "(nnunet; channels: T2, ADC; classes: 0 background, 1 prostate): cases train 1, val 1, test 1" in line
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert df.loc[0, "image_1"] == "Dataset001_Prostate/imagesTr/c0_0001.nii.gz"
    assert df["split"].tolist()[2] == "test" and df["label_kind"].tolist() == ["hq", "hq", "none"]

    assert main(["manifest", str(root), "--out", str(out)]) == 2  # never clobbers an edited manifest
    assert "already exists" in capsys.readouterr().err
    assert main(["manifest", str(root), "--out", str(out), "--overwrite", "--format", "nnunet"]) == 0


def test_bad_layouts_fail_in_one_line_naming_the_file(tmp_path, capsys):
    root = _nnunet(tmp_path / "d")
    (root / "imagesTr" / "c1_0001.nii.gz").unlink()
    assert main(["manifest", str(root), "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aide-ray manifest: error: case 'c1' is missing channel file(s) ")
    assert "imagesTr/c1_0001.nii.gz" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.csv").exists()
    assert main(["manifest", str(tmp_path / "d" / "imagesTr"), "--out", str(tmp_path / "m.csv")]) == 2
    assert "unknown dataset layout" in capsys.readouterr().err


def test_multi_class_datasets_get_a_warning_line(tmp_path, capsys):
    root = _nnunet(tmp_path / "d", classes={"background": 0, "pz": 1, "tz": 2})
    assert main(["manifest", str(root), "--out", str(tmp_path / "m.csv")]) == 0
    assert "warning: " in capsys.readouterr().err


def test_ingest_accepts_a_dataset_folder(tmp_path, capsys):
    root = _nnunet(tmp_path / "d")
    shards = tmp_path / "shards"
    assert main(["ingest", str(root), "--out", str(shards), "--size", "8"]) == 0
    out = capsys.readouterr().out
    assert "shards.manifest.csv" in out and "slices" in out
    assert (tmp_path / "shards.manifest.csv").is_file() and (shards / "dataset.json").is_file()

    # A second run over the same SHARDS_DIR: refused (it exists) before any manifest is written.
    assert main(["ingest", str(root), "--out", str(shards)]) == 2
    assert "already exists" in capsys.readouterr().err
    # The shards removed but the (maybe edited) manifest kept: never rebuilt over the user's edits.
    shutil.rmtree(shards)
    assert main(["ingest", str(root), "--out", str(shards)]) == 2
    assert "may hold your edits" in capsys.readouterr().err
    assert main(["ingest", str(root), "--out", str(shards), "--overwrite", "--size", "8"]) == 0


# --------------------------------------------------------------------------- --label-kind scribble

def _scribble(shape: tuple[int, ...]) -> np.ndarray:
    """A scribble: a foreground stroke (1), a background stroke (0), 255 elsewhere."""
    arr = np.full(shape, 255, np.uint8)
    arr[..., 4, 3:6] = 1
    arr[..., 0, :] = 0
    return arr


def _scribble_pairs(root: Path, suffix: str = ".nii.gz", cases: int = 4) -> Path:
    """A pairs folder whose labels/ are scribbles, with a sibling folder of the full masks (same names)."""
    rng = np.random.default_rng(0)
    shape = (3, 8, 8) if suffix != ".png" else (8, 8)
    full = np.zeros(shape, np.uint8)
    full[..., 2:6, 2:6] = 1
    for c in range(cases):
        if suffix == ".png":
            image = rng.integers(0, 255, shape, dtype=np.uint8)
        else:
            image = rng.random(shape).astype(np.float32)
        _nifti(root / "images" / f"c{c}{suffix}", image)
        _nifti(root / "labels" / f"c{c}{suffix}", _scribble(shape))
        _nifti(root.parent / "full" / f"c{c}{suffix}", full)
    return root


def test_scribble_manifest_keeps_full_masks_for_val_and_test_and_ingests(tmp_path, capsys):
    root = _scribble_pairs(tmp_path / "scr")
    out = tmp_path / "m.csv"
    assert main(["manifest", str(root), "--out", str(out), "--label-kind", "scribble", "--masks",
                 str(tmp_path / "full"), "--val-fraction", "0.25", "--test-fraction", "0.25"]) == 0
    assert "; labels: train scribble 2, val hq 1, test hq 1" in capsys.readouterr().out
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    train, held = df[df["split"] == "train"], df[df["split"] != "train"]
    assert set(train["label_kind"]) == {"scribble"} and set(held["label_kind"]) == {"hq"}
    assert all(p.startswith("scr/labels/") for p in train["label"])
    assert all(p.startswith("full/") for p in [*train["clean_label"], *held["label"]])  # relative: movable
    assert set(held["clean_label"]) == {""}

    shards = tmp_path / "shards"
    assert main(["ingest", str(out), "--out", str(shards), "--size", "8"]) == 0
    counts = json.loads((shards / "dataset.json").read_text())["counts"]["split_label_kind"]
    assert counts["train"] == {"scribble": 6} and counts["val"] == {"hq": 3} and counts["test"] == {"hq": 3}


def test_scribble_manifest_without_full_masks_warns_about_val_and_test(tmp_path, capsys):
    root = _scribble_pairs(tmp_path / "scr", suffix=".png")
    out = tmp_path / "m.csv"
    assert main(["manifest", str(root), "--out", str(out), "--label-kind", "scribble", "--val-fraction", "0.25"]) == 0
    captured = capsys.readouterr()
    assert "labels: train scribble 3, val scribble 1" in captured.out
    assert captured.err.startswith("warning: the val rows hold scribbles") and "--masks" in captured.err
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert set(df["label_kind"]) == {"scribble"} and "clean_label" not in df.columns
    # Train only: nothing to warn about.
    assert main(["manifest", str(root), "--out", str(out), "--label-kind", "scribble", "--val-fraction", "0",
                 "--overwrite"]) == 0
    assert capsys.readouterr().err == ""


def _one_line_error(capsys, *parts: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("aide-ray manifest: error: ") and len(err.strip().splitlines()) == 1, err
    for part in parts:
        assert part in err, err
    return err


def test_bad_scribble_files_fail_in_one_line_naming_the_file(tmp_path, capsys):
    for suffix in (".nii.gz", ".png"):
        root = _scribble_pairs(tmp_path / suffix.strip(".") / "scr", suffix=suffix, cases=2)
        bad = root / "labels" / f"c1{suffix}"
        values = _scribble((3, 8, 8) if suffix != ".png" else (8, 8))
        values[..., 7, 7] = 7
        _nifti(bad, values)
        out = tmp_path / f"m{suffix}.csv"
        args = ["manifest", str(root), "--out", str(out), "--label-kind", "scribble", "--val-fraction", "0"]
        assert main(args) == 2
        _one_line_error(capsys, f"scribble label {bad} must contain only the classes 0 and 1 and 255", "found [7]")
        assert not out.exists()

        shape = (3, 8, 7) if suffix != ".png" else (8, 7)  # one column short: another grid
        _nifti(bad, _scribble(shape))
        assert main(args) == 2
        _one_line_error(capsys, "geometry mismatch between", f"images/c1{suffix} and {bad}: size")
        # The same files as hq labels: the manifest reads no image, so the grid is left to ingest.
        assert main([*args[:-4], "--val-fraction", "0"]) == 0
        capsys.readouterr()


def test_scribbles_of_a_dataset_json_may_hold_its_classes_and_255(tmp_path, capsys):
    root = _nnunet(tmp_path / "d")
    for case in ("c0", "c1"):
        _nifti(root / "labelsTr" / f"{case}.nii.gz", _scribble((4, 8, 8)))
    out = tmp_path / "m.csv"
    assert main(["manifest", str(root), "--out", str(out), "--label-kind", "scribble", "--val-fraction", "0"]) == 0
    assert "labels: train scribble 2" in capsys.readouterr().out
    bad = _scribble((4, 8, 8))
    bad[0, 0, 0] = 2
    _nifti(root / "labelsTr" / "c1.nii.gz", bad)
    assert main(["manifest", str(root), "--out", str(out), "--label-kind", "scribble", "--overwrite"]) == 2
    _one_line_error(capsys, f"scribble label {root / 'labelsTr' / 'c1.nii.gz'} must hold only the classes declared "
                    f"in {root / 'dataset.json'} (0 background, 1 prostate) and 255 (unannotated), found [2]")


def test_full_masks_need_scribbles_and_val_cases_need_their_mask(tmp_path, capsys):
    root = _scribble_pairs(tmp_path / "scr")
    out = tmp_path / "m.csv"
    assert main(["manifest", str(root), "--out", str(out), "--masks", str(tmp_path / "full")]) == 2
    _one_line_error(capsys, "goes with label_kind 'scribble', got label_kind 'hq'")
    for c in range(4):
        (tmp_path / "full" / f"c{c}.nii.gz").unlink()
    assert main(["manifest", str(root), "--out", str(out), "--label-kind", "scribble", "--masks",
                 str(tmp_path / "full"), "--val-fraction", "0.25"]) == 2
    _one_line_error(capsys, "val case 'c", "needs a full mask", "not found")
