"""Helpers on whole networks: see through a DDP wrapper, run nets for inference.

Kept in ``nn`` (the lowest floor of the algorithm) because methods, the
engine and inference all need them and none of them should import another
for it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["unwrap", "ensemble_probs", "hard_prediction"]


def unwrap(net: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or ``net`` itself)."""
    return getattr(net, "module", net)


def ensemble_probs(nets: Mapping[str, nn.Module], eval_names: Sequence[str], image: Tensor) -> Tensor:
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


def hard_prediction(net: nn.Module, image: Tensor) -> Tensor:
    """Argmax prediction of ``net`` in eval mode without gradients (the previous mode is restored).

    Args:
        net: maps (B, M, H, W) to logits (B, C, H, W); a DDP wrapper is bypassed.
        image: (B, M, H, W) float.

    Returns:
        (B, H, W) uint8 class map on ``image``'s device.
    """
    return ensemble_probs({"net": net}, ("net",), image).argmax(dim=1).to(torch.uint8)
