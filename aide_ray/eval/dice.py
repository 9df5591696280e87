"""The one Dice of aide_ray: overlap counts, and Dice from them, for numpy arrays and torch tensors.

Every place that scores a mask against another (the training Dice that ranks
samples for label correction, the per-case validation Dice, the evaluation
metrics, the noise diagnostics, the figures) calls this module, so they share
one rule for the case that has no clean answer: both masks empty. It is an
explicit argument (``both_empty``): 1.0 (an empty prediction of an empty
label is perfect; the default, so that correctly-empty slices are never ranked
worst) or NaN (the case is left out of means, as nnU-Net does).

The functions accept numpy arrays or torch tensors and return the same kind,
so the engine scores on the device without a copy to the host.

A partial label (a scribble) says nothing about the pixels nobody annotated, so
a caller scoring against one passes ``annotated`` (the reference's pixels that
are not ``aide_ray.label_values.UNANNOTATED``) and only those pixels are counted.
It is explicit rather than read from the values because a binary mask stored as
{0, 255} is a legitimate input here (any value > 0 is foreground).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["overlap_counts", "dice_from_counts", "dice", "mask_dice"]


def _flat_sum(mask: Any) -> Any:
    """(B, ...) bool -> (B,) counts, int64."""
    if isinstance(mask, torch.Tensor):
        return mask.flatten(1).sum(1)
    return mask.reshape(mask.shape[0], -1).sum(1, dtype=np.int64)


def overlap_counts(pred: Any, ref: Any, num_classes: int | None = None, *,
                   annotated: Any | None = None) -> tuple[Any, Any, Any]:
    """Per sample and class: |pred ∩ ref|, |pred|, |ref|.

    Args:
        pred: (B, ...) class map (int or bool), numpy or torch.
        ref: same shape and kind as ``pred``.
        num_classes: C including the background; None or 2: one foreground
            class, "foreground" being any value > 0.
        annotated: optional bool map of the same shape and kind; only its true
            pixels are counted (a scribble reference: its annotated pixels).
    Returns:
        Three (B, K) int64 arrays (K = 1 for binary, else C - 1 foreground classes).
    Raises:
        ValueError: if the shapes differ or there is no batch axis.
    """
    if tuple(pred.shape) != tuple(ref.shape) or len(pred.shape) < 2:
        raise ValueError(f"pred and ref must have the same shape (B, ...), got {tuple(pred.shape)} "
                         f"and {tuple(ref.shape)}")
    if annotated is not None and tuple(annotated.shape) != tuple(ref.shape):
        raise ValueError(f"annotated must have the shape of ref {tuple(ref.shape)}, got {tuple(annotated.shape)}")
    classes: list[int | None] = [None] if num_classes is None or num_classes <= 2 else list(range(1, num_classes))
    inter, p_sum, r_sum = [], [], []
    for c in classes:
        p = pred > 0 if c is None else pred == c
        r = ref > 0 if c is None else ref == c
        if annotated is not None:
            p, r = p & annotated, r & annotated
        inter.append(_flat_sum(p & r))
        p_sum.append(_flat_sum(p))
        r_sum.append(_flat_sum(r))
    if isinstance(pred, torch.Tensor):
        return torch.stack(inter, 1), torch.stack(p_sum, 1), torch.stack(r_sum, 1)
    return np.stack(inter, 1), np.stack(p_sum, 1), np.stack(r_sum, 1)


def dice_from_counts(intersection: Any, pred_sum: Any, ref_sum: Any, *, both_empty: float = 1.0) -> Any:
    """``2 |P ∩ R| / (|P| + |R|)``, elementwise; ``both_empty`` where ``|P| + |R| = 0``.

    Args:
        intersection, pred_sum, ref_sum: numbers, numpy arrays or torch tensors of one shape.
        both_empty: the score when both masks are empty: 1.0 or NaN.
    Returns:
        float64 (numpy, or a Python float for scalar inputs) or float32 (torch) scores in [0, 1] or NaN.
    """
    if isinstance(intersection, torch.Tensor):
        denom = (pred_sum + ref_sum).double()
        score = 2.0 * intersection.double() / denom.clamp_min(1.0)
        return torch.where(denom > 0, score, torch.full_like(score, both_empty)).float()
    inter = np.asarray(intersection, dtype=np.float64)
    denom = np.asarray(pred_sum, dtype=np.float64) + np.asarray(ref_sum, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1.0), both_empty)
    return float(score) if score.ndim == 0 else score


def dice(pred: Any, ref: Any, num_classes: int | None = None, *, both_empty: float = 1.0,
         annotated: Any | None = None) -> Any:
    """Hard Dice of each sample of a batch.

    With ``num_classes`` None (or 2) the foreground Dice; otherwise the mean
    over the foreground classes 1..C-1 of the per-class Dice (NaN classes,
    with ``both_empty`` NaN, are left out of the mean).

    Args:
        pred: (B, ...) class map, numpy or torch.
        ref: same shape.
        num_classes: C including the background, or None for binary foreground.
        both_empty: score of a class whose prediction and reference are both empty.
        annotated: optional bool map like ``ref``: only these pixels count (see :func:`overlap_counts`).
    Returns:
        (B,) scores: float32 torch on ``pred``'s device, or float64 numpy.
    """
    scores = dice_from_counts(*overlap_counts(pred, ref, num_classes, annotated=annotated), both_empty=both_empty)
    if scores.shape[1] == 1:
        return scores[:, 0]
    if isinstance(scores, torch.Tensor):
        return torch.nanmean(scores, dim=1)
    with warnings.catch_warnings():  # an all-NaN row is a defined NaN here, not a warning
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(scores, axis=1)


def mask_dice(a: Any, b: Any, *, both_empty: float = 1.0) -> float:
    """Foreground Dice of two single masks (any shape) as a Python float."""
    a, b = np.asarray(a), np.asarray(b)
    return float(dice(a.reshape(1, -1), b.reshape(1, -1), both_empty=both_empty)[0])

