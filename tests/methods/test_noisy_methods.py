"""The defining rule of each noisy-label method of issue 14, on tiny hand-made tensors.

MAE: the formula 2 (1 - p_y), bounded and symmetric. CL-SLSR: the confident
joint's off-diagonal pixels of a hand-made probability map, and smoothing
only there. TriNet: a net learns only where both peers keep the entry and
agree. DAST: the divergence-damped noisiness score, and the selective
training it drives (severe rows lose their label, slight rows train the
clean branch). The end-to-end runs are in test_baselines.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aide_ray.config import load_config
from aide_ray.exceptions import ConfigError
from aide_ray.methods.base import Batch, Phase
from aide_ray.methods.clslsr import (
    ClSlsr,
    class_thresholds,
    confident_error_mask,
    gaussian_smoothed_label,
    slsr_loss_per_sample,
    slsr_target,
)
from aide_ray.methods.dast import (
    Dast,
    divergence_map,
    dual_branch_consistency_per_sample,
    noisiness_score,
    rank_noisy_rows,
    refined_label,
)
from aide_ray.methods.mae import Mae, mean_absolute_error_per_sample
from aide_ray.methods.registry import method_class
from aide_ray.methods.trinet import TriNet, trinet_masks
from aide_ray.nn.losses import segmentation_loss_per_sample

SIZE = 8


def _cfg(method: str, *overrides: str):
    return load_config(None, [f"method={method}", "model.base_width=4", "batch_size=4", *overrides])


def _batch(target: Tensor, labelled: list[bool] | None = None, hq: list[bool] | None = None) -> Batch:
    n = target.shape[0]
    lab = torch.tensor(labelled if labelled is not None else [True] * n)
    hq_t = torch.tensor(hq if hq is not None else [False] * n)
    return Batch(torch.zeros(n, 1, *target.shape[1:]), target.unsqueeze(1).clone(), lab, hq_t, torch.arange(n))


def _target(n: int) -> Tensor:
    t = torch.zeros(n, SIZE, SIZE, dtype=torch.int64)
    t[:, 2:6, 2:6] = 1
    return t


class FixedLogits(nn.Module):
    """A 'network' whose logits are given: ``scale * logits``; ``scale`` (=1) carries the gradient."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.logits


def _logits(cls: Tensor, confidence: float | Tensor = 4.0) -> Tensor:
    """(B, 2, H, W) logits putting ``confidence`` on ``cls`` (a (B, H, W) class map)."""
    return F.one_hot(cls, 2).movedim(-1, 1).float() * confidence


def test_registry_resolves_the_noisy_label_methods():
    for name, cls in [("mae", Mae), ("clslsr", ClSlsr), ("trinet", TriNet), ("dast", Dast)]:
        assert method_class(name) is cls and cls.name == name


# --------------------------------------------------------------------------- MAE

def test_mae_is_two_times_one_minus_p_y_bounded_and_symmetric():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 6)
    target = torch.randint(0, 4, (3, 5, 6))
    p = torch.softmax(logits, 1)
    y = F.one_hot(target, 4).movedim(-1, 1).float()
    out = mean_absolute_error_per_sample(logits, target)
    torch.testing.assert_close(out, (p - y).abs().sum(1).mean(dim=(1, 2)))
    torch.testing.assert_close(out, (2 * (1 - p.gather(1, target.unsqueeze(1)).squeeze(1))).mean(dim=(1, 2)))
    # Symmetry (Ghosh et al.): summed over every possible label the loss is the constant 2 (C - 1).
    total = sum(mean_absolute_error_per_sample(logits, torch.full_like(target, c)) for c in range(4))
    torch.testing.assert_close(total, torch.full((3,), 6.0))
    # Bounded in [0, 2]: a confidently wrong net costs at most 2, however confident.
    wrong = _logits(1 - _target(1), 1e4)
    assert mean_absolute_error_per_sample(wrong, _target(1)).item() == pytest.approx(2.0)
    assert mean_absolute_error_per_sample(-wrong, _target(1)).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="target must have shape"):
        mean_absolute_error_per_sample(logits, target[:, :2])


def test_mae_step_uses_labelled_rows_and_is_finite_without_them():
    torch.manual_seed(1)
    target = _target(4)
    net = FixedLogits(torch.randn(4, 2, SIZE, SIZE))
    method = Mae.from_config(_cfg("mae"), 1)
    out = method.train_step({"net": net}, _batch(target, [True, False, True, False]), epoch=0)
    expected = mean_absolute_error_per_sample(net.logits, target)[[0, 2]].mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    empty = method.train_step({"net": net}, _batch(target, [False] * 4), epoch=0)
    empty.loss.backward()
    assert empty.loss.item() == 0 and net.scale.grad is not None


