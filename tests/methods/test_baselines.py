"""Each baseline's defining rule, on tiny tensors and tiny U-Nets (base_width 4, 32x32).

co-teaching: the twin's small-loss samples/pixels and nothing else train a net;
GCE and NR-Dice: the formulas; mean teacher: the exact EMA rule, a teacher
without gradients, consistency on unlabelled rows only; CPS: pseudo-labels
from the twin, no gradient through them. The end-to-end tests train every
baseline for two epochs through the plain loop.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aide_ray.config import load_config
from aide_ray.engine.local import train_local
from aide_ray.methods.base import Batch
from aide_ray.methods.coteaching import CoTeaching, coteaching_losses, forget_rate
from aide_ray.methods.cps import Cps, cross_pseudo_loss_per_sample
from aide_ray.methods.gce import Gce
from aide_ray.methods.meanteacher import MeanTeacher, ema_update, sigmoid_rampup
from aide_ray.methods.nrdice import NrDice
from aide_ray.methods.registry import method_class
from aide_ray.nn.losses import segmentation_loss_per_sample
from aide_ray.nn.robust_losses import generalized_cross_entropy_per_sample, noise_robust_dice_per_sample

SIZE = 32


def _cfg(method: str, *overrides: str):
    return load_config(None, [f"method={method}", "model.base_width=4", "batch_size=4", *overrides])


def _batch(n: int, labelled: list[bool] | None = None, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 1, SIZE, SIZE, generator=g)
    labels = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.int64)
    labels[:, :, 8:24, 10:22] = 1
    lab = torch.tensor(labelled if labelled is not None else [True] * n)
    labels[~lab] = 0
    return Batch(image, labels, lab, torch.zeros(n, dtype=torch.bool), torch.arange(n))


class FixedLogits(nn.Module):
    """A 'network' whose logits are given: ``scale * logits``; ``scale`` (=1) carries the gradient."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.logits


def _logits_from_correct(correct: Tensor, target: Tensor, confidence: Tensor) -> Tensor:
    """(B, 2, H, W) logits that put ``confidence`` on the target class where ``correct``, else on the other."""
    cls = torch.where(correct, target, 1 - target)
    one_hot = F.one_hot(cls, 2).movedim(-1, 1).float()
    return one_hot * confidence.unsqueeze(1)


def test_registry_resolves_every_baseline():
    for name, cls in [("coteaching", CoTeaching), ("gce", Gce), ("nrdice", NrDice),
                      ("meanteacher", MeanTeacher), ("cps", Cps)]:
        assert method_class(name) is cls
        assert cls.name == name


# --------------------------------------------------------------------------- robust losses

def test_gce_matches_formula_and_limits():
    torch.manual_seed(0)
    logits = torch.randn(3, 3, 5, 4)
    target = torch.randint(0, 3, (3, 5, 4))
    p_y = torch.softmax(logits, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    for q in (0.3, 0.7):
        expected = ((1 - p_y ** q) / q).mean(dim=(1, 2))
        torch.testing.assert_close(generalized_cross_entropy_per_sample(logits, target, q), expected)
    ce = F.cross_entropy(logits, target, reduction="none").mean(dim=(1, 2))
    torch.testing.assert_close(generalized_cross_entropy_per_sample(logits, target, 1e-5), ce, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(generalized_cross_entropy_per_sample(logits, target, 1.0), (1 - p_y).mean(dim=(1, 2)))


def test_gce_pixel_mask_and_bad_q():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 2, 4, 4), torch.randint(0, 2, (2, 4, 4))
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, :2] = True  # sample 1: no pixel counts
    p_y = torch.softmax(logits, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    out = generalized_cross_entropy_per_sample(logits, target, 0.5, pixel_mask=mask)
    torch.testing.assert_close(out[0], ((1 - p_y[0, :2].sqrt()) / 0.5).mean())
    assert out[1] == 0
    with pytest.raises(ValueError, match=r"q must be in \(0, 1\], got 0.0"):
        generalized_cross_entropy_per_sample(logits, target, 0.0)
    with pytest.raises(ValueError, match="target must have shape"):
        generalized_cross_entropy_per_sample(logits, target[:, :2], 0.5)


def test_nrdice_matches_formula():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 6, 5)
    target = torch.randint(0, 3, (2, 6, 5))
    p = torch.softmax(logits, 1)
    y = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    expected = torch.stack([
        torch.stack([(p[b, c] - y[b, c]).abs().pow(1.5).sum() / ((p[b, c] + y[b, c]).sum() + 1e-5)
                     for c in range(3)]).mean()
        for b in range(2)])
    torch.testing.assert_close(noise_robust_dice_per_sample(logits, target, 1.5), expected)


