"""Gated CRF loss on scribbles (Obukhov et al., 2019): pCE plus a local pairwise CRF energy.

Pixels close in position and intensity should get the same class: the loss is
the Potts energy ``sum_i sum_{j near i} K_ij (1 - p_i . p_j)`` of the softmax
with a Gaussian kernel on position and intensity, restricted to a
(2r+1) x (2r+1) window, with gates that switch pixels off (here: outside the
image). Computed one window offset at a time, so memory stays that of a few
copies of the prediction whatever the radius.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from aide_ray.methods.pce import RegularisedPce, RegularisedPceOptions, check_probs_and_image

__all__ = ["GatedCrfOptions", "GatedCrf", "CrfKernel", "gated_crf_loss"]


@dataclass(frozen=True)
class GatedCrfOptions(RegularisedPceOptions):
    _prefix: ClassVar[str] = "gated_crf"
    radius: int = 5  # window half-size r: neighbours within (2r+1) x (2r+1) (PyMIC: 5)
    bilateral_weight: float = 1.0  # weight of the position + intensity kernel (PyMIC: W0)
    bilateral_xy_sigma: float = 5.0  # its position scale, pixels (PyMIC: XY0)
    intensity_sigma: float = 0.1  # its intensity scale, in the ingested (normalised) units (PyMIC: rgb)
    spatial_weight: float = 1.0  # weight of the position-only kernel (PyMIC: W1; 0: bilateral only)
    spatial_xy_sigma: float = 3.0  # its position scale, pixels (PyMIC: XY1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._in_range("radius", 1, 16)
        self._in_range("bilateral_weight", 0.0, None)
        self._in_range("bilateral_xy_sigma", 0.0, None, lo_open=True)
        self._in_range("intensity_sigma", 0.0, None, lo_open=True)
        self._in_range("spatial_weight", 0.0, None)
        self._in_range("spatial_xy_sigma", 0.0, None, lo_open=True)


@dataclass(frozen=True)
class CrfKernel:
    """``K_ij = a exp(-|xy_i - xy_j|^2 / 2 s_a^2 - |x_i - x_j|^2 / 2 s_I^2) + b exp(-|xy_i - xy_j|^2 / 2 s_b^2)``.

    The bilateral (position and intensity) plus the spatial (position only) Gaussian,
    PyMIC's two-kernel composition; ``|x_i - x_j|^2`` sums over the image's modalities.
    """

    radius: int = 5
    bilateral_weight: float = 1.0
    bilateral_xy_sigma: float = 5.0
    intensity_sigma: float = 0.1
    spatial_weight: float = 1.0
    spatial_xy_sigma: float = 3.0

    @classmethod
    def from_options(cls, options: GatedCrfOptions) -> "CrfKernel":
        return cls(options.radius, options.bilateral_weight, options.bilateral_xy_sigma, options.intensity_sigma,
                   options.spatial_weight, options.spatial_xy_sigma)

    def offsets(self) -> list[tuple[int, int]]:
        """Every (dy, dx) of the window but (0, 0): a pixel is not its own neighbour."""
        r = self.radius
        return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]

    def weights(self, squared_distance: int, intensity_gap: Tensor) -> Tensor:
        """K for neighbours ``squared_distance`` pixels^2 apart whose intensities differ by ``intensity_gap``^2."""
        bilateral = self.bilateral_weight * math.exp(-0.5 * squared_distance / self.bilateral_xy_sigma ** 2)
        spatial = self.spatial_weight * math.exp(-0.5 * squared_distance / self.spatial_xy_sigma ** 2)
        return bilateral * torch.exp(-0.5 * intensity_gap / self.intensity_sigma ** 2) + spatial


def gated_crf_loss(probs: Tensor, image: Tensor, kernel: CrfKernel, gate: Tensor | None = None) -> Tensor:
    """Obukhov et al.'s gated CRF loss with the Potts compatibility, per gated pixel.

    ``L = (1/N) sum_i sum_{j in W(i), j != i} g_i g_j K_ij (1 - sum_c p_i^c p_j^c)`` over the
    window W(i) of radius r, N = sum_i g_i; neighbours outside the image do not exist (their
    gate is 0). A constant one-hot prediction gives exactly 0.

    Memory: K is symmetric, so L is a quadratic form ``(sum K - sum_i p_i . m_i) / N`` with
    ``m_i = sum_j K_ij p_j`` and ``dL/dp_i = -2 m_i / N``. The energy and ``m`` (a constant,
    one (B, C, H, W) buffer) are summed one window offset at a time without autograd, and
    ``L = (energy - 2 sum_i (p_i - p_i.detach()) . m_i) / N`` has the value and the gradient
    of L without the (2r+1)^2 copies of the prediction that an unfold keeps for backward.

    Args:
        probs: (B, C, H, W) softmax.
        image: (B, M, H, W) intensities (no gradient flows into the kernel).
        kernel: the kernel and its window radius.
        gate: optional (B, H, W) bool/float, 1 where a pixel takes part (the paper's source and
            destination masks, one mask for both: e.g. 0 on padding); None: every pixel.
    Returns:
        Scalar tensor.
    """
    check_probs_and_image(probs, image)
    b, _, h, w = probs.shape
    r = kernel.radius
    with torch.no_grad():
        inside = probs.new_ones(b, 1, h, w) if gate is None else gate.to(probs.dtype).view(b, 1, h, w)
        constant = probs.detach()
        padded_image = F.pad(image.to(probs.dtype), (r, r, r, r))
        padded_probs = F.pad(constant, (r, r, r, r))
        padded_inside = F.pad(inside, (r, r, r, r))
        message = torch.zeros_like(constant)
        energy = probs.new_zeros(())
        for dy, dx in kernel.offsets():
            window = (slice(None), slice(None), slice(r + dy, r + dy + h), slice(r + dx, r + dx + w))
            gap = ((padded_image[window] - image) ** 2).sum(dim=1, keepdim=True)
            k = kernel.weights(dy * dy + dx * dx, gap) * inside * padded_inside[window]
            neighbour = k * padded_probs[window]
            message += neighbour
            # Summed as K (1 - p_i . p_j) rather than sum K - sum p . m: no cancellation, exactly 0 when constant.
            energy += (k - (constant * neighbour).sum(dim=1, keepdim=True)).sum()
        count = inside.sum().clamp_min(1.0)
    # Value 0, gradient m_i (message carries both gates through k): the loss gets the value of the
    # energy and the gradient -2 m_i / N of the quadratic form.
    carrier = ((probs - constant) * message).sum()
    return (energy - 2.0 * carrier) / count


class GatedCrf(RegularisedPce):
    """pCE plus the ramped gated CRF loss of the softmax over every pixel.

    ``loss = pCE + w(epoch) * L_GCRF(softmax(net(x)), x)`` (:func:`gated_crf_loss`, kernel
    :class:`CrfKernel` from the ``gated_crf.*`` options), ``w(epoch) = gated_crf.weight *
    sigmoid_rampup(epoch, gated_crf.ramp_epochs)``. Every image pixel is gated in (the engine
    pads nothing); the image is the ingested, normalised one.

    PyMIC: ``WSLGatedCRF`` (``pymic/net_run/weak_sup/wsl_gatedcrf.py``, ``GatedCRFLoss`` in
    ``pymic/loss/seg/gatedcrf.py``, Obukhov et al.'s code). The same energy, kernel composition
    and defaults (radius 5, bilateral xy 5 and intensity 0.1, spatial xy 3, both weights 1),
    divided by B H W. Differences: its unfold zero-pads the features, so the kernel to an
    outside "neighbour" (position and intensity 0) enters its constant ``sum K`` and the loss
    of a perfect constant prediction is not 0 (no effect on the gradient); we leave outside
    neighbours out. Its unfold keeps (2r+1)^2 copies of the prediction for backward; we use
    the quadratic form above. It ramps over iterations, we over epochs.

    Reference: A. Obukhov, S. Georgoulis, D. Dai, L. Van Gool, "Gated CRF loss for weakly
    supervised semantic image segmentation", arXiv:1906.04651 (2019).
    """

    Options: ClassVar[type] = GatedCrfOptions

    name: ClassVar[str] = "gated_crf"

    def regulariser(self, logits: Tensor, image: Tensor) -> Tensor:
        return gated_crf_loss(torch.softmax(logits, dim=1), image, CrfKernel.from_options(self.options))
