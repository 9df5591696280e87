"""Reading and writing the images and label files of a dataset (SimpleITK, PNG, DICOM series).

Ingest, ``aide-ray predict``, ``aide-ray evaluate``, the noise simulation and
the label export all read user files; this module is the one place that knows
the formats and their traps (truncated NIfTI files that ITK zero-fills, RGB
PNGs, one-series DICOM folders, {0, 255} masks), so every reader rejects bad
input with the same message naming the file. Turning what is read into
training slices is :mod:`aide_ray.data.preprocess`'s job.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from aide_ray.exceptions import InputError
from aide_ray.label_values import UNANNOTATED

__all__ = [
    "RASTER_SUFFIXES",
    "SCRIBBLE_CLASSES",
    "read_image",
    "read_label",
    "read_label_map",
    "label_array",
    "scribble_array",
    "write_label",
    "write_scribble",
    "check_same_geometry",
]

# Class indices an ingested label may hold: labels are binary (0 background, 1 foreground).
SCRIBBLE_CLASSES: tuple[int, ...] = (0, 1)

# Suffixes of 2D raster files (read as one 2D slice; RGB becomes gray).
RASTER_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a 2D or 3D scalar image: a file, or a folder holding one DICOM series.

    PNG/JPEG/TIFF/BMP files are 2D; RGB ones are converted to grayscale
    (ITU-R 601 luma: 0.299 R + 0.587 G + 0.114 B).

    Args:
        path: image file (NIfTI, NRRD, MHA, PNG, ...) or DICOM series folder.
    Returns:
        A 2D or 3D scalar ``sitk.Image`` (pixel type as stored; float32 for RGB input).
    Raises:
        InputError: naming the file, if it is missing, unreadable or
            truncated, 4D, or a vector image other than RGB.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    try:
        if path.is_dir():
            image = _read_dicom_series(path)
        else:
            if path.name.lower().endswith((".nii", ".nii.gz")):
                _check_nifti_complete(path)
            image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"cannot read image {path}: {_itk_reason(e)}") from None
    dim = image.GetDimension()
    if dim not in (2, 3):
        raise InputError(f"image {path} must be 2D or 3D, got {dim}D with size {image.GetSize()}")
    if dim == 3 and path.suffix.lower() in RASTER_SUFFIXES and image.GetSize()[2] == 1:
        image = image[:, :, 0]
    ncomp = image.GetNumberOfComponentsPerPixel()
    if ncomp == 3:
        image = _rgb_to_gray(image)
    elif ncomp != 1:
        raise InputError(f"image {path} must be scalar (grayscale) or RGB, got {ncomp} components per pixel")
    return image


def _check_nifti_complete(path: Path) -> None:
    """Raise InputError if a NIfTI file is truncated or holds NaN/Inf voxels.

    ITK's NIfTI reader silently zero-fills a truncated file and reads NaN and
    infinite voxels as 0, so a partial download or a broken export would
    otherwise become plausible-looking data.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"cannot read image {path}: file is truncated or corrupt ({e})") from None
    hdr = _nifti_header(raw[:540])
    if hdr is None:
        return  # not NIfTI-1/2 after all: let ITK report it
    offset, nbytes, dtype = hdr
    if len(raw) < offset + nbytes:
        raise InputError(f"cannot read image {path}: file is truncated ({len(raw)} bytes, "
                         f"header declares {offset + nbytes})")
    if dtype is not None:
        data = np.frombuffer(raw, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
        bad = int(data.size - np.isfinite(data).sum())
        if bad:
            raise InputError(f"image {path} has {bad} NaN or infinite intensities; all values must be finite")


def _nifti_header(header: bytes) -> tuple[int, int, np.dtype | None] | None:
    """(vox_offset, voxel bytes, float dtype or None) from a NIfTI-1/2 header, or None."""
    for endian in ("<", ">"):
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
        elif len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
        else:
            continue
        ndim = dims[0]
        if not 1 <= ndim <= 7:
            return None
        nvox = int(np.prod([max(int(d), 1) for d in dims[1:ndim + 1]]))
        floats = {16: "f4", 64: "f8"}  # NIFTI_TYPE_FLOAT32, NIFTI_TYPE_FLOAT64
        dtype = np.dtype(endian + floats[datatype]) if datatype in floats else None
        return max(int(offset), 348), nvox * max(int(bitpix), 8) // 8, dtype
    return None


def _read_dicom_series(folder: Path) -> sitk.Image:
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise InputError(f"cannot read image {folder}: folder holds no DICOM series")
    if len(ids) > 1:
        raise InputError(f"cannot read image {folder}: folder holds {len(ids)} DICOM series {list(ids)}; "
                         f"put each series in its own folder")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))
    return reader.Execute()


def _itk_reason(e: RuntimeError) -> str:
    # ITK messages are multi-line with source locations; keep the informative line.
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.lower().startswith(("itk::error", "exception thrown")):
            continue
        if ": " in ln and not ln.startswith("/"):
            return ln
    return lines[-1] if lines else "unknown error"


def _rgb_to_gray(image: sitk.Image) -> sitk.Image:
    channels = [sitk.Cast(sitk.VectorIndexSelectionCast(image, i), sitk.sitkFloat32) for i in range(3)]
    gray = channels[0] * 0.299 + channels[1] * 0.587 + channels[2] * 0.114
    gray.CopyInformation(channels[0])
    return gray


