"""Cross-consistency training (Ouali et al., CVPR 2020) for labelled + unlabelled rows.

A U-Net's encoder is shared by its own (main) decoder and by auxiliary
decoders that read perturbed copies of the encoder features. The main decoder
learns from the labels; on unlabelled rows every auxiliary prediction is pulled
towards the main one, which trains the encoder to give features whose decoding
survives the perturbations. The auxiliary decoders live inside one module
(:class:`CctNet`) whose plain forward is the U-Net's, so the engine, checkpoints
and inference see an ordinary net.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.methods.meanteacher import sigmoid_rampup
from aide_ray.nn.losses import segmentation_loss_per_sample
from aide_ray.nn.model import build_model
from aide_ray.nn.unet import MultiModalUNet2D, UNet2D, UNetDecoder
from aide_ray.options import Section, fail

__all__ = ["CctOptions", "Cct", "CctNet", "PERTURBATIONS", "perturb", "feature_drop", "feature_noise"]

# The feature-based and random perturbations of Ouali et al.: spatial dropout, F-Drop, F-Noise.
PERTURBATIONS = ("dropout", "feature_drop", "feature_noise")


@dataclass(frozen=True)
class CctOptions(Section):
    _prefix: ClassVar[str] = "cct"
    consistency_weight: float = 30.0  # w_u after the ramp (Ouali et al.: 30)
    ramp_epochs: int = 20  # sigmoid ramp-up of the weight
    # One auxiliary decoder per entry, comma-separated; an entry may repeat.
    perturbations: str = "dropout,feature_drop,feature_noise"
    drop_rate: float = 0.5  # channel share zeroed by the "dropout" perturbation
    noise_range: float = 0.3  # F-Noise: z + z * U(-range, range)

    def __post_init__(self) -> None:
        self._in_range("consistency_weight", 0.0, None)
        self._in_range("ramp_epochs", 0, None)
        self._in_range("drop_rate", 0.0, 1.0, hi_open=True)
        self._in_range("noise_range", 0.0, None, lo_open=True)
        names = self.perturbation_list
        bad = [n for n in names if n not in PERTURBATIONS]
        if not names or bad:
            close = difflib.get_close_matches(bad[0], PERTURBATIONS, n=1) if bad else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            fail(self._key("perturbations"), f"a comma-separated list of {list(PERTURBATIONS)}{hint}",
                 self.perturbations)

    @property
    def perturbation_list(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.perturbations.split(",") if p.strip())


def feature_drop(x: Tensor) -> Tensor:
    """F-Drop: zero the most activated positions of each sample.

    The channel mean ``a`` (B, 1, H, W) is the attention map; positions with
    ``a >= gamma * max(a)``, ``gamma ~ U(0.7, 0.9)`` drawn per sample, are zeroed in
    every channel.

    Args:
        x: (B, K, H, W) float features.
    Returns:
        Tensor like ``x``.
    """
    attention = x.mean(dim=1, keepdim=True)
    peak = attention.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    gamma = torch.empty_like(peak).uniform_(0.7, 0.9)
    return x * (attention < gamma * peak).to(x.dtype)


def feature_noise(x: Tensor, noise_range: float) -> Tensor:
    """F-Noise: ``x + x * N``, ``N ~ U(-noise_range, noise_range)`` element-wise (scaled by the activation)."""
    return x + x * torch.empty_like(x).uniform_(-noise_range, noise_range)


def perturb(kind: str, x: Tensor, *, drop_rate: float, noise_range: float) -> Tensor:
    """One perturbation of ``PERTURBATIONS`` applied to features ``x`` (B, K, H, W); always random (training)."""
    if kind == "dropout":
        # Spatial dropout: whole channels, as CCT's DropOut decoder (nn.Dropout2d).
        return F.dropout2d(x, p=drop_rate, training=True)
    if kind == "feature_drop":
        return feature_drop(x)
    if kind == "feature_noise":
        return feature_noise(x, noise_range)
    raise ValueError(f"perturbation must be one of {list(PERTURBATIONS)}, got {kind!r}")


class CctNet(nn.Module):
    """A U-Net plus auxiliary decoders fed perturbed copies of its encoder features.

    ``net(x)`` is the U-Net's own output, (B, C, H, W) logits; ``net(x, aux_rows=mask)``
    returns ``(main, [aux_k])``, the auxiliary logits (R, C, H, W) of the R rows where the
    (B,) bool ``mask`` is true. Auxiliary decoder k has the main decoder's architecture
    and its own weights, and reads every encoder level (the skips as well as the
    bottleneck: a U-Net decoder's input z is all of them) through a fresh draw of
    perturbation ``perturbations[k]``. A keyword of forward, not a second method,
    because a DDP wrapper only synchronises passes through its own ``__call__``.
    """

    def __init__(self, unet: UNet2D | MultiModalUNet2D, perturbations: Sequence[str], *, drop_rate: float,
                 noise_range: float) -> None:
        super().__init__()
        bad = [p for p in perturbations if p not in PERTURBATIONS]
        if not perturbations or bad:
            raise ValueError(f"perturbations must be a non-empty list of {list(PERTURBATIONS)}, "
                             f"got {list(perturbations)}")
        self.unet = unet
        self.perturbations = tuple(perturbations)
        self.drop_rate = drop_rate
        self.noise_range = noise_range
        main = unet.decoder
        self.aux_decoders = nn.ModuleList(UNetDecoder(main.skip_channels, main.widths, main.num_classes,
                                                      light_decoder=main.light_decoder)
                                          for _ in self.perturbations)

    def forward(self, x: Tensor, aux_rows: Tensor | None = None) -> Tensor | tuple[Tensor, list[Tensor]]:
        features = self.unet.encode(x)
        main = self.unet.decoder(features)
        if aux_rows is None:
            return main
        rows = [f[aux_rows] for f in features]
        aux = [decoder([perturb(kind, f, drop_rate=self.drop_rate, noise_range=self.noise_range) for f in rows])
               for kind, decoder in zip(self.perturbations, self.aux_decoders)]
        return main, aux


class Cct(Method):
    """Shared encoder, main decoder on labels, perturbed auxiliary decoders consistent with it.

    With ``main`` the main decoder's logits and ``aux_k`` those of the K auxiliary decoders::

        loss = mean_labelled L_seg(main)
             + w(epoch) * (1/K) sum_k mean_{unlabelled rows, classes, pixels} (softmax(aux_k) - softmax(main))^2
        w(epoch) = cct.consistency_weight * sigmoid_rampup(epoch, cct.ramp_epochs)

    ``softmax(main)`` is a constant (detached): the unlabelled rows train the encoder and
    the auxiliary decoders, never the main decoder, as the paper. K = one decoder per
    entry of ``cct.perturbations``: ``dropout`` (spatial dropout, ``cct.drop_rate``),
    ``feature_drop`` (F-Drop) and ``feature_noise`` (F-Noise, ``cct.noise_range``), the
    paper's random and feature-based perturbations (its prediction-based ones, VAT and
    the object/context masks, need more machinery and are not implemented). Inference
    uses the main decoder only.

    PyMIC: ``SSLCCT`` (``pymic/net_run/semi_sup/ssl_cct.py``, network ``UNet2D_CCT`` in
    ``pymic/net/net2d/unet2d_cct.py``). Where it and the paper differ we follow the paper:
    PyMIC perturbs only the bottleneck, and does so in place in the feature list the
    decoders share, so each auxiliary decoder also sees the perturbations of the ones
    before it; its ``DropOut`` decoder applies no perturbation at all (``pass``); it runs
    the auxiliary decoders on labelled rows too (then discarded); its weight
    ``regularize_w`` defaults to 0.1 (the paper's w_u is 30). Its MSE, like ours, is a
    mean over classes and pixels; F-Drop and F-Noise draw one gamma / one noise tensor
    per batch, we per sample.

    Reference: Y. Ouali, C. Hudelot, M. Tami, "Semi-supervised semantic segmentation
    with cross-consistency training", CVPR 2020.
    """

    Options: ClassVar[type] = CctOptions

    name: ClassVar[str] = "cct"
    net_names: ClassVar[tuple[str, ...]] = ("net",)
    trained_nets: ClassVar[tuple[str, ...]] = ("net",)
    eval_nets: ClassVar[tuple[str, ...]] = ("net",)
    label_slots: ClassVar[int] = 1
    uses_unlabelled: ClassVar[bool] = True
    needs_unet: ClassVar[str] = "feeds the U-Net's encoder features to copies of its decoder"

    def build_nets(self) -> dict[str, nn.Module]:
        # No deep-supervision heads: nothing here reads them, and DDP rejects parameters without gradients.
        unet = build_model(dataclasses.replace(self.model, deep_supervision=False), self.in_channels)
        cfg = self.options
        return {"net": CctNet(unet, cfg.perturbation_list, drop_rate=cfg.drop_rate, noise_range=cfg.noise_range)}

    def consistency_weight(self, epoch: int) -> float:
        return self.options.consistency_weight * sigmoid_rampup(epoch, self.options.ramp_epochs)

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        labelled = batch.labelled
        unlabelled = ~labelled
        has_unlabelled = bool(unlabelled.any())
        # Without unlabelled rows the auxiliary decoders still run (on every row, then
        # multiplied by 0) so that each of their parameters gets a gradient, as DDP needs.
        rows = unlabelled if has_unlabelled else torch.ones_like(unlabelled)
        main, aux = nets["net"](batch.image, aux_rows=rows)
        sup = main.sum() * 0.0
        if bool(labelled.any()):
            sup = segmentation_loss_per_sample(main[labelled], batch.labels[labelled, 0]).mean()
        target = torch.softmax(main[rows], dim=1).detach()
        cons = torch.stack([((torch.softmax(a, dim=1) - target) ** 2).mean() for a in aux]).mean()
        if not has_unlabelled:
            cons = cons * 0.0
        weight = self.consistency_weight(epoch)
        metrics = {"loss_sup": float(sup.detach()), "loss_cons": float(cons.detach()), "cons_weight": weight,
                   "unlabelled_rows": float(unlabelled.sum())}
        return StepOutput(sup + weight * cons, metrics)
