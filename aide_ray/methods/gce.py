"""Generalized cross entropy baseline: one U-Net trained with a noise-robust loss.

The only change from ``supervised`` is the loss, so comparing the two
isolates what a bounded loss buys under label noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.nn.robust_losses import generalized_cross_entropy_per_sample
from aide_ray.options import Section

__all__ = ["GceOptions", "Gce"]


@dataclass(frozen=True)
class GceOptions(Section):
    _prefix: ClassVar[str] = "gce"
    q: float = 0.5  # (1 - p^q) / q; q -> 0 is cross-entropy, q = 1 is MAE

    def __post_init__(self) -> None:
        self._in_range("q", 0.0, 1.0, lo_open=True)


class Gce(Method):
    """One net trained with GCE ``(1 - p_y^q) / q`` (``gce.q``), pixel mean per sample.

    Reference: Z. Zhang and M. R. Sabuncu, "Generalized cross entropy loss for
    training deep neural networks with noisy labels", NeurIPS 2018. PyMIC:
    ``GeneralizedCELoss`` in ``pymic/loss/seg/ce.py`` (same formula, mean over
    every pixel of the batch rather than per sample first: equal for equal-size images).
    """

    Options: ClassVar[type] = GceOptions

    name: ClassVar[str] = "gce"
    full_masks_only: ClassVar[bool] = True  # its loss has no way to skip unannotated pixels

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        logits = nets["net"](batch.image)
        rows = batch.labelled
        if not bool(rows.any()):
            return StepOutput(logits.sum() * 0.0, {"loss_net": 0.0})
        loss = generalized_cross_entropy_per_sample(logits[rows], batch.labels[rows, 0], self.options.q).mean()
        return StepOutput(loss, {"loss_net": float(loss.detach())})
