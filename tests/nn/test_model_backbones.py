"""Backbones: model.name selects the built-in U-Net or a MONAI network, checked with the config.

The MONAI tests need the extra (``pip install aide_ray[monai]``; ``make test`` installs it)
and are skipped without it; the config checks that need no MONAI run everywhere.
"""

from __future__ import annotations

import sys

import pytest
import torch

from aide_ray.config import load_config
from aide_ray.exceptions import ConfigError
from aide_ray.methods.base import Batch
from aide_ray.methods.registry import METHOD_NAMES, method_class
from aide_ray.nn.backbones import MONAI_NETS
from aide_ray.nn.model import build_model
from aide_ray.nn.unet import UNet2D

# Tiny arguments of every listed MONAI network, for 32 x 32 inputs (SwinUNETR: 64 x 64, its bottleneck
# is 1/32 of the input and its instance norm needs more than one pixel there in training).
TINY_ARGS = {
    "UNet": {"channels": [4, 8, 16], "strides": [2, 2]},
    "BasicUNet": {"features": [4, 4, 8, 8, 16, 4]},
    "AttentionUnet": {"channels": [4, 8, 16], "strides": [2, 2]},
    "SegResNet": {"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]},
    "SwinUNETR": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [3, 3, 3, 3]},
    "UNETR": {"img_size": [32, 32], "feature_size": 4, "hidden_size": 24, "mlp_dim": 48, "num_heads": 2},
    "DynUNet": {"kernel_size": [3, 3, 3], "strides": [1, 2, 2], "upsample_kernel_size": [2, 2],
                "filters": [4, 8, 16]},
}
SIZES = {"SwinUNETR": 64}
BASIC = ["model.name=monai.BasicUNet", "model.monai_args={features: [4, 4, 8, 8, 16, 4]}"]


@pytest.fixture
def monai():
    return pytest.importorskip("monai")


def _overrides(net: str, **extra: str) -> list[str]:
    args = ", ".join(f"{k}: {v}" for k, v in TINY_ARGS[net].items())
    return [f"model.name=monai.{net}", f"model.monai_args={{{args}}}", *(f"{k}={v}" for k, v in extra.items())]


def test_every_listed_network_has_tiny_test_arguments():
    assert set(TINY_ARGS) == set(MONAI_NETS) and set(SIZES) <= set(MONAI_NETS)


@pytest.mark.parametrize("net", MONAI_NETS)
def test_each_monai_network_maps_modalities_to_class_logits(monai, net):
    cfg = load_config(None, _overrides(net, **{"model.num_classes": "3"}))
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    assert type(model).__name__ == net and type(model).__module__.startswith("monai.")
    size = SIZES.get(net, 32)
    for train in (True, False):
        model.train(train)
        with torch.set_grad_enabled(train):
            out = model(torch.randn(2, 2, size, size))
        assert isinstance(out, torch.Tensor) and out.shape == (2, 3, size, size)


def test_the_built_in_unet_stays_the_default():
    cfg = load_config(None, ["model.base_width=4"])
    assert (cfg.model.name, cfg.model.monai_args) == ("unet", {})
    assert isinstance(build_model(cfg.model, 1), UNet2D)


def _batch(slots: int, modalities: int = 2, rows: int = 4) -> Batch:
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(rows, slots, 32, 32, dtype=torch.int64)
    labels[..., 8:20, 6:26] = 1
    return Batch(torch.randn(rows, modalities, 32, 32, generator=g), labels, torch.ones(rows, dtype=torch.bool),
                 torch.zeros(rows, dtype=torch.bool), torch.arange(rows))


