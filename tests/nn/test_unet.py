"""U-Net shapes, input checks, the builder, eval-mode batch-norm folding, and the light (PyMIC) decoder."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from aide_ray.config import load_config
from aide_ray.exceptions import ConfigError
from aide_ray.methods.cct import CctNet
from aide_ray.methods.dmpls import DualDecoderNet
from aide_ray.nn.model import build_model
from aide_ray.nn.unet import MultiModalUNet2D, UNet2D
from aide_ray.runs.net_weights import load_matching


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


def _step_flops(net, x):
    """Convolution and matmul FLOPs of one forward and backward pass."""
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("net, count, digest", [
    (lambda: UNet2D(1, 2, base_width=4), 134, "e2cbaf361fccf332"),
    (lambda: MultiModalUNet2D(2, 2, base_width=4), 194, "f311be8666e05fe2"),
    (lambda: UNet2D(1, 2, base_width=4, deep_supervision=True), 140, "0db0780f29c7f839"),
])
def test_default_state_dict_keys_are_unchanged(net, count, digest):
    # Count and SHA-256 of the ordered keys of the networks as they were before light_decoder
    # existed: checkpoints written then still load.
    keys = list(net().state_dict())
    assert (len(keys), hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]) == (count, digest)


def test_default_state_dict_keys_are_the_reference_networks():
    keys = list(UNet2D(1, 2, base_width=4).state_dict())
    assert keys[:3] == ["encoder.blocks.0.0.conv.weight", "encoder.blocks.0.0.bn.weight", "encoder.blocks.0.0.bn.bias"]
    assert "decoder.stages.0.up_conv.conv.weight" in keys and "decoder.stages.3.up_conv.bn.running_var" in keys
    assert keys[-2:] == ["decoder.head.weight", "decoder.head.bias"]
    assert not any(".proj." in k for k in keys)
    assert list(UNet2D(1, 2, base_width=4, light_decoder=False).state_dict()) == keys


def test_light_decoder_differs_in_the_up_stages_only():
    plain, light = (UNet2D(1, 2, base_width=4, light_decoder=flag).state_dict() for flag in (False, True))
    assert [k for k in plain if ".up_conv." not in k] == [k for k in light if ".proj." not in k]
    assert [k for k in light if ".proj." in k] == [f"decoder.stages.{i}.proj.{p}" for i in range(4)
                                                   for p in ("weight", "bias")]
    proj = UNet2D(1, 2, base_width=4, light_decoder=True).decoder.stages[0].proj
    assert (proj.in_channels, proj.out_channels, proj.kernel_size) == (64, 32, (1, 1))  # halves the channels


@pytest.mark.parametrize("modalities, shape", [(1, (2, 1, 32, 48)), (2, (2, 2, 32, 32))])
def test_light_decoder_shapes(modalities, shape):
    net = (UNet2D(1, 3, base_width=4, light_decoder=True) if modalities == 1
           else MultiModalUNet2D(modalities, 3, base_width=4, light_decoder=True))
    x = torch.randn(*shape)
    out = net(x)
    assert out.shape == (2, 3, *x.shape[-2:]) and out.is_contiguous()
    net.eval()
    with torch.no_grad():  # the folded batch-norm path
        assert net(x).shape == out.shape


def test_light_decoder_with_deep_supervision():
    for net, x in ((UNet2D(1, 3, base_width=4, deep_supervision=True, light_decoder=True), torch.randn(2, 1, 32, 32)),
                   (MultiModalUNet2D(2, 3, 4, deep_supervision=True, light_decoder=True), torch.randn(2, 2, 32, 32))):
        levels = net(x, pyramid=True)
        assert len(levels) == 4 and all(t.shape == (2, 3, 32, 32) for t in levels)
        assert torch.equal(levels[0], net(x))


def test_light_decoder_costs_about_0_71_of_the_flops():
    torch.manual_seed(3)
    x = torch.randn(2, 1, 32, 32)
    ratio = _step_flops(UNet2D(1, 2, 4, light_decoder=True), x) / _step_flops(UNet2D(1, 2, 4), x)
    assert 0.70 < ratio < 0.73  # measured 0.714: per level 41 vs 58.5 units (the bottleneck 13.5 in both)
    # Two modalities: two encoders, one decoder, so the decoder's share and the saving are smaller (0.759).
    x2 = torch.randn(2, 2, 32, 32)
    ratio2 = _step_flops(MultiModalUNet2D(2, 2, 4, light_decoder=True), x2) / _step_flops(MultiModalUNet2D(2, 2, 4), x2)
    assert ratio < ratio2 < 0.78


def test_build_model_reads_light_decoder_and_methods_pass_it_on():
    cfg = load_config(None, ["model.base_width=4", "model.light_decoder=true"]).model
    for in_channels in (1, 2):
        decoder = build_model(cfg, in_channels).decoder
        assert decoder.light_decoder and hasattr(decoder.stages[0], "proj")
    assert not load_config(None, []).model.light_decoder
    unet = build_model(cfg, 1)
    for net in (CctNet(unet, ["dropout"], drop_rate=0.3, noise_range=0.3), DualDecoderNet(unet, aux_dropout=0.5)):
        assert all(d.light_decoder and hasattr(d.stages[0], "proj") for d in net.aux_decoders)


def test_light_decoder_is_a_config_error_with_a_monai_backbone():
    # Checked before MONAI is imported, so this needs no MONAI.
    with pytest.raises(ConfigError, match=r"^model.light_decoder must be false for model.name='monai.BasicUNet'"):
        load_config(None, ["model.name=monai.BasicUNet", "model.light_decoder=true"])


def test_reference_weights_do_not_load_into_a_light_decoder():
    # model.init_from's loader: the up-stages' keys differ, so a reference checkpoint fails loudly.
    message = r"missing keys \['decoder.stages.0.proj.weight'.*unexpected keys \['decoder.stages.0.up_conv"
    with pytest.raises(RuntimeError, match=message):
        load_matching(UNet2D(1, 2, 4, light_decoder=True), UNet2D(1, 2, 4).state_dict())
