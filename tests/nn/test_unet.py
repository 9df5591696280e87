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


def test_deep_supervision_adds_heads_only_and_keeps_the_main_output():
    torch.manual_seed(1)
    plain = UNet2D(1, 3, base_width=4)
    torch.manual_seed(1)
    deep = UNet2D(1, 3, base_width=4, deep_supervision=True)
    extra = [k for k in deep.state_dict() if k not in plain.state_dict()]
    assert list(plain.state_dict()) == [k for k in deep.state_dict() if k not in extra]
    assert extra and all(k.startswith("decoder.aux_heads.") for k in extra)
    x = torch.randn(2, 1, 32, 32)
    levels = deep(x, pyramid=True)
    assert len(levels) == 4 and all(t.shape == (2, 3, 32, 32) and t.is_contiguous() for t in levels)
    assert torch.equal(deep(x), levels[0]) and torch.equal(deep(x), plain(x))
    with pytest.raises(ValueError, match="model.deep_supervision=true"):
        plain(x, pyramid=True)


def test_encode_then_decode_is_forward():
    torch.manual_seed(2)
    for net, x in ((UNet2D(1, 2, base_width=4), torch.randn(2, 1, 32, 32)),
                   (MultiModalUNet2D(2, 2, base_width=4, deep_supervision=True), torch.randn(2, 2, 32, 32))):
        features = net.encode(x)
        assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]
        assert torch.equal(net.decoder(features), net(x))
    assert len(MultiModalUNet2D(2, 2, 4, deep_supervision=True)(torch.randn(1, 2, 32, 32), pyramid=True)) == 4


def test_build_model_reads_deep_supervision():
    cfg = load_config(None, ["method=urpc", "model.base_width=4", "model.deep_supervision=true"])
    assert len(build_model(cfg.model, 1)(torch.randn(1, 1, 32, 32), pyramid=True)) == 4
    default = load_config(None, ["model.base_width=4"]).model
    assert not default.deep_supervision and not hasattr(build_model(default, 2).decoder, "aux_heads")
