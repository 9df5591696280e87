"""Reading and writing images and labels (SimpleITK, PNG, DICOM series) and the same-grid check."""

from __future__ import annotations

import locale

import numpy as np
import pytest
import SimpleITK as sitk

from aide_ray.data.image_io import (
    check_same_geometry,
    label_array,
    read_image,
    read_label,
    read_label_map,
    write_label,
)
from aide_ray.exceptions import InputError


def _image(arr, spacing=(0.7, 0.9, 3.0), origin=(1.0, -2.0, 5.0), direction=None):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing[: arr.ndim])
    img.SetOrigin(origin[: arr.ndim])
    if direction is not None:
        img.SetDirection(direction)
    return img


ROT = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z


def test_label_values_and_255_masks():
    assert label_array(_image(np.array([[0, 255], [255, 0]], np.uint8))).tolist() == [[0, 1], [1, 0]]
    with pytest.raises(InputError, match=r"label seg.nii.gz must contain only the values 0 and 1 .*found \[0, 1, 2\]"):
        label_array(_image(np.array([[0, 1], [2, 0]], np.uint8)), "seg.nii.gz")


def test_geometry_mismatch_names_both_files():
    a = _image(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(InputError, match=r"geometry mismatch between a.nii and b.nii: size \(8, 8, 2\) vs \(8, 8, 3\)"):
        check_same_geometry(a, _image(np.zeros((3, 8, 8), np.float32)), "a.nii", "b.nii")
    with pytest.raises(InputError, match=r"between a.nii and b.nii: spacing"):
        check_same_geometry(a, _image(np.zeros((2, 8, 8), np.float32), spacing=(1, 1, 1)), "a.nii", "b.nii")
    with pytest.raises(InputError, match=r"between a.nii and b.nii: origin"):
        check_same_geometry(a, _image(np.zeros((2, 8, 8), np.float32), origin=(0, 0, 0)), "a.nii", "b.nii")
    with pytest.raises(InputError, match=r"between a.nii and b.nii: direction"):
        check_same_geometry(a, _image(np.zeros((2, 8, 8), np.float32), direction=ROT), "a.nii", "b.nii")
    check_same_geometry(a, _image(np.ones((2, 8, 8), np.uint8), origin=(1.0004, -2.0, 5.0)), "a.nii", "b.nii")


def test_read_image_formats_and_errors(tmp_path):
    vol = _image(np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5), direction=ROT)
    sitk.WriteImage(vol, str(tmp_path / "v.nii.gz"))
    got = read_image(tmp_path / "v.nii.gz")
    assert got.GetDimension() == 3 and got.GetSize() == (5, 4, 2)

    rgb = sitk.GetImageFromArray(np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 10, 10]]], np.uint8),
                                 isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.png"))
    gray = read_image(tmp_path / "rgb.png")
    assert gray.GetDimension() == 2 and gray.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_allclose(sitk.GetArrayFromImage(gray), [[76.245, 149.685], [29.07, 10.0]], rtol=1e-5)

    sitk.WriteImage(sitk.GetImageFromArray(np.array([[0, 255], [0, 0]], np.uint8)), str(tmp_path / "m.png"))
    assert sitk.GetArrayFromImage(read_label(tmp_path / "m.png")).tolist() == [[0, 1], [0, 0]]

    with pytest.raises(InputError, match="image file not found: .*missing.nii.gz"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image" * 20)
    with pytest.raises(InputError, match="cannot read image .*junk.nii.gz"):
        read_image(tmp_path / "junk.nii.gz")
    raw = (tmp_path / "v.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cannot read image .*cut.nii.gz: file is truncated"):
        read_image(tmp_path / "cut.nii.gz")
    sitk.WriteImage(vol, str(tmp_path / "v.nii"))
    raw = (tmp_path / "v.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[:-20])
    with pytest.raises(InputError, match="cannot read image .*cut.nii: file is truncated"):
        read_image(tmp_path / "cut.nii")
    raw = (tmp_path / "m.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cannot read image .*cut.png"):
        read_image(tmp_path / "cut.png")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32), isVector=False),
                    str(tmp_path / "four.nii.gz"))
    with pytest.raises(InputError, match=r"image .*four.nii.gz must be 2D or 3D, got 4D"):
        read_image(tmp_path / "four.nii.gz")
    two = sitk.GetImageFromArray(np.zeros((3, 4, 2), np.float32), isVector=True)
    sitk.WriteImage(two, str(tmp_path / "vec.nii.gz"))
    with pytest.raises(InputError, match=r"vec.nii.gz must be scalar \(grayscale\) or RGB, got 2 components"):
        read_image(tmp_path / "vec.nii.gz")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(InputError, match="folder holds no DICOM series"):
        read_image(tmp_path / "emptydir")