def test_nrdice_gamma2_hand_computed():
    # Two pixels: p = (0.2, 0.8) with label 1, p = (0.6, 0.4) with label 0.
    prob = torch.tensor([[0.2, 0.6], [0.8, 0.4]]).view(1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    # Background: |p - y|^2 = 0.04 + 0.16 = 0.2 over sum(p + y) = 0.8 + 1 -> 1/9.
    # Foreground: 0.04 + 0.16 = 0.2 over 1.2 + 1 -> 1/11. Mean: 10/99.
    out = noise_robust_dice_per_sample(prob.log(), target, 2.0)
    assert out.shape == (1,)
    assert out.item() == pytest.approx(10 / 99, abs=1e-5)
    perfect = noise_robust_dice_per_sample(F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 50, target, 1.0)
    assert perfect.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"gamma must be in \[1, 2\], got 2.5"):
        noise_robust_dice_per_sample(prob.log(), target, 2.5)


# --------------------------------------------------------------------------- co-teaching

def test_forget_rate_ramp():
    assert [forget_rate(e, 0.2, 10) for e in (0, 5, 10, 15)] == pytest.approx([0.0, 0.1, 0.2, 0.2])
    assert forget_rate(0, 0.3, 0) == 0.3
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        forget_rate(-1, 0.2, 10)


def test_coteaching_trains_each_net_on_twin_small_loss_samples():
    n = 6
    batch = _batch(n)
    target = batch.labels[:, 0]
    conf = torch.linspace(2.0, 4.0, n).view(n, 1, 1).expand(n, SIZE, SIZE)
    # net1 gets rows 3-5 right and 0-2 wrong; net2 the opposite; so each net's
    # own small-loss rows are exactly those its twin gets wrong.
    right1 = torch.tensor([False, False, False, True, True, True]).view(n, 1, 1).expand(n, SIZE, SIZE)
    nets = {"net1": FixedLogits(_logits_from_correct(right1, target, conf)),
            "net2": FixedLogits(_logits_from_correct(~right1, target, conf))}
    method = CoTeaching.from_config(_cfg("coteaching", "coteaching.forget_rate=0.5", "coteaching.ramp_epochs=0"), 1)
    out = method.train_step(nets, batch, epoch=0)
    l1 = segmentation_loss_per_sample(nets["net1"](batch.image), target).detach()
    l2 = segmentation_loss_per_sample(nets["net2"](batch.image), target).detach()
    expected = l1[:3].mean() + l2[3:].mean()  # each on the twin's kept rows: its own mistakes
    own_choice = l1[3:].mean() + l2[:3].mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(expected - own_choice) > 1.0
    assert out.metrics["kept_net1"] == 0.5 and out.metrics["forget_rate"] == 0.5
    out.loss.backward()
    # d/dscale of each net's mean over its twin's rows, computed on those rows only.
    for name, rows in (("net1", slice(0, 3)), ("net2", slice(3, 6))):
        ref = FixedLogits(nets[name].logits[rows])
        segmentation_loss_per_sample(ref(None), target[rows]).mean().backward()
        torch.testing.assert_close(nets[name].scale.grad, ref.scale.grad)


