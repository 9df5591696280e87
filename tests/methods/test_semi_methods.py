"""The defining rule of each semi-supervised method of issue 14, on tiny tensors and tiny U-Nets.

entmin: the entropy term reaches unlabelled rows only. uamt: pixels the teacher is
uncertain about (entropy above the ramped threshold) leave the consistency; EMA teacher.
urpc: the pyramid (levels, shapes), its exp(-KL) rectification weights, supervision of
every level. cct: auxiliary decoders read perturbed features, consistency on unlabelled
rows only and never through the main decoder, main output as the U-Net's. End-to-end
runs are in test_baselines.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aide_ray.config import load_config
from aide_ray.exceptions import ConfigError
from aide_ray.methods.base import Batch
from aide_ray.methods.cct import Cct, CctNet, feature_drop, feature_noise
from aide_ray.methods.entmin import EntMin, entropy_map
from aide_ray.methods.registry import method_class
from aide_ray.methods.uamt import Uamt, masked_consistency, teacher_uncertainty, uncertainty_threshold
from aide_ray.methods.urpc import Urpc, pyramid_divergence, rectified_pyramid_consistency
from aide_ray.nn.losses import segmentation_loss_per_sample
from aide_ray.nn.unet import UNet2D

SIZE = 32


def _cfg(method: str, *overrides: str):
    return load_config(None, [f"method={method}", "model.base_width=4", *overrides])


def _batch(labelled: list[bool], seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    n = len(labelled)
    lab = torch.tensor(labelled)
    labels = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.int64)
    labels[:, :, 8:24, 10:22] = 1
    labels[~lab] = 0
    return Batch(torch.randn(n, 1, SIZE, SIZE, generator=g), labels, lab, torch.zeros(n, dtype=torch.bool),
                 torch.arange(n))


class ParamLogits(nn.Module):
    """A 'network' whose output is a parameter: per-row, per-pixel gradients are visible."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.logits


class FixedPyramid(nn.Module):
    """Given pyramid logits (S of (B, C, H, W)) times a scale parameter; ``net(x)`` is level 0."""

    def __init__(self, levels: list[Tensor]) -> None:
        super().__init__()
        self.register_buffer("levels", torch.stack(levels))
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor, pyramid: bool = False):
        out = [self.scale * level for level in self.levels]
        return out if pyramid else out[0]


def test_registry_resolves_the_semi_supervised_methods():
    for name, cls in [("entmin", EntMin), ("uamt", Uamt), ("urpc", Urpc), ("cct", Cct)]:
        assert method_class(name) is cls and cls.name == name and cls.uses_unlabelled


@pytest.mark.parametrize("override, message", [
    ("entmin.entropy_weight=-1", r"entmin.entropy_weight must be in \[0, inf\)"),
    ("uamt.num_passes=0", r"uamt.num_passes must be in \[1, 64\]"),
    ("uamt.ema_decay=1.0", r"uamt.ema_decay must be in \[0, 1\)"),
    ("urpc.ramp_epochs=-2", r"urpc.ramp_epochs must be in \[0, inf\)"),
    ("cct.noise_range=0", r"cct.noise_range must be in \(0, inf\)"),
    ("cct.perturbations=dropout,feature_dorp", r"cct.perturbations must be a comma-separated list of .*"
                                               r"did you mean 'feature_drop'"),
    ("cct.perturbations=''", r"cct.perturbations must be a comma-separated list"),
])
def test_options_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


# --------------------------------------------------------------------------- entmin

def test_entropy_map_formula_and_limits():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    p = torch.softmax(logits, 1)
    torch.testing.assert_close(entropy_map(logits), -(p * p.log()).sum(1))
    assert torch.allclose(entropy_map(torch.zeros(1, 3, 2, 2)), torch.full((1, 2, 2), math.log(3)))
    confident = torch.tensor([200.0, -200.0]).view(1, 2, 1, 1)
    assert entropy_map(confident).item() == 0.0  # no 0 * log 0 = NaN


