"""Uncertainty-aware mean teacher (Yu et al., MICCAI 2019) for labelled + unlabelled rows.

A mean teacher (:mod:`aide_ray.methods.meanteacher`: EMA teacher, sigmoid ramp)
whose consistency term skips the pixels where the teacher is uncertain: T
stochastic teacher passes (independent input noise) give a mean softmax whose
entropy is the uncertainty, and only pixels below a threshold ramped from
0.75 ln C to ln C count. Its own file because the uncertainty estimate and the
masked loss are what make it UA-MT rather than a mean-teacher option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.methods.meanteacher import ema_update, sigmoid_rampup, student_and_teacher
from aide_ray.nn.losses import segmentation_loss_per_sample
from aide_ray.options import Section

__all__ = ["UamtOptions", "Uamt", "add_input_noise", "teacher_uncertainty", "uncertainty_threshold",
           "masked_consistency"]


@dataclass(frozen=True)
class UamtOptions(Section):
    _prefix: ClassVar[str] = "uamt"
    ema_decay: float = 0.99  # teacher = decay * teacher + (1 - decay) * student
    consistency_weight: float = 0.1  # lambda after the ramp (paper: 0.1)
    ramp_epochs: int = 20  # sigmoid ramp of the weight and of the threshold
    noise_std: float = 0.1  # Gaussian input noise, clipped to +-2 std (paper: 0.1 clipped to 0.2)
    num_passes: int = 8  # T stochastic teacher passes for the uncertainty (paper: 8)

    def __post_init__(self) -> None:
        self._in_range("ema_decay", 0.0, 1.0, hi_open=True)
        self._in_range("consistency_weight", 0.0, None)
        self._in_range("ramp_epochs", 0, None)
        self._in_range("noise_std", 0.0, None)
        self._in_range("num_passes", 1, 64)


def add_input_noise(image: Tensor, std: float) -> Tensor:
    """``image + clip(N(0, std^2), -2 std, 2 std)``, fresh noise per call; the image itself when ``std = 0``."""
    if std == 0.0:
        return image
    return image + (torch.randn_like(image) * std).clamp(-2.0 * std, 2.0 * std)


@torch.no_grad()
def teacher_uncertainty(teacher: nn.Module, image: Tensor, passes: int, noise_std: float) -> Tensor:
    """Predictive entropy of the teacher's mean softmax over ``passes`` noisy copies of ``image``.

    ``u = -sum_c mu_c ln mu_c`` with ``mu = (1/T) sum_t softmax(teacher(image + noise_t))``.
    One pass at a time (the teacher keeps its mode), so memory stays that of one forward.

    Args:
        image: (B, M, H, W) float.
    Returns:
        (B, H, W) float in [0, ln C].
    """
    mean = None
    for _ in range(passes):
        probs = torch.softmax(teacher(add_input_noise(image, noise_std)), dim=1)
        mean = probs if mean is None else mean + probs
    mean = mean / passes
    # Entropy of probabilities (not logits): log of the clamped mean, 0 * log(tiny) = 0.
    return -(mean * torch.log(mean.clamp_min(1e-12))).sum(dim=1)


def uncertainty_threshold(epoch: int, ramp_epochs: int, num_classes: int) -> float:
    """Yu et al.'s ``H = (3/4 + 1/4 * rampup(epoch)) * u_max``, ``u_max = ln C``, the largest entropy."""
    return (0.75 + 0.25 * sigmoid_rampup(epoch, ramp_epochs)) * math.log(num_classes)


def masked_consistency(student_probs: Tensor, teacher_probs: Tensor, certain: Tensor) -> Tensor:
    """``sum_v I(u_v < H) ||p_s,v - p_t,v||^2 / sum_v I(u_v < H)`` over every pixel v of the batch.

    The squared norm sums over the classes; no certain pixel gives 0 (not NaN).

    Args:
        student_probs, teacher_probs: (B, C, H, W) softmax; the teacher's is a constant.
        certain: (B, H, W) bool, ``u < H``.
    Returns:
        Scalar tensor.
    """
    if student_probs.shape != teacher_probs.shape:
        raise ValueError(f"student_probs and teacher_probs must have the same shape, got "
                         f"{tuple(student_probs.shape)} and {tuple(teacher_probs.shape)}")
    sq = ((student_probs - teacher_probs.detach()) ** 2).sum(dim=1)  # (B, H, W)
    mask = certain.to(sq.dtype)
    return (mask * sq).sum() / mask.sum().clamp_min(1.0)


