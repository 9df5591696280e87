"""Turning a case into fixed-size, normalised 2D slices, and predictions back onto its grid.

Ingest (training data) and ``aide-ray predict`` (new images) must apply the
exact same steps, and predictions must go back into the input's geometry, so
both directions live here: :func:`preprocess_case` and
:func:`restore_geometry` share one plan (:func:`plan_geometry`).

Steps of :func:`preprocess_case`, per case:

1. Slicing along the through-plane axis (numpy axis 0 of
   ``sitk.GetArrayFromImage``); a 2D image is one slice.
2. Optional in-plane resampling to ``target_spacing`` (x, y) in mm: linear for
   images, nearest neighbour for labels; the through-plane axis is untouched.
   The physical extent is kept (outer pixel edges stay in place).
3. Intensity normalisation per volume and modality: clip to the
   ``clip_percentiles``, then z-score (mean 0, std 1) or min-max to [0, 1].
4. Centred crop or pad to ``size`` x ``size``; padding takes the volume's
   minimum (after normalisation) for images, 0 for labels, and
   ``UNANNOTATED`` (255) for scribble labels: nobody annotated the padding.

Labels are resampled with nearest neighbour, which only copies values, so a
scribble's 255 stays 255 and never blends into a class.

Reading the files (and checking that images share one grid) is
:mod:`aide_ray.data.image_io`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from aide_ray.data.image_io import check_same_geometry, label_array, scribble_array
from aide_ray.exceptions import InputError
from aide_ray.label_values import UNANNOTATED

__all__ = [
    "Preprocessing",
    "GeometryPlan",
    "PreparedCase",
    "plan_geometry",
    "prepare_label",
    "preprocess_case",
    "restore_geometry",
]

NORMALIZATIONS: tuple[str, ...] = ("zscore", "minmax")


@dataclass(frozen=True)
class Preprocessing:
    """How cases become fixed-size slices; stored in dataset.json and checkpoints.

    Attributes:
        target_spacing: in-plane (x, y) spacing in mm to resample to, or None
            to keep each image's own grid.
        size: output slices are ``size`` x ``size`` pixels (centred crop/pad).
        normalize: "zscore" (per volume and modality) or "minmax" (to [0, 1]).
        clip_percentiles: (low, high) percentiles clipped before normalising.
    """

    target_spacing: tuple[float, float] | None = None
    size: int = 64
    normalize: Literal["zscore", "minmax"] = "zscore"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.target_spacing is not None:
            ts = tuple(float(v) for v in self.target_spacing)
            if len(ts) != 2 or not all(math.isfinite(v) and v > 0 for v in ts):
                raise ValueError(f"target_spacing must be None or two positive numbers (x, y), "
                                 f"got {self.target_spacing!r}")
            object.__setattr__(self, "target_spacing", ts)
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or not 1 <= self.size <= 4096:
            raise ValueError(f"size must be an integer in [1, 4096], got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {list(NORMALIZATIONS)}, got {self.normalize!r}")
        cp = tuple(float(v) for v in self.clip_percentiles)
        if len(cp) != 2 or not 0.0 <= cp[0] < cp[1] <= 100.0:
            raise ValueError(f"clip_percentiles must be (low, high) with 0 <= low < high <= 100, "
                             f"got {self.clip_percentiles!r}")
        object.__setattr__(self, "clip_percentiles", cp)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["target_spacing"] = None if self.target_spacing is None else list(self.target_spacing)
        d["clip_percentiles"] = list(self.clip_percentiles)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessing":
        """Inverse of :meth:`to_dict`; unknown keys are an error.

        Raises:
            ValueError: on an unknown key or an invalid value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing key(s) {unknown}; valid keys are {sorted(known)}")
        kwargs = dict(d)
        if kwargs.get("target_spacing") is not None:
            kwargs["target_spacing"] = tuple(kwargs["target_spacing"])
        if "clip_percentiles" in kwargs:
            kwargs["clip_percentiles"] = tuple(kwargs["clip_percentiles"])
        return cls(**kwargs)


@dataclass(frozen=True)
class GeometryPlan:
    """Where a case's pixels go, from the input grid to (S, size, size) and back.

    Attributes:
        num_slices: S.
        in_size: (H, W) of the input slices.
        resampled_size: (H', W') after in-plane resampling (== in_size if none).
        resampled: whether in-plane resampling happens.
        spacing: (x, y, z) spacing of the output slices in mm (z = 1.0 for 2D).
        crop: (top, left) offsets cropped from the resampled slice (>= 0).
        pad: (top, left) offsets of the resampled slice inside the output (>= 0).
        size: output side length.
    """

    num_slices: int
    in_size: tuple[int, int]
    resampled_size: tuple[int, int]
    resampled: bool
    spacing: tuple[float, float, float]
    crop: tuple[int, int]
    pad: tuple[int, int]
    size: int


