"""Uncertainty-rectified pyramid consistency (Luo et al., MedIA 2022) for labelled + unlabelled rows.

One U-Net with deep supervision (``model.deep_supervision``: 1x1 heads on the
decoder's coarser stages, upsampled to the input size) gives a pyramid of S = 4
predictions of the same image. Labelled rows supervise every level; on
unlabelled rows each level is pulled towards the pyramid's mean prediction,
pixel by pixel weighted by ``exp(-KL)`` (its disagreement with the mean, an
uncertainty), plus the KL itself so that the weights cannot buy a small loss
by growing the disagreement.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.methods.meanteacher import sigmoid_rampup
from aide_ray.nn.losses import segmentation_loss_per_sample
from aide_ray.nn.model import build_model
from aide_ray.options import Section

__all__ = ["UrpcOptions", "Urpc", "pyramid_divergence", "rectified_pyramid_consistency"]


@dataclass(frozen=True)
class UrpcOptions(Section):
    _prefix: ClassVar[str] = "urpc"
    consistency_weight: float = 0.1  # lambda after the ramp (paper and PyMIC: 0.1)
    ramp_epochs: int = 20  # sigmoid ramp-up of the weight

    def __post_init__(self) -> None:
        self._in_range("consistency_weight", 0.0, None)
        self._in_range("ramp_epochs", 0, None)


def pyramid_divergence(levels: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Per-level probabilities, their mean and each level's KL divergence from the mean.

    ``p_c = (1/S) sum_s p_s`` and ``D_s = sum_j p_s^j ln(p_s^j / p_c^j)`` (KL(p_s || p_c),
    the paper's uncertainty of level s), from log-probabilities (``log p_c`` as a
    log-sum-exp) so that confident pixels give exact zeros, never ``log 0``.

    Args:
        levels: S >= 2 logits, each (B, C, H, W), all the same shape.
    Returns:
        probs (S, B, C, H, W), mean (B, C, H, W), kl (S, B, H, W) >= 0.
    """
    if len(levels) < 2:
        raise ValueError(f"levels must hold at least 2 pyramid outputs, got {len(levels)}")
    shapes = {tuple(t.shape) for t in levels}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        raise ValueError(f"levels must all have one shape (B, C, H, W), got {sorted(shapes)}")
    log_p = torch.stack([torch.log_softmax(t, dim=1) for t in levels])  # (S, B, C, H, W)
    log_mean = torch.logsumexp(log_p, dim=0) - math.log(len(levels))
    probs = log_p.exp()
    kl = (probs * (log_p - log_mean)).sum(dim=2).clamp_min(0.0)  # rounding can dip below 0
    return probs, log_mean.exp(), kl


def rectified_pyramid_consistency(levels: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """The paper's ``L_unsup``, over every pixel v of the given rows.

    ``L = (1/S) sum_s [ sum_v w_s,v ||p_s,v - p_c,v||^2 / sum_v w_s,v + (1/V) sum_v D_s,v ]``,
    ``w_s = exp(-D_s)``, the squared norm over the classes. Nothing is detached: the
    gradient reaches every level through ``p_s``, ``p_c`` and the weights, as in the
    paper's and PyMIC's code.

    Args:
        levels: S logits (B, C, H, W) of the same rows.
    Returns:
        (loss scalar, weights (S, B, H, W) = exp(-D_s), detached, for inspection).
    """
    probs, mean, kl = pyramid_divergence(levels)
    weight = torch.exp(-kl)
    sq = ((probs - mean.unsqueeze(0)) ** 2).sum(dim=2)  # (S, B, H, W)
    rectified = (weight * sq).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1)  # weights are > 0
    loss = (rectified + kl.flatten(1).mean(dim=1)).mean()
    return loss, weight.detach()


class Urpc(Method):
    """One deeply supervised U-Net; its pyramid levels agree with their mean where they are certain.

    With ``[p_0 .. p_3]`` the net's ``pyramid=True`` outputs (main logits first, each
    (B, C, H, W))::

        loss = (1/S) sum_s mean_labelled L_seg(p_s) + w(epoch) * L_unsup(unlabelled rows)
        w(epoch) = urpc.consistency_weight * sigmoid_rampup(epoch, urpc.ramp_epochs)

    ``L_unsup`` is :func:`rectified_pyramid_consistency`. The net is built with deep
    supervision whatever ``model.deep_supervision`` says (the loss needs it); inference
    reads the main logits only. A term over an empty set of rows is 0.

    PyMIC: ``SSLURPC`` (``pymic/net_run/semi_sup/ssl_urpc.py``, network ``UNet2D_URPC``
    in ``pymic/net/net2d/unet2d_urpc.py``). Where it and the paper differ we follow
    the paper: PyMIC's uncertainty ``KLDivLoss(log p_s, p_c)`` is KL(p_c || p_s), the
    reverse of the paper's ``sum p_s ln(p_s / p_c)``; its squared error is a mean over
    classes (the paper's norm sums them); it smooths probabilities to ``0.99 p + 0.005``
    (we use log-probabilities) and upsamples with nearest neighbours (we bilinearly).
    Its network also perturbs the decoder during training (dropout 0.5, feature dropout,
    feature noise before three of the heads, which the main output sees too); ours is the
    plain U-Net with heads.

    Reference: X. Luo, G. Wang, W. Liao, J. Chen, T. Song, Y. Chen, S. Zhang,
    D. N. Metaxas, S. Zhang, "Semi-supervised medical image segmentation via
    uncertainty rectified pyramid consistency", Medical Image Analysis 80, 102517 (2022).
    """

    Options: ClassVar[type] = UrpcOptions

    name: ClassVar[str] = "urpc"
    net_names: ClassVar[tuple[str, ...]] = ("net",)
    trained_nets: ClassVar[tuple[str, ...]] = ("net",)
    eval_nets: ClassVar[tuple[str, ...]] = ("net",)
    label_slots: ClassVar[int] = 1
    uses_unlabelled: ClassVar[bool] = True
    needs_unet: ClassVar[str] = "reads the U-Net decoder's deep-supervision pyramid (net(x, pyramid=True))"
    reads_pyramid: ClassVar[bool] = True

    def build_nets(self) -> dict[str, nn.Module]:
        model = dataclasses.replace(self.model, deep_supervision=True)
        return {"net": build_model(model, self.in_channels)}

    def consistency_weight(self, epoch: int) -> float:
        return self.options.consistency_weight * sigmoid_rampup(epoch, self.options.ramp_epochs)

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        levels = nets["net"](batch.image, pyramid=True)
        labelled = batch.labelled
        unlabelled = ~labelled
        zero = sum(level.sum() for level in levels) * 0.0  # every head in the graph (DDP)
        sup = zero
        if bool(labelled.any()):
            target = batch.labels[labelled, 0]
            sup = torch.stack([segmentation_loss_per_sample(level[labelled], target).mean()
                               for level in levels]).mean()
        cons = zero
        mean_weight = 1.0
        if bool(unlabelled.any()):
            cons, weights = rectified_pyramid_consistency([level[unlabelled] for level in levels])
            mean_weight = float(weights.mean())
        weight = self.consistency_weight(epoch)
        metrics = {"loss_sup": float(sup.detach()), "loss_cons": float(cons.detach()), "cons_weight": weight,
                   "rectify_weight_mean": mean_weight, "unlabelled_rows": float(unlabelled.sum())}
        return StepOutput(sup + weight * cons, metrics)
