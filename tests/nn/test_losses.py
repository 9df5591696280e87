"""Per-sample losses: zero for perfect predictions, growing with error, ranking, confidence, sharpening,
unannotated (scribble) pixels left out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aide_ray.label_values import UNANNOTATED
from aide_ray.nn.losses import (annotated_target, confidence_map, consistency_loss_per_sample,
                                segmentation_loss_per_sample, sharpen, soft_dice_loss_per_sample)


def _target(b=3, h=16, w=16):
    t = torch.zeros(b, h, w, dtype=torch.int64)
    t[:, 4:12, 3:10] = 1
    return t


def _logits_for(target, margin=20.0, num_classes=2):
    return margin * F.one_hot(target, num_classes).permute(0, 3, 1, 2).float()


def test_segmentation_loss_is_zero_for_perfect_prediction():
    t = _target()
    loss = segmentation_loss_per_sample(_logits_for(t), t)
    assert loss.shape == (3,)
    assert torch.all(loss < 1e-6)


def test_segmentation_loss_grows_with_error_and_ranks_samples():
    t = _target()
    logits = _logits_for(t)
    # Flip 0, 10 and 30 foreground pixels in samples 0, 1, 2.
    for b, n in enumerate([0, 10, 30]):
        ys, xs = torch.nonzero(t[b], as_tuple=True)
        logits[b, :, ys[:n], xs[:n]] = logits[b, :, ys[:n], xs[:n]].flip(0)
    loss = segmentation_loss_per_sample(logits, t)
    assert loss[0] < loss[1] < loss[2]
    assert torch.equal(loss.argsort(), torch.tensor([0, 1, 2]))


def test_segmentation_loss_is_dice_plus_weighted_ce():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16)
    t = torch.randint(0, 3, (2, 16, 16))
    probs = logits.softmax(1)
    ce = F.cross_entropy(logits, t, reduction="none").mean(dim=(1, 2))
    dice = soft_dice_loss_per_sample(probs, t)
    assert torch.allclose(segmentation_loss_per_sample(logits, t, ce_weight=0.5), dice + 0.5 * ce)


def test_soft_dice_hand_computed():
    # 1x1x2x2 foreground probabilities [[1, .5], [0, 0]] vs target [[1, 1], [0, 0]]:
    # inter = 1.5, sums 1.5 + 2 -> 1 - (3 + 1) / (3.5 + 1) = 1/9.
    p1 = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    probs = torch.cat([1 - p1, p1], dim=1)
    t = torch.tensor([[[1, 1], [0, 0]]])
    assert soft_dice_loss_per_sample(probs, t).item() == pytest.approx(1 / 9)


def test_soft_dice_empty_target_and_prediction_is_zero():
    probs = torch.zeros(1, 2, 4, 4)
    probs[:, 0] = 1.0
    assert soft_dice_loss_per_sample(probs, torch.zeros(1, 4, 4, dtype=torch.int64)).item() == 0.0


def test_pixel_mask_excludes_pixels():
    t = _target(1)
    logits = _logits_for(t)
    logits[0, :, 0, 0] = torch.tensor([-20.0, 20.0])  # one wrong pixel
    mask = torch.ones(1, 16, 16)
    mask[0, 0, 0] = 0
    assert segmentation_loss_per_sample(logits, t).item() > 1e-3
    assert segmentation_loss_per_sample(logits, t, pixel_mask=mask).item() < 1e-6


def test_unannotated_pixels_leave_both_terms():
    # A scribble: a few annotated pixels, UNANNOTATED (255) elsewhere. The loss is the masked
    # loss of the annotated pixels, and the prediction elsewhere does not change it.
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    full = torch.randint(0, 3, (2, 8, 8))
    annotated = torch.zeros(2, 8, 8, dtype=torch.bool)
    annotated[:, 2, 1:7] = True
    annotated[1, 5:7, 3] = True
    scribble = full.masked_fill(~annotated, UNANNOTATED)
    loss = segmentation_loss_per_sample(logits, scribble)
    torch.testing.assert_close(loss, segmentation_loss_per_sample(logits, full, pixel_mask=annotated))
    torch.testing.assert_close(soft_dice_loss_per_sample(logits.softmax(1), scribble),
                               soft_dice_loss_per_sample(logits.softmax(1), full, pixel_mask=annotated))
    elsewhere = logits.detach() + 5.0 * torch.randn(2, 3, 8, 8) * (~annotated).unsqueeze(1)
    torch.testing.assert_close(segmentation_loss_per_sample(elsewhere, scribble), loss.detach())
    loss.sum().backward()
    assert logits.grad[(~annotated).unsqueeze(1).expand_as(logits)].abs().max() == 0
    assert logits.grad[annotated.unsqueeze(1).expand_as(logits)].abs().max() > 0


def test_a_row_without_annotated_pixels_has_zero_loss_and_full_labels_are_unchanged():
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 8, 8)
    target = torch.randint(0, 2, (2, 8, 8))
    target[1] = UNANNOTATED
    loss = segmentation_loss_per_sample(logits, target)
    assert torch.isfinite(loss).all() and loss[1].item() == 0.0
    assert annotated_target(target[:1])[1] is None  # a full label keeps the unmasked arithmetic
    ce = F.cross_entropy(logits[:1], target[:1], reduction="none").mean(dim=(1, 2))
    assert torch.equal(segmentation_loss_per_sample(logits[:1], target[:1]),
                       soft_dice_loss_per_sample(logits[:1].softmax(1), target[:1]) + ce)


def test_segmentation_loss_checks_target():
    with pytest.raises(ValueError, match=r"target must have shape \(2, 8, 8\)"):
        segmentation_loss_per_sample(torch.zeros(2, 2, 8, 8), torch.zeros(2, 8, 9, dtype=torch.int64))
    with pytest.raises(TypeError, match="target must be int64"):
        segmentation_loss_per_sample(torch.zeros(2, 2, 8, 8), torch.zeros(2, 8, 8, dtype=torch.uint8))


def test_confidence_map_matches_reference_for_two_classes():
    p0 = torch.rand(2, 5, 5)
    pseudo = torch.stack([p0, 1 - p0], dim=1)
    assert torch.allclose(confidence_map(pseudo), 1 - 4 * p0 * (1 - p0), atol=1e-6)


def test_confidence_map_extremes_for_many_classes():
    onehot = F.one_hot(torch.tensor([[[2]]]), 4).permute(0, 3, 1, 2).float()
    uniform = torch.full((1, 4, 1, 1), 0.25)
    assert confidence_map(onehot).item() == pytest.approx(1.0)
    assert confidence_map(uniform).item() == pytest.approx(0.0, abs=1e-6)


def test_consistency_loss_is_confidence_weighted_mse():
    torch.manual_seed(0)
    probs = torch.rand(2, 2, 4, 4).softmax(1)
    pseudo = torch.rand(2, 2, 4, 4).softmax(1)
    w = 1 - 4 * pseudo[:, 0] * pseudo[:, 1]
    expected = (w.unsqueeze(1) * (probs - pseudo) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(consistency_loss_per_sample(probs, pseudo), expected)
    assert torch.allclose(consistency_loss_per_sample(pseudo, pseudo), torch.zeros(2))


def test_consistency_loss_has_no_gradient_through_pseudo():
    probs = torch.rand(1, 2, 4, 4).softmax(1).requires_grad_()
    pseudo = torch.rand(1, 2, 4, 4).softmax(1).requires_grad_()
    consistency_loss_per_sample(probs, pseudo).sum().backward()
    assert probs.grad is not None and pseudo.grad is None


def test_sharpen_identity_at_t1_and_one_hot_as_t_goes_to_0():
    p = torch.tensor([0.6, 0.3, 0.1]).view(1, 3, 1, 1)
    assert torch.allclose(sharpen(p, 1.0), p)
    s05 = sharpen(p, 0.5)
    expected = p**2 / (p**2).sum(dim=1, keepdim=True)
    assert torch.allclose(s05, expected)
    assert s05[0, 0] > p[0, 0]  # T < 1 sharpens
    assert torch.allclose(sharpen(p, 0.01), torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1), atol=1e-6)
    assert torch.isfinite(sharpen(p, 1e-4)).all()  # no 0/0 underflow


def test_sharpen_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        sharpen(torch.full((1, 2), 0.5), 0)