@dataclass
class PreparedCase:
    """One case, ready to be written as slices.

    Attributes:
        image: (S, M, H, W) float32, normalised, H = W = prep.size.
        label: (S, H, W) uint8 in {0, 1} (scribbles: also 255), or None.
        spacing: (x, y, z) in mm after resampling.
        plan: the geometry plan (enough, with the reference image, to invert).
    """

    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    plan: GeometryPlan


# ----------------------------------------------------------------------------- geometry


def plan_geometry(reference: sitk.Image, prep: Preprocessing) -> GeometryPlan:
    """The deterministic plan from ``reference``'s grid to (S, size, size) slices."""
    size = reference.GetSize()
    spacing = reference.GetSpacing()
    if reference.GetDimension() == 2:
        num_slices, z = 1, 1.0
    else:
        num_slices, z = size[2], float(spacing[2])
    in_hw = (int(size[1]), int(size[0]))
    sp_xy = (float(spacing[0]), float(spacing[1]))
    resampled = prep.target_spacing is not None and not np.allclose(sp_xy, prep.target_spacing, rtol=1e-6, atol=0)
    if resampled:
        tx, ty = prep.target_spacing
        out_hw = (max(1, int(round(in_hw[0] * sp_xy[1] / ty))), max(1, int(round(in_hw[1] * sp_xy[0] / tx))))
        out_sp = (tx, ty)
    else:
        out_hw, out_sp = in_hw, sp_xy
    crop = tuple(max(0, (n - prep.size) // 2) for n in out_hw)
    pad = tuple(max(0, (prep.size - n) // 2) for n in out_hw)
    return GeometryPlan(num_slices=num_slices, in_size=in_hw, resampled_size=out_hw, resampled=bool(resampled),
                        spacing=(out_sp[0], out_sp[1], z), crop=crop, pad=pad, size=prep.size)


def _resampled_grid(reference: sitk.Image, plan: GeometryPlan) -> tuple[tuple, tuple, tuple]:
    """(size, spacing, origin) of the in-plane resampled grid, physical extent kept."""
    dim = reference.GetDimension()
    old_sp = np.array(reference.GetSpacing())
    new_sp = old_sp.copy()
    new_sp[0], new_sp[1] = plan.spacing[0], plan.spacing[1]
    direction = np.array(reference.GetDirection()).reshape(dim, dim)
    # Pixel centres shift by half the spacing change so the outer edges stay put.
    origin = np.array(reference.GetOrigin()) + direction @ ((new_sp - old_sp) / 2.0)
    new_size = list(reference.GetSize())
    new_size[0], new_size[1] = plan.resampled_size[1], plan.resampled_size[0]
    return tuple(int(v) for v in new_size), tuple(float(v) for v in new_sp), tuple(float(v) for v in origin)


def _resample_in_plane(image: sitk.Image, plan: GeometryPlan, interpolator: int,
                       outside: float = 0.0) -> sitk.Image:
    size, spacing, origin = _resampled_grid(image, plan)
    return sitk.Resample(image, size, sitk.Transform(), interpolator, origin, spacing, image.GetDirection(),
                         outside, image.GetPixelID())


def _as_slices(image: sitk.Image) -> np.ndarray:
    arr = sitk.GetArrayFromImage(image)
    return arr[None] if image.GetDimension() == 2 else arr


def _crop_pad(arr: np.ndarray, plan: GeometryPlan, fill: float) -> np.ndarray:
    """(S, H', W') -> (S, size, size), centred."""
    s = plan.size
    (h, w), (ct, cl), (pt, pl) = plan.resampled_size, plan.crop, plan.pad
    out = np.full((arr.shape[0], s, s), fill, dtype=arr.dtype)
    hh, ww = min(h, s), min(w, s)
    out[:, pt:pt + hh, pl:pl + ww] = arr[:, ct:ct + hh, cl:cl + ww]
    return out


def _uncrop_pad(arr: np.ndarray, plan: GeometryPlan, fill: int = 0) -> np.ndarray:
    """(S, size, size) -> (S, H', W'), ``fill`` where the crop removed pixels."""
    s = plan.size
    (h, w), (ct, cl), (pt, pl) = plan.resampled_size, plan.crop, plan.pad
    out = np.full((arr.shape[0], h, w), fill, dtype=arr.dtype)
    hh, ww = min(h, s), min(w, s)
    out[:, ct:ct + hh, cl:cl + ww] = arr[:, pt:pt + hh, pl:pl + ww]
    return out


def _normalize(vol: np.ndarray, prep: Preprocessing) -> np.ndarray:
    vol = vol.astype(np.float64, copy=False)
    lo, hi = np.percentile(vol, prep.clip_percentiles)
    vol = np.clip(vol, lo, hi)
    if prep.normalize == "zscore":
        std = vol.std()
        # A constant image has no scale; centring it is all that is meaningful.
        out = (vol - vol.mean()) / (std if std > 1e-8 else 1.0)
    else:
        span = hi - lo
        out = (vol - lo) / span if span > 1e-12 else np.zeros_like(vol)
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- forward / inverse


def prepare_label(label: sitk.Image, reference: sitk.Image, prep: Preprocessing, *, name: str = "label",
                  reference_name: str = "image", scribble: bool = False) -> np.ndarray:
    """Preprocess a binary label, or a scribble label, on ``reference``'s grid.

    Args:
        label: label image on the reference's grid (values {0, 1} or {0, 255}; a
            scribble: {0, 1} where annotated, 255 elsewhere).
        reference: the case's first image.
        prep: preprocessing.
        name, reference_name: file names for messages.
        scribble: read ``label`` as a scribble (255 is unannotated, not foreground).
    Returns:
        (S, size, size) uint8 in {0, 1}; a scribble keeps 255 where unannotated,
        the padding included.
    Raises:
        InputError: geometry mismatch or bad label values, naming the file.
    """
    check_same_geometry(reference, label, reference_name, name)
    plan = plan_geometry(reference, prep)
    arr = scribble_array(label, name) if scribble else label_array(label, name)
    fill = UNANNOTATED if scribble else 0
    if plan.resampled:
        img = sitk.GetImageFromArray(arr, isVector=False)
        img.CopyInformation(label)
        arr = sitk.GetArrayFromImage(_resample_in_plane(img, plan, sitk.sitkNearestNeighbor, float(fill)))
    if arr.ndim == 2:
        arr = arr[None]
    return _crop_pad(arr.astype(np.uint8, copy=False), plan, fill)


def preprocess_case(images: list[sitk.Image], label: sitk.Image | None, prep: Preprocessing, *,
                    names: Sequence[str] | None = None, label_name: str = "label") -> PreparedCase:
    """Turn one case (M registered modalities, optional label) into normalised slices.

    Args:
        images: M >= 1 images on one grid (2D or 3D).
        label: binary label on the same grid, or None.
        prep: preprocessing.
        names: file names of ``images`` for messages (default "image_0", ...).
        label_name: file name of ``label`` for messages.
    Returns:
        PreparedCase with ``image`` (S, M, size, size) float32 and ``label``
        (S, size, size) uint8 or None.
    Raises:
        InputError: NaN/Inf intensities, geometry mismatch (naming both
            files), label values other than {0, 1} / {0, 255}.
    """
    if not images:
        raise ValueError("images must hold at least one modality, got an empty list")
    names = list(names) if names is not None else [f"image_{i}" for i in range(len(images))]
    ref = images[0]
    for img, name in zip(images[1:], names[1:]):
        check_same_geometry(ref, img, names[0], name)
    plan = plan_geometry(ref, prep)
    channels = []
    for img, name in zip(images, names):
        if plan.resampled:
            img = _resample_in_plane(sitk.Cast(img, sitk.sitkFloat32), plan, sitk.sitkLinear)
        arr = _as_slices(img)
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise InputError(f"image {name} has {bad} NaN or infinite intensities; all values must be finite")
        arr = _normalize(arr, prep)
        channels.append(_crop_pad(arr, plan, float(arr.min())))
    stacked = np.ascontiguousarray(np.stack(channels, axis=1), dtype=np.float32)
    lab = None if label is None else prepare_label(label, ref, prep, name=label_name, reference_name=names[0])
    return PreparedCase(image=stacked, label=lab, spacing=plan.spacing, plan=plan)


def restore_geometry(pred: np.ndarray, reference: sitk.Image, prep: Preprocessing, *, fill: int = 0) -> sitk.Image:
    """Map (S, size, size) slices back onto ``reference``'s grid.

    Undoes the crop/pad and (nearest neighbour) the in-plane resampling, then
    copies the reference's exact size, spacing, origin and direction.

    Args:
        pred: (S, size, size) uint8 label map (any small integer classes).
        reference: the image the slices were made from (its first modality).
        prep: the preprocessing used to make the slices.
        fill: the value of input pixels the crop had removed (0; a scribble's
            ``UNANNOTATED``, since they were never trained on).
    Returns:
        uint8 ``sitk.Image`` on the reference's grid (2D if the reference is 2D).
    Raises:
        ValueError: if ``pred``'s shape does not match the plan.
    """
    plan = plan_geometry(reference, prep)
    expected = (plan.num_slices, plan.size, plan.size)
    if tuple(pred.shape) != expected:
        raise ValueError(f"pred must have shape (S, size, size) = {expected} for this reference, got {pred.shape}")
    arr = _uncrop_pad(np.asarray(pred, dtype=np.uint8), plan, fill)
    if reference.GetDimension() == 2:
        arr = arr[0]
    if plan.resampled:
        size, spacing, origin = _resampled_grid(reference, plan)
        small = sitk.GetImageFromArray(arr, isVector=False)
        small.SetSpacing(spacing)
        small.SetOrigin(origin)
        small.SetDirection(reference.GetDirection())
        out = sitk.Resample(small, reference, sitk.Transform(), sitk.sitkNearestNeighbor, float(fill),
                            sitk.sitkUInt8)
    else:
        out = sitk.GetImageFromArray(arr, isVector=False)
    out.CopyInformation(reference)
    return out
