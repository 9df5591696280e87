"""The synthetic demo dataset: geometry, labels, splits, determinism, CLI."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest
import SimpleITK as sitk

from aide_ray.cli.main import main
from aide_ray.data.demo import DEMO_SPACING, demo_split_sizes, make_demo_data
from aide_ray.data.mask_noise import NoiseOptions
from aide_ray.data.manifest import read_manifest


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_demo_layout_labels_and_geometry(demo_manifest):
    df = read_manifest(demo_manifest)
    assert len(df) == 12
    assert df["split"].value_counts().to_dict() == {"train": 8, "val": 2, "test": 2}
    train = df[df["split"] == "train"]
    assert train["label_kind"].value_counts().to_dict() == {"lq": 7, "hq": 1}
    assert (train["clean_label"] != "").all()
    assert (df.loc[df["split"] != "train", "label_kind"] == "hq").all()
    for _, rec in df.iterrows():
        img, hq = sitk.ReadImage(rec["image"]), sitk.ReadImage(rec["clean_label"] or rec["label"])
        assert img.GetSize() == (64, 64, 8)
        assert img.GetSpacing() == pytest.approx(DEMO_SPACING)
        assert img.GetDirection() != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        assert img.GetOrigin() != (0.0, 0.0, 0.0)
        assert hq.GetSpacing() == img.GetSpacing() and hq.GetOrigin() == img.GetOrigin()
        arr, mask = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(hq)
        assert np.isfinite(arr).all() and arr.min() >= 0
        assert (mask.reshape(8, -1).sum(axis=1) > 0).all()  # organ on every slice
        assert arr[mask > 0].mean() > 1.5 * arr[mask == 0].mean()  # organ brighter than the rest
        if rec["label_kind"] == "lq":
            lq = sitk.GetArrayFromImage(sitk.ReadImage(rec["label"]))
            dice = 2 * (lq & mask).sum() / (lq.sum() + mask.sum())
            assert 0.5 < dice < 0.98


def test_demo_is_byte_identical_for_a_seed(demo_manifest, tmp_path):
    again = make_demo_data(tmp_path / "again")
    root_a, root_b = demo_manifest.parent, again.parent
    assert _files(root_a) == _files(root_b)
    _, mismatch, errors = filecmp.cmpfiles(root_a, root_b, [str(p) for p in _files(root_a)], shallow=False)
    assert mismatch == [] and errors == []
    other = make_demo_data(tmp_path / "other", cases=3, slices=2, size=32, seed=1)
    assert not filecmp.cmp(other.parent / "images" / "case_000.nii.gz", root_a / "images" / "case_000.nii.gz",
                           shallow=False)


def test_split_sizes():
    assert demo_split_sizes(12) == (8, 2, 2)
    assert demo_split_sizes(3) == (1, 1, 1)
    with pytest.raises(ValueError, match="cases must be >= 3"):
        demo_split_sizes(2)


def test_cli(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["demo-data", str(out), "--cases", "3", "--slices", "2", "--size", "32"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(read_manifest(out / "manifest.csv")) == 3
    assert main(["demo-data", str(out), "--cases", "3"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["demo-data", str(tmp_path / "e"), "--cases", "2"]) == 2
    assert "cases must be >= 3 (one per split), got 2" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_demo_with_a_careless_annotator(tmp_path):
    """mixed-over-seg: each noisy case is either the accurate annotator's (the clean mask) or over-segmented."""
    manifest = make_demo_data(tmp_path / "mixed", cases=12, slices=2, size=64, protocol="mixed-over-seg",
                              noise=NoiseOptions(magnitude=20.0))
    df = read_manifest(manifest)
    assert (df["noise_protocol"] == "mixed-over-seg").all()
    kinds = []
    for _, rec in df[df["label_kind"] == "lq"].iterrows():
        lq = sitk.GetArrayFromImage(sitk.ReadImage(rec["label"]))
        clean = sitk.GetArrayFromImage(sitk.ReadImage(rec["clean_label"]))
        if (lq == clean).all():
            kinds.append("accurate")
        else:
            assert (lq >= clean).all() and lq.sum() > 1.3 * clean.sum()  # 5 px of over-segmentation at 64 px
            kinds.append("careless")
    assert set(kinds) == {"accurate", "careless"}
    with pytest.raises(ValueError, match="protocol must be one of"):
        make_demo_data(tmp_path / "bad", cases=3, slices=1, size=32, protocol="sloppy")
    assert not (tmp_path / "bad").exists()


def test_cli_protocol(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["demo-data", str(out), "--cases", "3", "--slices", "2", "--size", "32", "--protocol", "over-seg",
                 "--magnitude", "12"]) == 0
    assert (read_manifest(out / "manifest.csv")["noise_protocol"] == "over-seg").all()
    with pytest.raises(SystemExit):
        main(["demo-data", str(tmp_path / "e"), "--protocol", "sloppy"])
    assert "invalid choice: 'sloppy'" in capsys.readouterr().err
    assert main(["demo-data", str(tmp_path / "f"), "--cases", "3", "--protocol", "over-seg", "--magnitude", "-1"]) == 2
    assert "magnitude must be > 0, got -1.0" in capsys.readouterr().err
