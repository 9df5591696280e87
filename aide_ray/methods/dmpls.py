"""DMPLS (Luo et al., MICCAI 2022): dual-branch network, dynamically mixed pseudo-label supervision.

One encoder, two decoders: the main one reads the encoder features as they are,
the auxiliary one through dropout. Both learn pCE from the scribbles, and both
learn, on every pixel, the hard pseudo-label of a random mixture of their two
softmaxes, so each branch is taught by an ensemble that changes every step.
The auxiliary decoder lives inside the net (:class:`DualDecoderNet`), whose
plain forward is the U-Net's, as :class:`aide_ray.methods.cct.CctNet`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.methods.meanteacher import sigmoid_rampup
from aide_ray.methods.pce import annotated_pixels, partial_cross_entropy
from aide_ray.nn.losses import soft_dice_loss_per_sample
from aide_ray.nn.model import build_model
from aide_ray.nn.unet import MultiModalUNet2D, UNet2D, UNetDecoder
from aide_ray.options import Section

__all__ = ["DmplsOptions", "Dmpls", "DualDecoderNet", "mixed_pseudo_label"]


@dataclass(frozen=True)
class DmplsOptions(Section):
    _prefix: ClassVar[str] = "dmpls"
    pseudo_weight: float = 0.5  # lambda of the pseudo-label term (paper and the authors' code: 0.5)
    ramp_epochs: int = 0  # sigmoid ramp-up of lambda (0: none, as the paper)
    aux_dropout: float = 0.5  # dropout on the encoder features the auxiliary decoder reads (authors' code: 0.5)

    def __post_init__(self) -> None:
        self._in_range("pseudo_weight", 0.0, None)
        self._in_range("ramp_epochs", 0, None)
        self._in_range("aux_dropout", 0.0, 1.0, hi_open=True)


class DualDecoderNet(nn.Module):
    """A U-Net plus an auxiliary decoder that reads its encoder features through dropout.

    ``net(x)`` is the U-Net's own output (B, C, H, W), the main decoder; ``net(x, both=True)``
    returns ``(main, aux)``. The auxiliary decoder has the main decoder's architecture and
    its own weights and reads every encoder level (skips and bottleneck) through element-wise
    dropout at rate ``aux_dropout``, drawn afresh in every call (it only runs in training).
    """

    def __init__(self, unet: UNet2D | MultiModalUNet2D, aux_dropout: float) -> None:
        super().__init__()
        self.unet = unet
        main = unet.decoder
        # A list of one, named as CctNet's: model.init_from (runs/net_weights.py) then loads a plain
        # U-Net checkpoint into ``unet`` and leaves the auxiliary decoder at its initialisation.
        self.aux_decoders = nn.ModuleList([UNetDecoder(main.skip_channels, main.widths, main.num_classes,
                                                       light_decoder=main.light_decoder)])
        self.aux_dropout = aux_dropout

    def forward(self, x: Tensor, both: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        # A keyword rather than a second method: DDP synchronises only passes through its __call__.
        features = self.unet.encode(x)
        main = self.unet.decoder(features)
        if not both:
            return main
        perturbed = [F.dropout(f, p=self.aux_dropout, training=True) for f in features]
        return main, self.aux_decoders[0](perturbed)


def mixed_pseudo_label(main_probs: Tensor, aux_probs: Tensor, alpha: float) -> Tensor:
    """``argmax_c (alpha p1 + (1 - alpha) p2)``: the hard label of a mixture of the two branches, no gradient.

    Args:
        main_probs, aux_probs: (B, C, H, W) softmax of the two decoders.
        alpha: the mixing weight in [0, 1].
    Returns:
        (B, H, W) int64 class indices.
    """
    with torch.no_grad():
        return (alpha * main_probs + (1.0 - alpha) * aux_probs).argmax(dim=1)


class Dmpls(Method):
    """Shared encoder, main and perturbed auxiliary decoders, pCE plus dynamically mixed pseudo-labels.

    With ``p1``, ``p2`` the softmax of the main and auxiliary decoders and ``alpha ~ U(0, 1)``
    drawn once per step::

        PL   = argmax(alpha p1 + (1 - alpha) p2)                               (no gradient)
        loss = 0.5 (pCE(p1, y) + pCE(p2, y)) + w(epoch) * 0.5 (Dice(p1, PL) + Dice(p2, PL))
        w(epoch) = dmpls.pseudo_weight * sigmoid_rampup(epoch, dmpls.ramp_epochs)

    with the pseudo-label term over every pixel of every row (Dice: the soft Dice loss of
    :func:`aide_ray.nn.losses.soft_dice_loss_per_sample`, averaged over the rows). Inference
    uses the main decoder (``net(x)``), as the authors' code.

    PyMIC: ``WSLDMPLS`` (``pymic/net_run/weak_sup/wsl_dmpls.py``, network ``UNet2D_DualBranch``,
    ``pymic/net/net2d/unet2d_dual_branch.py``). Where it and the paper differ we follow the
    paper: PyMIC's two decoders read the same, unperturbed features (they differ only by their
    initialisation); its inference averages the two branches by default (``output_mode``);
    its weight ``regularize_w`` defaults to 0.1 with a sigmoid ramp over iterations (the
    paper: lambda = 0.5, no ramp); its pseudo-label loss may be CE instead of Dice. The
    authors' Dice (WSL4MIS ``pDLoss``) averages every class, background included, over the
    whole batch with squared sums in the denominator; ours is the repository's soft Dice
    (foreground classes, per row, smoothing 1), the loss every other method here uses.

    Reference: X. Luo, M. Hu, W. Liao, S. Zhai, T. Song, G. Wang, S. Zhang, "Scribble-supervised
    medical image segmentation via dual-branch network and dynamically mixed pseudo labels
    supervision", MICCAI 2022.
    """

    Options: ClassVar[type] = DmplsOptions

    name: ClassVar[str] = "dmpls"
    net_names: ClassVar[tuple[str, ...]] = ("net",)
    trained_nets: ClassVar[tuple[str, ...]] = ("net",)
    eval_nets: ClassVar[tuple[str, ...]] = ("net",)
    label_slots: ClassVar[int] = 1
    needs_unet: ClassVar[str] = "feeds the U-Net's encoder features to a second decoder"

    def build_nets(self) -> dict[str, nn.Module]:
        # No deep-supervision heads: nothing reads them, and DDP rejects parameters without gradients.
        unet = build_model(dataclasses.replace(self.model, deep_supervision=False), self.in_channels)
        return {"net": DualDecoderNet(unet, self.options.aux_dropout)}

    def pseudo_weight(self, epoch: int) -> float:
        return self.options.pseudo_weight * sigmoid_rampup(epoch, self.options.ramp_epochs)

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        main, aux = nets["net"](batch.image, both=True)
        target, rows = batch.labels[:, 0], batch.labelled
        sup = 0.5 * (partial_cross_entropy(main, target, rows) + partial_cross_entropy(aux, target, rows))
        main_probs, aux_probs = torch.softmax(main, dim=1), torch.softmax(aux, dim=1)
        # From torch's global generator on the CPU: a seeded run mixes the same on any device.
        alpha = float(torch.rand(()))
        pseudo = mixed_pseudo_label(main_probs, aux_probs, alpha)
        pseudo_loss = 0.5 * (soft_dice_loss_per_sample(main_probs, pseudo).mean()
                             + soft_dice_loss_per_sample(aux_probs, pseudo).mean())
        weight = self.pseudo_weight(epoch)
        metrics = {"loss_pce": float(sup.detach()), "loss_pseudo": float(pseudo_loss.detach()),
                   "pseudo_weight": weight, "alpha": alpha,
                   "annotated_share": float(annotated_pixels(target, rows).float().mean())}
        return StepOutput(sup + weight * pseudo_loss, metrics)
