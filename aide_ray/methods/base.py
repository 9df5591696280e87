"""The method plug-in contract shared by the plain loop and the Ray engine.

A method (AIDE, supervised, co-teaching, ...) says which networks it needs,
how one training step turns a batch into a loss, and what happens after each
optimiser step. The engines own everything else: data, devices, DDP,
optimisers, schedules, checkpoints, label correction bookkeeping. Methods are
plain PyTorch and never import Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from aide_ray.config import Config

__all__ = ["Batch", "StepOutput", "Method", "unwrap"]


@dataclass
class Batch:
    """One training batch, as both engines hand it to a method.

    Attributes:
        image: (B, M, H, W) float32, M modalities, normalised intensities.
        labels: (B, S, H, W) int64 class indices, the *current* label of each of
            the method's S label slots (slot i belongs to net i; AIDE has S = 2,
            every other method S = 1). Rows without a label hold zeros.
        labelled: (B,) bool, the row has a label (``label_kind`` is hq or lq).
        hq: (B,) bool, the row's source label is high quality.
        sample_index: (B,) int64, the dataset-wide index of the row's sample.
    """

    image: Tensor
    labels: Tensor
    labelled: Tensor
    hq: Tensor
    sample_index: Tensor

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in
                       (self.image, self.labels, self.labelled, self.hq, self.sample_index)))

    def __len__(self) -> int:
        return int(self.image.shape[0])


@dataclass
class StepOutput:
    """Result of one training step.

    Attributes:
        loss: scalar tensor, the sum of every trained net's loss; the engine
            calls ``loss.backward()`` once and steps every optimiser.
        metrics: plain floats for logging (averaged over steps by the engine),
            e.g. ``loss_net1``, ``selected_net1``.
    """

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def unwrap(net: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or ``net`` itself)."""
    return getattr(net, "module", net)


class Method:
    """Base class of every method.

    Class attributes a subclass sets:
        name: the registry name.
        net_names: the networks :meth:`build_nets` returns, in label-slot order.
        trained_nets: the networks that get an optimiser (mean teacher: the student only).
        eval_nets: the networks whose softmax is averaged at inference.
        label_slots: how many per-net current labels the label store tracks.
        corrects_labels: whether the engine runs the epoch-end label correction
            (AIDE's global label correction) for this method.
        uses_unlabelled: whether batches should mix in rows without labels.
    """

    name: ClassVar[str] = ""
    net_names: ClassVar[tuple[str, ...]] = ("net",)
    trained_nets: ClassVar[tuple[str, ...]] = ("net",)
    eval_nets: ClassVar[tuple[str, ...]] = ("net",)
    label_slots: ClassVar[int] = 1
    corrects_labels: ClassVar[bool] = False
    uses_unlabelled: ClassVar[bool] = False

    def __init__(self, cfg: "Config", in_channels: int) -> None:
        self.cfg = cfg
        self.in_channels = in_channels

    def build_nets(self) -> dict[str, nn.Module]:
        """Fresh networks, one per ``net_names``; each maps (B, M, H, W) to logits (B, C, H, W)."""
        from aide_ray.nn.unet import build_unet

        return {name: build_unet(self.cfg.model, self.in_channels) for name in self.net_names}

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        """Loss of one batch at (0-based) ``epoch``; nets are in train mode on entry."""
        raise NotImplementedError

    def after_optimizer_step(self, nets: dict[str, nn.Module], epoch: int) -> None:
        """Called after every optimiser step (mean teacher's EMA update lives here)."""
