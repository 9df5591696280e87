"""CL-SLSR: confident learning finds the likely-wrong label pixels, spatial label smoothing softens them.

Two phases of one run (``Phase``): a supervised warm-up, then training on
soft targets in which the pixels that confident learning flags as label
errors carry a smoothed label. The flagging and the targets are pure
functions here so that tests can check them on hand-made probability maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aide_ray.methods.base import Batch, Method, Phase, StepOutput
from aide_ray.nn.losses import segmentation_loss_per_sample, soft_dice_loss_per_sample
from aide_ray.options import Section

__all__ = [
    "ClSlsr",
    "ClSlsrOptions",
    "class_thresholds",
    "confident_error_mask",
    "gaussian_smoothed_label",
    "slsr_loss_per_sample",
    "slsr_target",
]

_SMOOTHINGS = ("gaussian", "uniform")


@dataclass(frozen=True)
class ClSlsrOptions(Section):
    _prefix: ClassVar[str] = "clslsr"
    warmup_epochs: int = 10  # plain supervised epochs before confident learning starts
    epsilon: float = 0.5  # weight of the smoothed label at flagged pixels (1: smoothed label only)
    smoothing: str = "gaussian"  # gaussian: blurred label of the neighbourhood; uniform: 1/C (PyMIC's SLSRLoss)
    sigma: float = 2.0  # Gaussian standard deviation in pixels (smoothing=gaussian)
    lr_factor: float = 1.0  # the CL-SLSR phase's learning rate is optim.lr * lr_factor

    def __post_init__(self) -> None:
        self._in_range("warmup_epochs", 0, None)
        self._in_range("epsilon", 0.0, 1.0, lo_open=True)
        self._one_of("smoothing", _SMOOTHINGS)
        self._in_range("sigma", 0.0, None, lo_open=True)
        self._in_range("lr_factor", 0.0, None, lo_open=True)


def class_thresholds(probs: Tensor, target: Tensor, pixel_mask: Tensor) -> Tensor:
    """Confident learning's per-class thresholds: ``t_j = mean p_j`` over the counted pixels labelled j.

    Args:
        probs: (B, C, H, W) probabilities.
        target: (B, H, W) int64 given labels.
        pixel_mask: (B, H, W) bool, the pixels that count.
    Returns:
        (C,) thresholds; ``inf`` for a class no counted pixel is labelled with
        (no pixel can then be confidently assigned to it).
    """
    num_classes = probs.shape[1]
    one_hot = F.one_hot(target, num_classes).movedim(-1, 1).to(probs.dtype) * pixel_mask.unsqueeze(1).to(probs.dtype)
    count = one_hot.sum(dim=(0, 2, 3))
    mean = (probs * one_hot).sum(dim=(0, 2, 3)) / count.clamp_min(1.0)
    return torch.where(count > 0, mean, torch.full_like(mean, math.inf))


def confident_error_mask(probs: Tensor, target: Tensor, pixel_mask: Tensor) -> Tensor:
    """The pixels in an off-diagonal cell of the confident joint: likely label errors.

    A pixel labelled i is *confidently* of class j when ``p_j >= t_j`` (the
    thresholds of :func:`class_thresholds`, with cleanlab's 1e-6 tolerance);
    among several such j the largest ``p_j`` wins. It is flagged when that j
    exists and differs from i (the confident joint ``C[i][j]``, j != i, of
    Northcutt et al.). A pixel confident in no class is not flagged.

    Args:
        probs: (B, C, H, W) probabilities (detached: flagging is not trained).
        target: (B, H, W) int64 given labels.
        pixel_mask: (B, H, W) bool, the pixels that count (labelled rows).
    Returns:
        (B, H, W) bool, True where the label is likely wrong.
    """
    probs = probs.detach()
    thresholds = class_thresholds(probs, target, pixel_mask).view(1, -1, 1, 1)
    above = probs >= thresholds - 1e-6
    confident_class = torch.where(above, probs, torch.full_like(probs, -1.0)).argmax(dim=1)
    return pixel_mask & above.any(dim=1) & (confident_class != target)


def gaussian_smoothed_label(target: Tensor, num_classes: int, sigma: float) -> Tensor:
    """The one-hot label blurred by a Gaussian of ``sigma`` pixels (edge pixels replicated).

    Args:
        target: (B, H, W) int64 labels.
        num_classes: C.
        sigma: standard deviation in pixels, > 0.
    Returns:
        (B, C, H, W) float32, a probability per pixel (sums to 1 over C).
    """
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=target.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    b, h, w = target.shape
    one_hot = F.one_hot(target, num_classes).movedim(-1, 1).float().reshape(b * num_classes, 1, h, w)
    # Separable blur; replicate padding keeps the class sum at exactly 1 at the borders.
    out = F.conv2d(F.pad(one_hot, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    out = out.reshape(b, num_classes, h, w)
    return out / out.sum(dim=1, keepdim=True)


def slsr_target(target: Tensor, flagged: Tensor, num_classes: int, epsilon: float, smoothing: str = "gaussian",
                sigma: float = 2.0) -> Tensor:
    """Soft targets: one-hot where the label is trusted, ``(1 - eps) onehot + eps s`` where flagged.

    ``s`` is :func:`gaussian_smoothed_label` (``smoothing="gaussian"``) or the
    uniform ``1/C`` (``"uniform"``, label smoothing restricted to the flagged
    pixels, PyMIC's ``SLSRLoss`` with its epsilon = ``epsilon / 2`` for C = 2).

    Args:
        target: (B, H, W) int64 given labels.
        flagged: (B, H, W) bool, pixels flagged by :func:`confident_error_mask`.
        num_classes: C.
        epsilon: in (0, 1].
        smoothing: "gaussian" or "uniform".
        sigma: Gaussian standard deviation in pixels.
    Returns:
        (B, C, H, W) float32 targets summing to 1 over C; exactly one-hot off ``flagged``.
    """
    if smoothing not in _SMOOTHINGS:
        raise ValueError(f"smoothing must be one of {list(_SMOOTHINGS)}, got {smoothing!r}")
    one_hot = F.one_hot(target, num_classes).movedim(-1, 1).float()
    if smoothing == "gaussian":
        smooth = gaussian_smoothed_label(target, num_classes, sigma)
    else:
        smooth = torch.full_like(one_hot, 1.0 / num_classes)
    soft = (1.0 - epsilon) * one_hot + epsilon * smooth
    return torch.where(flagged.unsqueeze(1), soft, one_hot)


def slsr_loss_per_sample(logits: Tensor, target: Tensor, soft_target: Tensor, flagged: Tensor) -> Tensor:
    """L_seg with the SLSR targets: foreground soft Dice on the trusted pixels + pixel-mean soft CE.

    ``SoftDice_fg(p, y; pixels not flagged) + mean_pixels(-sum_c t_c log p_c)``.
    The soft Dice of :mod:`aide_ray.nn.losses` takes hard labels, so it counts
    only the pixels whose label is trusted; the cross-entropy carries the
    smoothed targets of the flagged ones. Equal to
    :func:`aide_ray.nn.losses.segmentation_loss_per_sample` when nothing is flagged.

    Args:
        logits: (B, C, H, W) float logits.
        target: (B, H, W) int64 given labels.
        soft_target: (B, C, H, W) :func:`slsr_target` (treated as constants).
        flagged: (B, H, W) bool, the pixels whose target is smoothed.
    Returns:
        (B,) float loss.
    """
    if logits.shape != soft_target.shape:
        raise ValueError(f"soft_target must have the shape of logits {tuple(logits.shape)}, "
                         f"got {tuple(soft_target.shape)}")
    log_p = F.log_softmax(logits, dim=1)
    dice = soft_dice_loss_per_sample(log_p.exp(), target, smooth=1.0, pixel_mask=~flagged)
    ce = -(soft_target.detach().to(log_p.dtype) * log_p).sum(dim=1).mean(dim=(1, 2))
    return dice + ce


class ClSlsr(Method):
    """Confident learning + spatial label smoothing regularisation, in two phases of one net.

    Reference: M. Zhang, J. Gao, Z. Lyu, W. Zhao, Q. Wang, W. Ding, S. Wang,
    Z. Li, S. Cui, "Characterizing label errors: confident learning for
    noisy-labeled image segmentation", MICCAI 2020. A teacher trained on the
    noisy labels marks suspect pixels with confident learning (Northcutt et
    al., JAIR 2021); a student trains on "soft-corrected" masks in which only
    those pixels carry a smoothed label (spatial LSR), since the error maps
    are too imprecise to flip labels outright.

    Here, at 0-based ``epoch``:

    * ``epoch < clslsr.warmup_epochs`` (phase 0): ``mean_labelled L_seg``, as ``supervised``.
    * afterwards (phase 1, fresh optimiser at ``optim.lr * clslsr.lr_factor``),
      per batch, from the net's own detached softmax p on the labelled rows:
      ``t_j = mean_{pixels labelled j} p_j``; pixel x labelled i is flagged when
      ``j* = argmax_{j : p_j(x) >= t_j} p_j(x)`` exists and ``j* != i``; the
      target is ``onehot(y)`` off the flagged pixels and
      ``(1 - eps) onehot(y) + eps G_sigma * onehot(y)`` on them (``uniform``:
      ``eps / C`` instead of the blur); loss
      ``mean_labelled [SoftDice_fg(p, y; unflagged pixels) + CE(p, t)]``.

    How this differs from the paper and from PyMIC (``pymic/net_run/noisy_label/nll_clslsr.py``
    plus ``SLSRLoss`` in ``pymic/loss/seg/slsr.py``), both offline two-stage
    pipelines: train a net, run it once over the training set, flag pixels with
    cleanlab 1.0.1 (``get_noise_indices(prune_method='both')``: thresholds and
    the calibrated joint over *every pixel of the training set*, pruning by class
    and by noise rate intersected), store the masks, then train again on them.
    Ours is one run: the teacher is the warm-up net itself, the flags are
    recomputed every batch from its current predictions with thresholds of the
    batch, and the net keeps training (no fresh student). We use the confident
    joint's off-diagonal membership (no calibration or pruning). PyMIC's
    ``SLSRLoss`` is CE alone with a uniform smoothing of the flagged pixels,
    ``(y - 0.5)(0.5 - eps)/0.5 + 0.5`` (1 - eps / eps for C = 2; its eps 0.25 is our
    ``epsilon=0.5, smoothing=uniform``); we add L_seg's soft Dice on the trusted
    pixels, and by default smooth *spatially*: our reading of the paper's SLSR
    mixes a flagged pixel's label with its neighbourhood's (a Gaussian blur of
    the label), where PyMIC mixes it with the uniform distribution. PyMIC also
    hard-codes 256 x 256 images when saving the masks, and does not register
    CL-SLSR among its NLL agents (``NLLMethodDict``).
    """

    Options: ClassVar[type] = ClSlsrOptions

    name: ClassVar[str] = "clslsr"
    full_masks_only: ClassVar[bool] = True  # its loss has no way to skip unannotated pixels

    def phase(self, epoch: int) -> Phase:
        start = self.options.warmup_epochs
        if start == 0:
            return Phase(lr_factor=self.options.lr_factor)
        return Phase() if epoch < start else Phase(index=1, start_epoch=start, lr_factor=self.options.lr_factor)

    @classmethod
    def grace_epochs(cls, options: ClSlsrOptions) -> int:
        """The warm-up, then one epoch on the corrected targets."""
        return options.warmup_epochs + 1

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        cfg = self.options
        logits = nets["net"](batch.image)
        target = batch.labels[:, 0]
        rows = batch.labelled.bool()
        flagged_share = 0.0
        if epoch < cfg.warmup_epochs:
            per_sample = segmentation_loss_per_sample(logits, target)
        else:
            pixel_mask = rows.view(-1, 1, 1).expand_as(target)
            flagged = confident_error_mask(torch.softmax(logits.detach(), dim=1), target, pixel_mask)
            soft = slsr_target(target, flagged, logits.shape[1], cfg.epsilon, cfg.smoothing, cfg.sigma)
            per_sample = slsr_loss_per_sample(logits, target, soft, flagged)
            flagged_share = float(flagged.sum() / pixel_mask.sum().clamp_min(1))
        mask = rows.to(per_sample.dtype)
        loss = (per_sample * mask).sum() / mask.sum().clamp_min(1.0)
        return StepOutput(loss, {"loss_net": float(loss.detach()), "flagged_pixels": flagged_share})
