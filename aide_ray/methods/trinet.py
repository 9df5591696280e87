"""Tri-network: three U-Nets, each trained on the data its two peers agree on and find easy.

Co-teaching with a third net: for net i, each of its peers j and k keeps
its own small-loss share of the batch (co-teaching's ramped forget rate),
and net i trains only where both keep the pixel (or sample) *and* their
predictions agree. The selection is a pure function here so that tests can
check it on hand-made losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from aide_ray.methods.aide import small_loss_selection
from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.methods.coteaching import forget_rate
from aide_ray.nn.losses import segmentation_loss_per_sample
from aide_ray.options import Section

__all__ = ["NET_NAMES", "TriNet", "TriNetOptions", "trinet_masks"]

NET_NAMES: tuple[str, str, str] = ("net1", "net2", "net3")
_LEVELS = ("pixel", "sample")


@dataclass(frozen=True)
class TriNetOptions(Section):
    _prefix: ClassVar[str] = "trinet"
    level: str = "pixel"  # select pixels (per-pixel CE, the paper and PyMIC) or samples (L_seg)
    forget_rate: float = 0.2  # final share each peer drops as large-loss
    ramp_epochs: int = 10  # the forget rate grows linearly to its final value over these epochs

    def __post_init__(self) -> None:
        self._one_of("level", _LEVELS)
        self._in_range("forget_rate", 0.0, 1.0, hi_open=True)
        self._in_range("ramp_epochs", 0, None)


def _peers(i: int) -> tuple[int, int]:
    return tuple(j for j in range(3) if j != i)  # type: ignore[return-value]


def trinet_masks(losses: tuple[Tensor, Tensor, Tensor], peers_agree: tuple[Tensor, Tensor, Tensor],
                 candidates: Tensor, keep_fraction: float) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Tri-network's selection for one batch (pure function).

    Each net keeps the ``keep_fraction`` of the candidates with its smallest
    loss (:func:`small_loss_selection`); net i trains on
    ``kept_j & kept_k & peers_agree[i]`` for its peers j, k.

    Args:
        losses: three (N,) per-pixel or per-sample losses, net1..net3 (detached here).
        peers_agree: three (N,) bool; entry i: net i's two peers agree there.
        candidates: (N,) bool, entries that may be selected (labelled rows or their pixels).
        keep_fraction: in (0, 1], ``1 - forget_rate``.
    Returns:
        ``(masks, kept)``: masks[i] (N,) bool, where net i is trained; kept[i]
        (N,) bool, net i's own small-loss selection.
    """
    kept = tuple(small_loss_selection(loss.detach(), keep_fraction, candidates) for loss in losses)
    masks = []
    for i in range(3):
        j, k = _peers(i)
        masks.append(kept[j] & kept[k] & peers_agree[i] & candidates)
    return tuple(masks), kept


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    # An empty mask gives a differentiable 0 (every net stays in the graph).
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


class TriNet(Method):
    """Tri-network: each of three nets learns where its two peers agree and both find the loss small.

    Reference: T. Zhang, L. Yu, N. Hu, S. Lv, S. Gu, "Robust medical image
    segmentation from non-expert annotations with tri-network", MICCAI 2020:
    three nets trained jointly, where "each pair of networks alternatively
    select informative samples for the third network learning, according to
    the consensus and difference between their predictions" (abstract). We
    implement the consensus (the peers' predictions agree) on top of
    co-teaching's small-loss selection by both peers.

    At 0-based ``epoch``, with ``keep = 1 - forget_rate(epoch)``
    (:func:`aide_ray.methods.coteaching.forget_rate`, linear to
    ``trinet.forget_rate`` over ``trinet.ramp_epochs``) and per-entry losses l_i:

        S_i  = the keep-share of the candidates with the smallest l_i  (each net ranks by its own loss)
        M_i  = S_j & S_k & agree(j, k)                                  (j, k: the peers of i)
        loss = sum_i mean_{M_i} l_i

    * ``trinet.level=pixel`` (default): l = per-pixel CE; every pixel of the
      batch's labelled rows is ranked together (as co-teaching's pixel level);
      ``agree(j, k)``: the peers' argmax labels are equal at the pixel.
    * ``trinet.level=sample``: l = L_seg per labelled row ranks the rows
      (``M_i = S_j & S_k``), and net i's loss on a selected row is L_seg over
      the row's pixels where the peers' argmax agree
      (``segmentation_loss_per_sample(..., pixel_mask=agree(j, k))``). A
      whole-sample agreement test (say, a Dice threshold between the peers'
      masks) would fail for every sample of freshly initialised nets, and
      nothing would ever train.

    All three nets form the eval ensemble. PyMIC: ``NLLTriNet``,
    ``pymic/net_run/noisy_label/nll_trinet.py``, selects pixels only, with
    clamped CE, ``mask = loss < quantile(loss, keep)`` over the batch's pixels
    (a strict quantile test, where we keep ``max(1, round(keep * n))`` by
    rank), its keep share ramped linearly over iterations, and averages the
    three losses (``/ 3``; we sum, one loss per net, as every method here). It
    intersects the peers' small-loss masks but does *not* require the peers'
    predictions to agree; we follow the paper's consensus and do.
    """

    Options: ClassVar[type] = TriNetOptions

    name: ClassVar[str] = "trinet"
    full_masks_only: ClassVar[bool] = True  # its loss has no way to skip unannotated pixels
    net_names: ClassVar[tuple[str, ...]] = NET_NAMES
    trained_nets: ClassVar[tuple[str, ...]] = NET_NAMES
    eval_nets: ClassVar[tuple[str, ...]] = NET_NAMES
    label_slots: ClassVar[int] = 1

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        cfg = self.options
        rate = forget_rate(epoch, cfg.forget_rate, cfg.ramp_epochs)
        logits = [nets[name](batch.image) for name in NET_NAMES]
        target = batch.labels[:, 0]
        labelled = batch.labelled.bool()
        preds = [lo.detach().argmax(dim=1) for lo in logits]
        agree = [preds[j] == preds[k] for j, k in map(_peers, range(3))]  # (B, H, W) per net
        if cfg.level == "pixel":
            losses = tuple(F.cross_entropy(lo, target, reduction="none").flatten() for lo in logits)
            candidates = labelled.view(-1, 1, 1).expand_as(target).flatten()
            masks, _ = trinet_masks(losses, tuple(a.flatten() for a in agree), candidates,  # type: ignore[arg-type]
                                    1.0 - rate)
            per_net = [_masked_mean(loss, mask) for loss, mask in zip(losses, masks)]
        else:
            losses = tuple(segmentation_loss_per_sample(lo, target) for lo in logits)
            candidates = labelled
            masks, _ = trinet_masks(losses, (candidates,) * 3, candidates, 1.0 - rate)  # type: ignore[arg-type]
            per_net = [_masked_mean(segmentation_loss_per_sample(lo, target, pixel_mask=a), mask)
                       for lo, a, mask in zip(logits, agree, masks)]
        n = candidates.sum().clamp_min(1)
        metrics: dict[str, float] = {"forget_rate": rate}
        for name, loss, mask in zip(NET_NAMES, per_net, masks):
            metrics[f"loss_{name}"] = float(loss.detach())
            metrics[f"kept_{name}"] = float(mask.sum() / n)  # not selected_<net>: a correction column
        return StepOutput(per_net[0] + per_net[1] + per_net[2], metrics)
