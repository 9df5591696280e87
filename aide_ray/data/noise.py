"""Simulated label noise and annotation budgets for a manifest's train split.

Protocols, so that experiments on clean public data can reproduce the
settings of the AIDE and PyMIC papers and measure methods where noise hurts:

- ``pymic-jsrt``: PyMIC's noisy-JSRT experiment (PyMIC_examples, seg_nll/JSRT).
  A fraction of train cases keeps its clean label (default 5%); every other
  label is, with probability 0.35, dilated by a random number of iterations in
  [6, 12]; with probability 0.35 eroded likewise; otherwise edge-distorted:
  10% of the outer edge pixels get a disc of random radius in [6, 12] added,
  then 10% of the outer edge pixels of the result get a disc removed.
  Iterations and radii are for 256-pixel images and scale with
  size / reference_size. Volumes are corrupted slice by slice (2D), each
  slice drawing its own operation.
- ``pymic-jsrt-strong``: the same with the radius range times ``strength`` (default 2).
- ``over-seg``, ``under-seg``, ``shifted``: a systematic annotator: every noisy
  label dilated, eroded, or moved down by ``magnitude`` pixels (at 256 px).
- ``mixed-over-seg``: two annotators: a share ``affected_fraction`` of the noisy
  cases dilated by ``magnitude`` pixels (the careless one), the others clean.
- ``missed-structure``: a share ``affected_fraction`` of the noisy cases loses
  one of its structures (a random connected component, e.g. one lung).
- ``limited``: a fraction of train cases keeps its label; the others become
  unlabelled (``label_kind`` none, label emptied, original kept in
  ``clean_label``).
- ``scribbles``: every full train label becomes a scribble drawn from it
  (``label_kind`` scribble; the mask kept in ``clean_label``); val and test keep
  their full masks.

The mask-level operations are in :mod:`aide_ray.data.mask_noise` and
:mod:`aide_ray.data.scribbles`.

Only the train split changes. Randomness is keyed on (seed, case_id,
annotator), so results do not depend on the manifest's row order.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from aide_ray._internal.io import atomic_dir
from aide_ray.data.image_io import label_array, read_image, write_label, write_scribble
from aide_ray.data.label_kinds import FULL_MASK_KINDS, LQ, NONE, SCRIBBLE
from aide_ray.data.manifest import read_manifest, write_manifest
from aide_ray.data.mask_noise import MASK_PROTOCOLS, PER_CASE_PROTOCOLS, NoiseOptions, corrupt_mask
from aide_ray.data.scribbles import ScribbleOptions, scribble_volume
from aide_ray.exceptions import InputError

__all__ = [
    "PROTOCOLS",
    "NoiseOptions",
    "ScribbleOptions",
    "corrupt_mask",
    "corrupt_volume",
    "choose_cases",
    "case_rng",
    "corrupt_manifest",
]

SCRIBBLES = "scribbles"
PROTOCOLS: tuple[str, ...] = (*MASK_PROTOCOLS, "limited", SCRIBBLES)


def corrupt_volume(mask: np.ndarray, rng: np.random.Generator, *, scale: float = 1.0, protocol: str = "pymic-jsrt",
                   options: NoiseOptions = NoiseOptions()) -> np.ndarray:
    """Corrupt a 2D mask or each slice (numpy axis 0) of a 3D mask under ``protocol``.

    Args:
        mask: (H, W) or (S, H, W) binary mask.
        rng: random generator of the case.
        scale: image size / reference size.
        protocol: a name of :data:`aide_ray.data.mask_noise.MASK_PROTOCOLS`.
        options: the protocols' knobs.
    Returns:
        uint8 {0, 1} array of the same shape.
    """
    if protocol not in MASK_PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(MASK_PROTOCOLS)}, got {protocol!r}")
    if mask.ndim not in (2, 3):
        raise ValueError(f"mask must be (H, W) or (S, H, W), got shape {mask.shape}")
    slices = mask[None] if mask.ndim == 2 else mask
    # An annotator who leaves out a structure (or the careless one of two) labels the whole case.
    if protocol in PER_CASE_PROTOCOLS and not rng.random() < options.affected_fraction:
        return (np.asarray(mask) > 0).astype(np.uint8)
    fn = MASK_PROTOCOLS[protocol]
    out = np.stack([fn(np.asarray(s) > 0, rng, scale, options) for s in slices]).astype(np.uint8)
    return out[0] if mask.ndim == 2 else out


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
                     options: NoiseOptions = NoiseOptions(),
                     scribble_options: ScribbleOptions = ScribbleOptions(), overwrite: bool = False) -> Path:
    """Write a copy of a manifest whose train labels follow ``protocol``.

    Output folder: ``manifest.csv`` (columns of the input plus
    ``noise_protocol`` and ``noise_seed``) and ``labels/`` with the corrupted
    labels of every noise protocol (input geometry and foreground value; PNG
    labels stay PNG, anything else becomes NIfTI) or the scribbles (class
    indices and 255, same geometry and formats). Rows whose label changes get
    the original label in ``clean_label`` unless it already has one. Every file
    is written inside a temporary folder renamed at the end: a failure leaves
    nothing.

    Args:
        manifest_path: input manifest.
        out_dir: output folder (written atomically).
        protocol: one of :data:`PROTOCOLS`.
        seed: random seed.
        clean_fraction: noise protocols: share of train cases that keep clean labels
            (scribbles: none do; every full train label becomes a scribble).
        labelled_fraction: limited: share of train cases that keep their labels.
        reference_size: image size at which iterations, radii and magnitudes are given.
        options: the noise protocols' knobs (magnitude, affected fraction, strength).
        scribble_options: scribbles: width, keep fraction, background distance.
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
    train = df[(df["split"] == "train") & (df["label_kind"] != NONE)]
    if protocol == SCRIBBLES:
        # Scribbles are drawn from full masks; a row that is already a scribble stays as it is.
        train = train[train["label_kind"].isin(FULL_MASK_KINDS)]
        keep: set[str] = set()
    else:
        keep = choose_cases(train["case_id"].tolist(),
                            labelled_fraction if protocol == "limited" else clean_fraction, seed)

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
            rng = case_rng(seed, rec["case_id"], rec["annotator"])
            scale = _scale_of(image, reference_size)
            stem = rec["case_id"] + (f"__{rec['annotator']}" if rec["annotator"] else "")
            target = label_dir / f"{stem}{_label_suffix(rec['label'])}"
            label_dir.mkdir(exist_ok=True)
            if protocol == SCRIBBLES:
                write_scribble(scribble_volume(arr, rng, scale=scale, options=scribble_options), image, target)
                out.at[row, "label_kind"] = SCRIBBLE
            else:
                foreground = 255 if sitk.GetArrayViewFromImage(image).max() == 255 else 1
                noisy = corrupt_volume(arr, rng, scale=scale, protocol=protocol, options=options)
                write_label(noisy, image, target, foreground=foreground)
                out.at[row, "label_kind"] = LQ
            out.at[row, "label"] = str(target)
        out["noise_protocol"] = protocol
        out["noise_seed"] = str(int(seed))
        write_manifest(out, tmp / "manifest.csv", relative_to=tmp)
    return Path(out_dir) / "manifest.csv"

