"""Mean absolute error baseline: one U-Net trained with the bounded, symmetric MAE loss.

The only change from ``supervised`` is the loss, so comparing the two (and
``gce``, which interpolates between CE and MAE) isolates what a symmetric loss
buys under label noise. The loss lives here rather than in
:mod:`aide_ray.nn.robust_losses` because nothing else uses it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.options import NoOptions

__all__ = ["Mae", "mean_absolute_error_per_sample"]


def mean_absolute_error_per_sample(logits: Tensor, target: Tensor) -> Tensor:
    """Ghosh et al.'s MAE per sample: ``sum_c |p_c - y_c|`` per pixel, mean over the pixels.

    With ``p`` the softmax and ``y`` the one-hot label the pixel term is
    ``2 (1 - p_y)``: bounded in [0, 2], and its sum over all C possible labels
    is the constant ``2 (C - 1)`` (the symmetry behind the noise tolerance).

    Args:
        logits: (B, C, *spatial) float, raw network outputs; C includes background.
        target: (B, *spatial) int64 class indices in [0, C).
    Returns:
        (B,) float32 loss in [0, 2].
    Raises:
        ValueError: if the shapes disagree.
    """
    if logits.dim() < 3:
        raise ValueError(f"logits must have shape (B, C, *spatial), got {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target must have shape {expected} to match logits {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    prob = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1).to(prob.dtype)
    per_pixel = (prob - one_hot).abs().sum(dim=1)
    return per_pixel.mean(dim=tuple(range(1, per_pixel.dim())))


class Mae(Method):
    """One net trained with ``mean_pixels sum_c |p_c - y_c| = mean_pixels 2 (1 - p_y)``, mean over labelled rows.

    Reference: A. Ghosh, H. Kumar, P. S. Sastry, "Robust loss functions under
    label noise for deep neural networks", AAAI 2017: a loss is noise-tolerant
    when its sum over all labels is constant; MAE ``||e_y - p||_1`` is, CE is not.

    PyMIC: ``MAELoss`` in ``pymic/loss/seg/mse.py`` (there is no ``mae.py``)
    averages ``|p - y|`` over classes as well as pixels, i.e. ``2 (1 - p_y) / C``
    per pixel; we sum over classes as the paper's L1 norm (the same loss up to
    the factor C, which Adam's step is invariant to). PyMIC's optional
    ``pixel_weight`` is not used. (An older PyMIC ``MAELoss`` subclassed
    ``torch.nn.MSELoss`` instead of its own ``MSELoss`` and could not run.)

    No options: the loss has no hyperparameter, and a weight on the only
    term would only rescale the loss Adam normalises away.
    """

    Options: ClassVar[type] = NoOptions

    name: ClassVar[str] = "mae"
    full_masks_only: ClassVar[bool] = True  # its loss has no way to skip unannotated pixels

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        mae = mean_absolute_error_per_sample(nets["net"](batch.image), batch.labels[:, 0])
        # A mask rather than indexing: a batch without labelled rows still
        # yields a differentiable zero (DDP-safe), as in ``supervised``.
        mask = batch.labelled.to(mae.dtype)
        loss = (mae * mask).sum() / mask.sum().clamp_min(1.0)
        return StepOutput(loss, {"loss_net": float(loss.detach())})
