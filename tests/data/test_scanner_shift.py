"""The simulated scanner shift (aide_ray.data.scanner_shift) on tiny arrays, images and manifests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from aide_ray.data.manifest import read_manifest
from aide_ray.data.scanner_shift import ScannerShift, shift_array, shift_image, shift_manifest
from aide_ray.exceptions import InputError

OFF = dict(gamma=1.0, noise_std=0.0, blur_sigma=0.0, resolution=1.0)  # every knob at "no change"


def _pattern(size: int = 32, dtype=np.uint8) -> np.ndarray:
    """A ramp with a bright square and fine stripes: mid-tones, edges and high frequencies, values 0..255."""
    yy, xx = np.mgrid[:size, :size]
    img = 40 + 120 * xx / (size - 1) + 40 * (yy % 2)
    img[size // 4:size // 2, size // 4:size // 2] = 255
    img[0, 0] = 0
    return img.astype(dtype)


def _hf(a: np.ndarray) -> float:
    """High-frequency energy: mean |Laplacian| of the image's last two axes."""
    a = a.astype(np.float64)
    return float(np.mean([np.abs(ndimage.laplace(s)).mean() for s in a.reshape(-1, *a.shape[-2:])]))


def _only(**knob) -> ScannerShift:
    return ScannerShift(**{**OFF, **knob})


def test_every_knob_off_returns_the_image_unchanged() -> None:
    for arr in (_pattern(), _pattern(dtype=np.float32) / 7.0, np.stack([_pattern(16)] * 3).astype(np.int16) - 300):
        out = shift_array(arr, np.random.default_rng(0), _only())
        np.testing.assert_array_equal(out, arr)
        assert out.dtype == arr.dtype


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(32, 32), (3, 32, 24)])
def test_shape_and_dtype_are_kept_and_integers_stay_in_range(dtype, shape) -> None:
    arr = np.resize(_pattern(), shape).astype(dtype)
    out = shift_array(arr, np.random.default_rng(1), ScannerShift(noise_std=0.5))  # noise that would overflow
    assert out.shape == arr.shape and out.dtype == arr.dtype
    assert out.min() >= arr.min() and out.max() <= arr.max()  # clipped to the image's own range


def test_the_same_seed_gives_the_same_image_and_another_seed_another() -> None:
    arr = _pattern()
    a = shift_array(arr, np.random.default_rng(5))
    np.testing.assert_array_equal(a, shift_array(arr, np.random.default_rng(5)))
    assert not np.array_equal(a, shift_array(arr, np.random.default_rng(6)))
    # Without noise nothing is random: any generator gives the same image.
    quiet = ScannerShift(noise_std=0.0)
    np.testing.assert_array_equal(shift_array(arr, np.random.default_rng(5), quiet),
                                  shift_array(arr, np.random.default_rng(6), quiet))


def test_gamma_above_one_darkens_the_mid_tones_and_below_one_brightens_them() -> None:
    arr = _pattern()
    dark = shift_array(arr, np.random.default_rng(0), _only(gamma=2.0))
    bright = shift_array(arr, np.random.default_rng(0), _only(gamma=0.5))
    assert dark.astype(float).mean() < arr.mean() < bright.astype(float).mean()
    for out in (dark, bright):  # the ends of the range stay where they are, and the order of intensities too
        assert (out.min(), out.max()) == (arr.min(), arr.max())
        order = np.argsort(arr.ravel(), kind="stable")
        assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()


def test_noise_adds_its_standard_deviation_of_the_range() -> None:
    arr = np.full((64, 64), 100.0)
    arr[0, 0], arr[0, 1] = 0.0, 200.0  # range 200; the rest far from the clip
    for std in (0.02, 0.05):
        out = shift_array(arr, np.random.default_rng(0), _only(noise_std=std))
        diff = (out - arr)[1:, :]
        assert diff.std() == pytest.approx(std * 200.0, rel=0.1) and abs(diff.mean()) < 0.5


def test_blur_and_a_coarser_detector_remove_high_frequencies() -> None:
    arr = _pattern(64)
    rng = np.random.default_rng(0)
    light, strong = (shift_array(arr, rng, _only(blur_sigma=s), scale=1.0) for s in (0.7, 2.0))
    assert _hf(strong) < _hf(light) < _hf(arr)
    assert abs(float(strong.mean()) - float(arr.mean())) < 2.0  # blur moves no intensity on average
    coarse = shift_array(arr, rng, _only(resolution=0.5))
    coarser = shift_array(arr, rng, _only(resolution=0.25))
    assert _hf(coarser) < _hf(coarse) < _hf(arr)
    # A smooth ramp survives a coarser grid almost unchanged: resampling loses detail, not the picture.
    ramp = np.tile(np.linspace(0.0, 1.0, 64), (64, 1))
    np.testing.assert_allclose(shift_array(ramp, rng, _only(resolution=0.5))[:, 2:-2], ramp[:, 2:-2], atol=0.01)


def test_blur_is_given_at_the_reference_size_and_stays_in_plane() -> None:
    arr = _pattern(64).astype(np.float64)
    rng = np.random.default_rng(0)
    # 4 px at 256 on a 64 px image is 1 px.
    np.testing.assert_allclose(shift_array(arr, rng, _only(blur_sigma=4.0)),
                               shift_array(arr, rng, _only(blur_sigma=1.0), scale=1.0))
    volume = np.stack([np.full((64, 64), 50.0), arr, arr])
    volume[0, 0, 0], volume[0, 0, 1] = 0.0, 255.0  # the same range in every slice
    out = shift_array(volume, rng, _only(blur_sigma=8.0, resolution=0.5))
    # Each slice comes out as it would alone: slice 0 never sees its neighbours.
    np.testing.assert_allclose(out[0], shift_array(volume[0], rng, _only(blur_sigma=8.0, resolution=0.5)))
    assert np.abs(out[0, 16:-16, 16:-16] - 50.0).max() < 1e-6
    np.testing.assert_allclose(out[1], out[2])


