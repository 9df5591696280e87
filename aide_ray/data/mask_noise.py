"""How one label mask is corrupted under each noise protocol (pure numpy/scipy, one 2D mask at a time).

A protocol is a function ``(mask2d, rng, scale, options) -> mask2d``, where
``scale`` is the image size over the reference size (256) at which distances
are given, and ``options`` the protocol's knobs (:class:`NoiseOptions`). The
manifest-level driver (:mod:`aide_ray.data.noise`) picks the cases and writes
the files. Two kinds of noise, because they behave differently under training:

* **random** (``pymic-jsrt``, ``pymic-jsrt-strong``): each label is dilated,
  eroded or edge-distorted at random. The errors are symmetric, so plain
  training on many such labels averages them out (docs/results.md, setting 1).
* **systematic** (``over-seg``, ``under-seg``, ``shifted``, ``missed-structure``):
  an annotator's consistent habit (always too large, too small, offset, or
  leaving out one of the structures in a share of the cases). These errors do
  not average out, which is what a benchmark needs to show headroom.
* **mixed annotators** (``mixed-over-seg``): a share of the cases comes from an
  annotator who over-segments, the rest from an accurate one. A net cannot tell
  a bias shared by every label from the truth (``over-seg``: no method can win
  that headroom back); here the accurate majority is the signal a noisy-label
  method can use to find and fix the careless minority.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

__all__ = [
    "NoiseOptions", "MASK_PROTOCOLS", "DILATE_ERODE_PROBABILITY", "RADIUS_RANGE", "EDGE_SAMPLE_RATIO",
    "scaled_range", "corrupt_mask", "remove_one_structure", "shift_mask", "PER_CASE_PROTOCOLS",
]

DILATE_ERODE_PROBABILITY = 0.35  # each of dilation and erosion; edge distortion gets the remaining 0.3
RADIUS_RANGE = (6, 12)  # pymic-jsrt iterations / disc radii at the reference size, inclusive
EDGE_SAMPLE_RATIO = 0.1  # share of edge pixels that get a disc


@dataclass(frozen=True)
class NoiseOptions:
    """Knobs of the protocols.

    Attributes:
        magnitude: systematic protocols: pixels at the reference size (256) by which a
            label is dilated, eroded or shifted.
        affected_fraction: ``missed-structure``: share of the noisy cases that lose a structure;
            ``mixed-over-seg``: share of the noisy cases drawn by the over-segmenting annotator.
        strength: ``pymic-jsrt-strong``: factor on pymic-jsrt's radius range.
    """

    magnitude: float = 8.0
    affected_fraction: float = 0.5
    strength: float = 2.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.magnitude) and self.magnitude > 0):
            raise ValueError(f"magnitude must be > 0, got {self.magnitude!r}")
        if not 0.0 <= self.affected_fraction <= 1.0:
            raise ValueError(f"affected_fraction must be in [0, 1], got {self.affected_fraction!r}")
        if not (math.isfinite(self.strength) and self.strength > 0):
            raise ValueError(f"strength must be > 0, got {self.strength!r}")


def scaled_range(scale: float, base: tuple[int, int] = RADIUS_RANGE) -> tuple[int, int]:
    """Integer range [lo, hi] of ``base`` scaled by ``scale``, at least 1.

    Example: scale 64/256 maps (6, 12) to (2, 3).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    lo = max(1, int(round(base[0] * scale)))
    hi = max(lo, int(round(base[1] * scale)))
    return lo, hi


def _pixels(magnitude: float, scale: float) -> int:
    return max(1, int(round(magnitude * scale)))


def _outer_edge(mask: np.ndarray) -> np.ndarray:
    # As PyMIC: the one-pixel ring just outside the foreground.
    return ndimage.binary_dilation(mask) & ~mask


def _discs_on_edge(mask: np.ndarray, rng: np.random.Generator, r_range: tuple[int, int],
                   sample_ratio: float) -> np.ndarray:
    """Union of discs centred on a random ``sample_ratio`` of ``mask``'s outer edge pixels."""
    ys, xs = np.nonzero(_outer_edge(mask))
    n = int(len(ys) * sample_ratio)
    out = np.zeros_like(mask)
    if n == 0:
        return out
    pick = rng.choice(len(ys), size=n, replace=False)
    radii = rng.integers(r_range[0], r_range[1] + 1, size=n)
    h, w = mask.shape
    for y, x, r in zip(ys[pick], xs[pick], radii):
        y0, y1, x0, x1 = max(0, y - r), min(h, y + r + 1), max(0, x - r), min(w, x + r + 1)
        yy, xx = np.ogrid[y0 - y:y1 - y, x0 - x:x1 - x]
        # Strict inequality as in PyMIC: radius r covers distances < r.
        out[y0:y1, x0:x1] |= (yy * yy + xx * xx) < r * r
    return out