@pytest.fixture
def keep_locale():
    """GDCM's DICOM writer sets the process's LC_CTYPE to "C" and leaves it so, which turns Python's default
    text encoding into ASCII for every later test (a report page with "±" then fails to read back)."""
    saved = locale.setlocale(locale.LC_ALL, None)
    yield
    locale.setlocale(locale.LC_ALL, saved)


def test_read_dicom_series_folder(tmp_path, keep_locale):
    vol = _image((np.arange(3 * 6 * 5) % 50).astype(np.int16).reshape(3, 6, 5), spacing=(0.8, 0.8, 2.5))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(3):
        sl = vol[:, :, z]
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.42")
        sl.SetMetaData("0020|0013", str(z + 1))
        sl.SetMetaData("0008|0060", "MR")
        sl.SetMetaData("0020|0032", "\\".join(map(str, vol.TransformIndexToPhysicalPoint((0, 0, z)))))
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        writer.SetFileName(str(tmp_path / f"s{z}.dcm"))
        writer.Execute(sl)
    got = read_image(tmp_path)
    assert got.GetSize() == (5, 6, 3)
    assert got.GetSpacing()[2] == pytest.approx(2.5, abs=1e-3)
    assert np.array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(vol))



@pytest.mark.parametrize("suffix, foreground", [(".nii.gz", 1), (".png", 255)])
def test_write_label_keeps_geometry_and_reads_back(tmp_path, suffix, foreground):
    shape = (6, 5) if suffix == ".png" else (2, 6, 5)
    ref = _image(np.zeros(shape, np.float32), direction=ROT if len(shape) == 3 else None)
    mask = np.zeros(shape, np.uint8)
    mask[..., 1:4, 2:4] = 7  # any non-zero value is foreground
    write_label(mask, ref, tmp_path / f"m{suffix}", foreground=foreground)
    raw = read_image(tmp_path / f"m{suffix}")
    assert int(sitk.GetArrayFromImage(raw).max()) == foreground
    back = read_label(tmp_path / f"m{suffix}")
    assert np.array_equal(sitk.GetArrayFromImage(back), (mask > 0).astype(np.uint8))
    if suffix != ".png":  # PNG stores no spacing, origin or direction
        check_same_geometry(ref, back, "ref", "written")


def test_read_label_map_keeps_classes_and_maps_255_masks(tmp_path):
    classes = np.array([[0, 1], [2, 3]], np.uint8)
    sitk.WriteImage(_image(classes), str(tmp_path / "c.nii.gz"))
    image, arr = read_label_map(tmp_path / "c.nii.gz")
    assert arr.dtype == np.int64 and arr.tolist() == classes.tolist() and image.GetSize() == (2, 2)
    sitk.WriteImage(sitk.GetImageFromArray(np.array([[0, 255], [255, 0]], np.uint8)), str(tmp_path / "m.png"))
    assert read_label_map(tmp_path / "m.png")[1].tolist() == [[0, 1], [1, 0]]
    sitk.WriteImage(_image(np.array([[0.0, 1.5]], np.float32)), str(tmp_path / "f.nii.gz"))
    with pytest.raises(InputError, match=r"label map .*f.nii.gz must hold integer class values"):
        read_label_map(tmp_path / "f.nii.gz")
    sitk.WriteImage(_image(np.array([[0, -1]], np.int16)), str(tmp_path / "n.nii.gz"))
    with pytest.raises(InputError, match=r"label map .*n.nii.gz must hold class values >= 0, found -1"):
        read_label_map(tmp_path / "n.nii.gz")
