"""Simulated label noise and annotation budgets for a manifest's train split.

Two protocols, so that experiments on clean public data can reproduce the
settings of the AIDE and PyMIC papers:

- ``pymic-jsrt``: PyMIC's noisy-JSRT experiment (PyMIC_examples, seg_nll/JSRT).
  A fraction of train cases keeps its clean label (default 5%); every other
  label is, with probability 0.35, dilated by a random number of iterations in
  [6, 12]; with probability 0.35 eroded likewise; otherwise edge-distorted:
  10% of the outer edge pixels get a disc of random radius in [6, 12] added,
  then 10% of the outer edge pixels of the result get a disc removed.
  Iterations and radii are for 256-pixel images and scale with
  size / reference_size. Volumes are corrupted slice by slice (2D), each
  slice drawing its own operation.
- ``limited``: a fraction of train cases keeps its label; the others become
  unlabelled (``label_kind`` none, label emptied, original kept in
  ``clean_label``).

Only the train split changes. Randomness is keyed on (seed, case_id,
annotator), so results do not depend on the manifest's row order.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from aide_ray._internal.io import atomic_dir
from aide_ray.data.image_io import label_array, read_image, write_label
from aide_ray.data.manifest import read_manifest, write_manifest
from aide_ray.exceptions import InputError

__all__ = [
    "PROTOCOLS",
    "DILATE_ERODE_PROBABILITY",
    "RADIUS_RANGE",
    "EDGE_SAMPLE_RATIO",
    "scaled_range",
    "corrupt_mask",
    "corrupt_volume",
    "choose_cases",
    "case_rng",
    "corrupt_manifest",
]

PROTOCOLS: tuple[str, ...] = ("pymic-jsrt", "limited")
DILATE_ERODE_PROBABILITY = 0.35  # each of dilation and erosion; edge distortion gets the remaining 0.3
RADIUS_RANGE = (6, 12)  # iterations / disc radii at the reference size, inclusive
EDGE_SAMPLE_RATIO = 0.1  # share of edge pixels that get a disc


def scaled_range(scale: float, base: tuple[int, int] = RADIUS_RANGE) -> tuple[int, int]:
    """Integer range [lo, hi] of ``base`` scaled by ``scale``, at least 1.

    Example: scale 64/256 maps (6, 12) to (2, 3).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    lo = max(1, int(round(base[0] * scale)))
    hi = max(lo, int(round(base[1] * scale)))
    return lo, hi


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
    mask = np.asarray(mask2d) > 0
    r_range = scaled_range(scale)
    p = rng.random()
    if p < DILATE_ERODE_PROBABILITY:
        out = ndimage.binary_dilation(mask, iterations=int(rng.integers(r_range[0], r_range[1] + 1)))
    elif p < 2 * DILATE_ERODE_PROBABILITY:
        out = ndimage.binary_erosion(mask, iterations=int(rng.integers(r_range[0], r_range[1] + 1)))
    else:
        grown = mask | _discs_on_edge(mask, rng, r_range, EDGE_SAMPLE_RATIO)
        out = grown & ~_discs_on_edge(grown, rng, r_range, EDGE_SAMPLE_RATIO)
    return out.astype(np.uint8)


def corrupt_volume(mask: np.ndarray, rng: np.random.Generator, *, scale: float = 1.0) -> np.ndarray:
    """Corrupt a 2D mask or each slice (numpy axis 0) of a 3D mask independently.

    Args:
        mask: (H, W) or (S, H, W) binary mask.
        rng: random generator.
        scale: image size / reference size.
    Returns:
        uint8 {0, 1} array of the same shape.
    """
    if mask.ndim == 2:
        return corrupt_mask(mask, rng, scale=scale)
    if mask.ndim != 3:
        raise ValueError(f"mask must be (H, W) or (S, H, W), got shape {mask.shape}")
    return np.stack([corrupt_mask(s, rng, scale=scale) for s in mask])


