"""Per-case segmentation metrics in physical units: overlap, volume and surface distances.

One module computes every per-case score that evaluation and the results
tables report, so that the empty-mask policy (the classic source of
inconsistencies: AIDE's two Dice functions disagree on empty masks) is decided
in one place; the Dice itself is :mod:`aide_ray.eval.dice`'s, the one the
training logs use too.

Conventions
-----------
* Masks are numpy arrays in numpy axis order: (H, W) for 2D images, (D, H, W)
  = (z, y, x) for 3D volumes. ``sampling`` is the pixel size in that same
  order, in mm: for a SimpleITK image ``img``, ``sampling =
  img.GetSpacing()[::-1]`` (SimpleITK reports spacing in (x, y, z) order); use
  :func:`sampling_from_spacing_xyz`. This is also scipy's ``sampling`` and
  medpy's ``voxelspacing`` order.
* Surfaces are the mask's boundary: the mask minus its binary erosion with the
  face-connectivity structure (``generate_binary_structure(ndim, 1)``; 4-
  neighbourhood in 2D, 6 in 3D), voxels outside the image counting as
  background. This is medpy's default (``connectivity=1``), which the tests
  compare against.
* Surface distances are taken both ways (prediction surface to reference
  surface and back) and pooled: ASSD is the mean of the pooled distances,
  MSSD (the symmetric Hausdorff distance) their maximum, HD95 their 95th
  percentile (numpy's linear interpolation), all as medpy 0.5.2 defines them.

Empty masks (``both_empty="perfect"``, the default)
---------------------------------------------------
A metric is computed whenever its formula's denominator is non-zero. Otherwise:

* both masks empty: a perfect score, DSC = IoU = sensitivity = precision = 1,
  RAVD = 0, ASSD = MSSD = HD95 = 0 (specificity is computed as usual);
* exactly one empty: DSC = IoU = 0; the distances are NaN (one of the two
  surfaces does not exist); RAVD is -1 when only the prediction is empty and
  NaN when only the reference is; sensitivity is 0 / NaN and precision NaN / 0
  (reference-empty / prediction-empty) respectively;
* specificity is NaN when the reference covers the whole image.

NaN means "undefined", never "bad": summaries average with ``nanmean`` and
report how many cases were excluded per metric (:func:`summarize`). With
``both_empty="nan"`` a class absent from both masks gives NaN for every metric,
so it is excluded from the means instead of counting as perfect (the policy of
nnU-Net and of MONAI's ``ignore_empty=True``).
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from aide_ray.eval.dice import dice_from_counts

__all__ = [
    "METRIC_NAMES",
    "DISTANCE_METRICS",
    "HIGHER_IS_BETTER",
    "binary_metrics",
    "case_metrics",
    "surface_distances",
    "sampling_from_spacing_xyz",
    "summarize",
]

# Order of the columns in every table.
METRIC_NAMES: tuple[str, ...] = (
    "dice", "iou", "ravd", "assd", "mssd", "hd95", "sensitivity", "specificity", "precision",
)
DISTANCE_METRICS: frozenset[str] = frozenset({"assd", "mssd", "hd95"})
# For the comparison tables: which direction is better (RAVD: closest to 0, reported signed).
HIGHER_IS_BETTER: dict[str, bool | None] = {
    "dice": True, "iou": True, "ravd": None, "assd": False, "mssd": False, "hd95": False,
    "sensitivity": True, "specificity": True, "precision": True,
}

_NAN = float("nan")


def sampling_from_spacing_xyz(spacing_xyz: Sequence[float]) -> tuple[float, ...]:
    """Numpy-order pixel size from a SimpleITK-order spacing.

    Args:
        spacing_xyz: ``image.GetSpacing()``, (x, y[, z]) in mm.
    Returns:
        (z, y, x) or (y, x) in mm, the order of ``sitk.GetArrayFromImage(image).shape``.
    """
    return tuple(float(s) for s in reversed(tuple(spacing_xyz)))


def _check_sampling(sampling: Sequence[float] | float | None, ndim: int) -> np.ndarray:
    if sampling is None:
        return np.ones(ndim, dtype=np.float64)
    arr = np.atleast_1d(np.asarray(sampling, dtype=np.float64))
    if arr.size == 1:
        arr = np.repeat(arr, ndim)
    if arr.shape != (ndim,):
        raise ValueError(f"sampling must have one value per mask axis ({ndim}), got {tuple(arr.tolist())}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"sampling must be positive and finite, got {tuple(arr.tolist())}")
    return arr


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    # border_value=0: voxels outside the image are background, so an object
    # touching the image edge has a surface there (as medpy).
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, sampling: Sequence[float] | float | None = None,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface voxel of one mask to the other mask's surface.

    Args:
        pred: (H, W) or (D, H, W) bool, non-empty.
        ref: same shape, bool, non-empty.
        sampling: pixel size in mm in numpy axis order (see module docstring).
    Returns:
        ``(pred_to_ref, ref_to_pred)``: float64 arrays of mm, one value per surface voxel of
        ``pred`` (resp. ``ref``).
    Raises:
        ValueError: if a mask is empty or shapes differ.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref must have the same shape, got {pred.shape} and {ref.shape}")
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks, got "
                         f"{int(pred.sum())} and {int(ref.sum())} foreground voxels")
    samp = _check_sampling(sampling, pred.ndim)
    pred_s, ref_s = _surface(pred), _surface(ref)
    # Every surface voxel lies in the bounding box of both surfaces, so the
    # distance transforms on that box are exact and much cheaper on volumes.
    coords = np.argwhere(pred_s | ref_s)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(coords.min(0), coords.max(0)))
    pred_s, ref_s = pred_s[box], ref_s[box]
    dt_ref = ndimage.distance_transform_edt(~ref_s, sampling=samp)
    dt_pred = ndimage.distance_transform_edt(~pred_s, sampling=samp)
    return dt_ref[pred_s], dt_pred[ref_s]


def binary_metrics(pred: np.ndarray, ref: np.ndarray, sampling: Sequence[float] | float | None = None, *,
                   both_empty: Literal["perfect", "nan"] = "perfect") -> dict[str, float]:
    """Every metric of :data:`METRIC_NAMES` for one binary prediction.

    Args:
        pred: (H, W) or (D, H, W), foreground where non-zero.
        ref: the reference, same shape.
        sampling: pixel size in mm in numpy axis order; None for 1.
        both_empty: "perfect" or "nan", the score when both masks are empty (module docstring).
    Returns:
        ``{name: value}`` for every name in :data:`METRIC_NAMES`; distances in mm; NaN where undefined.
    Raises:
        ValueError: on differing shapes, a bad ``sampling`` or ``both_empty``.
    """
    if both_empty not in ("perfect", "nan"):
        raise ValueError(f"both_empty must be one of ['perfect', 'nan'], got {both_empty!r}")
    pred = np.asarray(pred) != 0
    ref = np.asarray(ref) != 0
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref must have the same shape, got {pred.shape} and {ref.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D (H, W) or 3D (D, H, W), got shape {pred.shape}")
    _check_sampling(sampling, pred.ndim)
    tp = int(np.count_nonzero(pred & ref))
    fp = int(np.count_nonzero(pred & ~ref))
    fn = int(np.count_nonzero(~pred & ref))
    tn = int(pred.size) - tp - fp - fn
    n_pred, n_ref = tp + fp, tp + fn

    def ratio(num: float, den: float) -> float:
        return float(num) / float(den) if den else _NAN

    out = {
        "sensitivity": ratio(tp, n_ref),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, n_pred),
        "ravd": ratio(fp - fn, n_ref),
    }
    out["dice"] = dice_from_counts(tp, n_pred, n_ref, both_empty=1.0 if both_empty == "perfect" else _NAN)
    if n_pred == 0 and n_ref == 0:
        if both_empty == "nan":
            return {name: _NAN for name in METRIC_NAMES}
        out.update(iou=1.0, ravd=0.0, sensitivity=1.0, precision=1.0, assd=0.0, mssd=0.0, hd95=0.0)
        return {name: out[name] for name in METRIC_NAMES}
    out["iou"] = tp / (tp + fp + fn)
    if n_pred and n_ref:
        d_pr, d_rp = surface_distances(pred, ref, sampling)
        pooled = np.concatenate([d_pr, d_rp])
        out.update(assd=float(pooled.mean()), mssd=float(pooled.max()), hd95=float(np.percentile(pooled, 95)))
    else:
        out.update(assd=_NAN, mssd=_NAN, hd95=_NAN)
    return {name: out[name] for name in METRIC_NAMES}


def case_metrics(pred: np.ndarray, ref: np.ndarray, sampling: Sequence[float] | float | None = None,
                 labels: Sequence[int] | None = None, *,
                 both_empty: Literal["perfect", "nan"] = "perfect") -> dict[str, float]:
    """Metrics of one case, binary or per class.

    Args:
        pred: (H, W) or (D, H, W) integer label map (or bool mask).
        ref: the reference label map, same shape.
        sampling: pixel size in mm in **numpy axis order** ((z, y, x) or (y, x)), i.e.
            ``sampling_from_spacing_xyz(image.GetSpacing())``; None for 1.
        labels: None for a binary task (foreground = non-zero; keys ``dice``, ``assd``, ...);
            else the class values to score one by one (keys ``dice_1``, ``assd_2``, ...).
        both_empty: "perfect" or "nan" (module docstring).
    Returns:
        ``{key: value}``, floats; NaN where a metric is undefined.
    Raises:
        ValueError: on differing shapes, a bad ``sampling``, background (0) in ``labels``.
    """
    if labels is None:
        return binary_metrics(pred, ref, sampling, both_empty=both_empty)
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    labels = [int(v) for v in labels]
    if not labels or any(v <= 0 for v in labels):
        raise ValueError(f"labels must be non-empty foreground class values (> 0), got {labels}")
    out: dict[str, float] = {}
    for value in labels:
        scores = binary_metrics(pred == value, ref == value, sampling, both_empty=both_empty)
        out.update({f"{name}_{value}": score for name, score in scores.items()})
    return out


def summarize(per_case: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, std, n and n_excluded of each metric column, ignoring NaN.

    Args:
        per_case: one row per case.
        columns: metric columns; default every numeric column.
    Returns:
        DataFrame indexed by metric with columns ``mean``, ``std`` (sample std, ddof=1; NaN
        for n < 2), ``n`` (cases averaged) and ``n_excluded`` (cases whose value is NaN).
    """
    if columns is None:
        columns = [c for c in per_case.columns if pd.api.types.is_numeric_dtype(per_case[c])]
    rows: dict[str, Mapping[str, float]] = {}
    for col in columns:
        values = per_case[col].to_numpy(dtype=np.float64)
        # inf (impossible with this module) would poison means; count it as excluded too.
        ok = np.isfinite(values)
        kept = values[ok]
        rows[col] = {
            "mean": float(kept.mean()) if kept.size else _NAN,
            "std": float(kept.std(ddof=1)) if kept.size > 1 else _NAN,
            "n": int(kept.size),
            "n_excluded": int((~ok).sum()),
        }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["mean", "std", "n", "n_excluded"])
    table.index.name = "metric"
    return table
