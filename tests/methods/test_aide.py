"""AIDE's step: ramp, crossed small-loss selection, the loss formula, unlabelled rows, the Method contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aide_ray.config import load_config
from aide_ray.methods.aide import (Aide, aide_losses, aide_net_loss, crossed_selection, pseudo_rows, ramp_weight,
                                   segmentation_losses, small_loss_selection)
from aide_ray.methods.base import Batch
from aide_ray.methods.registry import method_class
from aide_ray.nn.losses import consistency_loss_per_sample, segmentation_loss_per_sample

SIZE = 16


def _target(b: int) -> torch.Tensor:
    t = torch.zeros(b, SIZE, SIZE, dtype=torch.int64)
    t[:, 4:12, 4:12] = 1
    return t


def _logits_with_errors(target: torch.Tensor, wrong: list[int]) -> torch.Tensor:
    """Confident logits for ``target`` with ``wrong[b]`` foreground pixels of row b flipped: loss grows with it."""
    logits = 10.0 * F.one_hot(target, 2).permute(0, 3, 1, 2).float()
    for b, n in enumerate(wrong):
        ys, xs = torch.nonzero(target[b], as_tuple=True)
        logits[b, :, ys[:n], xs[:n]] = logits[b, :, ys[:n], xs[:n]].flip(0)
    return logits


@pytest.mark.parametrize("epoch, q, expected", [(0, 20, 0.0), (5, 20, 0.0625), (10, 20, 0.25), (20, 20, 1.0),
                                                (35, 20, 1.0), (1, 2, 0.25)])
def test_ramp_matches_formula(epoch, q, expected):
    assert ramp_weight(epoch, q) == pytest.approx(expected)


def test_small_loss_selection_rounding_ties_and_candidates():
    loss = torch.tensor([0.3, 0.1, 0.1, 0.9, 0.0])
    every = torch.ones(5, dtype=torch.bool)
    # round(0.5 * 5) = 3 (half up): 0.0, then the tied 0.1s in index order.
    assert small_loss_selection(loss, 0.5, every).tolist() == [False, True, True, False, True]
    assert small_loss_selection(loss, 0.01, every).sum() == 1  # at least one
    cand = torch.tensor([True, False, False, True, False])
    assert small_loss_selection(loss, 0.5, cand).tolist() == [True, False, False, False, False]
    assert small_loss_selection(loss, 0.5, torch.zeros(5, dtype=torch.bool)).sum() == 0


def test_crossed_selection_picks_the_twins_smallest_loss_half():
    target = _target(6)
    labels = target[:, None].repeat(1, 2, 1, 1)
    # net1's ranking (ascending loss): 5, 4, 3, 2, 1, 0; net2's: 0, 2, 4, 1, 3, 5.
    logits = {"net1": _logits_with_errors(target, [50, 40, 30, 20, 10, 0]),
              "net2": _logits_with_errors(target, [0, 30, 10, 40, 20, 50])}
    labelled = torch.ones(6, dtype=torch.bool)
    losses, selected = aide_losses(logits, labels, labelled, None, ramp=0.0, consistency_weight=10.0,
                                   small_loss_fraction=0.5)
    assert torch.nonzero(selected["net1"]).flatten().tolist() == [0, 2, 4]  # net2's three smallest
    assert torch.nonzero(selected["net2"]).flatten().tolist() == [3, 4, 5]  # net1's three smallest
    seg1 = segmentation_loss_per_sample(logits["net1"], target)
    sel = selected["net1"]
    assert losses["net1"].item() == pytest.approx((seg1[sel].mean() + seg1[~sel].mean()).item(), rel=1e-6)


def test_each_net_is_ranked_on_its_own_label_slot():
    target = _target(4)
    other = torch.zeros_like(target)  # net2's labels: empty
    labels = torch.stack([target, other], dim=1)
    perfect = _logits_with_errors(target, [0, 0, 0, 0])
    logits = {"net1": perfect, "net2": perfect.clone()}
    # Against its own empty labels net2's loss is large everywhere except where it predicts empty.
    logits["net2"][2] = 10.0 * F.one_hot(other[2], 2).permute(2, 0, 1).float()
    _, selected = aide_losses(logits, labels, torch.ones(4, dtype=torch.bool), None, ramp=0.0,
                              consistency_weight=1.0, small_loss_fraction=0.25)
    assert torch.nonzero(selected["net1"]).flatten().tolist() == [2]


def test_net_loss_formula_with_ramp_and_unlabelled_rows():
    seg = torch.tensor([1.0, 2.0, 3.0, 4.0])
    con = torch.tensor([0.1, 0.2, 0.3, 0.4])
    selected = torch.tensor([True, False, False, False])
    labelled = torch.tensor([True, True, True, False])
    r, lam = 0.25, 10.0
    # selected: 1.0; rest: rows 1, 2 labelled -> (1 - r) seg + lam r con; row 3 unlabelled -> lam * 1 * con.
    rest = [(1 - r) * 2.0 + lam * r * 0.2, (1 - r) * 3.0 + lam * r * 0.3, lam * 0.4]
    expected = 1.0 + sum(rest) / 3
    assert aide_net_loss(seg, con, selected, labelled, r, lam).item() == pytest.approx(expected)


def test_unlabelled_rows_are_never_selected_and_get_pure_consistency():
    target = _target(4)
    labels = target[:, None].repeat(1, 2, 1, 1)
    labels[3] = 0
    labelled = torch.tensor([True, True, True, False])
    logits = {"net1": _logits_with_errors(target, [5, 10, 20, 0]), "net2": _logits_with_errors(target, [20, 10, 5, 0])}
    pseudo = {name: torch.full((4, 2, SIZE, SIZE), 0.5) for name in logits}
    pseudo["net2"][:, 0] = 0.9
    pseudo["net2"][:, 1] = 0.1
    losses, selected = aide_losses(logits, labels, labelled, pseudo, ramp=0.0, consistency_weight=2.0,
                                   small_loss_fraction=1.0)
    assert selected["net1"].tolist() == [True, True, True, False]
    seg1 = segmentation_loss_per_sample(logits["net1"], labels[:, 0])
    con1 = consistency_loss_per_sample(logits["net1"].softmax(1), pseudo["net2"])
    # ramp 0: labelled rows are pure L_seg, the unlabelled row pure consistency (r = 1).
    assert losses["net1"].item() == pytest.approx((seg1[:3].mean() + 2.0 * con1[3]).item(), rel=1e-5)


class CountingNet(nn.Module):
    """Tiny conv net recording the batch size and mode of each forward call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.calls: list[tuple[int, bool, bool]] = []

    def forward(self, x):
        self.calls.append((x.shape[0], self.training, torch.is_grad_enabled()))
        return self.bn(self.conv(x))


