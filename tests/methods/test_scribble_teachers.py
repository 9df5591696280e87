"""USTM and DMPLS, the scribble methods with a second network or decoder, on tiny tensors and tiny U-Nets.

USTM: the square symmetries, a consistency that vanishes for a transformation-equivariant
student and its own teacher, only certain pixels counted, pCE unaffected by unannotated
pixels, the EMA teacher. DMPLS: the dual-decoder net (plain forward = the U-Net, a perturbed
auxiliary decoder), the mixed hard pseudo-label, the loss formula with no gradient through the
pseudo-label, gradients into both decoders, a plain U-Net checkpoint loads into it. Registry, options and one optimisation step are
in test_scribble_methods.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from aide_ray.config import load_config
from aide_ray.methods.dmpls import Dmpls, DualDecoderNet, mixed_pseudo_label
from aide_ray.methods.pce import annotated_pixels, partial_cross_entropy
from aide_ray.methods.ustm import Ustm, draw_square_symmetries, square_symmetry
from aide_ray.nn.losses import soft_dice_loss_per_sample
from aide_ray.nn.unet import UNet2D
from aide_ray.runs.net_weights import load_matching

from test_scribble_methods import SIZE, scribble_batch  # tests/methods is on sys.path (no package)


def _cfg(method: str, *overrides: str):
    return load_config(None, [f"method={method}", "model.base_width=4", "batch_size=4", *overrides])


# --------------------------------------------------------------------------- USTM

def test_square_symmetry_mirrors_then_turns_each_row():
    x = torch.arange(2 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    out = square_symmetry(x, torch.tensor([1, 2]), torch.tensor([True, False]))
    torch.testing.assert_close(out[0], torch.rot90(x[0].flip(-1), 1, (-2, -1)))
    torch.testing.assert_close(out[1], torch.rot90(x[1], 2, (-2, -1)))
    torch.manual_seed(0)
    turns, mirrored = draw_square_symmetries(64, 8, 16, mirror=False)
    assert set(turns.tolist()) <= {0, 2} and not mirrored.any()  # no quarter turns of a non-square image
    turns, mirrored = draw_square_symmetries(64, 8, 8, mirror=True)
    assert set(turns.tolist()) == {0, 1, 2, 3} and 0 < int(mirrored.sum()) < 64


class PointwiseNet(nn.Module):
    """A 1x1 convolution: equivariant to every rotation and mirroring of the image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class PositionNet(nn.Module):
    """Logits that depend on the pixel position, not the image: no equivariance at all."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.randn(1, 2, SIZE, SIZE) * 3.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1) + 0.0 * x.sum()


def _ustm_nets(student: nn.Module) -> dict[str, nn.Module]:
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return {"student": student, "teacher": teacher}


def test_ustm_consistency_vanishes_for_an_equivariant_student_and_its_teacher():
    method = Ustm.from_config(_cfg("ustm", "ustm.noise_std=0", "ustm.ramp_epochs=0", "ustm.num_passes=2"), 1)
    batch = scribble_batch([True] * 4)
    torch.manual_seed(0)
    out = method.train_step(_ustm_nets(PointwiseNet()), batch, epoch=0)
    assert out.metrics["loss_cons"] == pytest.approx(0.0, abs=1e-7)
    torch.manual_seed(0)
    positional = method.train_step(_ustm_nets(PositionNet()), batch, epoch=0)
    assert positional.metrics["loss_cons"] > 1e-3  # a rotated position map is not the position map


def test_ustm_loss_is_pce_plus_weighted_consistency_and_pce_ignores_unannotated_pixels():
    method = Ustm.from_config(_cfg("ustm", "ustm.noise_std=0", "ustm.ramp_epochs=0", "ustm.num_passes=2",
                                   "ustm.consistency_weight=0.3"), 1)
    batch = scribble_batch()
    torch.manual_seed(1)
    nets = _ustm_nets(PositionNet())
    out = method.train_step(nets, batch, epoch=0)
    pce = partial_cross_entropy(nets["student"](batch.image), batch.labels[:, 0], batch.labelled)
    assert out.metrics["loss_pce"] == pytest.approx(pce.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(pce.item() + 0.3 * out.metrics["loss_cons"], rel=1e-5)
    assert 0.0 <= out.metrics["certain_share"] <= 1.0
    # Moving the student's logits where nobody annotated changes only the consistency.
    unannotated = ~annotated_pixels(batch.labels[:, 0], batch.labelled)
    with torch.no_grad():
        nets["student"].logits.add_(5.0 * unannotated[:1].unsqueeze(1))
    torch.manual_seed(1)
    moved = method.train_step(nets, batch, epoch=0)
    assert moved.metrics["loss_pce"] == pytest.approx(out.metrics["loss_pce"], rel=1e-6)


def test_ustm_counts_only_pixels_the_teacher_is_certain_about():
    # Early in the ramp the threshold is 0.75 ln 2; a teacher at exactly 50/50 is never below it.
    method = Ustm.from_config(_cfg("ustm", "ustm.noise_std=0", "ustm.num_passes=2", "ustm.ramp_epochs=10"), 1)
    uncertain = PositionNet()
    with torch.no_grad():
        uncertain.logits.zero_()
    nets = {"student": PositionNet(), "teacher": uncertain.requires_grad_(False)}
    out = method.train_step(nets, scribble_batch(), epoch=0)
    assert out.metrics["certain_share"] == 0.0 and out.metrics["loss_cons"] == 0.0


def test_ustm_teacher_is_the_ema_of_the_student_and_the_evaluated_net():
    method = Ustm.from_config(_cfg("ustm", "ustm.ema_decay=0.9"), 1)
    torch.manual_seed(2)
    nets = method.build_nets()
    assert method.eval_nets == ("teacher",) and method.trained_nets == ("student",)
    assert not any(p.requires_grad for p in nets["teacher"].parameters())
    with torch.no_grad():
        for p in nets["student"].parameters():
            p.add_(1.0)
    before = [p.clone() for p in nets["teacher"].parameters()]
    method.after_optimizer_step(nets, epoch=0)
    for t, t0, s in zip(nets["teacher"].parameters(), before, nets["student"].parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s)


# --------------------------------------------------------------------------- DMPLS

def test_dual_decoder_net_forward_is_the_unet_and_the_auxiliary_decoder_is_perturbed():
    torch.manual_seed(3)
    unet = UNet2D(1, 2, base_width=4)
    net = DualDecoderNet(copy.deepcopy(unet), aux_dropout=0.5).eval()
    unet.eval()
    x = torch.randn(2, 1, SIZE, SIZE)
    torch.testing.assert_close(net(x), unet(x))
    main, aux = net(x, both=True)
    torch.testing.assert_close(main, unet(x))
    assert aux.shape == main.shape and not torch.allclose(aux, main)
    _, aux_again = net(x, both=True)
    assert not torch.allclose(aux, aux_again)  # a fresh dropout mask on every call


def test_mixed_pseudo_label_is_the_argmax_of_the_mixture():
    p1 = torch.tensor([0.9, 0.1, 0.4]).view(1, 1, 1, 3)
    p1 = torch.cat([p1, 1 - p1], dim=1)
    p2 = torch.tensor([0.2, 0.3, 0.8]).view(1, 1, 1, 3)
    p2 = torch.cat([p2, 1 - p2], dim=1)
    assert mixed_pseudo_label(p1, p2, 1.0).tolist() == [[[0, 1, 1]]]
    assert mixed_pseudo_label(p1, p2, 0.0).tolist() == [[[1, 1, 0]]]
    assert mixed_pseudo_label(p1, p2, 0.5).tolist() == [[[0, 1, 0]]]  # (0.55, 0.2, 0.6) for class 0
    assert not mixed_pseudo_label(p1.requires_grad_(), p2, 0.5).requires_grad


class TwoFixedDecoders(nn.Module):
    """A stand-in dual-decoder net whose two outputs are parameters."""

    def __init__(self, main: Tensor, aux: Tensor) -> None:
        super().__init__()
        self.main = nn.Parameter(main.clone())
        self.aux = nn.Parameter(aux.clone())

    def forward(self, x: Tensor, both: bool = False):
        return (self.main, self.aux) if both else self.main


def test_dmpls_loss_is_mean_pce_plus_weighted_dice_to_the_mixed_pseudo_label():
    torch.manual_seed(4)
    method = Dmpls.from_config(_cfg("dmpls", "dmpls.pseudo_weight=0.4"), 1)
    batch = scribble_batch()
    main, aux = torch.randn(4, 2, SIZE, SIZE), torch.randn(4, 2, SIZE, SIZE)
    net = TwoFixedDecoders(main, aux)
    out = method.train_step({"net": net}, batch, epoch=0)
    target, rows = batch.labels[:, 0], batch.labelled
    p1, p2 = torch.softmax(main, 1), torch.softmax(aux, 1)
    pseudo = (out.metrics["alpha"] * p1 + (1 - out.metrics["alpha"]) * p2).argmax(1)
    sup = 0.5 * (partial_cross_entropy(main, target, rows) + partial_cross_entropy(aux, target, rows))
    dice = 0.5 * (soft_dice_loss_per_sample(p1, pseudo).mean() + soft_dice_loss_per_sample(p2, pseudo).mean())
    assert out.loss.item() == pytest.approx((sup + 0.4 * dice).item(), rel=1e-5)
    assert out.metrics["loss_pseudo"] == pytest.approx(dice.item(), rel=1e-5)
    out.loss.backward()
    # Every pixel of both branches learns, annotated or not (the pseudo-label covers them all).
    unannotated = ~annotated_pixels(target, rows)
    for grad in (net.main.grad, net.aux.grad):
        assert (grad.abs().sum(1)[unannotated] > 0).float().mean() > 0.9


def test_dmpls_trains_the_encoder_and_both_decoders_and_evaluates_the_main_one():
    method = Dmpls.from_config(_cfg("dmpls"), 1)
    torch.manual_seed(5)
    nets = method.build_nets()
    assert isinstance(nets["net"], DualDecoderNet)
    assert method.eval_nets == ("net",) and method.needs_unet
    out = method.train_step(nets, scribble_batch(), epoch=0)
    out.loss.backward()
    parts = {"encoder": nets["net"].unet.encoder, "main": nets["net"].unet.decoder, "aux": nets["net"].aux_decoders}
    for name, part in parts.items():
        assert all(p.grad is not None for p in part.parameters()), name


def test_a_plain_unet_checkpoint_starts_the_dual_decoder_net():
    # model.init_from: every U-Net tensor loaded, the auxiliary decoder left at its initialisation.
    torch.manual_seed(6)
    unet = UNet2D(1, 2, base_width=4)
    net = DualDecoderNet(UNet2D(1, 2, base_width=4), aux_dropout=0.5)
    left_at_init, ignored = load_matching(net, unet.state_dict())
    assert left_at_init and all(k.startswith("aux_decoders.") for k in left_at_init) and not ignored
    x = torch.randn(1, 1, SIZE, SIZE)
    torch.testing.assert_close(net.eval()(x), unet.eval()(x))
