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
