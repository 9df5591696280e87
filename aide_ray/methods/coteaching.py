"""Co-teaching (Han et al., NeurIPS 2018): twin nets that train on each other's small-loss data.

Each net ranks the batch by its own loss; its twin is then trained on the
share ``1 - forget_rate(epoch)`` that the net finds easiest. The forget rate
grows linearly from 0 to ``coteaching.forget_rate`` over
``coteaching.ramp_epochs`` epochs, so early epochs (when networks fit the
clean labels first) use every sample.

Two granularities:

* samples (default): AIDE's segmentation loss L_seg (soft Dice + CE) per
  sample ranks the labelled rows of the batch; each net is trained on the
  mean L_seg of the rows its twin keeps. Only the selection differs from
  AIDE's small-loss step, which makes the two directly comparable.
* pixels (``coteaching.pixel_level``): per-pixel cross-entropy ranks every
  pixel of the labelled rows of the batch together, and each net is trained
  on the mean CE of the pixels its twin keeps, as PyMIC's ``NLLCoTeaching``
  (``pymic/net_run/noisy_label/nll_co_teaching.py``), which supports only CE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from aide_ray.methods.aide import small_loss_selection
from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.nn.losses import segmentation_loss_per_sample
from aide_ray.options import Section

__all__ = ["CoTeachingOptions", "CoTeaching", "forget_rate", "coteaching_losses"]


@dataclass(frozen=True)
class CoTeachingOptions(Section):
    _prefix: ClassVar[str] = "coteaching"
    forget_rate: float = 0.2  # final share of each batch dropped as large-loss
    ramp_epochs: int = 10  # forget rate grows linearly to its final value over these epochs
    pixel_level: bool = False  # select small-loss pixels instead of samples (PyMIC's NLLCoTeaching)

    def __post_init__(self) -> None:
        self._in_range("forget_rate", 0.0, 1.0, hi_open=True)
        self._in_range("ramp_epochs", 0, None)


def forget_rate(epoch: int, final_rate: float, ramp_epochs: int) -> float:
    """Share of each batch dropped as large-loss at 0-based ``epoch``.

    ``final_rate * min(epoch / ramp_epochs, 1)``: 0 at epoch 0, the final rate
    from epoch ``ramp_epochs`` on; ``ramp_epochs = 0`` drops the final rate
    from the start. (Han et al.'s code reaches the final rate one epoch
    earlier, at ``ramp_epochs - 1``, via ``linspace(0, rate, ramp_epochs)``.)
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if ramp_epochs <= 0:
        return final_rate
    return final_rate * min(epoch / ramp_epochs, 1.0)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    # An empty mask gives a differentiable 0, never 0/0.
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def coteaching_losses(loss1: Tensor, loss2: Tensor, candidates: Tensor,
                      keep_fraction: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Co-teaching's exchange for one batch (pure function).

    Each net ranks the candidates by its own loss and keeps the
    ``keep_fraction`` smallest (AIDE's :func:`small_loss_selection`: rounded
    count, at least one, ties by index); the *other* net is trained on the
    mean of its loss over those.

    Args:
        loss1: (N,) per-sample or per-pixel loss of net1 (with gradient).
        loss2: (N,) same for net2.
        candidates: (N,) bool, entries that may be selected (labelled rows or their pixels).
        keep_fraction: in (0, 1], ``1 - forget_rate``.
    Returns:
        ``(loss_net1, loss_net2, kept_by_net1, kept_by_net2)``: the two scalar
        losses and the (N,) bool selections; net1 trains on ``kept_by_net2``.
    """
    kept_by_1 = small_loss_selection(loss1.detach(), keep_fraction, candidates)
    kept_by_2 = small_loss_selection(loss2.detach(), keep_fraction, candidates)
    return _masked_mean(loss1, kept_by_2), _masked_mean(loss2, kept_by_1), kept_by_1, kept_by_2


class CoTeaching(Method):
    """Co-teaching with two U-Nets, sample- or pixel-level small-loss exchange.

    Reference: B. Han et al., "Co-teaching: Robust training of deep neural
    networks with extremely noisy labels", NeurIPS 2018.
    """

    Options: ClassVar[type] = CoTeachingOptions

    name: ClassVar[str] = "coteaching"

    @classmethod
    def requires_full_masks(cls, options: "CoTeachingOptions") -> bool:
        # The image-level variant ranks rows by L_seg, which skips unannotated pixels; the pixel-level
        # one ranks pixels and has no rule for an unannotated one.
        return options.pixel_level
    net_names: ClassVar[tuple[str, ...]] = ("net1", "net2")
    trained_nets: ClassVar[tuple[str, ...]] = ("net1", "net2")
    eval_nets: ClassVar[tuple[str, ...]] = ("net1", "net2")
    label_slots: ClassVar[int] = 1

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        cfg = self.options
        rate = forget_rate(epoch, cfg.forget_rate, cfg.ramp_epochs)
        logits1 = nets["net1"](batch.image)
        logits2 = nets["net2"](batch.image)
        target = batch.labels[:, 0]
        labelled = batch.labelled.bool()
        if cfg.pixel_level:
            loss1 = F.cross_entropy(logits1, target, reduction="none").flatten()
            loss2 = F.cross_entropy(logits2, target, reduction="none").flatten()
            candidates = labelled.view(-1, 1, 1).expand_as(target).flatten()
        else:
            loss1 = segmentation_loss_per_sample(logits1, target)
            loss2 = segmentation_loss_per_sample(logits2, target)
            candidates = labelled
        selected1, selected2, kept_by_1, kept_by_2 = coteaching_losses(loss1, loss2, candidates, 1.0 - rate)
        n = candidates.sum().clamp_min(1)
        metrics = {
            "loss_net1": float(selected1.detach()),
            "loss_net2": float(selected2.detach()),
            "loss_all_net1": float(_masked_mean(loss1.detach(), candidates)),
            "loss_all_net2": float(_masked_mean(loss2.detach(), candidates)),
            "forget_rate": rate,
            # kept_<net>, not selected_<net>: that name is the label-correction column of the
            # epoch's metrics row (docs/label_store.md), which would overwrite this step average.
            "kept_net1": float(kept_by_2.sum() / n),
            "kept_net2": float(kept_by_1.sum() / n),
        }
        return StepOutput(selected1 + selected2, metrics)
