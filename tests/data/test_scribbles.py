"""The scribble simulator: strokes drawn from masks, reproducibly, and `corrupt-labels --protocol scribbles`."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from aide_ray.cli.main import main
from aide_ray.data.image_io import read_image, scribble_array
from aide_ray.data.manifest import read_manifest, write_manifest
from aide_ray.data.noise import corrupt_manifest
from aide_ray.data.scribbles import ScribbleOptions, annotated_fraction, draw_scribbles, scribble_volume, skeleton
from aide_ray.exceptions import InputError
from aide_ray.label_values import UNANNOTATED

EIGHT = np.ones((3, 3), bool)


def _structures(size: int = 96) -> np.ndarray:
    """An ellipse, a square and a 1-pixel speck (class 1), and a bar of class 2."""
    yy, xx = np.mgrid[:size, :size]
    mask = ((((yy - 40) ** 2) / 4 + (xx - 30) ** 2) < 150).astype(np.uint8)
    mask[60:72, 70:82] = 1
    mask[8, 88] = 1
    mask[85:90, 10:50] = 2
    return mask


def _components(mask: np.ndarray) -> list[np.ndarray]:
    out = []
    for value in (1, 2):
        labels, n = ndimage.label(mask == value, structure=EIGHT)
        out += [(labels == i, value) for i in range(1, n + 1)]
    return out


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_every_structure_gets_a_stroke_of_its_own_class(scale):
    mask = _structures()
    scribble = draw_scribbles(mask, np.random.default_rng(0), scale=scale)
    assert scribble.dtype == np.uint8 and set(np.unique(scribble)) == {0, 1, 2, UNANNOTATED}
    annotated = scribble != UNANNOTATED
    # Scribble pixels agree with the mask's class (background strokes lie in the background).
    np.testing.assert_array_equal(scribble[annotated], mask[annotated])
    for component, value in _components(mask):
        assert (scribble[component] == value).any(), "a structure got no scribble pixel"
        # A stroke is thin: a small share of its structure (the speck is all stroke).
        if component.sum() > 50:
            assert (scribble[component] == value).sum() < 0.5 * component.sum()
    assert (scribble == 0).any()


def test_same_seed_same_scribbles_other_seed_other_strokes():
    mask = _structures()
    a = draw_scribbles(mask, np.random.default_rng(7))
    b = draw_scribbles(mask, np.random.default_rng(7))
    c = draw_scribbles(mask, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # With the whole skeleton kept there is nothing left to chance.
    whole = ScribbleOptions(keep_fraction=1.0)
    np.testing.assert_array_equal(draw_scribbles(mask, np.random.default_rng(1), options=whole),
                                  draw_scribbles(mask, np.random.default_rng(2), options=whole))


def test_stroke_follows_the_skeleton_at_the_documented_width_and_keep_fraction():
    mask = np.zeros((64, 64), np.uint8)
    mask[10:54, 20:40] = 1  # a bar: its skeleton runs along its length
    curve = skeleton(mask > 0)
    whole = draw_scribbles(mask, np.random.default_rng(0), options=ScribbleOptions(width=1, keep_fraction=1.0))
    np.testing.assert_array_equal(whole == 1, curve)  # width 1, all kept: exactly the skeleton
    part = draw_scribbles(mask, np.random.default_rng(0), options=ScribbleOptions(width=1, keep_fraction=0.5))
    assert (part == 1).sum() == int(np.ceil(0.5 * curve.sum())) and ((part == 1) <= curve).all()
    thick = draw_scribbles(mask, np.random.default_rng(0), options=ScribbleOptions(width=5, keep_fraction=1.0))
    # Every stroke pixel within (5 - 1) / 2 = 2 pixels of the skeleton, and the stroke is 5 pixels across.
    assert (ndimage.distance_transform_edt(~curve)[thick == 1] <= 2).all()
    assert (thick[32] == 1).sum() == 5


def test_background_strokes_are_a_ring_and_a_frame_at_the_documented_distances():
    mask = np.zeros((64, 64), np.uint8)
    mask[24:40, 24:40] = 1
    opts = ScribbleOptions(width=1, keep_fraction=1.0, background_distance=6, border_distance=3)
    scribble = draw_scribbles(mask, np.random.default_rng(0), options=opts)
    to_foreground = ndimage.distance_transform_edt(mask == 0)
    rows, cols = np.indices(mask.shape)
    to_border = np.minimum.reduce([rows, cols, 63 - rows, 63 - cols])
    ring = (to_foreground >= 6) & (to_foreground < 7)
    frame = to_border == 3
    # Every background scribble pixel lies on one of the two curves, and with keep 1 both are drawn whole.
    np.testing.assert_array_equal(scribble == 0, ring | frame)
    # Scaled like the noise radii: 6 px at 256 is 1.5 -> 2 px at 64, 3 px is 0.75 -> 1 px.
    small = draw_scribbles(mask, np.random.default_rng(0), scale=0.25, options=opts)
    np.testing.assert_array_equal(small == 0, ((to_foreground >= 2) & (to_foreground < 3)) | (to_border == 1))
    # The frame is cut to the background: a structure on it keeps its class there.
    mask[0:10, 20:30] = 1
    cut = draw_scribbles(mask, np.random.default_rng(0), options=opts)
    assert not ((cut == 0) & (mask == 1)).any() and ((cut == 0) & frame).any()


def test_slice_without_foreground_gets_a_background_stroke_and_coverage_is_bounded():
    empty = draw_scribbles(np.zeros((48, 48), np.uint8), np.random.default_rng(0))
    assert set(np.unique(empty)) == {0, UNANNOTATED}
    volume = np.stack([np.zeros((96, 96), np.uint8), _structures()])
    scribble = scribble_volume(volume, np.random.default_rng(0))
    assert scribble.shape == volume.shape
    # Documented coverage: strokes cover a few percent of the pixels, far below the masks they come from.
    assert 0.005 < annotated_fraction(scribble) < 0.15
    with pytest.raises(ValueError, match="keep fraction must be in"):
        ScribbleOptions(keep_fraction=0)
    with pytest.raises(ValueError, match="width must be > 0"):
        ScribbleOptions(width=-1)


# --------------------------------------------------------------------------- manifests


def _manifest(tmp_path, write_volume, blob, *, bad_second_label: bool = False):
    rows = []
    for i, split in enumerate(("train", "train", "val", "test")):
        write_volume(tmp_path / f"img{i}.nii.gz", np.full((3, 32, 32), 10.0 * i, np.float32))
        label = blob(radius=6 + i)
        if bad_second_label and i == 1:
            label[0, 0, 0] = 7
        write_volume(tmp_path / f"lab{i}.nii.gz", label)
        rows.append({"case_id": f"c{i}", "image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz",
                     "label_kind": "hq", "split": split})
    rows.append({"case_id": "c4", "image": "img0.nii.gz", "label": "", "label_kind": "none", "split": "train"})
    return write_manifest(pd.DataFrame(rows), tmp_path / "manifest.csv")


def test_train_labels_become_scribbles_val_and_test_keep_masks(tmp_path, write_volume, blob):
    src = _manifest(tmp_path, write_volume, blob)
    out = corrupt_manifest(src, tmp_path / "a", "scribbles", seed=3)
    df = read_manifest(out).set_index("case_id")
    assert list(df["label_kind"]) == ["scribble", "scribble", "hq", "hq", "none"]
    assert df.loc["c2", "label"] == str(tmp_path / "lab2.nii.gz") and not df.loc["c2", "clean_label"]
    for case in ("c0", "c1"):
        assert df.loc[case, "clean_label"] == str(tmp_path / f"lab{case[1]}.nii.gz")
        scribble_image = read_image(df.loc[case, "label"])
        mask_image = read_image(df.loc[case, "clean_label"])
        assert scribble_image.GetSize() == mask_image.GetSize()
        assert scribble_image.GetSpacing() == pytest.approx(mask_image.GetSpacing())
        scribble = scribble_array(scribble_image, "s")
        mask = sitk.GetArrayFromImage(mask_image)
        annotated = scribble != UNANNOTATED
        np.testing.assert_array_equal(scribble[annotated], mask[annotated])
        assert all((s == 1).any() and (s == 0).any() for s in scribble)  # every slice: both strokes
    assert (df["noise_protocol"] == "scribbles").all()

    again = corrupt_manifest(src, tmp_path / "b", "scribbles", seed=3)
    other = corrupt_manifest(src, tmp_path / "c", "scribbles", seed=4)
    for case in ("c0", "c1"):
        name = f"labels/{case}.nii.gz"
        same = [sitk.GetArrayFromImage(sitk.ReadImage(str(p.parent / name))) for p in (out, again)]
        np.testing.assert_array_equal(*same)
    assert any(not np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out.parent / f"labels/{c}.nii.gz"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(other.parent / f"labels/{c}.nii.gz"))))
               for c in ("c0", "c1"))


def test_a_failure_leaves_no_output_and_no_temporary_folder(tmp_path, write_volume, blob):
    src = _manifest(tmp_path, write_volume, blob, bad_second_label=True)
    before = set(os.listdir(tmp_path))
    with pytest.raises(InputError, match=r"manifest.csv row 2: label .*lab1.nii.gz must contain only"):
        corrupt_manifest(src, tmp_path / "out", "scribbles", seed=0)
    # The first case's scribble was written into the temporary folder, which is gone with it.
    assert set(os.listdir(tmp_path)) == before


def test_cli_scribbles_with_options(tmp_path, write_volume, blob, capsys):
    src = _manifest(tmp_path, write_volume, blob)
    code = main(["corrupt-labels", str(src), "--out", str(tmp_path / "s"), "--protocol", "scribbles",
                 "--scribble-width", "8", "--scribble-keep", "1", "--scribble-distance", "16",
                 "--scribble-border", "16"])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {tmp_path / 's' / 'manifest.csv'} (train rows: none 1, scribble 2)")
    assert "% of the pixels (mean over cases)" in line
    scribble = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "s" / "labels" / "c0.nii.gz")))
    # 8 px at 256 is 1 px at 32: strokes one pixel wide; 16 px at 256 is 2 px from the disc and from the border.
    mask = blob(radius=6)
    to_disc = ndimage.distance_transform_edt(mask[0] == 0)
    rows, cols = np.indices(mask[0].shape)
    to_border = np.minimum.reduce([rows, cols, 31 - rows, 31 - cols])
    np.testing.assert_array_equal(scribble[0] == 0, ((to_disc >= 2) & (to_disc < 3)) | (to_border == 2))
    assert main(["corrupt-labels", str(src), "--out", str(tmp_path / "t"), "--protocol", "scribbles",
                 "--scribble-keep", "1.5"]) == 2
    assert "keep fraction must be in (0, 1]" in capsys.readouterr().err
