"""Cross pseudo supervision (Chen et al., CVPR 2021) for labelled + unlabelled rows.

Two U-Nets with different initialisations; each is trained with L_seg on the
labelled rows and with cross-entropy against its twin's hard pseudo-label
(argmax, no gradient) on every row, labelled or not, as in the paper's
``L_cps = L_cps^l + L_cps^u``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.methods.meanteacher import sigmoid_rampup
from aide_ray.nn.losses import segmentation_loss_per_sample
from aide_ray.options import Section

__all__ = ["CpsOptions", "Cps", "cross_pseudo_loss_per_sample"]


@dataclass(frozen=True)
class CpsOptions(Section):
    _prefix: ClassVar[str] = "cps"
    consistency_weight: float = 1.0
    ramp_epochs: int = 20

    def __post_init__(self) -> None:
        self._in_range("consistency_weight", 0.0, None)
        self._in_range("ramp_epochs", 0, None)


def cross_pseudo_loss_per_sample(logits: Tensor, peer_logits: Tensor) -> Tensor:
    """Pixel-mean cross-entropy of ``logits`` against ``argmax(peer_logits)``.

    The pseudo-label is a hard, detached class map: no gradient reaches the peer.

    Args:
        logits: (B, C, H, W) float logits of the net being trained.
        peer_logits: (B, C, H, W) float logits of its twin.
    Returns:
        (B,) float.
    """
    if logits.shape != peer_logits.shape:
        raise ValueError(f"logits and peer_logits must have the same shape, got {tuple(logits.shape)} "
                         f"and {tuple(peer_logits.shape)}")
    pseudo = peer_logits.detach().argmax(dim=1)
    return F.cross_entropy(logits, pseudo, reduction="none").flatten(1).mean(dim=1)


class Cps(Method):
    """Twin nets, each supervised by the labels and by the other's pseudo-labels.

    For net a with twin b::

        loss_a = mean_labelled L_seg(a) + w(epoch) * (mean_labelled CE(a, argmax b)
                                                      + mean_unlabelled CE(a, argmax b))

    with ``w(epoch) = cps.consistency_weight * sigmoid_rampup(epoch, cps.ramp_epochs)``;
    a term over an empty set of rows is 0. The step's loss is ``loss_net1 + loss_net2``.
    PyMIC's ``SSLCPS`` (``pymic/net_run/semi_sup/ssl_cps.py``) applies the
    pseudo-label term to unlabelled rows only and uses its configured
    segmentation loss against one-hot pseudo-labels; the paper (and this
    class) uses CE on both sets.

    Reference: X. Chen, Y. Yuan, G. Zeng, J. Wang, "Semi-supervised semantic
    segmentation with cross pseudo supervision", CVPR 2021.
    """

    Options: ClassVar[type] = CpsOptions

    name: ClassVar[str] = "cps"
    net_names: ClassVar[tuple[str, ...]] = ("net1", "net2")
    trained_nets: ClassVar[tuple[str, ...]] = ("net1", "net2")
    eval_nets: ClassVar[tuple[str, ...]] = ("net1", "net2")
    label_slots: ClassVar[int] = 1
    uses_unlabelled: ClassVar[bool] = True

    def pseudo_weight(self, epoch: int) -> float:
        return self.options.consistency_weight * sigmoid_rampup(epoch, self.options.ramp_epochs)

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        logits = {name: nets[name](batch.image) for name in self.net_names}
        labelled = batch.labelled
        unlabelled = ~labelled
        weight = self.pseudo_weight(epoch)
        total = sum(out.sum() for out in logits.values()) * 0.0  # keeps every parameter in the graph
        metrics: dict[str, float] = {"pseudo_weight": weight}
        for name, peer in (("net1", "net2"), ("net2", "net1")):
            own = logits[name]
            cross = cross_pseudo_loss_per_sample(own, logits[peer])  # (B,)
            sup = own.sum() * 0.0
            pseudo = own.sum() * 0.0
            if bool(labelled.any()):
                sup = segmentation_loss_per_sample(own[labelled], batch.labels[labelled, 0]).mean()
                pseudo = pseudo + cross[labelled].mean()
            if bool(unlabelled.any()):
                pseudo = pseudo + cross[unlabelled].mean()
            total = total + sup + weight * pseudo
            metrics[f"loss_sup_{name}"] = float(sup.detach())
            metrics[f"loss_pseudo_{name}"] = float(pseudo.detach())
        return StepOutput(total, metrics)
