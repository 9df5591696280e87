"""Optimisers from the config and one optimisation step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aide_ray.config import load_config
from aide_ray.engine.step import make_optimizers, train_one_step
from aide_ray.methods.base import Batch
from aide_ray.methods.supervised import Supervised

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