def test_entmin_entropy_term_reaches_unlabelled_rows_only():
    torch.manual_seed(1)
    batch = _batch([True, False, True, False])
    method = EntMin.from_config(_cfg("entmin", "entmin.entropy_weight=0.5", "entmin.ramp_epochs=0"), 1)
    logits = torch.randn(4, 2, SIZE, SIZE)
    net = ParamLogits(logits)
    out = method.train_step({"net": net}, batch, epoch=0)
    lab, unl = batch.labelled, ~batch.labelled
    sup = segmentation_loss_per_sample(logits[lab], batch.labels[lab, 0]).mean()
    ent = entropy_map(logits[unl]).mean()
    assert out.loss.item() == pytest.approx((sup + 0.5 * ent).item(), rel=1e-5)
    assert out.metrics["loss_entropy"] == pytest.approx(ent.item(), rel=1e-5)
    out.loss.backward()
    # Labelled rows get the gradient of L_seg alone, unlabelled rows that of the entropy alone.
    ref_sup = ParamLogits(logits[lab])
    segmentation_loss_per_sample(ref_sup(None), batch.labels[lab, 0]).mean().backward()
    ref_ent = ParamLogits(logits[unl])
    (0.5 * entropy_map(ref_ent(None)).mean()).backward()
    torch.testing.assert_close(net.logits.grad[lab], ref_sup.logits.grad)
    torch.testing.assert_close(net.logits.grad[unl], ref_ent.logits.grad)
    all_labelled = method.train_step({"net": net}, _batch([True] * 4), epoch=0)
    assert all_labelled.metrics["loss_entropy"] == 0


def test_entmin_weight_is_ramped():
    method = EntMin.from_config(_cfg("entmin", "entmin.entropy_weight=2.0", "entmin.ramp_epochs=10"), 1)
    assert method.entropy_weight(0) == pytest.approx(2 * math.exp(-5))
    assert method.entropy_weight(10) == 2.0


# --------------------------------------------------------------------------- uamt

def test_uncertainty_threshold_ramps_from_three_quarters_of_ln_c():
    assert uncertainty_threshold(0, 10, 2) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    assert uncertainty_threshold(10, 10, 4) == pytest.approx(math.log(4))
    assert uncertainty_threshold(0, 0, 3) == pytest.approx(math.log(3))


def test_teacher_uncertainty_is_entropy_of_the_mean_softmax():
    torch.manual_seed(2)
    net = UNet2D(1, 3, base_width=4).eval()
    image = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        expected = entropy_map(net(image))
    torch.testing.assert_close(teacher_uncertainty(net, image, 4, 0.0), expected, rtol=1e-4, atol=1e-5)
    # With noise, T passes: the entropy of the average of T different softmaxes.
    torch.manual_seed(3)
    u = teacher_uncertainty(net, image, 3, 0.5)
    torch.manual_seed(3)
    with torch.no_grad():
        probs = [torch.softmax(net(image + (torch.randn_like(image) * 0.5).clamp(-1, 1)), 1) for _ in range(3)]
    mean = torch.stack(probs).mean(0)
    torch.testing.assert_close(u, -(mean * mean.log()).sum(1), rtol=1e-4, atol=1e-5)


def test_masked_consistency_excludes_uncertain_pixels():
    torch.manual_seed(4)
    student = torch.softmax(torch.randn(2, 2, 4, 4), 1)
    teacher = torch.softmax(torch.randn(2, 2, 4, 4), 1)
    certain = torch.zeros(2, 4, 4, dtype=torch.bool)
    certain[:, :2] = True
    expected = ((student - teacher) ** 2).sum(1)[certain].mean()
    assert masked_consistency(student, teacher, certain).item() == pytest.approx(expected.item(), rel=1e-6)
    changed = student.clone()
    changed[:, :, 2:] = teacher[:, :, 2:] + 0.3  # only uncertain pixels differ more
    assert masked_consistency(changed, teacher, certain).item() == pytest.approx(expected.item(), rel=1e-6)
    none = masked_consistency(student, teacher, torch.zeros_like(certain))
    assert none.item() == 0.0