def _batch(b: int = 4) -> Batch:
    g = torch.Generator().manual_seed(0)
    labels = _target(b)[:, None].repeat(1, 2, 1, 1)
    return Batch(torch.randn(b, 1, SIZE, SIZE, generator=g), labels, torch.ones(b, dtype=torch.bool),
                 torch.zeros(b, dtype=torch.bool), torch.arange(b))


def test_train_step_contract_and_forward_passes():
    cfg = load_config(None, ["aide.ramp_epochs=4", "aide.num_augmentations=3"])
    method = method_class("aide").from_config(cfg, 1)
    assert isinstance(method, Aide)
    assert (method.name, method.net_names, method.label_slots) == ("aide", ("net1", "net2"), 2)
    nets = {"net1": CountingNet(), "net2": CountingNet()}
    out = method.train_step(nets, _batch(4), epoch=2)
    assert set(out.metrics) >= {"loss_net1", "loss_net2", "ramp", "selected_fraction"}
    assert out.metrics["ramp"] == pytest.approx(0.25)
    assert out.metrics["selected_fraction"] == pytest.approx(0.5)
    assert out.loss.item() == pytest.approx(out.metrics["loss_net1"] + out.metrics["loss_net2"], rel=1e-5)
    for net in nets.values():
        # The training pass (grad, train mode), then the K views without grad in eval mode of the two
        # rows the twin did not select (K x 2 = 6 rows; on the CPU in passes of B rows, default_rows_per_pass).
        assert net.calls[0] == (4, True, True)
        assert net.calls[1:] == [(4, False, False), (2, False, False)]
        assert net.training
    out.loss.backward()
    assert all(p.grad is not None for net in nets.values() for p in net.conv.parameters())


def test_train_step_skips_pseudo_labels_when_consistency_has_no_weight():
    method = Aide.from_config(load_config(None, []), 1)
    nets = {"net1": CountingNet(), "net2": CountingNet()}
    method.train_step(nets, _batch(4), epoch=0)  # r = 0 and every row labelled
    assert nets["net1"].calls == [(4, True, True)]


def test_pseudo_labels_are_read_only_on_the_rows_the_twin_did_not_select():
    """Garbage in a net's pseudo-label on its twin's selected rows leaves every loss unchanged."""
    target = _target(6)
    labels = target[:, None].repeat(1, 2, 1, 1)
    logits = {"net1": _logits_with_errors(target, [50, 40, 30, 20, 10, 0]),
              "net2": _logits_with_errors(target, [0, 30, 10, 40, 20, 50])}
    labelled = torch.tensor([True, True, True, True, True, False])
    g = torch.Generator().manual_seed(0)
    pseudo = {name: torch.rand(6, 2, SIZE, SIZE, generator=g).softmax(1) for name in logits}
    kwargs = dict(ramp=0.5, consistency_weight=3.0, small_loss_fraction=0.5)
    losses, selected = aide_losses(logits, labels, labelled, pseudo, **kwargs)
    seg = segmentation_losses(logits, labels)
    assert all(torch.equal(selected[n], crossed_selection(seg, labelled, 0.5)[n]) for n in logits)
    rows = pseudo_rows(selected)
    assert torch.equal(rows["net2"], ~selected["net1"]) and rows["net1"][5]  # unlabelled rows always need one
    garbage = {name: torch.where(rows[name].view(-1, 1, 1, 1), p, torch.full_like(p, 1e3))
               for name, p in pseudo.items()}
    changed, _ = aide_losses(logits, labels, labelled, garbage, **kwargs)
    assert all(changed[n].item() == pytest.approx(losses[n].item(), rel=1e-6) for n in logits)
    # ... while garbage on a row that is read changes the loss (the check above can fail).
    read = int(torch.nonzero(rows["net2"])[0])
    garbage["net2"][read] = 1e3
    assert aide_losses(logits, labels, labelled, garbage, **kwargs)[0]["net1"].item() != \
        pytest.approx(losses["net1"].item(), rel=1e-3)