def case_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator keyed on ``seed`` and strings (case_id, annotator), independent of row order."""
    digest = hashlib.sha256("\x1f".join(keys).encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def choose_cases(case_ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A seeded random subset of ``fraction`` of the distinct ``case_ids``.

    The count is ``round(fraction * n)``, at least 1 when ``fraction`` > 0
    (PyMIC takes ``int(fraction * n)``: the same for JSRT's 240 train images,
    but it would keep no clean case in a 12-case demo).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    unique = sorted(set(case_ids))
    n = int(round(fraction * len(unique)))
    if fraction > 0 and unique:
        n = max(1, n)
    order = np.random.default_rng([int(seed), 0x5E1EC7]).permutation(len(unique))
    return {unique[i] for i in order[:n]}


def _scale_of(image: sitk.Image, reference_size: int) -> float:
    # In-plane size: the larger of width and height, as images are resized for training.
    return max(image.GetSize()[:2]) / float(reference_size)


def _label_suffix(path: str) -> str:
    return ".png" if path.lower().endswith((".png", ".bmp", ".tif", ".tiff")) else ".nii.gz"


def corrupt_manifest(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, protocol: str, seed: int = 0, *,
                     clean_fraction: float = 0.05, labelled_fraction: float = 0.1, reference_size: int = 256,
                     overwrite: bool = False) -> Path:
    """Write a copy of a manifest whose train labels follow ``protocol``.

    Output folder: ``manifest.csv`` (columns of the input plus
    ``noise_protocol`` and ``noise_seed``) and, for pymic-jsrt, ``labels/``
    with the corrupted labels (input geometry and foreground value; PNG labels
    stay PNG, anything else becomes NIfTI). Rows whose label changes get the
    original label in ``clean_label`` unless it already has one.

    Args:
        manifest_path: input manifest.
        out_dir: output folder (written atomically).
        protocol: "pymic-jsrt" or "limited".
        seed: random seed.
        clean_fraction: pymic-jsrt: share of train cases that keep clean labels.
        labelled_fraction: limited: share of train cases that keep their labels.
        reference_size: image size for which iterations/radii are (6, 12).
        overwrite: replace an existing ``out_dir``.
    Returns:
        Path of the output manifest.
    Raises:
        InputError: bad manifest or label files.
        ValueError: unknown protocol or fraction out of [0, 1].
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    for name, value in (("clean_fraction", clean_fraction), ("labelled_fraction", labelled_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    if reference_size < 1:
        raise ValueError(f"reference_size must be >= 1, got {reference_size!r}")
    manifest_path = Path(manifest_path)
    df = read_manifest(manifest_path)
    train = df[(df["split"] == "train") & (df["label_kind"] != "none")]
    if protocol == "pymic-jsrt":
        keep = choose_cases(train["case_id"].tolist(), clean_fraction, seed)
    else:
        keep = choose_cases(train["case_id"].tolist(), labelled_fraction, seed)

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        out = df.copy()
        label_dir = tmp / "labels"
        for row, rec in train.iterrows():
            if rec["case_id"] in keep:
                if not out.at[row, "clean_label"]:
                    out.at[row, "clean_label"] = rec["label"]
                continue
            if not out.at[row, "clean_label"]:
                out.at[row, "clean_label"] = rec["label"]
            if protocol == "limited":
                out.at[row, "label"] = ""
                out.at[row, "label_kind"] = "none"
                continue
            try:
                image = read_image(rec["label"])
                arr = label_array(image, rec["label"])
            except InputError as e:
                raise InputError(f"{manifest_path.name} row {row}: {e}") from None
            foreground = 255 if sitk.GetArrayViewFromImage(image).max() == 255 else 1
            noisy = corrupt_volume(arr, case_rng(seed, rec["case_id"], rec["annotator"]),
                                   scale=_scale_of(image, reference_size))
            stem = rec["case_id"] + (f"__{rec['annotator']}" if rec["annotator"] else "")
            target = label_dir / f"{stem}{_label_suffix(rec['label'])}"
            label_dir.mkdir(exist_ok=True)
            write_label(noisy, image, target, foreground=foreground)
            out.at[row, "label"] = str(target)
            out.at[row, "label_kind"] = "lq"
        out["noise_protocol"] = protocol
        out["noise_seed"] = str(int(seed))
        write_manifest(out, tmp / "manifest.csv", relative_to=tmp)
    return Path(out_dir) / "manifest.csv"

