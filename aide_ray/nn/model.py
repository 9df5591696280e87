"""The one function that builds a network from the model section.

Every method builds its nets through :func:`build_model`, so a new backbone
is a branch here and works with every method that needs only (B, M, H, W) ->
(B, C, H, W) logits; the built-in U-Nets or a MONAI network
(:mod:`aide_ray.nn.backbones`), as ``model.name`` says.
"""

from __future__ import annotations

from torch import nn

from aide_ray.nn.backbones import build_monai, monai_net_name
from aide_ray.nn.model_config import ModelConfig
from aide_ray.nn.unet import MultiModalUNet2D, UNet2D

__all__ = ["build_model"]


def build_model(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """A fresh network mapping (B, in_channels, H, W) to logits (B, num_classes, H, W).

    ``model.name="unet"``: :class:`UNet2D` for one modality, else :class:`MultiModalUNet2D`
    (one encoder per modality); with ``cfg.deep_supervision`` the decoder has auxiliary
    heads (``net(x, pyramid=True)``), with ``cfg.light_decoder`` PyMIC's lighter up-stages.
    ``model.name="monai.<Net>"``: that MONAI network in 2D with ``cfg.monai_args`` (MONAI is
    imported only then).

    Raises:
        ValueError: ``in_channels`` < 1.
        ConfigError: a MONAI backbone without MONAI installed, or arguments it refuses.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    net = monai_net_name(cfg.name)
    if net is not None:
        return build_monai(net, cfg.monai_args, in_channels, cfg.num_classes)
    options = {"deep_supervision": cfg.deep_supervision, "light_decoder": cfg.light_decoder}
    if in_channels == 1:
        return UNet2D(1, cfg.num_classes, cfg.base_width, **options)
    return MultiModalUNet2D(in_channels, cfg.num_classes, cfg.base_width, **options)
