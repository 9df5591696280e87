"""Optimisers from the config and one optimisation step, in fp32 and in bf16 / channels-last."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import aide_ray.engine.epoch as epoch_module
from aide_ray.config import load_config
from aide_ray.engine.local import train_local
from aide_ray.engine.step import make_optimizers, to_channels_last, train_one_step
from aide_ray.methods.base import Batch
from aide_ray.methods.registry import create_method
from aide_ray.methods.supervised import Supervised
from aide_ray.nn.modules import unwrap

SIZE = 32


def _cfg(*overrides: str):
    return load_config(None, ["model.base_width=4", "batch_size=4", *overrides])


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.int64)
    labels[:, :, 8:20, 10:24] = 1
    return Batch(torch.randn(n, 1, SIZE, SIZE, generator=g) + labels.float(), labels,
                 torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool), torch.arange(n))


def test_make_optimizers_follow_config_and_phase_lr():
    cfg = _cfg("optim.lr=0.005", "optim.weight_decay=0.01", "optim.step_epochs=3", "optim.gamma=0.1")
    nets = {"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)}
    opts, scheds = make_optimizers(cfg.optim, nets, ["a"])
    assert set(opts) == set(scheds) == {"a"}
    group = opts["a"].param_groups[0]
    assert isinstance(opts["a"], torch.optim.Adam)
    assert (group["lr"], group["weight_decay"], group["amsgrad"]) == (0.005, 0.01, True)
    for _ in range(3):
        opts["a"].step()  # no gradients: a no-op, keeps the documented step order
        scheds["a"].step()
    assert opts["a"].param_groups[0]["lr"] == pytest.approx(0.0005)
    phase_opts, _ = make_optimizers(cfg.optim, nets, ["a", "b"], lr=1e-5)
    assert [o.param_groups[0]["lr"] for o in phase_opts.values()] == [1e-5, 1e-5]
    with pytest.raises(KeyError, match="trained net 'c' is not among the nets"):
        make_optimizers(cfg.optim, nets, ["c"])


class _Recorder(Supervised):
    after_calls = 0

    def after_optimizer_step(self, nets, epoch):
        self.after_calls += 1


def test_train_one_step_updates_weights_and_calls_hook():
    cfg = _cfg("method=supervised")
    method = _Recorder.from_config(cfg, 1)
    nets = method.build_nets()
    opts, _ = make_optimizers(cfg.optim, nets, method.trained_nets)
    before = [p.detach().clone() for p in nets["net"].parameters()]
    nets["net"].eval()
    metrics = train_one_step(method, nets, opts, _batch(), epoch=0)
    assert nets["net"].training  # put back in train mode
    assert metrics["loss"] == pytest.approx(metrics["loss_net"]) and metrics["loss"] > 0
    assert method.after_calls == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, nets["net"].parameters()))


class _Probe(Supervised):
    """Records how its step was called: autocast state and the image's memory format."""

    def train_step(self, nets, batch, epoch):
        on = torch.is_autocast_enabled("cpu")
        self.seen = [*getattr(self, "seen", []), (on, torch.get_autocast_dtype("cpu") if on else None,
                                                   batch.image.is_contiguous(memory_format=torch.channels_last))]
        return super().train_step(nets, batch, epoch)


@pytest.mark.parametrize("method", ["supervised", "aide"])
def test_a_bf16_channels_last_step_runs_on_the_cpu_with_a_finite_loss(method):
    cfg = _cfg(f"method={method}", "precision=bf16", "channels_last=true", "aide.num_augmentations=2")
    m = create_method(cfg, 1)
    nets = {name: to_channels_last(net) for name, net in m.build_nets().items()}
    opts, _ = make_optimizers(cfg.optim, nets, m.trained_nets)
    before = [p.detach().clone() for p in nets[m.trained_nets[0]].parameters()]
    batch = _batch()
    if m.label_slots == 2:
        batch = Batch(batch.image, batch.labels.repeat(1, 2, 1, 1), batch.labelled, batch.hq, batch.sample_index)
    metrics = train_one_step(m, nets, opts, batch, epoch=30, precision=cfg.precision, channels_last=True)
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["loss"] > 0
    weight = next(p for p in nets[m.trained_nets[0]].parameters() if p.dim() == 4)
    assert weight.dtype == torch.float32 and weight.is_contiguous(memory_format=torch.channels_last)
    assert any(not torch.equal(a, b) for a, b in zip(before, nets[m.trained_nets[0]].parameters()))


def test_the_step_runs_under_bf16_autocast_only_when_asked():
    cfg = _cfg("method=supervised")
    method = _Probe(cfg.options, cfg.model, 2)  # two modalities: a channels-last image differs from NCHW
    nets = method.build_nets()
    opts, _ = make_optimizers(cfg.optim, nets, method.trained_nets)
    base = _batch()
    two = Batch(torch.randn(4, 2, SIZE, SIZE), base.labels, base.labelled, base.hq, base.sample_index)
    train_one_step(method, nets, opts, two, epoch=0)
    train_one_step(method, nets, opts, two, epoch=0, precision="bf16", channels_last=True)
    assert method.seen == [(False, None, False), (True, torch.bfloat16, True)]
    with pytest.raises(ValueError, match="precision must be one of"):
        train_one_step(method, nets, opts, two, epoch=0, precision="fp16")


def test_the_config_keys_reach_the_step_and_the_nets(tiny_shards, tmp_path, monkeypatch):
    calls = []

    def recording_step(method, nets, optimizers, batch, epoch, **kwargs):
        calls.append((kwargs, all(p.is_contiguous(memory_format=torch.channels_last)
                                  for p in unwrap(nets["net"]).parameters() if p.dim() == 4)))
        return train_one_step(method, nets, optimizers, batch, epoch, **kwargs)

    monkeypatch.setattr(epoch_module, "train_one_step", recording_step)
    cfg = load_config(None, [f"data.shards={tiny_shards}", f"run.storage_path={tmp_path}", "run.name=bf16",
                             "method=supervised", "epochs=1", "batch_size=4", "model.base_width=4",
                             "precision=bf16", "channels_last=true"])
    history = train_local(cfg).history
    assert calls and all(c == ({"precision": "bf16", "channels_last": True}, True) for c in calls)
    assert math.isfinite(float(history.loc[0, "loss"]))
