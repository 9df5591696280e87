"""Engine-side helpers shared by the plain loop and the Ray Train loop.

Both engines build optimisers, run a training step, collect label-correction
candidates and compute ensemble probabilities the same way, through these
functions, so the Ray engine differs from the single-process loop only in data
loading, DDP and bookkeeping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Adam, Optimizer
from torch.optim.lr_scheduler import LRScheduler, StepLR

from aide_ray.methods.base import Batch, Method, unwrap
from aide_ray.methods.correction import dice_per_sample, hard_prediction

if TYPE_CHECKING:
    from aide_ray.config import Config

__all__ = ["make_optimizers", "train_one_step", "correction_candidates", "ensemble_probs"]


def make_optimizers(cfg: "Config", nets: dict[str, nn.Module],
                    trained_nets: Sequence[str]) -> tuple[dict[str, Optimizer], dict[str, LRScheduler]]:
    """Adam (amsgrad as configured) and a StepLR schedule for each trained net.

    Schedulers step once per epoch (``step_epochs``, ``gamma``), as the reference code.

    Raises:
        KeyError: if a trained net is missing from ``nets``.
    """
    optimizers: dict[str, Optimizer] = {}
    schedulers: dict[str, LRScheduler] = {}
    for name in trained_nets:
        if name not in nets:
            raise KeyError(f"trained net {name!r} is not among the nets {sorted(nets)}")
        opt = Adam(nets[name].parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                   amsgrad=cfg.optim.amsgrad)
        optimizers[name] = opt
        schedulers[name] = StepLR(opt, step_size=cfg.optim.step_epochs, gamma=cfg.optim.gamma)
    return optimizers, schedulers


def train_one_step(method: Method, nets: dict[str, nn.Module], optimizers: dict[str, Optimizer], batch: Batch,
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


def correction_candidates(method: Method, nets: dict[str, nn.Module], batch: Batch,
                          largest_component: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each label slot's candidate new labels for a batch, and how well they fit the current ones.

    Slot i belongs to ``method.net_names[i]``: that net's hard prediction
    (eval mode, no gradients) and its Dice against ``batch.labels[:, i]``.

    Returns:
        One ``(dice, pred)`` per slot: dice (B,) float64, pred (B, H, W) uint8, numpy on the CPU.
    """
    out = []
    for slot in range(method.label_slots):
        pred = hard_prediction(nets[method.net_names[slot]], batch.image, largest_component=largest_component)
        dice = dice_per_sample(pred, batch.labels[:, slot], method.cfg.model.num_classes)
        out.append((dice.double().cpu().numpy(), pred.cpu().numpy()))
    return out


def ensemble_probs(nets: dict[str, nn.Module], eval_names: Sequence[str], image: Tensor) -> Tensor:
    """Mean softmax of the ``eval_names`` nets in eval mode without gradients (modes are restored).

    Args:
        image: (B, M, H, W) float.

    Returns:
        (B, C, H, W) float probabilities.
    """
    if not eval_names:
        raise ValueError("eval_names must name at least one net")
    total = None
    for name in eval_names:
        module = unwrap(nets[name])
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                probs = torch.softmax(module(image), dim=1)
        finally:
            module.train(was_training)
        total = probs if total is None else total + probs
    return total / len(eval_names)
