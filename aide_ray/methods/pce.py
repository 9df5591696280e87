"""Partial cross-entropy (pCE): learning from scribbles, the baseline of every scribble method.

A scribble label holds a class where somebody drew and
:data:`aide_ray.label_values.UNANNOTATED` everywhere else. pCE is the
cross-entropy over the annotated pixels only; the regularised scribble methods
(entropy minimisation, total variation, Mumford-Shah, gated CRF) add one
unsupervised term over every pixel, so they share this module's step
(:class:`RegularisedPce`) and differ only in that term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from aide_ray.label_values import UNANNOTATED
from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.methods.meanteacher import sigmoid_rampup
from aide_ray.options import Section

__all__ = ["Pce", "RegularisedPce", "RegularisedPceOptions", "annotated_pixels", "check_probs_and_image",
           "partial_cross_entropy"]


def annotated_pixels(target: Tensor, rows: Tensor | None = None) -> Tensor:
    """(B, H, W) bool: the pixels of ``target`` (B, H, W) that hold a class, in the rows that have a label.

    Rows without a label hold zeros in a batch (not ``UNANNOTATED``), hence ``rows``.
    """
    annotated = target != UNANNOTATED
    if rows is not None:
        annotated = annotated & rows.view(-1, *([1] * (target.dim() - 1)))
    return annotated


def partial_cross_entropy(logits: Tensor, target: Tensor, rows: Tensor | None = None) -> Tensor:
    """pCE: ``-(1/|A|) sum_{v in A} ln softmax(logits)_{y_v}`` over the annotated pixels A of the batch.

    A pools every annotated pixel of the labelled ``rows`` (each pixel weighs the same, so
    a long scribble counts more than a short one), as PyMIC's weighted cross-entropy and
    WSL4MIS's ``CrossEntropyLoss(ignore_index=...)``. No annotated pixel gives a
    differentiable 0 (the network stays in the graph, as DDP needs).

    Args:
        logits: (B, C, H, W) float.
        target: (B, H, W) int64, class indices in [0, C) or ``UNANNOTATED``.
        rows: optional (B,) bool, the rows that have a label; None: every row.
    Returns:
        Scalar tensor.
    """
    if logits.dim() != 4 or tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"logits (B, C, H, W) and target (B, H, W) must match, got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    annotated = annotated_pixels(target, rows)
    # ignore_index keeps cross_entropy from reading 255 as a class; the mask also drops the
    # zeros of unlabelled rows, which would otherwise read as background.
    per_pixel = F.cross_entropy(logits, target.masked_fill(~annotated, UNANNOTATED), ignore_index=UNANNOTATED,
                                reduction="none")
    return per_pixel.sum() / annotated.sum().clamp_min(1).to(per_pixel.dtype)



def check_probs_and_image(probs: Tensor, image: Tensor) -> None:
    """The image-aware regularisers' inputs: softmax (B, C, H, W) and intensities (B, M, H, W) of one batch."""
    if probs.dim() != 4 or image.dim() != 4 or probs.shape[0] != image.shape[0] or \
            probs.shape[2:] != image.shape[2:]:
        raise ValueError(f"probs (B, C, H, W) and image (B, M, H, W) must match, got {tuple(probs.shape)} "
                         f"and {tuple(image.shape)}")


class Pce(Method):
    """One net trained with partial cross-entropy on the annotated pixels of its scribbles.

    ``loss = pCE(net(x), y)`` (:func:`partial_cross_entropy`): the annotated pixels of every
    labelled row pooled, unannotated pixels left out. A full mask is a scribble that
    annotates every pixel, so on full masks this is plain cross-entropy.

    Reference: the pCE baseline of weakly supervised segmentation, e.g. M. Tang,
    A. Djelouah, F. Perazzi, Y. Boykov, C. Schroers, "Normalized cut loss for
    weakly-supervised CNN segmentation", CVPR 2018. PyMIC: ``CrossEntropyLoss`` with the
    pixel weights of ``PartialLabelToProbability`` (1 where annotated), the same pooled mean.
    """

    name: ClassVar[str] = "pce"
    net_names: ClassVar[tuple[str, ...]] = ("net",)
    trained_nets: ClassVar[tuple[str, ...]] = ("net",)
    eval_nets: ClassVar[tuple[str, ...]] = ("net",)
    label_slots: ClassVar[int] = 1

    def supervised_loss(self, logits: Tensor, batch: Batch) -> Tensor:
        return partial_cross_entropy(logits, batch.labels[:, 0], batch.labelled)

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        logits = nets["net"](batch.image)
        loss = self.supervised_loss(logits, batch)
        annotated = annotated_pixels(batch.labels[:, 0], batch.labelled)
        return StepOutput(loss, {"loss_pce": float(loss.detach()), "annotated_share": float(annotated.float().mean())})


@dataclass(frozen=True)
class RegularisedPceOptions(Section):
    """The weight of a scribble method's unsupervised term (PyMIC's ``regularize_w``) and its ramp."""

    weight: float = 0.1  # lambda after the ramp (PyMIC's regularize_w default)
    ramp_epochs: int = 20  # sigmoid ramp-up of lambda (0: none)

    def __post_init__(self) -> None:
        self._in_range("weight", 0.0, None)
        self._in_range("ramp_epochs", 0, None)


class RegularisedPce(Pce):
    """pCE on the annotated pixels plus a ramped unsupervised term on every pixel of every row.

    ``loss = pCE + w(epoch) * R(net(x), x)``, ``w(epoch) = <name>.weight * sigmoid_rampup(epoch,
    <name>.ramp_epochs)``. A subclass sets its options (a :class:`RegularisedPceOptions`) and
    :meth:`regulariser`; the term covers annotated pixels too (as PyMIC: a regulariser is a
    property of the whole prediction, not of the unlabelled part).
    """

    Options: ClassVar[type] = RegularisedPceOptions

    def regularisation_weight(self, epoch: int) -> float:
        return self.options.weight * sigmoid_rampup(epoch, self.options.ramp_epochs)

    def regulariser(self, logits: Tensor, image: Tensor) -> Tensor:
        """The unsupervised term R, a scalar, from the logits (B, C, H, W) and the image (B, M, H, W)."""
        raise NotImplementedError

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        logits = nets["net"](batch.image)
        sup = self.supervised_loss(logits, batch)
        weight = self.regularisation_weight(epoch)
        # The term is computed even at weight 0 so that the logged value follows training.
        reg = self.regulariser(logits, batch.image)
        metrics = {"loss_pce": float(sup.detach()), "loss_reg": float(reg.detach()), "reg_weight": weight,
                   "annotated_share": float(annotated_pixels(batch.labels[:, 0], batch.labelled).float().mean())}
        return StepOutput(sup + weight * reg, metrics)

