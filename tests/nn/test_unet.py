"""U-Net shapes, input checks, the builder, and eval-mode batch-norm folding."""

from __future__ import annotations

import pytest
import torch

from aide_ray.config import load_config
from aide_ray.nn.model import build_model
from aide_ray.nn.unet import MultiModalUNet2D, UNet2D


@pytest.mark.parametrize("in_channels, num_classes, shape", [
    (1, 2, (2, 1, 32, 32)),
    (3, 4, (1, 3, 16, 48)),
])
def test_unet_output_shape(in_channels, num_classes, shape):
    net = UNet2D(in_channels, num_classes, base_width=4)
    out = net(torch.randn(*shape))
    assert out.shape == (shape[0], num_classes, *shape[2:])
    assert out.is_contiguous()  # NCHW logits whatever the internal layout


def test_multimodal_unet_output_shape_and_streams():
    net = MultiModalUNet2D(2, 3, base_width=4)
    assert len(net.encoders) == 2
    out = net(torch.randn(2, 2, 32, 64))
    assert out.shape == (2, 3, 32, 64)


def test_multimodal_unet_uses_every_modality():
    torch.manual_seed(0)
    net = MultiModalUNet2D(2, 2, base_width=4).eval()
    x = torch.randn(1, 2, 32, 32)
    y = x.clone()
    y[:, 1] += 1.0  # change only the second modality
    with torch.no_grad():
        assert not torch.allclose(net(x), net(y))


def test_unet_widths_follow_base_width():
    net = UNet2D(1, 2, base_width=4)
    widths = [block[1].conv.out_channels for block in net.encoder.blocks]
    assert widths == [4, 8, 16, 32, 64]


@pytest.mark.parametrize("shape", [(1, 1, 30, 32), (1, 1, 32, 40)])
def test_unet_rejects_size_not_divisible_by_16(shape):
    net = UNet2D(1, 2, base_width=4)
    with pytest.raises(ValueError, match=r"divisible by 16.*got H=\d+, W=\d+"):
        net(torch.randn(*shape))


def test_unet_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"must have 2 channel\(s\), got shape \(1, 3, 32, 32\)"):
        MultiModalUNet2D(2, 2, base_width=4)(torch.randn(1, 3, 32, 32))


def test_build_model_picks_multimodal_for_several_channels():
    cfg = load_config(None, ["model.base_width=4", "model.num_classes=3"])
    assert type(build_model(cfg.model, 1)) is UNet2D
    net = build_model(cfg.model, 2)
    assert isinstance(net, MultiModalUNet2D)
    assert net(torch.randn(2, 2, 32, 32)).shape == (2, 3, 32, 32)


def test_eval_no_grad_folding_matches_plain_batch_norm():
    torch.manual_seed(0)
    net = UNet2D(1, 2, base_width=4)
    x = torch.randn(4, 1, 32, 32)
    for _ in range(3):  # non-trivial running statistics
        net(x)
    net.eval()
    reference = net(x)  # grad enabled: the unfolded path
    with torch.no_grad():
        folded = net(x)
    assert torch.allclose(reference, folded, atol=1e-4)