# --------------------------------------------------------------------------- CL-SLSR

def _cl_map() -> tuple[Tensor, Tensor, Tensor]:
    """Sample 0 (labelled): label 0 on row 0 and 1 on row 1 of a 2 x 4 image; sample 1 unlabelled."""
    target = torch.tensor([[[0, 0, 0, 0], [1, 1, 1, 1]], [[1, 1, 1, 1], [1, 1, 1, 1]]])
    p1 = torch.tensor([[[0.1, 0.2, 0.9, 0.45], [0.8, 0.7, 0.3, 0.55]],
                       [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    probs = torch.stack([1 - p1, p1], dim=1)
    mask = torch.tensor([True, False]).view(2, 1, 1).expand(2, 2, 4)
    return probs, target, mask


def test_confident_learning_flags_the_off_diagonal_pixels_of_a_hand_made_map():
    probs, target, mask = _cl_map()
    # t_0 = mean p_0 over the pixels labelled 0 = (0.9 + 0.8 + 0.1 + 0.55) / 4; t_1 likewise = 0.5875.
    torch.testing.assert_close(class_thresholds(probs, target, mask), torch.tensor([0.5875, 0.5875]))
    flagged = confident_error_mask(probs, target, mask)
    # (0, 2): labelled 0, p_1 = 0.9 >= t_1; (1, 2): labelled 1, p_0 = 0.7 >= t_0. Column 3 is
    # confident in neither class (0.45 / 0.55 < 0.5875): not flagged. Sample 1 does not count.
    expected = torch.zeros(2, 2, 4, dtype=torch.bool)
    expected[0, :, 2] = True
    assert torch.equal(flagged, expected)


def test_confident_learning_matches_a_brute_force_confident_joint():
    g = torch.Generator().manual_seed(2)
    probs = torch.softmax(3 * torch.randn(2, 3, 5, 5, generator=g), 1)
    target = torch.randint(0, 3, (2, 5, 5), generator=g)
    mask = torch.ones(2, 5, 5, dtype=torch.bool)
    t = [probs[:, j][target == j].mean() for j in range(3)]
    flagged = confident_error_mask(probs, target, mask)
    for b, y, x in torch.cartesian_prod(torch.arange(2), torch.arange(5), torch.arange(5)).tolist():
        above = [j for j in range(3) if probs[b, j, y, x] >= t[j] - 1e-6]
        best = max(above, key=lambda j: probs[b, j, y, x]) if above else None
        assert bool(flagged[b, y, x]) == (best is not None and best != int(target[b, y, x]))
    assert flagged.any() and not flagged.all()


def test_slsr_smooths_only_the_flagged_pixels():
    target = torch.zeros(1, 9, 9, dtype=torch.int64)
    target[:, :, 5:] = 1
    flagged = torch.zeros(1, 9, 9, dtype=torch.bool)
    flagged[0, 4, 4] = flagged[0, 0, 0] = True
    one_hot = F.one_hot(target, 2).movedim(-1, 1).float()
    soft = slsr_target(target, flagged, 2, epsilon=0.5, smoothing="gaussian", sigma=1.0)
    assert torch.equal(soft[:, :, ~flagged[0]], one_hot[:, :, ~flagged[0]])
    blur = gaussian_smoothed_label(target, 2, 1.0)
    torch.testing.assert_close(soft[0, :, 4, 4], 0.5 * one_hot[0, :, 4, 4] + 0.5 * blur[0, :, 4, 4])
    assert 0.5 < soft[0, 0, 4, 4] < 1.0  # next to the edge: part of the neighbouring class blurs in
    torch.testing.assert_close(soft[0, :, 0, 0], one_hot[0, :, 0, 0])  # far from it: nothing to blur in
    torch.testing.assert_close(soft.sum(1), torch.ones(1, 9, 9))
    uniform = slsr_target(target, flagged, 2, epsilon=0.5, smoothing="uniform")
    torch.testing.assert_close(uniform[0, :, 4, 4], torch.tensor([0.75, 0.25]))  # PyMIC's SLSRLoss, eps 0.25
    torch.testing.assert_close(blur.sum(1), torch.ones(1, 9, 9))
    with pytest.raises(ValueError, match="smoothing must be one of"):
        slsr_target(target, flagged, 2, 0.5, smoothing="box")


def test_slsr_loss_is_l_seg_when_nothing_is_flagged():
    torch.manual_seed(3)
    logits, target = torch.randn(2, 3, 6, 6), torch.randint(0, 3, (2, 6, 6))
    none = torch.zeros(2, 6, 6, dtype=torch.bool)
    soft = slsr_target(target, none, 3, 0.5)
    torch.testing.assert_close(slsr_loss_per_sample(logits, target, soft, none),
                               segmentation_loss_per_sample(logits, target))


def test_clslsr_warm_up_is_supervised_then_trains_on_corrected_targets():
    method = ClSlsr.from_config(_cfg("clslsr", "clslsr.warmup_epochs=2", "clslsr.lr_factor=0.5"), 1)
    assert method.phase(1) == Phase() and method.phase(2) == Phase(index=1, start_epoch=2, lr_factor=0.5)
    assert ClSlsr.grace_epochs(method.options) == 3
    target = _target(2)
    wrong = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    wrong[0, 0, :4] = True  # the net confidently disagrees with the label on these 4 pixels only
    net = FixedLogits(_logits(torch.where(wrong, 1 - target, target), 3.0))
    batch = _batch(target)
    warm = method.train_step({"net": net}, batch, epoch=1)
    assert warm.loss.item() == pytest.approx(segmentation_loss_per_sample(net.logits, target).mean().item())
    assert warm.metrics["flagged_pixels"] == 0.0
    out = method.train_step({"net": net}, batch, epoch=2)
    flagged = confident_error_mask(torch.softmax(net.logits, 1), target, torch.ones_like(wrong))
    assert torch.equal(flagged, wrong)
    soft = slsr_target(target, wrong, 2, 0.5, "gaussian", 2.0)
    assert out.loss.item() == pytest.approx(slsr_loss_per_sample(net.logits, target, soft, wrong).mean().item())
    assert out.metrics["flagged_pixels"] == pytest.approx(4 / (2 * SIZE * SIZE))


def test_clslsr_options_are_checked():
    with pytest.raises(ConfigError, match=r"clslsr.epsilon must be in \(0, 1\], got 0.0"):
        _cfg("clslsr", "clslsr.epsilon=0")
    with pytest.raises(ConfigError, match="clslsr.smoothing must be one of"):
        _cfg("clslsr", "clslsr.smoothing=box")


# --------------------------------------------------------------------------- TriNet

def test_trinet_masks_need_both_peers_small_loss_and_agreement():
    candidates = torch.tensor([True, True, True, True, True, True, False])
    l1 = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.0])  # keeps 0, 1, 2
    l2 = torch.tensor([0.1, 0.9, 0.2, 0.3, 0.8, 0.7, 0.0])  # keeps 0, 2, 3
    l3 = torch.tensor([0.9, 0.1, 0.2, 0.3, 0.8, 0.7, 0.0])  # keeps 1, 2, 3
    agree = torch.ones(7, dtype=torch.bool)
    agree_12 = torch.tensor([True, True, False, True, True, True, True])  # net3's peers disagree on entry 2
    masks, kept = trinet_masks((l1, l2, l3), (agree, agree, agree_12), candidates, 0.5)
    assert [k.nonzero().flatten().tolist() for k in kept] == [[0, 1, 2], [0, 2, 3], [1, 2, 3]]
    assert masks[0].nonzero().flatten().tolist() == [2, 3]  # kept by net2 and net3
    assert masks[1].nonzero().flatten().tolist() == [1, 2]  # kept by net1 and net3
    assert masks[2].nonzero().flatten().tolist() == [0]  # kept by net1 and net2 ({0, 2}), peers agree on 0 only


def test_trinet_pixel_level_trains_each_net_where_its_peers_agree():
    target = _target(2)
    cols = torch.arange(SIZE).view(1, 1, SIZE).expand(2, SIZE, SIZE)
    regions = (cols < 3, (cols >= 3) & (cols < 6), cols >= 6)  # A, B, C
    g = torch.Generator().manual_seed(4)
    conf = 1.0 + torch.rand(2, SIZE, SIZE, generator=g)
    # net i is wrong on region i only, so its two peers agree exactly there (both right) and
    # disagree elsewhere (one of them wrong): each net learns where the other two outvote it.
    nets = {f"net{i + 1}": FixedLogits(_logits(torch.where(region, 1 - target, target), conf))
            for i, region in enumerate(regions)}
    method = TriNet.from_config(_cfg("trinet", "trinet.forget_rate=0.5", "trinet.ramp_epochs=2"), 1)
    out = method.train_step(nets, _batch(target), epoch=0)  # forget rate 0 at epoch 0: agreement alone
    ce = {k: F.cross_entropy(v.logits, target, reduction="none") for k, v in nets.items()}
    expected = sum(ce[f"net{i + 1}"][region].mean() for i, region in enumerate(regions))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.metrics["kept_net1"] == 3 / 8 and out.metrics["kept_net3"] == 2 / 8
    assert out.metrics["forget_rate"] == 0.0
    out.loss.backward()
    ref = FixedLogits(nets["net1"].logits)
    F.cross_entropy(ref(None), target, reduction="none")[regions[0]].mean().backward()
    torch.testing.assert_close(nets["net1"].scale.grad, ref.scale.grad)
    # At the full forget rate each peer also drops its large-loss half: the peers' own mistakes
    # (large CE) go first, and fewer of the agreed pixels remain.
    later = method.train_step(nets, _batch(target), epoch=2)
    assert later.metrics["forget_rate"] == 0.5 and 0 < later.metrics["kept_net1"] < 3 / 8


def test_trinet_sample_level_selects_rows_and_counts_the_peers_agreed_pixels():
    target = _target(4)
    same = torch.tensor([True, True, False, False]).view(4, 1, 1)
    nets = {"net1": FixedLogits(_logits(target)),
            "net2": FixedLogits(_logits(torch.where(same, target, torch.zeros_like(target)))),
            "net3": FixedLogits(_logits(target))}
    method = TriNet.from_config(_cfg("trinet", "trinet.level=sample", "trinet.ramp_epochs=0",
                                     "trinet.forget_rate=0.0"), 1)
    out = method.train_step(nets, _batch(target), epoch=0)
    # net2 predicts nothing on rows 2, 3: there the peers of net1 (net2, net3) and of net3 (net1, net2)
    # agree on the background only; net2's peers (net1, net3) agree everywhere.
    agreed = torch.where(same, torch.ones_like(target, dtype=torch.bool), target == 0)
    seg = {k: segmentation_loss_per_sample(v.logits, target, pixel_mask=agreed) for k, v in nets.items()}
    full2 = segmentation_loss_per_sample(nets["net2"].logits, target)
    expected = seg["net1"].mean() + full2.mean() + seg["net3"].mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert seg["net1"][2] != pytest.approx(segmentation_loss_per_sample(nets["net1"].logits, target)[2].item())
    assert out.metrics["kept_net1"] == 1.0
    # Forgetting half: net2 drops rows 2, 3 (its large losses), so no net trains on them.
    method = TriNet.from_config(_cfg("trinet", "trinet.level=sample", "trinet.ramp_epochs=0",
                                     "trinet.forget_rate=0.5"), 1)
    half = method.train_step(nets, _batch(target), epoch=0)
    assert [half.metrics[f"kept_net{i}"] for i in (1, 2, 3)] == [0.5, 0.5, 0.5]
    expected = sum(segmentation_loss_per_sample(nets[k].logits[:2], target[:2]).mean() for k in nets)
    assert half.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_trinet_options_are_checked():
    with pytest.raises(ConfigError, match="trinet.level must be one of"):
        _cfg("trinet", "trinet.level=voxel")


# --------------------------------------------------------------------------- DAST

def test_divergence_damps_each_pixel_of_the_noisiness_score():
    target = torch.tensor([[[1, 1]]])
    clean = torch.tensor([[[[0.0, 0.0]], [[1.0, -1.0]]]])  # CE: pixel 0 small, pixel 1 large
    noisy = torch.tensor([[[[0.0, 0.0]], [[1.0, 2.0]]]])  # agrees at pixel 0, diverges at pixel 1
    ce = F.cross_entropy(clean, target, reduction="none")[0, 0]
    pc, pn = torch.softmax(clean, 1)[0, :, 0, 1], torch.softmax(noisy, 1)[0, :, 0, 1]
    d1 = 0.5 * ((pc * (pc / pn).log()).sum() + (pn * (pn / pc).log()).sum())
    torch.testing.assert_close(divergence_map(torch.softmax(clean, 1), torch.softmax(noisy, 1))[0, 0],
                               torch.stack([torch.tensor(0.0), d1]), atol=1e-6, rtol=1e-5)
    score = noisiness_score(clean, noisy, target, scale=16.0)
    torch.testing.assert_close(score, ((ce[0] + ce[1] * torch.exp(-16 * d1)) / 2).view(1))
    torch.testing.assert_close(noisiness_score(clean, noisy, target, 0.0), ce.mean().view(1))
    torch.testing.assert_close(noisiness_score(clean, clean, target, 16.0), ce.mean().view(1))
    # Same clean-branch CE, but the branches diverge on sample 1: it scores as less noisy.
    both = noisiness_score(clean.expand(2, -1, -1, -1), torch.cat([clean, noisy]), target.expand(2, -1, -1), 16.0)
    assert both[1] < both[0]


def test_rank_noisy_rows_by_recent_scores():
    history = torch.arange(10, dtype=torch.float32)
    severe, slight = rank_noisy_rows(torch.tensor([9.0, 0.0, 5.0, 8.0, 1.0]), history, 0.2, 0.2)
    assert severe.tolist() == [True, False, False, True, False]
    assert slight.tolist() == [False, True, False, False, True]
    none, _ = rank_noisy_rows(torch.tensor([9.0]), history, 0.0, 0.2)
    assert not none.any()
    # A short queue still has a top and a bottom: with M = 4, 0.2 * M < 1 picks the extreme scores.
    severe, slight = rank_noisy_rows(torch.tensor([3.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0, 3.0]), 0.2, 0.2)
    assert severe.tolist() == [True, False, False] and slight.tolist() == [False, True, False]


def test_dast_drops_severe_labels_and_supplements_the_clean_branch_with_slight_ones():
    target = _target(4)
    cls_c = target.clone()
    cls_c[1] = 1 - target[1]  # row 1: the clean branch confidently contradicts the label -> severe
    logits_c = _logits(cls_c, 4.0)
    logits_c[3] = 0.0  # row 3: undecided clean branch -> middle rank
    logits_n = logits_c.clone()
    logits_n[1] = _logits(target[1:2], 1.0)[0]  # the branches diverge on the severe row
    nets = {"clean": FixedLogits(logits_c), "noisy": FixedLogits(logits_n)}
    method = Dast.from_config(_cfg("dast", "dast.queue_length=10", "dast.ramp_epochs=0", "dast.divergence_scale=0",
                                   "dast.consistency_weight=0.5", "dast.supplement_weight=0.25"), 1)
    batch = _batch(target, hq=[True, False, False, False])  # row 0 clean, rows 1-3 noisy
    first = method.train_step(nets, batch, epoch=0)  # queue not yet full: every noisy row supervised
    assert first.metrics["severe_share"] == 0.0 and first.metrics["slight_share"] == 0.0
    method.history.clear()
    method.history.extend([0.3, 0.3, 0.3, 0.9, 0.9, 0.9, 0.9])
    out = method.train_step(nets, batch, epoch=0)
    assert out.metrics["severe_share"] == pytest.approx(1 / 3) and out.metrics["slight_share"] == pytest.approx(1 / 3)
    seg_c = segmentation_loss_per_sample(logits_c, target)
    seg_n = segmentation_loss_per_sample(logits_n, target)
    p_c, p_n = torch.softmax(logits_c, 1), torch.softmax(logits_n, 1)
    dbc = dual_branch_consistency_per_sample(p_c, p_n)[1]
    st = (p_c[2] - refined_label(logits_c, logits_n, target, 0.5)[2]).abs().mean()
    assert dbc > 0 and st > 0
    assert out.metrics["loss_noisy"] == pytest.approx(seg_n[[2, 3]].mean().item(), rel=1e-5)  # not row 1
    assert out.metrics["loss_clean"] == pytest.approx(seg_c[0].item(), rel=1e-5)
    expected = seg_c[0] + seg_n[[2, 3]].mean() + 0.5 * dbc + 0.25 * st
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_refined_label_is_the_sharpened_vote():
    target = torch.tensor([[[1, 1, 0]]])
    clean = _logits(torch.tensor([[[1, 0, 0]]]))
    noisy = _logits(torch.tensor([[[1, 0, 1]]]))
    refined = refined_label(clean, noisy, target, 0.5)[0, 1, 0]
    torch.testing.assert_close(refined, torch.tensor([1.0, 0.2, 0.2]))  # votes 3/3, 1/3, 1/3 for class 1


def test_dast_options_are_checked():
    with pytest.raises(ConfigError, match=r"dast.slight_ratio must be <= 1 - dast.severe_ratio = 0.4, got 0.7"):
        _cfg("dast", "dast.severe_ratio=0.6", "dast.slight_ratio=0.7")
    assert math.isclose(Dast.grace_epochs(_cfg("dast").options), 21)
