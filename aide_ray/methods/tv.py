"""Total variation on scribbles: pCE where annotated, short boundaries everywhere.

The total variation of the softmax is the (soft) length of the boundaries
between the predicted regions, so adding it to pCE prefers the segmentation
that fills the unannotated space between the scribbles with few, smooth
regions. :func:`total_variation` is also the length term of the Mumford-Shah
loss (:mod:`aide_ray.methods.mumford_shah`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from aide_ray.methods.pce import RegularisedPce, RegularisedPceOptions

__all__ = ["TvOptions", "Tv", "total_variation"]


@dataclass(frozen=True)
class TvOptions(RegularisedPceOptions):
    _prefix: ClassVar[str] = "tv"


def total_variation(probs: Tensor) -> Tensor:
    """Anisotropic total variation per pixel: ``(1/(B H W)) sum_{b,c,v} |D_y p_c(v)| + |D_x p_c(v)|``.

    ``D_y``, ``D_x`` are forward differences between vertical and horizontal neighbours
    (none across the image border). A constant prediction gives 0; a one-hot prediction
    gives 2 / (B H W) per unit of boundary length (both classes change across it).

    Args:
        probs: (B, C, H, W) probabilities.
    Returns:
        Scalar tensor.
    """
    if probs.dim() != 4:
        raise ValueError(f"probs must have shape (B, C, H, W), got {tuple(probs.shape)}")
    b, _, h, w = probs.shape
    vertical = (probs[:, :, 1:, :] - probs[:, :, :-1, :]).abs().sum()
    horizontal = (probs[:, :, :, 1:] - probs[:, :, :, :-1]).abs().sum()
    return (vertical + horizontal) / (b * h * w)


class Tv(RegularisedPce):
    """pCE plus the ramped total variation of the softmax over every pixel.

    ``loss = pCE + w(epoch) * TV(softmax(net(x)))`` (:func:`total_variation`),
    ``w(epoch) = tv.weight * sigmoid_rampup(epoch, tv.ramp_epochs)``.

    PyMIC: ``WSLTotalVariation`` (``pymic/net_run/weak_sup/wsl_tv.py``, loss ``TotalVariationLoss``
    in ``pymic/loss/seg/ssl.py``). Its "total variation" is a morphological contour,
    ``mean relu(maxpool3(minpool3(p)) - minpool3(p))`` (opening minus erosion: a one-pixel band
    inside each region's boundary), not the sum of absolute differences; and its 2D branch
    never runs (it compares the list of spatial sizes with 2), so on (B, C, H, W) it pools
    3x3x3 over (C, H, W), across the class axis. WSL4MIS, which PyMIC cites, uses the same
    contour on ``outputs_soft[1:]``, which slices off the first *row* of the batch, not
    the background channel. We follow the definition of total variation (Rudin, Osher,
    Fatemi 1992), the length term ``int |grad p|`` of Mumford-Shah (Kim & Ye) too.

    Reference: L. I. Rudin, S. Osher, E. Fatemi, "Nonlinear total variation based noise
    removal algorithms", Physica D 60 (1992); as a scribble baseline, X. Luo et al.,
    "WORD: a large scale dataset, benchmark and clinical applicable study for abdominal
    organ segmentation from CT image", Medical Image Analysis 82 (2022) (PyMIC's citation).
    """

    Options: ClassVar[type] = TvOptions

    name: ClassVar[str] = "tv"

    def regulariser(self, logits: Tensor, image: Tensor) -> Tensor:
        return total_variation(torch.softmax(logits, dim=1))
