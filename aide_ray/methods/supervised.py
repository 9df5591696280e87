"""Plain supervised training on the given labels: the baseline and the template for new methods.

A method is a :class:`~aide_ray.methods.base.Method` subclass that sets its
class attributes and implements ``train_step``; everything else (data,
optimisers, DDP, checkpoints) belongs to the engines.
"""

from __future__ import annotations

from torch import nn

from aide_ray.methods.base import Batch, Method, StepOutput
from aide_ray.nn.losses import segmentation_loss_per_sample

__all__ = ["Supervised"]


class Supervised(Method):
    """One U-Net trained with L_seg (soft Dice + cross-entropy) on the labelled rows, labels as given."""

    name = "supervised"
    net_names = ("net",)
    trained_nets = ("net",)
    eval_nets = ("net",)
    label_slots = 1

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        seg = segmentation_loss_per_sample(nets["net"](batch.image), batch.labels[:, 0])
        # A mask rather than indexing keeps every row in the graph, so a batch
        # without labelled rows still yields a differentiable zero (DDP-safe).
        mask = batch.labelled.to(seg.dtype)
        loss = (seg * mask).sum() / mask.sum().clamp_min(1.0)
        return StepOutput(loss=loss, metrics={"loss_net": float(loss.detach())})