def label_array(label: sitk.Image, name: str = "label") -> np.ndarray:
    """A label image's array as uint8 {0, 1}.

    Values must be {0, 1}; the 8-bit mask convention {0, 255} is accepted and
    mapped to {0, 1}.

    Args:
        label: 2D or 3D label image.
        name: file name for error messages.
    Returns:
        Array of ``sitk.GetArrayFromImage`` shape, uint8 in {0, 1}.
    Raises:
        InputError: listing the values found, if they are not {0, 1} or {0, 255}.
    """
    arr = sitk.GetArrayFromImage(label)
    values = np.unique(arr)
    if np.isin(values, (0, 1)).all():
        return arr.astype(np.uint8, copy=False)
    if np.isin(values, (0, 255)).all():
        return (arr == 255).astype(np.uint8)
    shown = ", ".join(f"{v:g}" for v in values[:10].tolist()) + (", ..." if len(values) > 10 else "")
    raise InputError(f"label {name} must contain only the values 0 and 1 (or 0 and 255), found [{shown}]")


def scribble_array(label: sitk.Image, name: str = "scribble") -> np.ndarray:
    """A scribble label's array as uint8: class indices where annotated, ``UNANNOTATED`` (255) elsewhere.

    Unlike :func:`label_array`, 255 is not read as foreground: in a scribble it
    means "nobody annotated this pixel", so {0, 255} is a background-only scribble.

    Args:
        label: 2D or 3D scribble image.
        name: file name for error messages.
    Returns:
        Array of ``sitk.GetArrayFromImage`` shape, uint8 in :data:`SCRIBBLE_CLASSES` and 255.
    Raises:
        InputError: naming the file and the values outside the classes and 255.
    """
    arr = sitk.GetArrayFromImage(label)
    values = np.unique(arr)
    allowed = (*SCRIBBLE_CLASSES, UNANNOTATED)
    bad = values[~np.isin(values, allowed)]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:10].tolist()) + (", ..." if bad.size > 10 else "")
        classes = " and ".join(str(c) for c in SCRIBBLE_CLASSES)
        raise InputError(f"scribble label {name} must contain only the classes {classes} and {UNANNOTATED} "
                         f"(unannotated), found [{shown}]")
    return arr.astype(np.uint8, copy=False)


def read_label(path: str | os.PathLike) -> sitk.Image:
    """Read a binary label image as uint8 {0, 1}, keeping its geometry.

    Raises:
        InputError: as :func:`read_image`, or if values are not {0, 1} / {0, 255}.
    """
    image = read_image(path)
    arr = label_array(image, str(path))
    out = sitk.GetImageFromArray(arr, isVector=False)
    out.CopyInformation(image)
    return out


def read_label_map(path: str | os.PathLike) -> tuple[sitk.Image, np.ndarray]:
    """Read a label map (a prediction or a reference): the image and its (numpy-order) integer array.

    Unlike :func:`read_label` (binary training labels), any class values are
    accepted. 8-bit binary masks stored as {0, 255} (viewable PNGs) become
    {0, 1}; other values are taken as class indices.

    Raises:
        InputError: if the file cannot be read or holds non-integer values.
    """
    image = read_image(path)
    arr = sitk.GetArrayFromImage(image)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError(f"label map {path} must hold integer class values, found non-integer values")
    arr = arr.astype(np.int64)
    if arr.min(initial=0) < 0:
        raise InputError(f"label map {path} must hold class values >= 0, found {int(arr.min())}")
    values = np.unique(arr)
    if values.size and values.max() == 255 and np.isin(values, (0, 255)).all():
        arr = (arr == 255).astype(np.int64)
    return image, arr


def write_label(mask: np.ndarray, reference: sitk.Image, path: str | os.PathLike, *, foreground: int = 1) -> None:
    """Write a {0, 1} mask with ``reference``'s geometry.

    Args:
        mask: uint8 array of ``sitk.GetArrayFromImage(reference)`` shape.
        reference: image whose size, spacing, origin and direction are copied.
        path: output file; the format follows the suffix.
        foreground: stored value of foreground pixels (255 for viewable PNGs).
    """
    out = sitk.GetImageFromArray((mask > 0).astype(np.uint8) * np.uint8(foreground), isVector=False)
    out.CopyInformation(reference)
    sitk.WriteImage(out, str(path), useCompression=True)


def write_scribble(scribble: np.ndarray, reference: sitk.Image, path: str | os.PathLike) -> None:
    """Write a scribble label (class indices, 255 unannotated) as it is, with ``reference``'s geometry.

    The values are written unchanged, also in PNGs: scaling the foreground to
    255 as :func:`write_label` does would make it unannotated.
    """
    out = sitk.GetImageFromArray(np.asarray(scribble, dtype=np.uint8), isVector=False)
    out.CopyInformation(reference)
    sitk.WriteImage(out, str(path), useCompression=True)


def check_same_geometry(ref: sitk.Image, other: sitk.Image, ref_name: str, other_name: str,
                        tol: float = 1e-3) -> None:
    """Check that two images share one voxel grid.

    Args:
        ref, other: images to compare.
        ref_name, other_name: their file names, for the message.
        tol: absolute tolerance on spacing, origin (mm) and direction cosines.
    Raises:
        InputError: naming both files and the first differing property.
    """
    problems = []
    if ref.GetDimension() != other.GetDimension():
        problems.append(f"dimension {ref.GetDimension()} vs {other.GetDimension()}")
    elif ref.GetSize() != other.GetSize():
        problems.append(f"size {ref.GetSize()} vs {other.GetSize()}")
    else:
        for what, a, b in (("spacing", ref.GetSpacing(), other.GetSpacing()),
                           ("origin", ref.GetOrigin(), other.GetOrigin()),
                           ("direction", ref.GetDirection(), other.GetDirection())):
            if not np.allclose(a, b, rtol=0.0, atol=tol):
                problems.append(f"{what} {_fmt(a)} vs {_fmt(b)}")
    if problems:
        raise InputError(f"geometry mismatch between {ref_name} and {other_name}: {'; '.join(problems)}")


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

