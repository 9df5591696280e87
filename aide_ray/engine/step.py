"""Optimisers and one optimisation step: how the loop turns a method's loss into updated weights.

The step's arithmetic follows the top-level ``precision`` and ``channels_last``
keys: ``bf16`` runs the method's forward passes and losses under
``torch.autocast`` with bfloat16 on the batch's device (convolutions in bf16,
softmax, losses and reductions kept in fp32 by autocast's own op lists; the
backward pass and the optimiser steps outside it, on the fp32 weights; bf16
keeps fp32's exponent range, so no loss scaling). ``channels_last`` keeps the
nets (:func:`to_channels_last`, applied by the loop) and each training batch's
images in NHWC memory format, the layout CUDA's tensor-core convolutions use.
Both are meant for CUDA; on the CPU they work too (torch's CPU autocast), mostly
slower there than fp32 without AVX-512 BF16 / AMX hardware. Scoring, validation
and inference stay in fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import ContextManager, Mapping, Sequence

import torch
from torch import nn
from torch.optim import Adam, Optimizer
from torch.optim.lr_scheduler import LRScheduler, StepLR

from aide_ray.config import PRECISIONS, OptimConfig
from aide_ray.exceptions import ConfigError
from aide_ray.methods.base import Batch, Method

__all__ = ["make_optimizers", "train_one_step", "autocast", "check_precision", "to_channels_last"]


def autocast(precision: str, device: torch.device) -> ContextManager:
    """The context the step's forward passes and losses run in: bf16 autocast on ``device``, or none (fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def check_precision(precision: str, device: torch.device) -> None:
    """Fail when ``device`` cannot run ``precision`` (bf16 on a GPU older than Ampere).

    Raises:
        ConfigError: naming the key.
    """
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision is 'bf16' but {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                          f"use precision=fp32")


def to_channels_last(net: nn.Module) -> nn.Module:
    """``net`` with its 4D weights in channels-last memory format (in place; moves to a device keep it)."""
    return net.to(memory_format=torch.channels_last)


def make_optimizers(cfg: OptimConfig, nets: Mapping[str, nn.Module], trained_nets: Sequence[str], *,
                    lr: float | None = None) -> tuple[dict[str, Optimizer], dict[str, LRScheduler]]:
    """Adam (amsgrad as configured) and a StepLR schedule for each trained net.

    Schedulers step once per epoch (``step_epochs``, ``gamma``), as the reference code.

    Args:
        lr: the learning rate; None: ``cfg.lr`` (a method phase may set its own).

    Raises:
        KeyError: if a trained net is missing from ``nets``.
    """
    optimizers: dict[str, Optimizer] = {}
    schedulers: dict[str, LRScheduler] = {}
    for name in trained_nets:
        if name not in nets:
            raise KeyError(f"trained net {name!r} is not among the nets {sorted(nets)}")
        opt = Adam(nets[name].parameters(), lr=cfg.lr if lr is None else lr, weight_decay=cfg.weight_decay,
                   amsgrad=cfg.amsgrad)
        optimizers[name] = opt
        schedulers[name] = StepLR(opt, step_size=cfg.step_epochs, gamma=cfg.gamma)
    return optimizers, schedulers


def train_one_step(method: Method, nets: Mapping[str, nn.Module], optimizers: Mapping[str, Optimizer], batch: Batch,
                   epoch: int, *, precision: str = "fp32", channels_last: bool = False) -> dict[str, float]:
    """One optimisation step: zero grads, ``method.train_step``, one backward, step every optimiser.

    The trained nets are put in train mode first (evaluation may have left them
    in eval mode); other nets (a mean teacher) keep their mode. Then
    ``method.after_optimizer_step`` runs (e.g. the EMA update).

    Args:
        precision: "fp32", or "bf16": ``method.train_step`` runs under :func:`autocast`.
        channels_last: the batch's images go to the method in channels-last memory format.

    Returns:
        The step's metrics plus ``"loss"`` (the summed loss), as floats.
    """
    for name in method.trained_nets:
        nets[name].train()
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    if channels_last:
        batch = dataclasses.replace(batch, image=batch.image.contiguous(memory_format=torch.channels_last))
    with autocast(precision, batch.image.device):
        out = method.train_step(nets, batch, epoch)
    out.loss.backward()
    for opt in optimizers.values():
        opt.step()
    method.after_optimizer_step(nets, epoch)
    metrics = dict(out.metrics)
    metrics["loss"] = float(out.loss.detach())
    return metrics

