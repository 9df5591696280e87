"""The synthetic demo dataset: small 3D MR-like volumes with clean and noisy labels.

It lets ``make demo`` and the tests exercise the whole pipeline (NIfTI
reading, anisotropic spacing, a rotated direction, slicing, noisy labels,
splits) without any download. Each case is an organ-like blob (an ellipsoid
whose cross-section is deformed by low-order harmonics and drifts across
slices) with texture, a multiplicative bias field and Rician-like noise.
Train labels are corrupted with a noise protocol (pymic-jsrt, per slice, unless
told otherwise), except the clean fraction; val and test keep clean labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from aide_ray._internal.io import atomic_dir
from aide_ray.data.manifest import write_manifest
from aide_ray.data.mask_noise import MASK_PROTOCOLS, NoiseOptions
from aide_ray.data.noise import case_rng, choose_cases, corrupt_volume

__all__ = ["DEMO_SPACING", "make_demo_data", "demo_split_sizes", "synthesize_case"]

DEMO_SPACING = (0.8, 0.8, 5.0)  # (x, y, z) mm: thick slices, like clinical abdominal MR
_DEMO_ORIGIN = (-23.7, 31.2, -47.5)
_DEMO_ROTATION_DEG = 12.0  # about z, so that geometry code cannot get away with identity directions
_CLEAN_FRACTION = 0.05  # pymic-jsrt default
_REFERENCE_SIZE = 256


def demo_split_sizes(cases: int) -> tuple[int, int, int]:
    """(train, val, test) case counts: val = test = max(1, round(cases / 6)); 12 -> (8, 2, 2)."""
    if cases < 3:
        raise ValueError(f"cases must be >= 3 (one per split), got {cases!r}")
    held = max(1, int(round(cases / 6)))
    return cases - 2 * held, held, held


def _direction() -> tuple[float, ...]:
    t = np.deg2rad(_DEMO_ROTATION_DEG)
    c, s = np.cos(t), np.sin(t)
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def synthesize_case(rng: np.random.Generator, slices: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic volume and its clean mask.

    Args:
        rng: random generator (the only source of randomness).
        slices: S, number of slices.
        size: H = W, in-plane size in pixels.
    Returns:
        image (S, H, W) float32, positive intensities (about 0 .. 1000);
        mask (S, H, W) uint8 in {0, 1}, non-empty on every slice.
    """
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    zc = (slices - 1) / 2.0
    rz = max(slices * 0.55, 1.0)
    cy, cx = size / 2.0 + rng.uniform(-0.08, 0.08, 2) * size
    semi = rng.uniform(0.2, 0.3, 2) * size  # (a_y, a_x) at the widest slice
    drift = rng.uniform(-0.02, 0.02, 2) * size  # centre drift per slice
    angle0, dangle = rng.uniform(0, np.pi), rng.uniform(-0.15, 0.15)
    harmonics = [(k, rng.uniform(0.04, 0.12), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)]

    mask = np.zeros((slices, size, size), dtype=np.uint8)
    for z in range(slices):
        f = np.sqrt(max(0.1, 1.0 - ((z - zc) / rz) ** 2))
        ay, ax = semi * f
        oy, ox = cy + drift[0] * (z - zc), cx + drift[1] * (z - zc)
        ang = angle0 + dangle * z
        dy, dx = yy - oy, xx - ox
        u = dx * np.cos(ang) + dy * np.sin(ang)
        v = -dx * np.sin(ang) + dy * np.cos(ang)
        rho = np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
        theta = np.arctan2(v, u)
        radius = 1.0 + sum(amp * np.cos(k * (theta - phase)) for k, amp, phase in harmonics)
        mask[z] = rho < radius

    # Body outline around the organ, organ brighter than the body, textures on both.
    body = ((yy - size / 2) / (0.47 * size)) ** 2 + ((xx - size / 2) / (0.45 * size)) ** 2 < 1.0
    texture = ndimage.gaussian_filter(rng.standard_normal((slices, size, size)), sigma=(0.5, 1.5, 1.5))
    texture /= texture.std() + 1e-12
    clean = np.where(body[None], 0.35 + 0.04 * texture, 0.03)
    clean = np.where(mask > 0, 0.8 + 0.07 * texture, clean)
    clean = ndimage.gaussian_filter(clean, sigma=(0.0, 0.7, 0.7))  # partial-volume edges

    # Smooth multiplicative bias field: exp of a random low-order polynomial.
    zz = np.linspace(-1, 1, slices)[:, None, None]
    y1, x1 = (yy / max(size - 1, 1) * 2 - 1)[None], (xx / max(size - 1, 1) * 2 - 1)[None]
    c = rng.uniform(-0.25, 0.25, 5)
    bias = np.exp(c[0] * x1 + c[1] * y1 + c[2] * x1 * y1 + c[3] * (x1 ** 2 - y1 ** 2) + c[4] * zz)

    # Rician-like noise: magnitude of a complex signal with Gaussian noise in both channels.
    sigma = 0.04
    n1, n2 = rng.normal(0, sigma, (2, slices, size, size))
    image = np.sqrt((clean * bias + n1) ** 2 + n2 ** 2) * 1000.0
    return image.astype(np.float32), mask


