"""Label-correction decisions: update epochs, Dice, selection of exactly R of the eligible, crossed slots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aide_ray.methods.correction import (correction_count, dice_per_sample, eligible_mask, hard_prediction,
                                         select_for_correction, should_update, target_slot)


def test_should_update_on_documented_epochs():
    epochs = [e for e in range(60) if should_update(e, warmup=20, every=10)]
    assert epochs == list(range(20)) + [29, 39, 49, 59]
    assert [e for e in range(6) if should_update(e, warmup=0, every=2)] == [1, 3, 5]


def test_should_update_rejects_bad_period():
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        should_update(0, 1, 0)


def test_dice_per_sample_cases():
    pred = np.zeros((4, 2, 2), dtype=np.uint8)
    label = np.zeros((4, 2, 2), dtype=np.uint8)
    pred[0] = label[0] = [[1, 1], [0, 0]]          # perfect
    pred[1], label[1] = [[1, 0], [0, 0]], [[0, 1], [0, 0]]  # disjoint
    pred[2], label[2] = [[1, 1], [1, 0]], [[1, 0], [0, 0]]  # 2 * 1 / (3 + 1) = 0.5
    # row 3: both empty -> 1.0
    np.testing.assert_allclose(dice_per_sample(pred, label), [1.0, 0.0, 0.5, 1.0])


def test_dice_per_sample_tensor_and_multiclass():
    pred = torch.tensor([[[1, 2], [0, 0]]])
    label = torch.tensor([[[1, 1], [0, 0]]])
    out = dice_per_sample(pred, label, num_classes=3)
    assert isinstance(out, torch.Tensor)
    # class 1: 2 * 1 / (1 + 2) = 2/3; class 2: 0 / (1 + 0) = 0 -> mean 1/3.
    assert out.item() == pytest.approx(1 / 3)
    assert dice_per_sample(pred, label).item() == pytest.approx(1.0)  # binary foreground


def test_dice_per_sample_checks_shapes():
    with pytest.raises(ValueError, match=r"shape \(B, H, W\), got \(1, 2, 2\) and \(1, 2, 3\)"):
        dice_per_sample(np.zeros((1, 2, 2)), np.zeros((1, 2, 3)))


def test_select_exactly_ratio_of_eligible_lowest_first():
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.2, 0.05, 0.3, 0.8, 0.7, 0.6])
    eligible = np.ones(10, dtype=bool)
    eligible[5] = False  # the lowest score, but not eligible (e.g. HQ)
    sel = select_for_correction(scores, 0.25, eligible)
    # 9 eligible -> round(2.25) = 2: index 1 (0.1), then the first of the tied 0.2s (index 3).
    assert np.flatnonzero(sel).tolist() == [1, 3]
    assert not sel[5]


@pytest.mark.parametrize("n, ratio, k", [(10, 0.25, 3), (2, 0.25, 1), (1, 0.25, 0), (8, 0.5, 4), (7, 1.0, 7)])
def test_select_count_rounds_half_up(n, ratio, k):
    assert select_for_correction(np.arange(n, dtype=float), ratio, np.ones(n, dtype=bool)).sum() == k


def test_correction_count_and_ratio_check():
    assert [correction_count(0.25, n) for n in (2, 6, 10)] == [1, 2, 3]  # 0.5, 1.5, 2.5 round up
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\], got 1.5"):
        select_for_correction(np.zeros(3), 1.5, np.ones(3, dtype=bool))


def test_hq_is_never_selected_unless_allowed():
    labelled = np.array([True, True, True, True, False])
    hq = np.array([True, True, False, False, False])
    scores = np.array([0.0, 0.0, 0.9, 0.8, 0.0])
    sel = select_for_correction(scores, 1.0, eligible_mask(labelled, hq, correct_hq=False))
    assert sel.tolist() == [False, False, True, True, False]
    assert eligible_mask(labelled, hq, correct_hq=True).tolist() == [True, True, True, True, False]


def test_target_slot_is_crossed():
    assert target_slot(0) == 1 and target_slot(1) == 0
    assert target_slot(0, num_slots=1) == 0
    with pytest.raises(ValueError, match=r"scoring_slot must be in \[0, 2\), got 2"):
        target_slot(2)


class _Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)
        self.seen_training: list[bool] = []

    def forward(self, x):
        self.seen_training.append(self.training)
        return self.logits


def test_hard_prediction_eval_mode_and_largest_component():
    fg = torch.zeros(1, 8, 8)
    fg[0, 1:4, 1:4] = 1  # 9 pixels
    fg[0, 6, 6] = 1  # a stray pixel
    logits = torch.stack([1 - fg, fg], dim=1)
    net = _Fixed(logits).train()
    pred = hard_prediction(net, torch.zeros(1, 1, 8, 8))
    assert pred.dtype == torch.uint8 and pred.sum() == 10
    assert net.seen_training == [False] and net.training
    pred = hard_prediction(net, torch.zeros(1, 1, 8, 8), largest_component=True)
    assert pred.sum() == 9 and pred[0, 6, 6] == 0
