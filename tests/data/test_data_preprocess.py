"""Preprocessing SimpleITK images into slices and restoring predictions onto their grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from aide_ray.data.preprocess import Preprocessing, plan_geometry, preprocess_case, restore_geometry
from aide_ray.exceptions import InputError


def _image(arr, spacing=(0.7, 0.9, 3.0), origin=(1.0, -2.0, 5.0), direction=None):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing[: arr.ndim])
    img.SetOrigin(origin[: arr.ndim])
    if direction is not None:
        img.SetDirection(direction)
    return img


ROT = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z


def test_preprocessing_validation_and_dict_round_trip():
    prep = Preprocessing(target_spacing=[1, 2], size=32, normalize="minmax", clip_percentiles=[1, 99])
    assert prep.target_spacing == (1.0, 2.0)
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    with pytest.raises(ValueError, match="normalize must be one of \\['zscore', 'minmax'\\], got 'max'"):
        Preprocessing(normalize="max")
    with pytest.raises(ValueError, match="size must be an integer in \\[1, 4096\\], got 0"):
        Preprocessing(size=0)
    with pytest.raises(ValueError, match="target_spacing must be None or two positive numbers"):
        Preprocessing(target_spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match="clip_percentiles must be"):
        Preprocessing(clip_percentiles=(50, 10))
    with pytest.raises(ValueError, match=r"unknown preprocessing key\(s\) \['sise'\]"):
        Preprocessing.from_dict({"sise": 3})


@pytest.mark.parametrize("shape, size", [((5, 40, 36), 32), ((5, 20, 26), 32), ((1, 33, 30), 31), ((40, 36), 32)])
def test_preprocess_then_restore_is_exact_without_resampling(shape, size):
    rng = np.random.default_rng(0)
    label = (rng.random(shape) > 0.6).astype(np.uint8)
    # Crop removes pixels: keep the label inside the central window so restoration can be exact.
    if shape[-2] > size or shape[-1] > size:
        window = np.zeros(shape, bool)
        h, w = shape[-2:]
        window[..., (h - size) // 2 + 1:(h - size) // 2 + size - 1, (w - size) // 2 + 1:(w - size) // 2 + size - 1] = 1
        label = label * window
    ref = _image(rng.random(shape).astype(np.float32), direction=ROT if len(shape) == 3 else None)
    lab = _image(label, direction=ROT if len(shape) == 3 else None)
    prep = Preprocessing(size=size)
    case = preprocess_case([ref], lab, prep)
    s = 1 if len(shape) == 2 else shape[0]
    assert case.image.shape == (s, 1, size, size) and case.image.dtype == np.float32
    assert case.label.shape == (s, size, size) and case.label.dtype == np.uint8
    back = restore_geometry(case.label, ref, prep)
    assert np.array_equal(sitk.GetArrayFromImage(back), label)
    assert back.GetSize() == ref.GetSize()
    assert back.GetSpacing() == ref.GetSpacing()
    assert back.GetOrigin() == ref.GetOrigin()
    assert back.GetDirection() == ref.GetDirection()
    assert back.GetPixelID() == sitk.sitkUInt8


def test_resampling_changes_spacing_and_restores_grid():
    yy, xx = np.mgrid[:48, :40]
    disc = (((yy - 24) / 15.0) ** 2 + ((xx - 20) / 12.0) ** 2 < 1).astype(np.uint8)
    label = np.repeat(disc[None], 4, axis=0)
    ref = _image(label.astype(np.float32) * 100, spacing=(0.5, 0.5, 4.0), direction=ROT)
    lab = _image(label, spacing=(0.5, 0.5, 4.0), direction=ROT)
    prep = Preprocessing(target_spacing=(1.0, 1.0), size=32)
    plan = plan_geometry(ref, prep)
    assert plan.resampled and plan.resampled_size == (24, 20) and plan.pad == (4, 6)
    case = preprocess_case([ref], lab, prep)
    assert case.spacing == (1.0, 1.0, 4.0)
    # Foreground area in mm^2 is preserved by nearest-neighbour resampling (up to the edge).
    assert abs(case.label.sum() * 1.0 - label.sum() * 0.25) / (label.sum() * 0.25) < 0.1
    back = restore_geometry(case.label, ref, prep)
    restored = sitk.GetArrayFromImage(back)
    dice = 2 * (restored & label).sum() / (restored.sum() + label.sum())
    assert dice > 0.95
    assert back.GetSize() == ref.GetSize() and back.GetDirection() == ref.GetDirection()
    assert back.GetOrigin() == ref.GetOrigin() and back.GetSpacing() == ref.GetSpacing()


def test_normalization_zscore_and_minmax():
    rng = np.random.default_rng(1)
    arr = (rng.normal(300, 40, (2, 16, 16))).astype(np.float32)
    arr[0, 0, 0] = 1e6  # an outlier the percentile clip removes
    z = preprocess_case([_image(arr)], None, Preprocessing(size=16)).image
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    assert z.max() < 5
    m = preprocess_case([_image(arr)], None, Preprocessing(size=16, normalize="minmax")).image
    assert m.min() == 0.0 and m.max() == pytest.approx(1.0)
    padded = preprocess_case([_image(arr)], None, Preprocessing(size=20)).image
    assert (padded[:, :, :2, :] == padded.min()).all()


def test_two_modalities_stacked_in_order():
    a, b = np.zeros((2, 8, 8), np.float32), np.ones((2, 8, 8), np.float32)
    a[:, :4] = 5
    b[:, 4:] = 7
    case = preprocess_case([_image(a), _image(b)], None, Preprocessing(size=8, normalize="minmax"))
    assert case.image.shape == (2, 2, 8, 8)
    assert (case.image[:, 0, :4] == 1).all() and (case.image[:, 1, :4] == 0).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_intensities(bad):
    arr = np.ones((2, 8, 8), np.float32)
    arr[1, 2, 3] = bad
    with pytest.raises(InputError, match="image t1.nii.gz has 1 NaN or infinite intensities"):
        preprocess_case([_image(arr)], None, Preprocessing(size=8), names=["t1.nii.gz"])


def test_label_values_checked_on_the_way_in():
    with pytest.raises(InputError, match=r"found \[0, 1, 2\]"):
        preprocess_case([_image(np.zeros((2, 2), np.float32))], _image(np.array([[0, 1], [2, 0]], np.uint8)),
                        Preprocessing(size=2))


def test_geometry_mismatch_between_modalities_and_label_names_both_files():
    a = _image(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(InputError, match=r"between t1.nii and t2.nii: size"):
        preprocess_case([a, _image(np.zeros((2, 8, 9), np.float32))], None, Preprocessing(size=8),
                        names=["t1.nii", "t2.nii"])
    with pytest.raises(InputError, match=r"between t1.nii and seg.nii: size"):
        preprocess_case([a], _image(np.zeros((2, 9, 8), np.uint8)), Preprocessing(size=8), names=["t1.nii"],
                        label_name="seg.nii")


def test_restore_rejects_wrong_shape():
    ref = _image(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"pred must have shape \(S, size, size\) = \(2, 16, 16\)"):
        restore_geometry(np.zeros((3, 16, 16), np.uint8), ref, Preprocessing(size=16))
