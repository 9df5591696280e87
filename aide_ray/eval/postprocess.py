"""Post-processing of predicted label maps: largest connected component and hole filling.

Kept apart from inference so that evaluation, label correction and export can
apply exactly the same rules. Both operations work class by class on integer
label maps (0 = background), in 2D (H, W) and 3D (D, H, W) numpy arrays.
Selected by ``cfg.eval.largest_component`` / ``cfg.eval.fill_holes`` and on the
command line by ``--lcc`` / ``--fill-holes``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

__all__ = ["largest_component", "fill_holes", "postprocess"]


def _check(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise ValueError(f"mask must be 2D (H, W) or 3D (D, H, W), got shape {mask.shape}")
    if mask.dtype.kind not in "biu":
        raise ValueError(f"mask must hold integer class values or bool, got dtype {mask.dtype}")
    return mask


def _classes(mask: np.ndarray) -> list:
    return [v for v in np.unique(mask) if v != 0]


def largest_component(mask: np.ndarray, connectivity: int | None = None) -> np.ndarray:
    """Keep, for each foreground class, only its largest connected component.

    Args:
        mask: (H, W) or (D, H, W) integer label map or bool mask; 0 is background.
        connectivity: neighbourhood of ``scipy.ndimage.generate_binary_structure``: 1 is
            face connectivity (4 in 2D, 6 in 3D), ``mask.ndim`` full connectivity (8 / 26).
            None (default): full connectivity, so that diagonal touches keep an organ whole.
    Returns:
        Array of the same shape and dtype; removed voxels become 0. Ties between equally
        large components keep the one with the lowest label index (scan order).
    Raises:
        ValueError: on a bad shape, dtype or connectivity.
    """
    mask = _check(mask)
    connectivity = mask.ndim if connectivity is None else connectivity
    if not 1 <= connectivity <= mask.ndim:
        raise ValueError(f"connectivity must be in [1, {mask.ndim}] for a {mask.ndim}D mask, got {connectivity}")
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    out = mask.copy()
    for value in _classes(mask):
        cls = mask == value
        components, n = ndimage.label(cls, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[cls & (components != int(sizes.argmax()))] = 0
    return out


def fill_holes(mask: np.ndarray, mode: Literal["slice", "3d"] = "slice") -> np.ndarray:
    """Fill background holes enclosed by a foreground class.

    Only background voxels are filled, so a class enclosed by another (a tumour
    inside an organ) is left alone; classes are filled in ascending order.

    Args:
        mask: (H, W) or (D, H, W) integer label map or bool mask; 0 is background.
        mode: for 3D masks, "slice" (default) fills each axial slice (axis 0) in 2D, as
            the networks predict slice by slice; "3d" fills only cavities enclosed in 3D.
            2D masks are always filled in 2D.
    Returns:
        Array of the same shape and dtype.
    Raises:
        ValueError: on a bad shape, dtype or mode.
    """
    mask = _check(mask)
    if mode not in ("slice", "3d"):
        raise ValueError(f"mode must be one of ['slice', '3d'], got {mode!r}")
    out = mask.copy()
    for value in _classes(mask):
        cls = out == value
        if mask.ndim == 3 and mode == "slice":
            filled = np.stack([ndimage.binary_fill_holes(s) for s in cls])
        else:
            filled = ndimage.binary_fill_holes(cls)
        out[filled & (out == 0)] = value
    return out


def postprocess(mask: np.ndarray, *, largest_component: bool, fill_holes: bool) -> np.ndarray:
    """Apply the selected post-processing: largest component first, then hole filling.

    Args:
        mask: (H, W) or (D, H, W) integer label map or bool mask.
        largest_component: keep each class's largest component (full connectivity).
        fill_holes: fill background holes (per slice for 3D).
    Returns:
        The processed label map (a copy), same shape and dtype.
    """
    out = _check(mask)
    if largest_component:
        out = _largest(out)
    if fill_holes:
        out = _fill(out)
    return out.copy() if out is mask else out


# The keyword arguments of postprocess() shadow the functions' names.
_largest = largest_component
_fill = fill_holes
