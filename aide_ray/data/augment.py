"""Random flips of decoded slice batches (numpy), the one augmentation applied to training rows.

Both training backends use these functions: Ray Data ships them to its
workers by reference (``map_batches``), so the module is import-safe and free
of Ray and torch; the local backend calls them on in-memory rows.
"""

from __future__ import annotations

import numpy as np

__all__ = ["flip_augment", "no_flip", "flip_rows", "FLIPPED_KEYS"]

# Per-pixel arrays of a decoded batch that a flip must move together.
FLIPPED_KEYS = ("image", "label", "clean_label")


def flip_rows(arr: np.ndarray, flip_h: np.ndarray, flip_v: np.ndarray) -> np.ndarray:
    """A copy of ``arr`` (B, ..., H, W) with rows ``flip_h`` mirrored left-right and ``flip_v`` up-down.

    A flip is its own inverse: applying it twice restores the rows.
    """
    out = arr.copy()
    out[flip_h] = out[flip_h][..., ::-1]
    out[flip_v] = out[flip_v][..., ::-1, :]
    return out


def flip_augment(batch: dict[str, np.ndarray], rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Random horizontal/vertical flips, the same for a row's image, label and clean label.

    Labels are flipped here, before the worker overlays label-store corrections,
    so corrections (stored in the unflipped frame) must be flipped the same
    way: the flip flags travel with the batch as ``flip_h``/``flip_v``.

    Args:
        batch: decoded rows (``aide_ray.data.decode.decode_batch``).
        rng: source of the flips; None: a fresh, unseeded generator (Ray Data tasks).
    """
    rng = np.random.default_rng() if rng is None else rng
    n = len(batch["sample_index"])
    flip_h = rng.random(n) < 0.5
    flip_v = rng.random(n) < 0.5
    out = dict(batch)
    for key in FLIPPED_KEYS:
        if key in batch:
            out[key] = flip_rows(batch[key], flip_h, flip_v)
    out["flip_h"] = flip_h
    out["flip_v"] = flip_v
    return out


def no_flip(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch with all-False flip flags (scoring and validation rows)."""
    n = len(batch["sample_index"])
    return {**batch, "flip_h": np.zeros(n, bool), "flip_v": np.zeros(n, bool)}