def _write(arr: np.ndarray, path: Path) -> None:
    img = sitk.GetImageFromArray(arr, isVector=False)
    img.SetSpacing(DEMO_SPACING)
    img.SetOrigin(_DEMO_ORIGIN)
    img.SetDirection(_direction())
    sitk.WriteImage(img, str(path), useCompression=True)


def make_demo_data(out_dir: str | os.PathLike, cases: int = 12, slices: int = 8, size: int = 64, seed: int = 0,
                   *, protocol: str = "pymic-jsrt", noise: NoiseOptions = NoiseOptions(),
                   overwrite: bool = False) -> Path:
    """Write the demo dataset and return its manifest's path.

    Layout of ``out_dir``: ``images/case_NNN.nii.gz`` (float32 volumes),
    ``labels_hq/`` (clean masks), ``labels_lq/`` (noisy masks of the noisy train
    cases), ``manifest.csv``. Train cases get ``label`` = LQ file (kind lq) and
    ``clean_label`` = HQ file, except a clean fraction (5%, at least one case)
    which keeps HQ (kind hq); val and test cases get HQ labels (kind hq). Splits are the first train, then val, then
    test cases (see :func:`demo_split_sizes`). The same arguments give
    byte-identical files.

    Args:
        out_dir: output folder (written atomically).
        cases: number of cases (>= 3).
        slices: slices per volume (>= 1).
        size: in-plane size in pixels (>= 16).
        seed: random seed.
        protocol: the train labels' noise, a name of
            :data:`aide_ray.data.mask_noise.MASK_PROTOCOLS` (sizes relative to 256 px).
        noise: the protocol's knobs.
        overwrite: replace an existing ``out_dir``.
    Returns:
        Path of ``out_dir/manifest.csv``.
    """
    n_train, n_val, n_test = demo_split_sizes(cases)
    if slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices!r}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size!r}")
    if protocol not in MASK_PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(MASK_PROTOCOLS)}, got {protocol!r}")
    case_ids = [f"case_{i:03d}" for i in range(cases)]
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    clean_train = choose_cases(case_ids[:n_train], _CLEAN_FRACTION, seed)
    rows = []
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for sub in ("images", "labels_hq", "labels_lq"):
            (tmp / sub).mkdir()
        for i, (case_id, split) in enumerate(zip(case_ids, splits)):
            image, mask = synthesize_case(np.random.default_rng([int(seed), i]), slices, size)
            image_path, hq_path = tmp / "images" / f"{case_id}.nii.gz", tmp / "labels_hq" / f"{case_id}.nii.gz"
            _write(image, image_path)
            _write(mask, hq_path)
            row = {"case_id": case_id, "image": str(image_path), "label": str(hq_path), "label_kind": "hq",
                   "annotator": "", "domain": "", "split": split, "clean_label": ""}
            if split == "train":
                row["clean_label"] = str(hq_path)
                if case_id not in clean_train:
                    lq = corrupt_volume(mask, case_rng(seed, case_id, ""), scale=size / _REFERENCE_SIZE,
                                        protocol=protocol, options=noise)
                    lq_path = tmp / "labels_lq" / f"{case_id}.nii.gz"
                    _write(lq, lq_path)
                    row["label"], row["label_kind"] = str(lq_path), "lq"
            rows.append(row)
        df = pd.DataFrame(rows)
        df["noise_protocol"] = protocol
        df["noise_seed"] = str(int(seed))
        write_manifest(df, tmp / "manifest.csv", relative_to=tmp)
    return Path(out_dir) / "manifest.csv"
