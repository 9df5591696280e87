"""Scribbles drawn from full masks, as an annotator would draw them (pure numpy/scipy/SimpleITK, one 2D slice at a time).

Scribble datasets such as ACDC's were drawn by hand: one stroke along the
inside of each structure and one around it in the background. To use every
dataset that has full masks, this module draws such strokes from a mask,
reproducibly (all randomness comes from the caller's generator):

* **foreground**: for each structure (an 8-connected component of one class),
  its skeleton (``sitk.BinaryThinning``); the share ``keep_fraction`` of the
  skeleton pixels nearest a random skeleton pixel is kept (a stroke along part
  of the structure, never empty); it is thickened to ``width`` (every pixel
  within ``(width - 1) / 2`` of it) and cut to the structure, so a scribble
  pixel always holds the mask's class there.
* **background**: the ring of background pixels at distance
  [``background_distance``, ``background_distance`` + 1) from the foreground,
  or, when the slice has no foreground or that ring falls outside the image,
  the skeleton of the background; kept and thickened the same way and cut to
  the background.
* **outside**: a second background stroke along the frame at
  ``border_distance`` from the image border, kept, thickened and cut to the
  background the same way. Annotators mark the outside of the body too (air,
  the scanner table); without it nothing tells a net that a region far from
  every structure, unlike the ring around them, is background (without it,
  0.12% of the dark 58% of QUBIQ's case 01 around the head was annotated).
* every other pixel is :data:`aide_ray.label_values.UNANNOTATED` (255).

Widths and distances are pixels at the reference size (256) and scale with
the image (at least 1 pixel), like the noise protocols' radii. The manifest-level
driver is :func:`aide_ray.data.noise.corrupt_manifest` (``--protocol scribbles``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from aide_ray.label_values import UNANNOTATED

__all__ = ["ScribbleOptions", "skeleton", "draw_scribbles", "scribble_volume", "annotated_fraction",
           "scribble_coverage"]

_EIGHT_CONNECTED = np.ones((3, 3), bool)


@dataclass(frozen=True)
class ScribbleOptions:
    """How scribbles are drawn (pixels at the reference size, 256).

    Attributes:
        width: stroke width.
        keep_fraction: share of each skeleton (or background ring) that the stroke follows, in (0, 1].
        background_distance: distance of the background ring from the foreground.
        border_distance: distance of the outside stroke from the image border.
    """

    width: float = 3.0
    keep_fraction: float = 0.8
    background_distance: float = 8.0
    border_distance: float = 8.0

    def __post_init__(self) -> None:
        for name in ("width", "background_distance", "border_distance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"scribble {name.replace('_', ' ')} must be > 0, got {value!r}")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"scribble keep fraction must be in (0, 1], got {self.keep_fraction!r}")


def _pixels(value: float, scale: float) -> int:
    return max(1, int(round(value * scale)))


def skeleton(region: np.ndarray) -> np.ndarray:
    """The one-pixel-wide skeleton of a 2D binary region (``sitk.BinaryThinning``).

    The region is padded by one background pixel first: ITK's thinning does not
    thin a region that touches the image border.
    """
    padded = sitk.GetImageFromArray(np.pad(region, 1).astype(np.uint8))
    return sitk.GetArrayFromImage(sitk.BinaryThinning(padded))[1:-1, 1:-1].astype(bool)


def _keep_part(curve: np.ndarray, keep_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """The ``keep_fraction`` of ``curve``'s pixels nearest one of them drawn at random (at least that one)."""
    ys, xs = np.nonzero(curve)
    seed = int(rng.integers(len(ys)))
    count = max(1, math.ceil(keep_fraction * len(ys)))
    distance = np.hypot(ys - ys[seed], xs - xs[seed])
    nearest = np.argsort(distance, kind="stable")[:count]
    out = np.zeros_like(curve)
    out[ys[nearest], xs[nearest]] = True
    return out