def test_coteaching_pixel_level_selects_twin_small_loss_pixels_across_the_batch():
    n = 2
    batch = _batch(n, seed=3)
    target = batch.labels[:, 0]
    g = torch.Generator().manual_seed(4)
    conf = 1.0 + 3.0 * torch.rand(n, SIZE, SIZE, generator=g)
    # Exactly half of the batch's pixels, unevenly split between the two samples.
    right2 = torch.zeros(n * SIZE * SIZE, dtype=torch.bool)
    right2[torch.randperm(n * SIZE * SIZE, generator=g)[: n * SIZE * SIZE // 2]] = True
    right2[: SIZE * SIZE // 4] = True
    right2[-SIZE * SIZE // 4:] = False
    right2 = right2.view(n, SIZE, SIZE)
    keep_n = n * SIZE * SIZE // 2
    nets = {"net1": FixedLogits(_logits_from_correct(~right2, target, conf)),
            "net2": FixedLogits(_logits_from_correct(right2, target, conf))}
    method = CoTeaching.from_config(_cfg("coteaching", "coteaching.forget_rate=0.5", "coteaching.ramp_epochs=0",
                             "coteaching.pixel_level=true"), 1)
    out = method.train_step(nets, batch, epoch=3)
    ce1 = F.cross_entropy(nets["net1"].logits, target, reduction="none")
    ce2 = F.cross_entropy(nets["net2"].logits, target, reduction="none")
    kept_by_2 = torch.zeros(n * SIZE * SIZE, dtype=torch.bool)
    kept_by_2[ce2.flatten().argsort()[:keep_n]] = True
    kept_by_1 = torch.zeros(n * SIZE * SIZE, dtype=torch.bool)
    kept_by_1[ce1.flatten().argsort()[:keep_n]] = True
    kept = kept_by_2.view_as(right2)  # net2's small-loss pixels are the ones it gets right
    assert bool((kept <= right2).all()) or bool((right2 <= kept).all())
    expected = ce1.flatten()[kept_by_2].mean() + ce2.flatten()[kept_by_1].mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # A per-sample split would keep half of each image; the batch-wide one does not.
    assert kept_by_2.view_as(right2)[0].float().mean() != pytest.approx(0.5, abs=0.01)


def test_coteaching_unlabelled_rows_are_never_selected():
    torch.manual_seed(5)
    loss1, loss2 = torch.rand(6, requires_grad=True), torch.rand(6, requires_grad=True)
    candidates = torch.tensor([True, True, False, True, False, True])
    sel1, sel2, kept1, kept2 = coteaching_losses(loss1, loss2, candidates, 0.5)
    assert not (kept1 & ~candidates).any() and int(kept1.sum()) == 2 and int(kept2.sum()) == 2
    none = torch.zeros(6, dtype=torch.bool)
    z1, z2, _, _ = coteaching_losses(loss1, loss2, none, 0.5)
    (z1 + z2).backward()
    assert z1.item() == 0 and loss1.grad is not None and torch.isfinite(loss1.grad).all()


def test_coteaching_real_unets_keep_the_ramped_share():
    torch.manual_seed(6)
    method = CoTeaching.from_config(_cfg("coteaching", "coteaching.forget_rate=0.5", "coteaching.ramp_epochs=4"), 1)
    nets = method.build_nets()
    out = method.train_step(nets, _batch(4), epoch=2)  # forget 0.25 -> keep 3 of 4
    assert out.metrics["kept_net1"] == 0.75 and out.metrics["kept_net2"] == 0.75
    assert torch.isfinite(out.loss)


# --------------------------------------------------------------------------- single-net losses

@pytest.mark.parametrize("name, expected_fn", [
    ("gce", lambda lo, t: generalized_cross_entropy_per_sample(lo, t, 0.5)),
    ("nrdice", lambda lo, t: noise_robust_dice_per_sample(lo, t, 1.5)),
])
def test_single_net_methods_use_labelled_rows_only(name, expected_fn):
    torch.manual_seed(7)
    method = method_class(name).from_config(_cfg(name), 1)
    nets = method.build_nets()
    batch = _batch(4, labelled=[True, False, True, False])
    out = method.train_step(nets, batch, epoch=0)
    with torch.no_grad():
        logits = nets["net"](batch.image)
    expected = expected_fn(logits[batch.labelled], batch.labels[batch.labelled, 0]).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    empty = method.train_step(nets, _batch(4, labelled=[False] * 4), epoch=0)
    empty.loss.backward()
    assert empty.loss.item() == 0


# --------------------------------------------------------------------------- mean teacher

def test_sigmoid_rampup():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(10, 10) == 1.0 and sigmoid_rampup(30, 10) == 1.0
    assert sigmoid_rampup(0, 0) == 1.0


def test_meanteacher_teacher_is_a_frozen_copy():
    torch.manual_seed(8)
    method = MeanTeacher.from_config(_cfg("meanteacher"), 1)
    nets = method.build_nets()
    for (n_s, s), (n_t, t) in zip(nets["student"].state_dict().items(), nets["teacher"].state_dict().items()):
        assert n_s == n_t and torch.equal(s, t)
    assert not any(p.requires_grad for p in nets["teacher"].parameters())
    assert all(p.requires_grad for p in nets["student"].parameters())


def test_meanteacher_step_is_exact_ema_and_teacher_gets_no_gradient():
    from aide_ray.engine.step import make_optimizers, train_one_step

    torch.manual_seed(9)
    method = MeanTeacher.from_config(_cfg("meanteacher", "meanteacher.ema_decay=0.9", "optim.lr=0.01"), 1)
    nets = method.build_nets()
    optimizers, _ = make_optimizers(_cfg("meanteacher", "meanteacher.ema_decay=0.9", "optim.lr=0.01").optim, nets, method.trained_nets)
    assert set(optimizers) == {"student"}
    teacher0 = {k: v.clone() for k, v in nets["teacher"].state_dict().items()}
    batch = _batch(4, labelled=[True, True, False, False])
    out = method.train_step(nets, batch, epoch=0)
    out.loss.backward()
    assert all(p.grad is None for p in nets["teacher"].parameters())
    for opt in optimizers.values():
        opt.step()
    method.after_optimizer_step(nets, epoch=0)
    student = dict(nets["student"].named_parameters())
    changed = 0
    for name, t in nets["teacher"].named_parameters():
        expected = 0.9 * teacher0[name] + 0.1 * student[name].detach()
        torch.testing.assert_close(t, expected, rtol=1e-6, atol=1e-7)
        changed += int(not torch.equal(t, teacher0[name]))
    assert changed == len(student)
    for (name, t), s in zip(nets["teacher"].named_buffers(), nets["student"].buffers()):
        assert torch.equal(t, s), name
    # Through the engine's step as well: the teacher moves by the same rule.
    teacher1 = {k: v.clone() for k, v in nets["teacher"].named_parameters()}
    train_one_step(method, nets, optimizers, batch, epoch=1)
    for name, t in nets["teacher"].named_parameters():
        torch.testing.assert_close(t, 0.9 * teacher1[name] + 0.1 * student[name].detach(), rtol=1e-6, atol=1e-7)


def test_ema_update_rejects_mismatched_nets():
    with pytest.raises(ValueError, match="teacher and student must have the same architecture"):
        ema_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 0.9)


def test_meanteacher_consistency_only_on_unlabelled_rows():
    torch.manual_seed(10)
    cfg = _cfg("meanteacher", "meanteacher.noise_std=0.0", "meanteacher.consistency_weight=2.0",
               "meanteacher.ramp_epochs=4")
    method = MeanTeacher.from_config(cfg, 1)
    nets = method.build_nets()
    with torch.no_grad():
        for p in nets["teacher"].parameters():
            p.add_(0.05 * torch.randn_like(p))  # a teacher that disagrees with the student
    batch = _batch(4, labelled=[True, False, True, False])
    out = method.train_step(nets, batch, epoch=2)
    lab, unl = batch.labelled, ~batch.labelled
    with torch.no_grad():
        s = nets["student"](batch.image)
        t = torch.softmax(nets["teacher"](batch.image[unl]), 1)
    sup = segmentation_loss_per_sample(s[lab], batch.labels[lab, 0]).mean()
    cons = ((torch.softmax(s[unl], 1) - t) ** 2).mean()
    weight = 2.0 * math.exp(-5 * 0.5 ** 2)
    assert out.metrics["cons_weight"] == pytest.approx(weight)
    assert cons > 0
    assert out.loss.item() == pytest.approx((sup + weight * cons).item(), rel=1e-5)
    all_labelled = method.train_step(nets, _batch(4), epoch=2)
    assert all_labelled.metrics["loss_cons"] == 0
    none_labelled = method.train_step(nets, _batch(4, labelled=[False] * 4), epoch=2)
    none_labelled.loss.backward()
    assert none_labelled.metrics["loss_sup"] == 0 and math.isfinite(none_labelled.loss.item())


# --------------------------------------------------------------------------- CPS

def test_cross_pseudo_loss_uses_twin_argmax_without_gradient():
    torch.manual_seed(11)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    peer = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = cross_pseudo_loss_per_sample(logits, peer)
    expected = F.cross_entropy(logits, peer.argmax(1), reduction="none").mean(dim=(1, 2))
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert peer.grad is None and logits.grad is not None


def test_cps_step_pseudo_supervision_on_all_rows():
    torch.manual_seed(12)
    method = Cps.from_config(_cfg("cps", "cps.consistency_weight=1.5", "cps.ramp_epochs=0"), 1)
    nets = method.build_nets()
    assert not torch.equal(next(nets["net1"].parameters()), next(nets["net2"].parameters()))
    batch = _batch(4, labelled=[True, True, False, False])
    out = method.train_step(nets, batch, epoch=0)
    lab, unl = batch.labelled, ~batch.labelled
    with torch.no_grad():
        lo = {k: nets[k](batch.image) for k in ("net1", "net2")}
    expected = 0.0
    for a, b in (("net1", "net2"), ("net2", "net1")):
        ce = F.cross_entropy(lo[a], lo[b].argmax(1), reduction="none").mean(dim=(1, 2))
        sup = segmentation_loss_per_sample(lo[a][lab], batch.labels[lab, 0]).mean()
        expected += sup + 1.5 * (ce[lab].mean() + ce[unl].mean())
        assert out.metrics[f"loss_pseudo_{a}"] == pytest.approx((ce[lab].mean() + ce[unl].mean()).item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(float(expected), rel=1e-5)
    # Only unlabelled rows: loss is the pseudo term alone, finite, differentiable.
    only_unl = method.train_step(nets, _batch(4, labelled=[False] * 4), epoch=0)
    only_unl.loss.backward()
    assert only_unl.metrics["loss_sup_net1"] == 0 and only_unl.loss.item() > 0


def test_cps_pseudo_weight_is_ramped():
    method = Cps.from_config(_cfg("cps", "cps.consistency_weight=2.0", "cps.ramp_epochs=10"), 1)
    assert method.pseudo_weight(0) == pytest.approx(2 * math.exp(-5))
    assert method.pseudo_weight(10) == 2.0


# --------------------------------------------------------------------------- end to end (local backend)

@pytest.mark.parametrize("method, overrides", [
    ("coteaching", ["coteaching.ramp_epochs=0"]),
    ("coteaching", ["coteaching.ramp_epochs=0", "coteaching.pixel_level=true"]),
    ("gce", []),
    ("nrdice", []),
    ("meanteacher", ["meanteacher.ramp_epochs=0"]),
    ("entmin", ["entmin.ramp_epochs=0"]),
    ("uamt", ["uamt.ramp_epochs=0", "uamt.num_passes=2"]),
    ("urpc", ["urpc.ramp_epochs=0"]),
    ("cct", ["cct.ramp_epochs=0"]),
    ("cps", ["cps.ramp_epochs=0"]),
    ("mae", []),
    ("clslsr", ["clslsr.warmup_epochs=1"]),
    ("trinet", ["trinet.ramp_epochs=0"]),
    ("trinet", ["trinet.ramp_epochs=0", "trinet.level=sample"]),
    ("dast", ["dast.ramp_epochs=0", "dast.queue_length=4"]),
])
def test_trains_end_to_end_on_the_local_backend(method, overrides, tiny_shards, tiny_semi_shards, tmp_path):
    semi = method_class(method).uses_unlabelled
    shards = tiny_semi_shards if semi else tiny_shards
    cfg = _cfg(method, "optim.lr=0.01", "epochs=3", f"data.shards={shards}", f"run.storage_path={tmp_path}",
               "run.name=run", *overrides)
    history = train_local(cfg).history
    losses = history["loss"].tolist()
    assert np.isfinite(history.select_dtypes("number").to_numpy(float)).all()
    assert losses[-1] < 0.95 * losses[0], losses
