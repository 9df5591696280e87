"""The pymic-jsrt and limited simulators, on masks and on whole manifests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from aide_ray.cli.main import main
from aide_ray.data.manifest import read_manifest
from aide_ray.data.mask_noise import scaled_range
from aide_ray.data.noise import choose_cases, corrupt_manifest, corrupt_mask, corrupt_volume
from aide_ray.data.image_io import read_label


def _disc(size=96, radius=25):
    yy, xx = np.mgrid[:size, :size]
    return (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < radius ** 2).astype(np.uint8)


def test_scaled_range():
    assert scaled_range(1.0) == (6, 12)
    assert scaled_range(64 / 256) == (2, 3)
    assert scaled_range(0.01) == (1, 1)
    with pytest.raises(ValueError, match="scale must be a positive finite number, got 0"):
        scaled_range(0)


def test_corrupt_mask_operations_and_magnitudes():
    """Dilation/erosion move the boundary by k in [6, 12] (city-block, as scipy's cross); else edge discs."""
    mask = _disc()
    kinds = []
    for seed in range(40):
        out = corrupt_mask(mask, np.random.default_rng(seed), scale=1.0)
        assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
        if (out >= mask).all() and out.sum() > mask.sum() and ndimage.binary_dilation(mask, iterations=6).sum() <= out.sum():
            d = ndimage.distance_transform_cdt(1 - mask, metric="taxicab")
            k = d[out > 0].max()
            assert 6 <= k <= 12 and np.array_equal(out, ndimage.binary_dilation(mask, iterations=int(k)))
            kinds.append("dilate")
        elif (out <= mask).all() and out.sum() < mask.sum() and np.array_equal(
                out, ndimage.binary_erosion(mask, iterations=int(ndimage.distance_transform_cdt(
                    mask, metric="taxicab")[(mask > 0) & (out == 0)].max()))):
            k = ndimage.distance_transform_cdt(mask, metric="taxicab")[(mask > 0) & (out == 0)].max()
            assert 6 <= k <= 12
            kinds.append("erode")
        else:
            # Edge distortion: changes lie within the largest disc radius of the original edge.
            changed = out != mask
            dist_out = ndimage.distance_transform_edt(1 - mask)
            dist_in = ndimage.distance_transform_edt(mask)
            assert (np.maximum(dist_out, dist_in)[changed] <= 12 + 1 + 12).all()
            assert changed.any()
            kinds.append("edge")
    counts = {k: kinds.count(k) for k in ("dilate", "erode", "edge")}
    assert all(n >= 5 for n in counts.values()), counts


def test_corrupt_mask_is_deterministic_and_scales():
    mask = _disc(64, 16)
    a = corrupt_mask(mask, np.random.default_rng(3), scale=0.25)
    b = corrupt_mask(mask, np.random.default_rng(3), scale=0.25)
    assert np.array_equal(a, b)
    # At scale 0.25 iterations/radii are 2..3 pixels, so the label stays close to the original.
    for seed in range(10):
        out = corrupt_mask(mask, np.random.default_rng(seed), scale=0.25)
        dice = 2 * (out & mask).sum() / (out.sum() + mask.sum())
        assert 0.7 < dice < 1.0
    assert corrupt_mask(np.zeros((8, 8), np.uint8), np.random.default_rng(0)).sum() == 0
    with pytest.raises(ValueError, match=r"mask2d must be 2D \(H, W\), got shape \(2, 8, 8\)"):
        corrupt_mask(np.zeros((2, 8, 8)), np.random.default_rng(0))


def test_corrupt_volume_is_per_slice():
    vol = np.repeat(_disc(64, 16)[None], 6, axis=0)
    out = corrupt_volume(vol, np.random.default_rng(0), scale=0.5)
    assert out.shape == vol.shape
    assert len({out[i].tobytes() for i in range(6)}) > 1  # slices draw their own operation


def test_choose_cases():
    ids = [f"c{i}" for i in range(240)]
    assert len(choose_cases(ids, 0.05, 0)) == 12
    assert choose_cases(ids, 0.05, 0) == choose_cases(list(reversed(ids)), 0.05, 0)
    assert len(choose_cases(ids[:8], 0.05, 0)) == 1
    assert choose_cases(ids, 0.0, 0) == set()


def _clean_manifest(demo_manifest, tmp_path):
    """The demo manifest with clean train labels (kind hq), as a user's clean dataset."""
    df = read_manifest(demo_manifest)
    train = df["split"] == "train"
    df.loc[train, "label"] = df.loc[train, "clean_label"]
    df.loc[train, "label_kind"] = "hq"
    df = df.drop(columns=["noise_protocol", "noise_seed"])
    path = tmp_path / "clean.csv"
    df.to_csv(path, index=False)
    return path


def test_pymic_jsrt_manifest(demo_manifest, tmp_path):
    clean = _clean_manifest(demo_manifest, tmp_path)
    out = corrupt_manifest(clean, tmp_path / "noisy", "pymic-jsrt", seed=0)
    src, df = read_manifest(clean), read_manifest(out)
    assert (df["noise_protocol"] == "pymic-jsrt").all() and (df["noise_seed"] == "0").all()
    held = df["split"] != "train"
    pd.testing.assert_frame_equal(df.loc[held, src.columns], src.loc[held])
    train = df[df["split"] == "train"]
    assert sorted(train["label_kind"].value_counts().items()) == [("hq", 1), ("lq", 7)]
    assert (train["clean_label"] == src.loc[train.index, "label"]).all()
    for row, rec in train[train["label_kind"] == "lq"].iterrows():
        noisy, ref = read_label(rec["label"]), read_label(rec["clean_label"])
        assert noisy.GetSpacing() == ref.GetSpacing() and noisy.GetOrigin() == ref.GetOrigin()
        assert noisy.GetDirection() == ref.GetDirection() and noisy.GetSize() == ref.GetSize()
        assert not np.array_equal(sitk.GetArrayFromImage(noisy), sitk.GetArrayFromImage(ref))
    # The demo generator uses the same simulator: same seed, same noisy labels.
    demo = read_manifest(demo_manifest)
    for row in train.index:
        assert train.loc[row, "label_kind"] == demo.loc[row, "label_kind"]
        assert np.array_equal(sitk.GetArrayFromImage(read_label(train.loc[row, "label"])),
                              sitk.GetArrayFromImage(read_label(demo.loc[row, "label"])))
    # Same seed: byte-identical; another seed: different labels.
    again = read_manifest(corrupt_manifest(clean, tmp_path / "again", "pymic-jsrt", seed=0))
    other = read_manifest(corrupt_manifest(clean, tmp_path / "other", "pymic-jsrt", seed=1))
    lq = train.index[train["label_kind"] == "lq"]
    for row in lq:
        with open(df.loc[row, "label"], "rb") as a, open(again.loc[row, "label"], "rb") as b:
            assert a.read() == b.read()
    assert any(other.loc[row, "label_kind"] == "lq" and not np.array_equal(
        sitk.GetArrayFromImage(read_label(other.loc[row, "label"])),
        sitk.GetArrayFromImage(read_label(df.loc[row, "label"]))) for row in lq)


def test_limited_manifest(demo_manifest, tmp_path):
    clean = _clean_manifest(demo_manifest, tmp_path)
    df = read_manifest(corrupt_manifest(clean, tmp_path / "lim", "limited", seed=0, labelled_fraction=0.25))
    train = df[df["split"] == "train"]
    assert sorted(train["label_kind"].value_counts().items()) == [("hq", 2), ("none", 6)]
    none = train[train["label_kind"] == "none"]
    assert (none["label"] == "").all() and (none["clean_label"] != "").all()
    assert (df.loc[df["split"] != "train", "label_kind"] == "hq").all()
    assert not (tmp_path / "lim" / "labels").exists()


def test_png_labels_stay_png_with_their_foreground_value(tmp_path):
    for i in range(3):
        sitk.WriteImage(sitk.GetImageFromArray((_disc(64, 20) * 255).astype(np.uint8)), str(tmp_path / f"m{i}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(np.full((64, 64), 9, np.uint8)), str(tmp_path / f"i{i}.png"))
    pd.DataFrame({"case_id": ["a", "b", "c"], "image": [f"i{i}.png" for i in range(3)],
                  "label": [f"m{i}.png" for i in range(3)], "label_kind": "hq", "split": "train"}
                 ).to_csv(tmp_path / "m.csv", index=False)
    df = read_manifest(corrupt_manifest(tmp_path / "m.csv", tmp_path / "out", "pymic-jsrt", clean_fraction=0.0,
                                        reference_size=64))
    for label in df["label"]:
        assert label.endswith(".png")
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(label)))) == {0, 255}


