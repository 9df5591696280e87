"""Noise-robust Dice baseline: one U-Net trained with COPLE-Net's NR-Dice loss.

The only change from ``supervised`` is the loss (see
:func:`aide_ray.nn.robust_losses.noise_robust_dice_per_sample`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.nn.robust_losses import noise_robust_dice_per_sample
from aide_ray.options import Section

__all__ = ["NrDiceOptions", "NrDice"]


@dataclass(frozen=True)
class NrDiceOptions(Section):
    _prefix: ClassVar[str] = "nrdice"
    gamma: float = 1.5  # exponent of |p - y|; 2 gives the usual soft Dice's numerator form

    def __post_init__(self) -> None:
        self._in_range("gamma", 1.0, 2.0)


class NrDice(Method):
    """One net trained with ``mean_c sum|p - y|^gamma / (sum(p + y) + eps)`` (``nrdice.gamma``).

    Reference: G. Wang et al., "A noise-robust framework for automatic
    segmentation of COVID-19 pneumonia lesions from CT images", IEEE TMI 2020.
    PyMIC: ``NoiseRobustDiceLoss`` in ``pymic/loss/seg/dice.py``.
    """

    Options: ClassVar[type] = NrDiceOptions

    name: ClassVar[str] = "nrdice"
    full_masks_only: ClassVar[bool] = True  # its loss has no way to skip unannotated pixels

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        logits = nets["net"](batch.image)
        rows = batch.labelled
        if not bool(rows.any()):
            return StepOutput(logits.sum() * 0.0, {"loss_net": 0.0})
        loss = noise_robust_dice_per_sample(logits[rows], batch.labels[rows, 0], self.options.gamma).mean()
        return StepOutput(loss, {"loss_net": float(loss.detach())})