class Uamt(Method):
    """Mean teacher whose consistency covers only the pixels the teacher is certain about.

    ``loss = mean_labelled L_seg(student) + w(epoch) * L_c`` with
    ``L_c = sum_v I(u_v < H) ||softmax(student(x + n))_v - softmax(teacher(x + n'))_v||^2 / sum_v I(u_v < H)``
    over every pixel v of every row (labelled and unlabelled, as the paper's
    ``sum_{i=1}^{N+M} L_c``); ``u`` is the entropy of the teacher's mean softmax over
    ``uamt.num_passes`` = T passes with fresh noise (:func:`teacher_uncertainty`);
    ``H = (0.75 + 0.25 r(epoch)) ln C`` and ``w(epoch) = uamt.consistency_weight * r(epoch)``,
    ``r = sigmoid_rampup(epoch, uamt.ramp_epochs)``. The teacher's weights follow the
    student's by EMA after every optimiser step (``ema_update``), as the mean teacher.
    Our U-Net has no dropout, so the T passes differ by their input noise only (the
    paper uses MC dropout plus input noise).

    PyMIC: ``SSLUncertaintyAwareMeanTeacher`` (``pymic/net_run/semi_sup/ssl_uamt.py``).
    Where it and the paper differ we follow the paper: PyMIC's consistency covers the
    unlabelled rows only (as our ``meanteacher``), divides by ``2 sum mask`` (a class
    mean for C = 2, taken from Yu et al.'s code) where the paper's squared norm sums over
    classes, feeds the student clean inputs, and inherits the mean teacher's EMA update
    whose out-of-place ``add`` leaves the student out of the teacher (docs/methods.md).

    Reference: L. Yu, S. Wang, X. Li, C.-W. Fu, P.-A. Heng, "Uncertainty-aware
    self-ensembling model for semi-supervised 3D left atrium segmentation", MICCAI 2019.
    """

    Options: ClassVar[type] = UamtOptions

    name: ClassVar[str] = "uamt"
    net_names: ClassVar[tuple[str, ...]] = ("student", "teacher")
    trained_nets: ClassVar[tuple[str, ...]] = ("student",)
    eval_nets: ClassVar[tuple[str, ...]] = ("teacher",)
    label_slots: ClassVar[int] = 1
    uses_unlabelled: ClassVar[bool] = True

    def build_nets(self) -> dict[str, nn.Module]:
        return student_and_teacher(self.model, self.in_channels)

    def consistency_weight(self, epoch: int) -> float:
        return self.options.consistency_weight * sigmoid_rampup(epoch, self.options.ramp_epochs)

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        cfg = self.options
        student_logits = nets["student"](add_input_noise(batch.image, cfg.noise_std))
        labelled = batch.labelled
        sup = student_logits.sum() * 0.0  # keeps every parameter in the graph (DDP)
        if bool(labelled.any()):
            sup = segmentation_loss_per_sample(student_logits[labelled], batch.labels[labelled, 0]).mean()
        with torch.no_grad():
            teacher_probs = torch.softmax(nets["teacher"](add_input_noise(batch.image, cfg.noise_std)), dim=1)
            uncertainty = teacher_uncertainty(nets["teacher"], batch.image, cfg.num_passes, cfg.noise_std)
        threshold = uncertainty_threshold(epoch, cfg.ramp_epochs, self.num_classes)
        certain = uncertainty < threshold
        cons = masked_consistency(torch.softmax(student_logits, dim=1), teacher_probs, certain)
        weight = self.consistency_weight(epoch)
        metrics = {"loss_sup": float(sup.detach()), "loss_cons": float(cons.detach()), "cons_weight": weight,
                   "certain_share": float(certain.float().mean()), "threshold": threshold,
                   "unlabelled_rows": float((~labelled).sum())}
        return StepOutput(sup + weight * cons, metrics)

    def after_optimizer_step(self, nets: dict[str, nn.Module], epoch: int) -> None:
        ema_update(nets["teacher"], nets["student"], self.options.ema_decay)