def test_cli(demo_manifest, tmp_path, capsys):
    clean = _clean_manifest(demo_manifest, tmp_path)
    assert main(["corrupt-labels", str(clean), "--out", str(tmp_path / "o"), "--protocol", "pymic-jsrt"]) == 0
    assert "mean Dice of noisy vs clean labels" in capsys.readouterr().out
    assert main(["corrupt-labels", str(clean), "--out", str(tmp_path / "o"), "--protocol", "limited"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["corrupt-labels", str(clean), "--out", str(tmp_path / "p"), "--protocol", "limited",
                 "--labelled-fraction", "1.5"]) == 2
    assert "labelled_fraction must be in [0, 1], got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_cli_systematic_protocol_and_its_options(demo_manifest, tmp_path, capsys):
    clean = _clean_manifest(demo_manifest, tmp_path)
    assert main(["corrupt-labels", str(clean), "--out", str(tmp_path / "over"), "--protocol", "over-seg",
                 "--magnitude", "16", "--clean-fraction", "0"]) == 0
    out = capsys.readouterr().out
    assert "mean Dice of noisy vs clean labels" in out
    df = read_manifest(tmp_path / "over" / "manifest.csv")
    noisy = df[(df["split"] == "train") & (df["label_kind"] == "lq")]
    assert len(noisy) and (noisy["noise_protocol"] == "over-seg").all()
    for rec in noisy.itertuples():
        grown = sitk.GetArrayFromImage(sitk.ReadImage(rec.label)) > 0
        given = sitk.GetArrayFromImage(sitk.ReadImage(rec.clean_label)) > 0
        assert (grown >= given).all() and grown.sum() > given.sum()  # every label grew
    assert main(["corrupt-labels", str(clean), "--out", str(tmp_path / "bad"), "--protocol", "missed-structure",
                 "--affected-fraction", "2"]) == 2
    assert "affected_fraction must be in [0, 1], got 2.0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
