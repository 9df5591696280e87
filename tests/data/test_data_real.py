"""Real public data (skipped when /work/shared/data is absent): recipes, ingest counts, DICOM."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from aide_ray.data.ingest import ingest
from aide_ray.data.manifest import read_manifest
from aide_ray.data.image_io import read_image
from aide_ray.data.preprocess import Preprocessing
from aide_ray.data.recipes import qubiq_manifest, shenzhen_manifest, split_cases
from aide_ray.data.shards import load_dataset_info, read_slices_local

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
QUBIQ = DATA / "qubiq_brain_growth"
SHENZHEN = DATA / "shenzhen_cxr_lungs"
CHAOS = DATA / "chaos_t1dual_2cases"


def test_split_cases():
    split = split_cases([f"c{i}" for i in range(39)], (0.7, 0.1, 0.2), seed=0)
    assert pd.Series(split).value_counts().to_dict() == {"train": 27, "test": 8, "val": 4}
    assert split == split_cases([f"c{i}" for i in reversed(range(39))], (0.7, 0.1, 0.2), seed=0)
    assert split != split_cases([f"c{i}" for i in range(39)], (0.7, 0.1, 0.2), seed=1)
    with pytest.raises(ValueError, match="fractions must be three non-negative numbers"):
        split_cases(["a"], (0.5, 0.5, 0.5))


@pytest.mark.skipif(not QUBIQ.is_dir(), reason=f"{QUBIQ} not present")
def test_qubiq_manifest_and_ingest(tmp_path):
    images = sorted((QUBIQ / "images").glob("case*.png"))
    masks = sorted((QUBIQ / "masks").glob("case*_rater*.png"))
    raters = len(masks) // len(images)
    manifest = qubiq_manifest(QUBIQ, tmp_path / "qubiq.csv")
    df = read_manifest(manifest)
    assert len(df) == len(images) * raters == len(masks)
    assert sorted(df["annotator"].unique()) == sorted(f"rater{k}" for k in range(1, raters + 1))
    assert (df.groupby("case_id")["split"].nunique() == 1).all()  # raters of a case share its split
    # 128 px PNGs at spacing 1 resampled to 2 mm: 64 x 64 slices, no crop.
    out = ingest(manifest, tmp_path / "shards", Preprocessing(target_spacing=(2.0, 2.0), size=64), progress=False)
    info = load_dataset_info(out)
    assert info["num_samples"] == len(images) * raters
    for split, n in info["counts"]["split"].items():
        assert n == (df["split"] == split).sum()
    data = read_slices_local(out, "val")
    assert data["has_label"].all() and 0.05 < data["label"].mean() < 0.3
    # The image of a case is shared by its raters, the labels differ.
    rows = data["case_id"] == data["case_id"][0]
    assert (data["image"][rows] == data["image"][rows][0]).all()
    assert len({data["label"][i].tobytes() for i in range(len(rows)) if rows[i]}) > 1


@pytest.mark.skipif(not SHENZHEN.is_dir(), reason=f"{SHENZHEN} not present")
def test_shenzhen_manifest_and_small_ingest(tmp_path):
    manifest = shenzhen_manifest(SHENZHEN, tmp_path / "shenzhen.csv")
    df = read_manifest(manifest)
    n = len(list((SHENZHEN / "images").glob("*.png")))
    assert len(df) == n and (df["label_kind"] == "hq").all()
    counts = df["split"].value_counts().to_dict()
    assert counts == {"train": n - round(0.1 * n) - round(0.2 * n), "val": round(0.1 * n), "test": round(0.2 * n)}
    # Ingest a few rows (256 px at spacing 1 -> 4 mm: 64 px).
    small = tmp_path / "small.csv"
    pd.read_csv(manifest).groupby("split").head(2).to_csv(small, index=False)
    out = ingest(small, tmp_path / "shards", Preprocessing(target_spacing=(4.0, 4.0), size=64), progress=False)
    info = load_dataset_info(out)
    assert info["num_samples"] == 6 and info["shape"] == [1, 64, 64]
    data = read_slices_local(out)
    assert 0.05 < data["label"].mean() < 0.5


@pytest.mark.skipif(not CHAOS.is_dir(), reason=f"{CHAOS} not present")
def test_chaos_dicom_series_is_3d():
    image = read_image(CHAOS / "37" / "T1DUAL" / "DICOM_anon" / "InPhase")
    assert image.GetDimension() == 3
    assert image.GetSize()[:2] == (256, 256) and image.GetSize()[2] > 1
    assert image.GetSpacing()[2] > 2 * image.GetSpacing()[0]  # thick slices
