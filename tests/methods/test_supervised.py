"""The supervised baseline: mean L_seg over the labelled rows, on slot 0."""

from __future__ import annotations

import pytest
import torch

from aide_ray.config import load_config
from aide_ray.methods.base import Batch
from aide_ray.methods.registry import method_class
from aide_ray.nn.losses import segmentation_loss_per_sample
from aide_ray.nn.unet import UNet2D


def _batch(labelled):
    g = torch.Generator().manual_seed(0)
    n = len(labelled)
    labels = torch.zeros(n, 1, 32, 32, dtype=torch.int64)
    labels[:, :, 8:20, 6:26] = 1
    return Batch(torch.randn(n, 1, 32, 32, generator=g), labels, torch.tensor(labelled),
                 torch.zeros(n, dtype=torch.bool), torch.arange(n))


def test_loss_equals_mean_segmentation_loss_of_labelled_rows():
    cfg = load_config(None, ["method=supervised", "model.base_width=4"])
    method = method_class("supervised").from_config(cfg, 1)
    assert (method.name, method.net_names, method.label_slots) == ("supervised", ("net",), 1)
    torch.manual_seed(0)
    nets = method.build_nets()
    assert isinstance(nets["net"], UNet2D)
    batch = _batch([True, False, True])
    out = method.train_step(nets, batch, epoch=0)
    # Train-mode batch norm normalises with the batch's statistics: the same forward again.
    seg = segmentation_loss_per_sample(nets["net"](batch.image), batch.labels[:, 0])
    assert out.loss.item() == pytest.approx(seg[[0, 2]].mean().item(), rel=1e-5)
    assert out.metrics["loss_net"] == pytest.approx(out.loss.item())


def test_batch_without_labels_gives_a_differentiable_zero():
    cfg = load_config(None, ["method=supervised", "model.base_width=4"])
    method = method_class("supervised").from_config(cfg, 1)
    nets = method.build_nets()
    out = method.train_step(nets, _batch([False, False]), epoch=0)
    assert out.loss.item() == 0.0
    out.loss.backward()  # does not raise
