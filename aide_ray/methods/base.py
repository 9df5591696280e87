"""The method plug-in contract: what a method decides, and nothing the engine carries out.

A method (AIDE, supervised, co-teaching, ...) owns its options (a frozen
dataclass, the config section named after it), says which networks it needs,
how one training step turns a batch into a loss, what happens after each
optimiser step, which training phase an epoch belongs to (its learning rate),
and, for a method that corrects labels, a :class:`CorrectionPlan` per epoch.
The engine owns everything else: data, devices, DDP, optimisers, schedules,
checkpoints, the label store, and carrying out the plan. Methods are plain
PyTorch and never import Ray or the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from aide_ray.methods.correction import CorrectionPlan
from aide_ray.nn.model import build_model
from aide_ray.nn.model_config import ModelConfig
from aide_ray.options import NoOptions

__all__ = ["Batch", "StepOutput", "Phase", "Method", "CorrectionPlan"]


@dataclass
class Batch:
    """One training batch, as the engine hands it to a method.

    Attributes:
        image: (B, M, H, W) float32, M modalities, normalised intensities.
        labels: (B, S, H, W) int64 class indices, the *current* label of each of
            the method's S label slots (slot i belongs to net i; AIDE has S = 2,
            every other method S = 1). Rows without a label hold zeros; a scribble
            row holds ``aide_ray.label_values.UNANNOTATED`` (255) where nobody drew.
        labelled: (B,) bool, the row has a label (``label_kind`` is hq, lq or scribble).
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
            e.g. ``loss_net1``, ``kept_net1``.
    """

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with its own optimiser: the engine starts fresh optimisers and
    learning-rate schedules (counted from ``start_epoch``) when a new phase begins.

    Attributes:
        index: 0 for the first phase, 1 for the next, ...
        start_epoch: the phase's first (0-based) epoch.
        lr_factor: the phase's learning rate is ``optim.lr * lr_factor``.
    """

    index: int = 0
    start_epoch: int = 0
    lr_factor: float = 1.0


class Method:
    """Base class of every method.

    Class attributes a subclass sets:
        name: the registry name (and the name of its config section).
        Options: its options dataclass (a frozen :class:`aide_ray.options.Section`
            with ``_prefix`` = name); :class:`NoOptions` for none.
        net_names: the networks :meth:`build_nets` returns, in label-slot order.
        trained_nets: the networks that get an optimiser (mean teacher: the student only).
        eval_nets: the networks whose softmax is averaged at inference.
        label_slots: how many per-net current labels the label store tracks.
        uses_unlabelled: whether batches should mix in rows without labels.
        needs_unet: why the method needs the built-in U-Net's internals (its encoder,
            decoder or pyramid), checked with the config; "" for a method that works with
            any backbone mapping (B, M, H, W) to logits (B, C, H, W) (``model.name``).
        reads_pyramid: whether its step trains the deep-supervision heads (``net(x, pyramid=True)``);
            ``model.deep_supervision=true`` is a config error for a method that does not (the
            untrained heads would fail DDP).
        full_masks_only: whether its loss needs a class at every pixel (cannot skip a scribble's
            ``UNANNOTATED`` pixels); training it on scribble rows is an input error.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    net_names: ClassVar[tuple[str, ...]] = ("net",)
    trained_nets: ClassVar[tuple[str, ...]] = ("net",)
    eval_nets: ClassVar[tuple[str, ...]] = ("net",)
    label_slots: ClassVar[int] = 1
    uses_unlabelled: ClassVar[bool] = False
    needs_unet: ClassVar[str] = ""
    reads_pyramid: ClassVar[bool] = False
    full_masks_only: ClassVar[bool] = False

    @classmethod
    def requires_full_masks(cls, options: Any) -> bool:
        """Whether this method, with these options, cannot train on scribble labels."""
        return cls.full_masks_only

    def __init__(self, options: Any, model: ModelConfig, in_channels: int) -> None:
        if not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} needs options of type {self.Options.__name__}, "
                            f"got {type(options).__name__}")
        self.options = options
        self.model = model
        self.in_channels = in_channels

    @classmethod
    def from_config(cls, cfg: Any, in_channels: int) -> "Method":
        """This method with its options and model section from a :class:`aide_ray.config.Config`."""
        return cls(cfg.options_of(cls.name), cfg.model, in_channels)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def build_nets(self) -> dict[str, nn.Module]:
        """Fresh networks, one per ``net_names``; each maps (B, M, H, W) to logits (B, C, H, W)."""
        return {name: build_model(self.model, self.in_channels) for name in self.net_names}

    def train_step(self, nets: dict[str, nn.Module], batch: Batch, epoch: int) -> StepOutput:
        """Loss of one batch at (0-based) ``epoch``; trained nets are in train mode on entry."""
        raise NotImplementedError

    def after_optimizer_step(self, nets: dict[str, nn.Module], epoch: int) -> None:
        """Called after every optimiser step (mean teacher's EMA update lives here)."""

    @classmethod
    def grace_epochs(cls, options: Any) -> int:
        """Epochs a run needs before its validation score says something about the method.

        Tune's early stopping never judges a trial before this (ASHA's grace period).
        """
        return 1

    def phase(self, epoch: int) -> Phase:
        """The training phase of ``epoch``; one phase for the whole run unless a method says otherwise."""
        return Phase()

    def correction_plan(self, epoch: int) -> CorrectionPlan | None:
        """The label correction the engine carries out after ``epoch``, or None (no correction)."""
        return None