@pytest.mark.parametrize("knobs, message", [
    ({"gamma": 0.0}, r"gamma must be > 0"),
    ({"gamma": float("nan")}, r"gamma must be a finite number"),
    ({"noise_std": -0.1}, r"noise_std must be >= 0"),
    ({"blur_sigma": -1.0}, r"blur_sigma must be >= 0"),
    ({"resolution": 0.0}, r"resolution must be in \(0, 1\]"),
    ({"resolution": 1.5}, r"resolution must be in \(0, 1\]"),
    ({"reference_size": 0}, r"reference_size must be an integer >= 1"),
    ({"gamma": True}, r"gamma must be a finite number, got True"),
    ({"noise_std": "0.1"}, r"noise_std must be a finite number"),
])
def test_bad_parameters_fail_naming_the_knob(knobs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScannerShift(**knobs)


def test_bad_arrays_fail() -> None:
    with pytest.raises(ValueError, match=r"must be \(H, W\) or \(S, H, W\), got shape \(5,\)"):
        shift_array(np.zeros(5), np.random.default_rng(0))
    with pytest.raises(ValueError, match="NaN or infinite"):
        shift_array(np.array([[0.0, np.nan], [1.0, 2.0]]), np.random.default_rng(0))


def test_shift_image_keeps_the_geometry_and_pixel_type() -> None:
    image = sitk.GetImageFromArray(np.stack([_pattern()] * 2))
    image.SetSpacing((0.5, 0.7, 3.0))
    image.SetOrigin((1.0, 2.0, -4.0))
    out = shift_image(image, np.random.default_rng(0))
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection", "GetPixelID"):
        assert getattr(out, get)() == getattr(image, get)()
    assert not np.array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(image))


def _folder(tmp_path: Path, cases: int = 4, raters: int = 1) -> Path:
    (tmp_path / "img").mkdir()
    rows = []
    for c in range(cases):
        sitk.WriteImage(sitk.GetImageFromArray(_pattern()), str(tmp_path / "img" / f"c{c}.png"))
        for r in range(raters):
            mask = np.zeros((32, 32), np.uint8)
            mask[8:20 + r, 8:20] = 255
            sitk.WriteImage(sitk.GetImageFromArray(mask), str(tmp_path / "img" / f"c{c}_m{r}.png"))
            rows.append({"case_id": f"c{c}", "image": f"img/c{c}.png", "label": f"img/c{c}_m{r}.png",
                         "label_kind": "hq", "annotator": f"r{r}" if raters > 1 else "",
                         "split": "train" if c < cases - 1 else "test"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_shift_manifest_shifts_the_named_cases_images_only(tmp_path: Path) -> None:
    manifest = _folder(tmp_path, raters=2)
    out = shift_manifest(manifest, tmp_path / "a", 0, cases={"c1", "c3"})
    before, after = read_manifest(manifest), read_manifest(out)
    assert len(after) == len(before) == 8
    assert list(after["domain"]) == ["source"] * 2 + ["target"] * 2 + ["source"] * 2 + ["target"] * 2
    for col in ("label", "label_kind", "split", "annotator"):  # labels untouched
        assert (after[col] == before[col]).all()
    source = (after["domain"] == "source").to_numpy()
    assert (after["image"].to_numpy()[source] == before["image"].to_numpy()[source]).all()
    # One file per case inside the folder (its path written relative to it), shared by the case's raters.
    assert set(pd.read_csv(out)["image"].to_numpy()[~source]) == {"images/c1.png", "images/c3.png"}
    shifted = sitk.ReadImage(str(tmp_path / "a" / "images" / "c1.png"))
    assert shifted.GetPixelID() == sitk.sitkUInt8 and shifted.GetSize() == (32, 32)
    assert not np.array_equal(sitk.GetArrayFromImage(shifted), _pattern())
    # The same seed writes the same bytes; another seed other noise; the cases' images differ from each other
    # only by their noise (same input image, generators keyed on the case).
    again = shift_manifest(manifest, tmp_path / "b", 0, cases=["c3", "c1"])
    other = shift_manifest(manifest, tmp_path / "c", 1, cases={"c1", "c3"})
    for case in ("c1", "c3"):
        name = f"images/{case}.png"
        assert _digest(str(again.parent / name)) == _digest(str(out.parent / name))
        assert _digest(str(other.parent / name)) != _digest(str(out.parent / name))
    assert _digest(str(out.parent / "images/c1.png")) != _digest(str(out.parent / "images/c3.png"))


def test_shift_manifest_errors(tmp_path: Path) -> None:
    manifest = _folder(tmp_path)
    with pytest.raises(InputError, match=r"m\.csv: cases to shift not in the manifest: \['c9'\]"):
        shift_manifest(manifest, tmp_path / "a", 0, cases={"c1", "c9"})
    assert not (tmp_path / "a").exists()
    shift_manifest(manifest, tmp_path / "a", 0, cases={"c1"})
    with pytest.raises(FileExistsError, match="already exists"):
        shift_manifest(manifest, tmp_path / "a", 0, cases={"c1"})
    shift_manifest(manifest, tmp_path / "a", 0, cases={"c2"}, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "a" / "images").iterdir()) == ["c2.png"]
