"""A simulated scanner shift: target-domain copies of images, for the domain-shift setting.

The AIDE paper's fourth setting trains on one domain (scanner, site) and adapts
to another. On a one-domain dataset the other domain is simulated: each target
image goes through what a different acquisition chain would do to it, in this
order (:func:`shift_array`):

1. **detector blur**: ``scipy.ndimage.gaussian_filter`` in-plane, ``blur_sigma``
   pixels at the reference size (256);
2. **coarser detector**: the in-plane grid resampled to ``resolution`` times its
   pixel count per axis and back to the original grid (``scipy.ndimage.zoom``,
   linear); 1 keeps the resolution;
3. **quantum noise**: additive Gaussian noise of standard deviation
   ``noise_std`` times the image's intensity range;
4. **tone curve**: the intensities, scaled to [0, 1] over the image's own
   range, raised to ``gamma`` (> 1 darkens the mid-tones and spreads the bright
   ones; < 1 the reverse), then clipped to [0, 1] and scaled back.

Only intensities change: the output keeps the input's shape, dtype (integers
are rounded) and, for files, geometry; labels are never read. A linear change of
brightness or contrast is not among the knobs because ingest normalises every
image to zero mean and unit variance (docs/data.md, Preprocessing), which
would undo it; a gamma curve, blur and noise survive that normalisation.
The noise is the only random part: it is drawn from a generator keyed on
``(seed, case_id, image column)`` (:func:`aide_ray.data.noise.case_rng`), so a
case gets the same image whatever the manifest's row order, and every
annotator's row of a case shares one shifted image.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from aide_ray._internal.io import atomic_dir
from aide_ray.data.image_io import read_image
from aide_ray.data.manifest import image_columns, read_manifest, write_manifest
from aide_ray.data.noise import case_rng
from aide_ray.exceptions import InputError

__all__ = ["ScannerShift", "SOURCE_DOMAIN", "TARGET_DOMAIN", "shift_array", "shift_image", "shift_manifest"]

SOURCE_DOMAIN = "source"  # the manifest's `domain` of rows left as they are
TARGET_DOMAIN = "target"  # ... and of rows whose images were shifted


@dataclass(frozen=True)
class ScannerShift:
    """The knobs of the simulated scanner; the defaults are the domain-shift setting's (docs/data.md).

    Attributes:
        gamma: exponent of the tone curve on intensities scaled to [0, 1]; 1 leaves them.
        noise_std: standard deviation of the additive Gaussian noise, as a share of the image's
            intensity range (max - min); 0 adds none.
        blur_sigma: standard deviation of the in-plane Gaussian blur, pixels at ``reference_size``; 0 blurs not.
        resolution: in (0, 1]: the share of the in-plane pixels per axis the coarser detector resolves
            (0.5: half the pixels per axis, resampled back); 1 keeps the grid.
        reference_size: image size (the larger in-plane side) at which ``blur_sigma`` is given; it
            scales with ``size / reference_size`` as the label-noise radii do.
    """

    gamma: float = 0.5
    noise_std: float = 0.06
    blur_sigma: float = 2.0
    resolution: float = 0.5
    reference_size: int = 256

    def __post_init__(self) -> None:
        for name in ("gamma", "noise_std", "blur_sigma", "resolution"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"scanner shift {name} must be a finite number, got {value!r}")
        if not self.gamma > 0:
            raise ValueError(f"scanner shift gamma must be > 0 (1 keeps the tone curve), got {self.gamma!r}")
        if self.noise_std < 0:
            raise ValueError(f"scanner shift noise_std must be >= 0 (a share of the intensity range), "
                             f"got {self.noise_std!r}")
        if self.blur_sigma < 0:
            raise ValueError(f"scanner shift blur_sigma must be >= 0 (pixels at the reference size), "
                             f"got {self.blur_sigma!r}")
        if not 0 < self.resolution <= 1:
            raise ValueError(f"scanner shift resolution must be in (0, 1] (1 keeps the grid), got {self.resolution!r}")
        if isinstance(self.reference_size, bool) or not isinstance(self.reference_size, int) or self.reference_size < 1:
            raise ValueError(f"scanner shift reference_size must be an integer >= 1, got {self.reference_size!r}")

    def describe(self) -> str:
        """One line for notes and logs."""
        return (f"gamma {self.gamma:g}, noise std {self.noise_std:g} of the intensity range, blur sigma "
                f"{self.blur_sigma:g} px and resolution x{self.resolution:g} at {self.reference_size} px")


def _resample_back(t: np.ndarray, resolution: float, plane: tuple[int, ...]) -> np.ndarray:
    """``t`` resampled to ``resolution`` x its in-plane pixels per axis (at least 1), then back to its shape."""
    small = tuple(max(1, int(round(t.shape[a] * resolution))) for a in plane)
    down = [1.0] * t.ndim
    for a, n in zip(plane, small):
        down[a] = n / t.shape[a]
    coarse = ndimage.zoom(t, down, order=1, mode="nearest", grid_mode=True)
    up = [1.0] * t.ndim
    for a in plane:
        up[a] = t.shape[a] / coarse.shape[a]
    return ndimage.zoom(coarse, up, order=1, mode="nearest", grid_mode=True)


def shift_array(arr: np.ndarray, rng: np.random.Generator, shift: ScannerShift = ScannerShift(), *,
                scale: float | None = None) -> np.ndarray:
    """One image's intensities as the simulated scanner would record them.

    Args:
        arr: (H, W) image or (S, H, W) volume (slices along numpy axis 0; blur and resolution act in-plane).
        rng: generator of the noise (the only random step; not used when ``noise_std`` is 0).
        shift: the scanner's knobs.
        scale: image size / ``shift.reference_size``; None: the larger in-plane side over it.
    Returns:
        An array of ``arr``'s shape and dtype (integer types rounded and clipped to their range).
    Raises:
        ValueError: ``arr`` is not 2D or 3D, or holds NaN or infinite values.
    """
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (S, H, W), got shape {arr.shape}")
    x = arr.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("image holds NaN or infinite values")
    plane = (arr.ndim - 2, arr.ndim - 1)
    if scale is None:
        scale = max(arr.shape[plane[0]], arr.shape[plane[1]]) / shift.reference_size
    lo, hi = float(x.min()), float(x.max())
    span = hi - lo if hi > lo else 1.0
    t = (x - lo) / span
    if shift.blur_sigma > 0:
        sigma = [0.0] * arr.ndim
        for a in plane:
            sigma[a] = shift.blur_sigma * scale
        t = ndimage.gaussian_filter(t, sigma, mode="nearest")
    if shift.resolution < 1:
        t = _resample_back(t, shift.resolution, plane)
    if shift.noise_std > 0:
        t = t + rng.normal(0.0, shift.noise_std, size=t.shape)
    t = np.clip(t, 0.0, 1.0) ** shift.gamma
    out = lo + t * span
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(arr.dtype)
    return out.astype(arr.dtype)


def shift_image(image: sitk.Image, rng: np.random.Generator, shift: ScannerShift = ScannerShift()) -> sitk.Image:
    """:func:`shift_array` of a SimpleITK image: same pixel type, size, spacing, origin and direction."""
    out = sitk.GetImageFromArray(shift_array(sitk.GetArrayFromImage(image), rng, shift,
                                             scale=max(image.GetSize()[:2]) / shift.reference_size))
    out.CopyInformation(image)
    return out


def _suffix(path: str, image: sitk.Image) -> str:
    """The input's format where it can hold the image's pixel type (an RGB PNG is read as float gray), else NIfTI."""
    name = path.lower()
    if name.endswith((".png", ".bmp")) and image.GetPixelID() in (sitk.sitkUInt8, sitk.sitkUInt16):
        return name[-4:]
    for suffix in (".tif", ".tiff", ".nrrd", ".mha", ".nii.gz"):
        if name.endswith(suffix):
            return suffix
    return ".nii.gz"  # .nii, DICOM series folders, float PNGs and anything else


def shift_manifest(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, seed: int, *,
                   cases: Iterable[str], shift: ScannerShift = ScannerShift(), overwrite: bool = False) -> Path:
    """Write a copy of a manifest whose rows of ``cases`` (every split) read shifted copies of their images.

    Output folder: ``manifest.csv`` (every row of the input; the ``domain`` column
    :data:`TARGET_DOMAIN` for the rows of ``cases``, :data:`SOURCE_DOMAIN` for the
    others) and ``images/`` with one shifted file per case and image column
    (``<case_id>[__<column>]<suffix>``; an 8- or 16-bit PNG stays PNG, a DICOM series or an RGB PNG (read
    as float gray) becomes NIfTI),
    written inside a temporary folder renamed at the end. Labels are not touched.

    Args:
        manifest_path: input manifest.
        out_dir: output folder (written atomically).
        seed: seed of the noise; with ``case_id`` and the column it keys each image's generator.
        cases: case ids whose images are shifted; ids not in the manifest are an error.
        shift: the scanner's knobs.
        overwrite: replace an existing ``out_dir``.
    Returns:
        Path of the output manifest.
    Raises:
        InputError: a bad manifest or image, or a case id the manifest does not have.
    """
    manifest_path = Path(manifest_path)
    df = read_manifest(manifest_path)
    wanted = set(cases)
    unknown = sorted(wanted - set(df["case_id"]))
    if unknown:
        raise InputError(f"{manifest_path.name}: cases to shift not in the manifest: {unknown[:5]}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    columns = image_columns(list(df.columns), source=manifest_path.name)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        out = df.copy()
        out["domain"] = [TARGET_DOMAIN if c in wanted else SOURCE_DOMAIN for c in df["case_id"]]
        (tmp / "images").mkdir()
        written: dict[tuple[str, str], str] = {}  # (case_id, column) -> shifted file: one per case, not per row
        for row, rec in df[df["case_id"].isin(wanted)].iterrows():
            for col in columns:
                key = (rec["case_id"], col)
                if key not in written:
                    try:
                        image = read_image(rec[col])
                    except InputError as e:
                        raise InputError(f"{manifest_path.name} row {row}: {e}") from None
                    stem = rec["case_id"] + ("" if col == "image" else f"__{col}")
                    target = tmp / "images" / f"{stem}{_suffix(rec[col], image)}"
                    sitk.WriteImage(shift_image(image, case_rng(seed, rec["case_id"], col), shift), str(target),
                                    useCompression=True)
                    written[key] = str(target)
                out.at[row, col] = written[key]
        write_manifest(out, tmp / "manifest.csv", relative_to=tmp)
    return Path(out_dir) / "manifest.csv"
