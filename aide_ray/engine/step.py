"""Optimisers and one optimisation step: how the loop turns a method's loss into updated weights."""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import nn
from torch.optim import Adam, Optimizer
from torch.optim.lr_scheduler import LRScheduler, StepLR

from aide_ray.config import OptimConfig
from aide_ray.methods.base import Batch, Method

__all__ = ["make_optimizers", "train_one_step"]


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
                   epoch: int) -> dict[str, float]:
    """One optimisation step: zero grads, ``method.train_step``, one backward, step every optimiser.

    The trained nets are put in train mode first (evaluation may have left them
    in eval mode); other nets (a mean teacher) keep their mode. Then
    ``method.after_optimizer_step`` runs (e.g. the EMA update).

    Returns:
        The step's metrics plus ``"loss"`` (the summed loss), as floats.
    """
    for name in method.trained_nets:
        nets[name].train()
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    out = method.train_step(nets, batch, epoch)
    out.loss.backward()
    for opt in optimizers.values():
        opt.step()
    method.after_optimizer_step(nets, epoch)
    metrics = dict(out.metrics)
    metrics["loss"] = float(out.loss.detach())
    return metrics

