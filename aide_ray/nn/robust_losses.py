"""Noise-robust segmentation losses used by the ``gce`` and ``nrdice`` baselines.

Kept apart from :mod:`aide_ray.nn.losses` (the losses AIDE itself trains
with) because these exist only to reproduce baselines of the field. Both
return one value per sample, like every loss the methods combine, so that
engines can mask rows (labelled/unlabelled) before reducing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["generalized_cross_entropy_per_sample", "noise_robust_dice_per_sample"]


def _check_inputs(logits: Tensor, target: Tensor, pixel_mask: Tensor | None = None) -> None:
    if logits.dim() < 3:
        raise ValueError(f"logits must have shape (B, C, *spatial), got {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target must have shape {expected} to match logits {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    if pixel_mask is not None and tuple(pixel_mask.shape) != expected:
        raise ValueError(f"pixel_mask must have shape {expected}, got {tuple(pixel_mask.shape)}")


def generalized_cross_entropy_per_sample(logits: Tensor, target: Tensor, q: float,
                                         pixel_mask: Tensor | None = None) -> Tensor:
    """Generalized cross entropy (Zhang & Sabuncu, NeurIPS 2018), pixel mean per sample.

    Per pixel ``(1 - p_y^q) / q`` with ``p_y`` the softmax probability of the
    labelled class: ``q -> 0`` gives cross entropy ``-log p_y``, ``q = 1`` the
    MAE-like ``1 - p_y``. Computed as ``-expm1(q * log p_y) / q`` so that small
    ``q`` keeps full precision.

    Args:
        logits: (B, C, *spatial) float, raw network outputs; C includes background.
        target: (B, *spatial) int64 class indices in [0, C).
        q: exponent in (0, 1].
        pixel_mask: optional (B, *spatial) bool/float, pixels that count; a
            sample with no counted pixel gets 0.
    Returns:
        (B,) float32, the mean loss over (counted) pixels of each sample.
    Raises:
        ValueError: if ``q`` is outside (0, 1] or shapes disagree.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q!r}")
    _check_inputs(logits, target, pixel_mask)
    log_p = F.log_softmax(logits.float(), dim=1)
    log_p_y = log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)
    per_pixel = -torch.expm1(q * log_p_y) / q
    dims = tuple(range(1, per_pixel.dim()))
    if pixel_mask is None:
        return per_pixel.mean(dim=dims)
    mask = pixel_mask.to(per_pixel.dtype)
    return (per_pixel * mask).sum(dim=dims) / mask.sum(dim=dims).clamp_min(1.0)


def noise_robust_dice_per_sample(logits: Tensor, target: Tensor, gamma: float,
                                 eps: float = 1e-5) -> Tensor:
    """Noise-robust Dice loss (Wang et al., IEEE TMI 2020, COPLE-Net), per sample.

    For each sample and each class c (background included, as PyMIC's
    ``NoiseRobustDiceLoss``)::

        L_c = sum_i |p_ic - y_ic|^gamma / (sum_i (p_ic + y_ic) + eps)

    averaged over the C classes. ``p`` is the softmax, ``y`` the one-hot label,
    ``i`` runs over the sample's pixels. The paper's denominator is
    ``sum p^2 + sum y^2``; PyMIC (and this function) use ``sum (p + y)``, the
    same for a one-hot ``y`` except for ``p^2`` vs ``p``. PyMIC sums over the
    whole batch; here the sums run per sample so the loss is (B,).

    Args:
        logits: (B, C, *spatial) float, raw network outputs; C includes background.
        target: (B, *spatial) int64 class indices in [0, C).
        gamma: exponent in [1, 2]; 1 is MAE-like (robust), 2 is closest to soft Dice.
        eps: added to the denominator so an empty class in an empty prediction gives 0.
    Returns:
        (B,) float32.
    Raises:
        ValueError: if ``gamma`` is outside [1, 2] or shapes disagree.
    """
    if not 1.0 <= gamma <= 2.0:
        raise ValueError(f"gamma must be in [1, 2], got {gamma!r}")
    _check_inputs(logits, target)
    num_classes = logits.shape[1]
    prob = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target.long(), num_classes).movedim(-1, 1).to(prob.dtype)
    dims = tuple(range(2, prob.dim()))
    numerator = (prob - one_hot).abs().pow(gamma).sum(dim=dims)
    denominator = (prob + one_hot).sum(dim=dims)
    return (numerator / (denominator + eps)).mean(dim=1)
