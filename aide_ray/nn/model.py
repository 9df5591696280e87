"""The one function that builds a network from the model section.

Every method builds its nets through :func:`build_model`, so a new backbone
is a branch here and works with every method.
"""

from __future__ import annotations

from torch import nn

from aide_ray.nn.model_config import ModelConfig
from aide_ray.nn.unet import MultiModalUNet2D, UNet2D

__all__ = ["build_model"]


def build_model(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """A fresh network mapping (B, in_channels, H, W) to logits (B, num_classes, H, W).

    :class:`UNet2D` for one modality, else :class:`MultiModalUNet2D` (one encoder per modality);
    with ``cfg.deep_supervision`` the decoder has auxiliary heads (``net(x, pyramid=True)``).
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if in_channels == 1:
        return UNet2D(1, cfg.num_classes, cfg.base_width, deep_supervision=cfg.deep_supervision)
    return MultiModalUNet2D(in_channels, cfg.num_classes, cfg.base_width, deep_supervision=cfg.deep_supervision)
