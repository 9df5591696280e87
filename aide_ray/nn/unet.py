"""2D U-Nets used by every method: single-modality and multi-modal (one encoder per modality).

The networks return **logits**, never probabilities: every loss applies
``log_softmax``/``softmax`` itself, so cross-entropy is computed with the
numerically stable log-sum-exp form (``F.cross_entropy``) instead of ``log``
of an already rounded softmax, and prediction code takes the softmax once
where it needs probabilities.

The layout follows the AIDE reference networks (lich0031/AIDE:
``models_singlemodalinput``, ``models_twomodalinputs``): five encoder blocks of
two (3x3 conv, batch norm, ReLU) with 2x2 max-pooling between them, a decoder
of four stages (bilinear x2 upsampling, a 3x3 conv, concatenation with the
encoder skip, a block) and a 1x1 conv to the classes. The multi-modal net
fuses the per-modality encoder features by concatenation at every level.
Both expose ``encode`` (the features the decoder reads) and, with
``deep_supervision``, a pyramid of auxiliary logits (``net(x, pyramid=True)``)
for the methods that need them (URPC); ``net(x)`` is the same either way.

With ``light_decoder`` each up-stage is PyMIC's (``pymic/net/net2d/unet2d.py``,
``UpBlock``): a 1x1 conv (with bias, no batch norm or ReLU) to the stage's width
(half the channels, with one modality) at the coarse resolution, then the
bilinear x2 upsampling (ours keeps ``align_corners=False``; PyMIC's is ``True``),
the concatenation and the block. Being linear, that 1x1 conv commutes with the upsampling, so it runs at a quarter
of the pixels, and it replaces the reference's 3x3 conv at the fine resolution:
about 0.71x the reference network's convolution FLOPs per training step with one
modality, 0.76x with two, whose encoders it leaves alone (``benchmarks/unet_flops.py``).
Its state dict differs from the reference's in the up-stages only (``proj`` for
``up_conv``); the default is the reference.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["UNet2D", "MultiModalUNet2D", "UNetDecoder", "ConvBNReLU", "ConvBlock", "DEPTH_FACTOR"]

# Four 2x2 poolings: input height and width must be multiples of 2**4.
DEPTH_FACTOR = 16
_WIDTH_MULTIPLIERS = (1, 2, 4, 8, 16)


class ConvBNReLU(nn.Module):
    """3x3 conv (no bias), batch norm, ReLU; (B, in_channels, H, W) -> (B, out_channels, H, W).

    In eval mode without autograd (prediction, AIDE's pseudo-label passes) the
    batch norm is an affine map and is folded into the convolution's weights
    and bias: the same function up to float rounding, with one pass over the
    activations instead of three and no batch-norm output to allocate.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.training or torch.is_grad_enabled() or self.bn.running_var is None:
            return F.relu(self.bn(self.conv(x)), inplace=True)
        scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)
        weight = self.conv.weight * scale.view(-1, 1, 1, 1)
        bias = self.bn.bias - self.bn.running_mean * scale
        return F.relu(F.conv2d(x, weight, bias, padding=1), inplace=True)


