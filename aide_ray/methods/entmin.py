"""Entropy minimisation (Grandvalet & Bengio, NIPS 2005) for labelled + unlabelled rows.

One U-Net trained with L_seg on the labelled rows and, on the unlabelled rows,
the mean pixel entropy of its own softmax: the net is pushed towards confident
predictions where it has no label, i.e. towards decision boundaries in
low-density regions. The simplest semi-supervised baseline, hence its own file
next to the teacher and twin methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.methods.meanteacher import sigmoid_rampup
from aide_ray.nn.losses import segmentation_loss_per_sample
from aide_ray.options import Section

__all__ = ["EntMinOptions", "EntMin", "entropy_map"]


@dataclass(frozen=True)
class EntMinOptions(Section):
    _prefix: ClassVar[str] = "entmin"
    entropy_weight: float = 0.1  # lambda after the ramp (PyMIC's regularize_w default)
    ramp_epochs: int = 20  # sigmoid ramp-up of the weight

    def __post_init__(self) -> None:
        self._in_range("entropy_weight", 0.0, None)
        self._in_range("ramp_epochs", 0, None)


def entropy_map(logits: Tensor) -> Tensor:
    """Per-pixel Shannon entropy (nats) of ``softmax(logits)`` over the classes.

    ``-sum_c p_c log p_c``, computed with ``log_softmax`` so that a confident pixel
    (some ``p_c`` underflowing to 0) gives 0 rather than ``0 * log 0 = NaN``.

    Args:
        logits: (B, C, H, W) float.
    Returns:
        (B, H, W) float in [0, ln C].
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (B, C, H, W), got {tuple(logits.shape)}")
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


class EntMin(Method):
    """One net, L_seg on labelled rows plus ramped entropy of its softmax on unlabelled rows.

    ``loss = mean_labelled L_seg + w(epoch) * mean_{unlabelled rows, pixels} H(softmax(net(x)))``,
    ``H(p) = -sum_c p_c ln p_c``, ``w(epoch) = entmin.entropy_weight * sigmoid_rampup(epoch,
    entmin.ramp_epochs)``; a term over an empty set of rows is 0. This is Grandvalet
    and Bengio's criterion ``C = L - lambda H_emp``, written as a loss to minimise: the
    entropy of a labelled example is that of its known label (0), so the entropy term
    covers the unlabelled ones only.

    PyMIC: ``SSLEntropyMinimization`` (``pymic/net_run/semi_sup/ssl_em.py``, loss
    ``EntropyLoss`` in ``pymic/loss/seg/ssl.py``) takes the entropy over every row of
    the batch, labelled ones included, smooths ``p`` to ``0.999 p + 5e-4`` and divides
    by ``ln C``; we follow the paper (unlabelled rows only, entropy in nats; the
    ``1 / ln C`` factor is only a rescaled weight). PyMIC ramps over iterations, we over epochs.

    Reference: Y. Grandvalet and Y. Bengio, "Semi-supervised learning by entropy
    minimization", NIPS 2005.
    """

    Options: ClassVar[type] = EntMinOptions

    name: ClassVar[str] = "entmin"
    net_names: ClassVar[tuple[str, ...]] = ("net",)
    trained_nets: ClassVar[tuple[str, ...]] = ("net",)
    eval_nets: ClassVar[tuple[str, ...]] = ("net",)
    label_slots: ClassVar[int] = 1
    uses_unlabelled: ClassVar[bool] = True

    def entropy_weight(self, epoch: int) -> float:
        return self.options.entropy_weight * sigmoid_rampup(epoch, self.options.ramp_epochs)

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        logits = nets["net"](batch.image)
        labelled = batch.labelled
        unlabelled = ~labelled
        zero = logits.sum() * 0.0  # keeps every parameter in the graph (DDP)
        sup = zero
        if bool(labelled.any()):
            sup = segmentation_loss_per_sample(logits[labelled], batch.labels[labelled, 0]).mean()
        ent = zero
        if bool(unlabelled.any()):
            ent = entropy_map(logits[unlabelled]).mean()
        weight = self.entropy_weight(epoch)
        metrics = {"loss_sup": float(sup.detach()), "loss_entropy": float(ent.detach()),
                   "entropy_weight": weight, "unlabelled_rows": float(unlabelled.sum())}
        return StepOutput(sup + weight * ent, metrics)