def _stroke(curve: np.ndarray, region: np.ndarray, width: int, keep_fraction: float,
            rng: np.random.Generator) -> np.ndarray:
    """Part of ``curve`` thickened to ``width`` pixels, inside ``region``."""
    kept = _keep_part(curve, keep_fraction, rng)
    thick = ndimage.distance_transform_edt(~kept) <= (width - 1) / 2.0
    return thick & region


def _background_curve(foreground: np.ndarray, distance: int) -> np.ndarray:
    """The ring at ``distance`` outside the foreground; the background's skeleton where there is no ring."""
    if foreground.any():
        to_foreground = ndimage.distance_transform_edt(~foreground)
        ring = (to_foreground >= distance) & (to_foreground < distance + 1)
        if ring.any():
            return ring
    return skeleton(~foreground)


def _frame(shape: tuple[int, int], distance: int) -> np.ndarray:
    """The one-pixel rectangle at ``distance`` pixels inside the border (empty where the image is too small)."""
    rows, cols = np.indices(shape)
    to_border = np.minimum.reduce([rows, cols, shape[0] - 1 - rows, shape[1] - 1 - cols])
    return to_border == distance


def draw_scribbles(mask: np.ndarray, rng: np.random.Generator, *, scale: float = 1.0,
                   options: ScribbleOptions = ScribbleOptions()) -> np.ndarray:
    """Scribbles of one 2D mask: a stroke per structure, one around them and one along the border.

    Args:
        mask: (H, W) class map (0 background, 1..C-1 classes).
        rng: the only source of randomness (where each stroke lies along its skeleton).
        scale: image size / reference size (256).
        options: width, keep fraction, background and border distances.
    Returns:
        (H, W) uint8: the mask's class on scribble pixels, ``UNANNOTATED`` elsewhere.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D (H, W), got shape {mask.shape}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    mask = np.asarray(mask)
    width = _pixels(options.width, scale)
    out = np.full(mask.shape, UNANNOTATED, dtype=np.uint8)
    for value in np.unique(mask[mask > 0]).tolist():
        components, count = ndimage.label(mask == value, structure=_EIGHT_CONNECTED)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            # Within the structure's bounding box: the stroke is cut to the structure anyway, and
            # thinning and distances over the whole image per structure would cost a lot on big images.
            structure = components[box] == index
            curve = skeleton(structure)
            if not curve.any():  # cannot happen for ITK's thinning; the deepest pixel keeps the guarantee
                deepest = ndimage.distance_transform_edt(structure)
                curve = deepest == deepest.max()
            out[box][_stroke(curve, structure, width, options.keep_fraction, rng)] = value
    background = mask == 0
    if background.any():
        curve = _background_curve(~background, _pixels(options.background_distance, scale))
        out[_stroke(curve, background, width, options.keep_fraction, rng)] = 0
        outside = _frame(mask.shape, _pixels(options.border_distance, scale)) & background
        if outside.any():
            out[_stroke(outside, background, width, options.keep_fraction, rng)] = 0
    return out


def scribble_volume(mask: np.ndarray, rng: np.random.Generator, *, scale: float = 1.0,
                    options: ScribbleOptions = ScribbleOptions()) -> np.ndarray:
    """:func:`draw_scribbles` on a 2D mask, or on each slice (numpy axis 0) of a 3D one."""
    if mask.ndim not in (2, 3):
        raise ValueError(f"mask must be (H, W) or (S, H, W), got shape {mask.shape}")
    if mask.ndim == 2:
        return draw_scribbles(mask, rng, scale=scale, options=options)
    return np.stack([draw_scribbles(s, rng, scale=scale, options=options) for s in mask])


def annotated_fraction(scribble: np.ndarray) -> float:
    """Share of a scribble label's pixels that are annotated (not ``UNANNOTATED``)."""
    return scribble_coverage(scribble)[0]


def scribble_coverage(scribbles: np.ndarray) -> tuple[float, float]:
    """Shares of all pixels of a stack of scribble labels that are annotated, and that are annotated foreground."""
    arr = np.asarray(scribbles)
    if not arr.size:
        return 0.0, 0.0
    return float(np.mean(arr != UNANNOTATED)), float(np.mean((arr != UNANNOTATED) & (arr > 0)))