def test_uamt_step_masks_the_pixels_the_teacher_is_unsure_of():
    torch.manual_seed(5)
    method = Uamt.from_config(_cfg("uamt", "uamt.consistency_weight=2.0", "uamt.ramp_epochs=4", "uamt.num_passes=3"), 1)
    batch = _batch([True, False, True, False])
    teacher_logits = torch.zeros(4, 2, SIZE, SIZE)
    teacher_logits[:, 1, :, SIZE // 2:] = 4.0  # left half uniform (entropy ln 2), right half confident
    student_logits = torch.randn(4, 2, SIZE, SIZE)
    nets = {"student": ParamLogits(student_logits), "teacher": ParamLogits(teacher_logits).requires_grad_(False)}
    out = method.train_step(nets, batch, epoch=2)
    lab = batch.labelled
    threshold = (0.75 + 0.25 * math.exp(-5 * 0.25)) * math.log(2)
    assert out.metrics["threshold"] == pytest.approx(threshold)
    assert out.metrics["certain_share"] == 0.5
    sq = ((torch.softmax(student_logits, 1) - torch.softmax(teacher_logits, 1)) ** 2).sum(1)
    cons = sq[:, :, SIZE // 2:].mean()  # every row, certain (right) half only
    sup = segmentation_loss_per_sample(student_logits[lab], batch.labels[lab, 0]).mean()
    weight = 2.0 * math.exp(-5 * 0.25)
    assert out.loss.item() == pytest.approx((sup + weight * cons).item(), rel=1e-5)
    out.loss.backward()
    grad = nets["student"].logits.grad
    unl = ~lab
    assert grad[unl][..., : SIZE // 2].abs().max() == 0  # uncertain pixels of unlabelled rows: no gradient
    assert grad[unl][..., SIZE // 2:].abs().max() > 0


def test_uamt_teacher_is_an_ema_of_the_student_without_gradients():
    torch.manual_seed(6)
    method = Uamt.from_config(_cfg("uamt", "uamt.ema_decay=0.9", "uamt.num_passes=2"), 1)
    nets = method.build_nets()
    for s, t in zip(nets["student"].state_dict().values(), nets["teacher"].state_dict().values()):
        assert torch.equal(s, t)
    teacher0 = {k: v.clone() for k, v in nets["teacher"].named_parameters()}
    opt = torch.optim.SGD(nets["student"].parameters(), lr=0.1)
    out = method.train_step(nets, _batch([True, False]), epoch=0)
    out.loss.backward()
    assert all(p.grad is None for p in nets["teacher"].parameters())
    opt.step()
    method.after_optimizer_step(nets, epoch=0)
    student = dict(nets["student"].named_parameters())
    for name, t in nets["teacher"].named_parameters():
        torch.testing.assert_close(t, 0.9 * teacher0[name] + 0.1 * student[name].detach(), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- urpc

def test_urpc_net_has_a_four_level_pyramid_and_a_plain_main_output():
    torch.manual_seed(7)
    method = Urpc.from_config(_cfg("urpc", "model.num_classes=3"), 1)  # model.deep_supervision stays false
    net = method.build_nets()["net"]
    x = torch.randn(2, 1, SIZE, SIZE)
    levels = net(x, pyramid=True)
    assert len(levels) == 4 and all(t.shape == (2, 3, SIZE, SIZE) for t in levels)
    main = net(x)
    assert isinstance(main, Tensor) and torch.equal(main, levels[0])
    assert not torch.allclose(levels[1], levels[0])


def test_pyramid_divergence_is_kl_of_each_level_from_the_mean():
    torch.manual_seed(8)
    levels = [torch.randn(2, 3, 4, 4) for _ in range(4)]
    probs, mean, kl = pyramid_divergence(levels)
    p = torch.stack([torch.softmax(t, 1) for t in levels])
    torch.testing.assert_close(probs, p)
    torch.testing.assert_close(mean, p.mean(0))
    torch.testing.assert_close(kl, (p * (p.log() - p.mean(0).log())).sum(2), rtol=1e-5, atol=1e-6)
    same = pyramid_divergence([levels[0]] * 3)[2]
    assert same.abs().max() < 1e-6
    with pytest.raises(ValueError, match="at least 2"):
        pyramid_divergence(levels[:1])


def test_rectified_consistency_weights_are_exp_minus_kl():
    torch.manual_seed(9)
    levels = [torch.randn(2, 2, 4, 4) * 3 for _ in range(4)]
    loss, weights = rectified_pyramid_consistency(levels)
    p = torch.stack([torch.softmax(t, 1) for t in levels])
    mean = p.mean(0)
    kl = (p * (p.log() - mean.log())).sum(2)
    w = torch.exp(-kl)
    torch.testing.assert_close(weights, w, rtol=1e-5, atol=1e-6)
    assert float(w.min()) < 0.9  # the levels disagree: some pixels are down-weighted
    sq = ((p - mean) ** 2).sum(2)
    expected = torch.stack([(w[s] * sq[s]).sum() / w[s].sum() + kl[s].mean() for s in range(4)]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    zero, ones = rectified_pyramid_consistency([levels[0]] * 4)
    assert zero.item() == pytest.approx(0.0, abs=1e-6) and torch.allclose(ones, torch.ones_like(ones))


def test_urpc_step_supervises_every_level_and_rectifies_unlabelled_rows_only():
    torch.manual_seed(10)
    method = Urpc.from_config(_cfg("urpc", "urpc.consistency_weight=0.5", "urpc.ramp_epochs=0"), 1)
    batch = _batch([True, False, True, False])
    levels = [torch.randn(4, 2, SIZE, SIZE) for _ in range(4)]
    out = method.train_step({"net": FixedPyramid(levels)}, batch, epoch=0)
    lab, unl = batch.labelled, ~batch.labelled
    sup = torch.stack([segmentation_loss_per_sample(t[lab], batch.labels[lab, 0]).mean() for t in levels]).mean()
    cons, weights = rectified_pyramid_consistency([t[unl] for t in levels])
    assert out.loss.item() == pytest.approx((sup + 0.5 * cons).item(), rel=1e-5)
    assert out.metrics["rectify_weight_mean"] == pytest.approx(float(weights.mean()), rel=1e-6)
    # Labelled rows do not enter the consistency: changing them leaves it as it was.
    other = [t.clone() for t in levels]
    for t in other:
        t[lab] = torch.randn_like(t[lab])
    again = method.train_step({"net": FixedPyramid(other)}, batch, epoch=0)
    assert again.metrics["loss_cons"] == pytest.approx(out.metrics["loss_cons"], rel=1e-6)
    assert again.metrics["loss_sup"] != pytest.approx(out.metrics["loss_sup"], rel=1e-3)


# --------------------------------------------------------------------------- cct

def test_feature_drop_and_noise():
    x = torch.zeros(1, 2, 2, 2)
    x[0, :, 0, 0] = 10.0  # the peak of the attention map
    x[0, :, 1, 1] = 1.0
    dropped = feature_drop(x)
    assert dropped[0, :, 0, 0].abs().max() == 0 and torch.equal(dropped[0, :, 1, 1], x[0, :, 1, 1])
    torch.manual_seed(11)
    y = torch.randn(2, 3, 4, 4)
    noisy = feature_noise(y, 0.3)
    assert not torch.equal(noisy, y) and bool(((noisy - y).abs() <= 0.3 * y.abs() + 1e-7).all())


def test_cct_net_main_output_is_the_unets_and_aux_decoders_get_perturbed_features():
    torch.manual_seed(12)
    method = Cct.from_config(_cfg("cct", "model.num_classes=3"), 1)
    net = method.build_nets()["net"]
    assert isinstance(net, CctNet) and len(net.aux_decoders) == 3
    x = torch.randn(4, 1, SIZE, SIZE)
    main = net(x)
    assert isinstance(main, Tensor) and main.shape == (4, 3, SIZE, SIZE)
    assert torch.equal(main, net.unet(x))
    seen: dict[str, list[Tensor]] = {}
    for name, module in [("main", net.unet.decoder), *((f"aux{k}", d) for k, d in enumerate(net.aux_decoders))]:
        module.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, list(args[0])))
    rows = torch.tensor([False, True, False, True])
    main2, aux = net(x, aux_rows=rows)
    assert torch.equal(main2, main) and len(aux) == 3
    assert all(a.shape == (2, 3, SIZE, SIZE) for a in aux)
    clean = net.unet.encode(x)
    for level, f in enumerate(clean):
        assert torch.equal(seen["main"][level], f)
        for k in range(3):
            assert seen[f"aux{k}"][level].shape == f[rows].shape
            assert not torch.equal(seen[f"aux{k}"][level], f[rows]), (k, level)


def test_cct_step_consistency_on_unlabelled_rows_never_trains_the_main_decoder():
    torch.manual_seed(13)
    method = Cct.from_config(_cfg("cct", "cct.consistency_weight=3.0", "cct.ramp_epochs=0"), 1)
    net = method.build_nets()["net"]
    batch = _batch([True, False, True, False])
    lab, unl = batch.labelled, ~batch.labelled
    torch.manual_seed(14)
    out = method.train_step({"net": net}, batch, epoch=0)
    torch.manual_seed(14)  # the same perturbations again
    with torch.no_grad():
        main, aux = net(batch.image, aux_rows=unl)
    target = torch.softmax(main[unl], 1)
    cons = torch.stack([((torch.softmax(a, 1) - target) ** 2).mean() for a in aux]).mean()
    sup = segmentation_loss_per_sample(main[lab], batch.labels[lab, 0]).mean()
    assert out.metrics["loss_cons"] == pytest.approx(cons.item(), rel=1e-4)
    assert out.loss.item() == pytest.approx((sup + 3.0 * cons).item(), rel=1e-4)
    # Only unlabelled rows: the main decoder gets a zero gradient, encoder and aux decoders a real one.
    net.zero_grad()
    only_unl = method.train_step({"net": net}, _batch([False] * 4), epoch=0)
    only_unl.loss.backward()
    assert all(float(p.grad.abs().max()) == 0 for p in net.unet.decoder.parameters())
    assert any(float(p.grad.abs().max()) > 0 for p in net.unet.encoder.parameters())
    assert all(p.grad is not None for p in net.aux_decoders.parameters())
    # Only labelled rows: no consistency, yet every parameter has a gradient (DDP).
    net.zero_grad(set_to_none=True)
    only_lab = method.train_step({"net": net}, _batch([True] * 4), epoch=0)
    only_lab.loss.backward()
    assert only_lab.metrics["loss_cons"] == 0
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("name", ["urpc", "cct"])
def test_state_dict_round_trips_into_a_fresh_build(name):
    # What load_checkpoint does: the method rebuilds its nets and loads them strictly.
    method = method_class(name).from_config(_cfg(name), 2)
    saved = {k: v.state_dict() for k, v in method.build_nets().items()}
    fresh = method.build_nets()
    for k, net in fresh.items():
        net.load_state_dict(saved[k])
        assert net.eval()(torch.randn(1, 2, SIZE, SIZE)).shape == (1, 2, SIZE, SIZE)
