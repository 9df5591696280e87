"""Per-sample segmentation and consistency losses shared by every method.

Every loss here returns one value per sample, shape (B,), so that methods can
rank samples (AIDE's and co-teaching's small-loss selection) before reducing.
Inputs are logits (B, C, H, W) from :mod:`aide_ray.nn.unet` or probabilities
where the name says so; C counts the background class (class 0). A target pixel
holding :data:`aide_ray.label_values.UNANNOTATED` (a scribble's unmarked pixel)
is left out of every label-based loss here, so that a partial label trains only
where somebody drew.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from aide_ray.label_values import UNANNOTATED

__all__ = [
    "soft_dice_loss_per_sample",
    "segmentation_loss_per_sample",
    "confidence_map",
    "consistency_loss_per_sample",
    "sharpen",
    "annotated_target",
]


def _check_target(probs_or_logits: Tensor, target: Tensor, name: str) -> None:
    if probs_or_logits.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(probs_or_logits.shape)}")
    b, _, h, w = probs_or_logits.shape
    if tuple(target.shape) != (b, h, w):
        raise ValueError(f"target must have shape {(b, h, w)} to match {name} {tuple(probs_or_logits.shape)}, "
                         f"got {tuple(target.shape)}")
    if target.dtype != torch.int64:
        raise TypeError(f"target must be int64 class indices, got {target.dtype}")


def annotated_target(target: Tensor, pixel_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """A target the one-hot and cross-entropy code can read, and the pixels that count.

    Pixels holding ``UNANNOTATED`` get class 0 (any valid index: they are masked out)
    and leave the returned mask. A target without such pixels comes back as it is,
    with ``pixel_mask`` unchanged, so that full labels keep the exact arithmetic of
    the unmasked losses.

    Args:
        target: (B, H, W) int64 class indices or ``UNANNOTATED``.
        pixel_mask: optional (B, H, W) bool/float mask the caller already applies.

    Returns:
        ``(target, mask)``: mask is None (every pixel counts) or (B, H, W) float.
    """
    unannotated = target == UNANNOTATED
    if not bool(unannotated.any()):
        return target, pixel_mask
    annotated = (~unannotated).to(torch.float32)
    mask = annotated if pixel_mask is None else annotated * pixel_mask.to(torch.float32)
    return target.masked_fill(unannotated, 0), mask


def _one_hot(target: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    # (B, H, W) int64 -> (B, C, H, W)
    return F.one_hot(target, num_classes).permute(0, 3, 1, 2).to(dtype)


def soft_dice_loss_per_sample(probs: Tensor, target: Tensor, smooth: float = 1.0,
                              pixel_mask: Tensor | None = None) -> Tensor:
    """Soft Dice loss of each sample, averaged over the foreground classes.

    ``1 - (2 * sum(p_c * y_c) + smooth) / (sum(p_c) + sum(y_c) + smooth)`` for
    each foreground class c = 1..C-1, averaged over c. For C = 2 this is the
    reference code's ``DiceLoss`` on the foreground channel (lich0031/AIDE:
    ``utils/loss2d.py``). The smoothing keeps an empty target with an empty
    prediction at loss ~0 instead of 0/0.

    Args:
        probs: (B, C, H, W) float probabilities (softmax over C).
        target: (B, H, W) int64 class indices in [0, C), or ``UNANNOTATED`` (not counted).
        smooth: additive smoothing of numerator and denominator.
        pixel_mask: optional (B, H, W) bool/float; pixels with 0 do not count.

    Returns:
        (B,) float loss in [0, 1].
    """
    _check_target(probs, target, "probs")
    target, pixel_mask = annotated_target(target, pixel_mask)
    onehot = _one_hot(target, probs.shape[1], probs.dtype)
    p, y = probs[:, 1:], onehot[:, 1:]
    if pixel_mask is not None:
        m = pixel_mask.to(probs.dtype).unsqueeze(1)
        p, y = p * m, y * m
    inter = (p * y).sum(dim=(2, 3))
    denom = p.sum(dim=(2, 3)) + y.sum(dim=(2, 3))
    dice = (2.0 * inter + smooth) / (denom + smooth)
    return (1.0 - dice).mean(dim=1)


def segmentation_loss_per_sample(logits: Tensor, target: Tensor, ce_weight: float = 1.0,
                                 pixel_mask: Tensor | None = None) -> Tensor:
    """AIDE's segmentation loss L_seg per sample: soft Dice + ce_weight * cross-entropy.

    Soft Dice (smoothing 1) plus the pixel-mean cross-entropy, weight alpha = 1
    by default, as the reference ``CEMDiceLossImage`` with ``cedice_weight = [1, 1]``.

    Args:
        logits: (B, C, H, W) float logits.
        target: (B, H, W) int64 class indices in [0, C); ``UNANNOTATED`` pixels are
            left out of both terms, as if ``pixel_mask`` were 0 there (a scribble's
            loss is over its annotated pixels; a row with none gives 0).
        ce_weight: weight of the cross-entropy term.
        pixel_mask: optional (B, H, W) bool/float; pixels with 0 are left out of
            both terms (cross-entropy is averaged over the remaining pixels).

    Returns:
        (B,) float loss, 0 for a perfect, confident prediction.
    """
    _check_target(logits, target, "logits")
    target, pixel_mask = annotated_target(target, pixel_mask)
    probs = torch.softmax(logits, dim=1)
    dice = soft_dice_loss_per_sample(probs, target, smooth=1.0, pixel_mask=pixel_mask)
    ce = F.cross_entropy(logits, target, reduction="none")  # (B, H, W), stable log-sum-exp
    if pixel_mask is None:
        ce = ce.mean(dim=(1, 2))
    else:
        m = pixel_mask.to(ce.dtype)
        ce = (ce * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1.0)
    return dice + ce_weight * ce


def confidence_map(pseudo: Tensor) -> Tensor:
    """Per-pixel confidence of a soft pseudo-label, in [0, 1].

    ``1 - C / (C - 1) * (1 - sum_c p_c^2)``: one minus the normalised Gini
    impurity. It is 1 for a one-hot pixel and 0 for a uniform one. For C = 2,
    ``1 - 2 * (1 - p0^2 - p1^2) = 1 - 4 * p0 * p1`` (since p0 + p1 = 1), exactly
    the reference code's weight map ``1 - 4 * p0 * p1``.

    Args:
        pseudo: (B, C, H, W) probabilities summing to 1 over C, C >= 2.

    Returns:
        (B, H, W) float confidence.
    """
    if pseudo.dim() != 4 or pseudo.shape[1] < 2:
        raise ValueError(f"pseudo must have shape (B, C, H, W) with C >= 2, got {tuple(pseudo.shape)}")
    c = pseudo.shape[1]
    gini = 1.0 - (pseudo * pseudo).sum(dim=1)
    return (1.0 - gini * (c / (c - 1))).clamp(0.0, 1.0)


def consistency_loss_per_sample(probs: Tensor, pseudo: Tensor) -> Tensor:
    """AIDE's L_con per sample: confidence-weighted squared error to a soft pseudo-label.

    ``mean_{c,h,w} w(h, w) * (probs - pseudo)^2`` with ``w = confidence_map(pseudo)``,
    the reference ``weightmap * MulticlassMSELoss(reduction='none')`` followed by a
    mean over classes and pixels. ``pseudo`` is treated as a constant.

    Args:
        probs: (B, C, H, W) softmax of the trained net.
        pseudo: (B, C, H, W) soft pseudo-label (the twin's, sharpened).

    Returns:
        (B,) float loss.
    """
    if probs.shape != pseudo.shape:
        raise ValueError(f"probs and pseudo must have the same shape, got {tuple(probs.shape)} "
                         f"and {tuple(pseudo.shape)}")
    pseudo = pseudo.detach()
    weight = confidence_map(pseudo).unsqueeze(1)
    return (weight * (probs - pseudo) ** 2).mean(dim=(1, 2, 3))


def sharpen(p: Tensor, temperature: float) -> Tensor:
    """Temperature sharpening over dim 1: ``p^(1/T) / sum_c p_c^(1/T)``.

    T < 1 sharpens, T = 1 is the identity, T -> 0 tends to one-hot (argmax), T > 1
    flattens. This is the kidney/breast reference scripts' ``sharpen``
    (``torch.pow(mask, 1.0 / temperature)``); the CHAOS script uses
    ``torch.pow(mask, temperature)``, which with T < 1 *softens*. Both scripts
    default to T = 1 (no-op); we use the MixMatch-style ``1/T`` and T = 0.5 (see
    docs/algorithm.md). Computed as ``softmax(log(p) / T)`` so that small T does
    not underflow to 0/0.

    Args:
        p: (B, C, ...) probabilities, non-negative, summing to 1 over dim 1.
        temperature: T > 0.

    Returns:
        Tensor of the same shape, summing to 1 over dim 1.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature == 1.0:
        return p / p.sum(dim=1, keepdim=True)
    return torch.softmax(torch.log(p) / temperature, dim=1)