def _pymic(mask: np.ndarray, rng: np.random.Generator, r_range: tuple[int, int]) -> np.ndarray:
    p = rng.random()
    if p < DILATE_ERODE_PROBABILITY:
        return ndimage.binary_dilation(mask, iterations=int(rng.integers(r_range[0], r_range[1] + 1)))
    if p < 2 * DILATE_ERODE_PROBABILITY:
        return ndimage.binary_erosion(mask, iterations=int(rng.integers(r_range[0], r_range[1] + 1)))
    grown = mask | _discs_on_edge(mask, rng, r_range, EDGE_SAMPLE_RATIO)
    return grown & ~_discs_on_edge(grown, rng, r_range, EDGE_SAMPLE_RATIO)


def corrupt_mask(mask2d: np.ndarray, rng: np.random.Generator, *, scale: float = 1.0) -> np.ndarray:
    """Corrupt one binary 2D mask with PyMIC's JSRT noise model.

    With probability 0.35 binary dilation by k iterations, with probability
    0.35 binary erosion by k iterations, else edge distortion (add discs on
    10% of the outer edge, then remove discs on 10% of the new outer edge);
    k and disc radii are uniform integers in (6, 12) * scale (at least 1).

    Args:
        mask2d: (H, W) binary mask (any dtype; nonzero is foreground).
        rng: numpy random generator (the only source of randomness).
        scale: image size / reference size (256).
    Returns:
        (H, W) uint8 mask in {0, 1}.
    """
    if mask2d.ndim != 2:
        raise ValueError(f"mask2d must be 2D (H, W), got shape {mask2d.shape}")
    return _pymic(np.asarray(mask2d) > 0, rng, scaled_range(scale)).astype(np.uint8)


def shift_mask(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by (dy, dx) pixels; what leaves the image is lost, what enters is background."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    src = mask[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def remove_one_structure(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``mask`` without one of its connected components (8-connectivity), chosen at random.

    Only components of at least a tenth of the largest one count as structures
    (a speck is not a structure an annotator forgets); a mask with fewer than
    two structures is returned unchanged.
    """
    components, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n < 2:
        return mask
    sizes = np.bincount(components.ravel())[1:]
    structures = np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1
    if len(structures) < 2:
        return mask
    return mask & (components != int(rng.choice(structures)))


def _pymic_strong(mask, rng, scale, options):
    lo, hi = RADIUS_RANGE
    return _pymic(mask, rng, scaled_range(scale * options.strength, (lo, hi)))


def _over_seg(mask, rng, scale, options):
    return ndimage.binary_dilation(mask, iterations=_pixels(options.magnitude, scale))


MASK_PROTOCOLS: dict[str, Callable[[np.ndarray, np.random.Generator, float, NoiseOptions], np.ndarray]] = {
    "pymic-jsrt": lambda mask, rng, scale, options: _pymic(mask, rng, scaled_range(scale)),
    "pymic-jsrt-strong": _pymic_strong,
    "over-seg": _over_seg,
    "under-seg": lambda mask, rng, scale, options: ndimage.binary_erosion(
        mask, iterations=_pixels(options.magnitude, scale)),
    "shifted": lambda mask, rng, scale, options: shift_mask(mask, _pixels(options.magnitude, scale), 0),
    # Which cases lose a structure, or come from the careless annotator, is decided per case by the
    # driver (affected_fraction, PER_CASE_PROTOCOLS).
    "missed-structure": lambda mask, rng, scale, options: remove_one_structure(mask, rng),
    "mixed-over-seg": _over_seg,  # the careless annotator's share only (PER_CASE_PROTOCOLS)
}

# Protocols that change only a share ``affected_fraction`` of the noisy cases, chosen case by case.
PER_CASE_PROTOCOLS = frozenset({"missed-structure", "mixed-over-seg"})