@pytest.mark.parametrize("method, slots", [("supervised", 1), ("aide", 2)])
def test_a_training_step_with_a_monai_basic_unet(monai, method, slots):
    cfg = load_config(None, [f"method={method}", *BASIC, "aide.ramp_epochs=1", "aide.num_augmentations=2"])
    m = method_class(method).from_config(cfg, 2)
    torch.manual_seed(0)
    nets = m.build_nets()
    assert all(type(net).__name__ == "BasicUNet" for net in nets.values())
    out = m.train_step(nets, _batch(slots), epoch=1)  # AIDE: ramp 1, so the pseudo-label passes run too
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name in m.trained_nets:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in nets[name].parameters()), name


UNET_ONLY = sorted(name for name in METHOD_NAMES if method_class(name).needs_unet)


def test_the_methods_that_read_unet_internals_say_so():
    assert UNET_ONLY == ["cct", "dmpls", "urpc"]


@pytest.mark.parametrize("method", UNET_ONLY)
def test_methods_reading_unet_internals_refuse_a_monai_backbone(monai, method):
    with pytest.raises(ConfigError, match=rf"model.name must be 'unet' for method '{method}', which .*U-Net"):
        load_config(None, [f"method={method}", *BASIC])


def test_every_other_method_accepts_a_monai_backbone(monai):
    for name in sorted(METHOD_NAMES - set(UNET_ONLY)):
        assert load_config(None, [f"method={name}", *BASIC]).model.name == "monai.BasicUNet"


@pytest.mark.parametrize("overrides, message", [
    (["model.name=monai.Unet"], r"model.name must be one of .*\(did you mean 'monai.UNet'\?\), got 'monai.Unet'"),
    (["model.name=unte"], r"model.name must be one of .*\(did you mean 'unet'\?\)"),
    (["model.monai_args={features: [4]}"], r"model.monai_args must be empty for model.name='unet'"),
    (["model.monai_args=3"], r"model.monai_args must be a mapping, got 3"),
])
def test_backbone_errors_without_monai(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("args, message", [
    ("{chanels: [4, 8], strides: [2]}", r"model.monai_args must be arguments of monai.UNet \(did you mean "
                                        r"'channels'\?\): \[.*'num_res_units'.*\], got 'chanels'"),
    ("{channels: [4, 8]}", r"must be a mapping that gives \['strides'\] \(required by monai.UNet\)"),
    ("{channels: [4, 8], strides: [2], in_channels: 3}", r"must be free of \['spatial_dims', 'in_channels', "
                                                         r"'out_channels'\]"),
])
def test_monai_arguments_are_checked_against_the_class(monai, args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.name=monai.UNet", f"model.monai_args={args}"])


def test_monai_backbone_errors(monai):
    with pytest.raises(ConfigError, match=r"model.deep_supervision must be false for model.name='monai.BasicUNet'"):
        load_config(None, [*BASIC, "model.deep_supervision=true"])
    with pytest.raises(ConfigError, match=r"model.monai_args.deep_supervision must be False for monai.DynUNet"):
        load_config(None, ["model.name=monai.DynUNet", "model.monai_args={kernel_size: [3, 3], strides: [1, 2], "
                                                       "upsample_kernel_size: [2], deep_supervision: true}"])
    # Values MONAI refuses fail as a config error at build, naming the key.
    cfg = load_config(None, ["model.name=monai.UNet", "model.monai_args={channels: [4], strides: []}"])
    with pytest.raises(ConfigError, match=r"model.monai_args must be values monai.UNet accepts"):
        build_model(cfg.model, 1)


def test_monai_args_round_trip_through_yaml(monai, tmp_path):
    cfg = load_config(None, _overrides("UNet"))
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    assert cfg.model.monai_args == {"channels": [4, 8, 16], "strides": [2, 2]}


def test_a_monai_backbone_without_monai_says_how_to_install_it(monkeypatch):
    # None in sys.modules makes the import fail as if the package were not installed.
    for name in [m for m in sys.modules if m == "monai" or m.startswith("monai.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "monai", None)
    with pytest.raises(ConfigError, match=r"^model.name=monai.BasicUNet needs MONAI: pip install aide_ray\[monai\]$"):
        load_config(None, ["model.name=monai.BasicUNet"])