class ConvBlock(nn.Sequential):
    """Two (3x3 conv, batch norm, ReLU); (B, in_channels, H, W) -> (B, out_channels, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels))


class _Encoder(nn.Module):
    """Five blocks with max-pooling between them; returns the features of every level."""

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        chans = [in_channels, *widths]
        self.blocks = nn.ModuleList(ConvBlock(chans[i], chans[i + 1]) for i in range(len(widths)))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for i, block in enumerate(self.blocks):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            if i == 0 and x.device.type == "cpu":
                # oneDNN convolutions on NCHW reorder every activation to a
                # blocked layout and back; channels-last activations avoid that
                # (~20% faster training and ~35% faster large-batch inference on
                # CPU). Switching after the first block works for any input
                # channel count, where a 1-channel input has no distinct
                # channels-last layout. Parameters keep their default layout.
                x = x.contiguous(memory_format=torch.channels_last)
            features.append(x)
        return features


class _UpStage(nn.Module):
    """Bilinear x2 upsampling, a 3x3 conv, concatenation with the skip, a block (the reference's)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up_conv = ConvBNReLU(in_channels, out_channels)
        self.block = ConvBlock(out_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.block(torch.cat([self.up_conv(x), skip], dim=1))


class _LightUpStage(nn.Module):
    """PyMIC's ``UpBlock``: a 1x1 conv at the coarse resolution, bilinear x2 upsampling, concatenation, a block.

    The 1x1 conv (bias, no batch norm or ReLU, as PyMIC's) is linear, hence the same function
    before or after the (linear, weights summing to one) upsampling; before it, it costs a quarter.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)
        self.block = ConvBlock(out_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(self.proj(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.block(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """Four up-stages from the (fused) bottleneck to full resolution, then a 1x1 conv to the classes.

    With ``deep_supervision`` it also has a 1x1 head (``aux_heads``) on each of the three
    coarser stages, levels 3, 2 and 1 (1/8, 1/4 and 1/2 of the input size), whose logits
    ``forward(features, pyramid=True)`` returns upsampled to full size (URPC's pyramid);
    without it the module and its state dict are the plain decoder's. Public so that a
    method can build more decoders for the same encoder (CCT's auxiliary decoders).

    Args:
        skip_channels: channels of the encoder features at each of the five levels
            (summed over the streams of a multi-modal net).
        widths: decoder channels at each level.
        num_classes: C.
        deep_supervision: add the auxiliary heads.
        light_decoder: PyMIC's up-stages (a 1x1 conv before the upsampling, see the
            module docstring) instead of the reference's 3x3 conv after it.
    """

    def __init__(self, skip_channels: Sequence[int], widths: Sequence[int], num_classes: int,
                 deep_supervision: bool = False, light_decoder: bool = False) -> None:
        super().__init__()
        self.skip_channels = tuple(skip_channels)
        self.widths = tuple(widths)
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.light_decoder = light_decoder
        stage_class = _LightUpStage if light_decoder else _UpStage
        # Stage i goes from level i+1 to level i (deepest first at run time).
        stages = []
        for level in range(len(widths) - 2, -1, -1):
            in_ch = skip_channels[-1] if level == len(widths) - 2 else widths[level + 1]
            stages.append(stage_class(in_ch, skip_channels[level], widths[level]))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        if deep_supervision:
            # One head per stage output but the last (level 0 has ``head``), deepest first like the stages.
            self.aux_heads = nn.ModuleList(nn.Conv2d(widths[level], num_classes, 1)
                                           for level in range(len(widths) - 2, 0, -1))

    def forward(self, features: Sequence[Tensor], pyramid: bool = False) -> Tensor | list[Tensor]:
        """Logits (B, C, H, W) from the encoder features (finest first); with ``pyramid``, the list
        ``[level 0 (the same main logits), level 1, level 2, level 3]``, each (B, C, H, W), the
        coarser ones bilinearly upsampled.

        Raises:
            ValueError: ``pyramid`` on a decoder built without ``deep_supervision``.
        """
        if pyramid and not self.deep_supervision:
            raise ValueError("pyramid outputs need a network built with deep supervision "
                             "(model.deep_supervision=true), got one without")
        x = features[-1]
        coarse = []
        for i, (stage, skip) in enumerate(zip(self.stages, reversed(features[:-1]))):
            x = stage(x, skip)
            if pyramid and i < len(self.stages) - 1:
                coarse.append(x)
        # Contiguous NCHW logits, whatever layout the activations used.
        main = self.head(x).contiguous()
        if not pyramid:
            return main
        size = main.shape[-2:]
        aux = [F.interpolate(head(out), size=size, mode="bilinear", align_corners=False).contiguous()
               for head, out in zip(self.aux_heads, coarse)]
        return [main, *reversed(aux)]


def _check_input(x: Tensor, in_channels: int, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} input must have shape (B, {in_channels}, H, W), got {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(f"{name} input must have {in_channels} channel(s), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % DEPTH_FACTOR or w % DEPTH_FACTOR:
        raise ValueError(
            f"{name} input height and width must be divisible by {DEPTH_FACTOR} (four 2x2 poolings), "
            f"got H={h}, W={w}; pad or resize the images at ingest"
        )


def _widths(base_width: int) -> list[int]:
    if base_width < 1:
        raise ValueError(f"base_width must be >= 1, got {base_width}")
    return [base_width * m for m in _WIDTH_MULTIPLIERS]


class UNet2D(nn.Module):
    """U-Net for one input stream (one modality, possibly several channels).

    Args:
        in_channels: channels of the input image.
        num_classes: output classes C, including the background.
        base_width: channels of the first level; levels have base_width * (1, 2, 4, 8, 16).
        deep_supervision: auxiliary heads on the decoder's coarser stages, read with
            ``net(x, pyramid=True)`` (see :class:`UNetDecoder`); ``net(x)`` is unchanged.
        light_decoder: PyMIC's lighter up-stages (see the module docstring).

    Shapes:
        input (B, in_channels, H, W) float32 with H, W divisible by 16;
        output (B, C, H, W) float32 logits (no softmax, see the module docstring);
        with ``pyramid=True`` a list of four such logits, the first the same as without.

    Raises:
        ValueError: in ``forward``, on a wrong channel count or H, W not divisible by 16.

    Examples:
        >>> net = UNet2D(1, 2, base_width=4)
        >>> net(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 2, 32, 32])
    """

    def __init__(self, in_channels: int, num_classes: int, base_width: int = 16,
                 deep_supervision: bool = False, light_decoder: bool = False) -> None:
        super().__init__()
        widths = _widths(base_width)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.encoder = _Encoder(in_channels, widths)
        self.decoder = UNetDecoder(widths, widths, num_classes, deep_supervision, light_decoder)

    def encode(self, x: Tensor) -> list[Tensor]:
        """The features the decoder reads, finest first: five (B, widths[l], H / 2^l, W / 2^l)."""
        _check_input(x, self.in_channels, type(self).__name__)
        return self.encoder(x)

    def forward(self, x: Tensor, pyramid: bool = False) -> Tensor | list[Tensor]:
        # A keyword of forward rather than a second method: a DDP wrapper only synchronises
        # gradients of passes that go through its own __call__.
        return self.decoder(self.encode(x), pyramid=pyramid)


class MultiModalUNet2D(nn.Module):
    """U-Net with one encoder per modality and feature fusion at every level.

    Each modality (one input channel) has its own encoder; at each of the five
    levels the streams' features are concatenated, and the decoder runs on these
    fused skips, as AIDE's two-modality network for CHAOS T1 in/out-phase.

    Args:
        num_modalities: M, input channels, one per modality.
        num_classes: output classes C, including the background.
        base_width: per-stream channels of the first level (levels: x1, 2, 4, 8, 16).
        deep_supervision: auxiliary decoder heads, as :class:`UNet2D`.
        light_decoder: PyMIC's lighter up-stages, as :class:`UNet2D`.

    Shapes:
        input (B, M, H, W) float32 with H, W divisible by 16; output (B, C, H, W) logits
        (with ``pyramid=True`` a list of four, as :class:`UNet2D`).

    Raises:
        ValueError: in ``forward``, on a wrong channel count or H, W not divisible by 16.
    """

    def __init__(self, num_modalities: int, num_classes: int, base_width: int = 16,
                 deep_supervision: bool = False, light_decoder: bool = False) -> None:
        super().__init__()
        if num_modalities < 1:
            raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
        widths = _widths(base_width)
        self.in_channels = num_modalities
        self.num_classes = num_classes
        self.encoders = nn.ModuleList(_Encoder(1, widths) for _ in range(num_modalities))
        self.decoder = UNetDecoder([w * num_modalities for w in widths], widths, num_classes, deep_supervision,
                                   light_decoder)

    def encode(self, x: Tensor) -> list[Tensor]:
        """The fused features the decoder reads, finest first: five (B, M * widths[l], H / 2^l, W / 2^l)."""
        _check_input(x, self.in_channels, type(self).__name__)
        streams = [enc(x[:, m : m + 1]) for m, enc in enumerate(self.encoders)]
        return [torch.cat(level, dim=1) for level in zip(*streams)]

    def forward(self, x: Tensor, pyramid: bool = False) -> Tensor | list[Tensor]:
        return self.decoder(self.encode(x), pyramid=pyramid)

