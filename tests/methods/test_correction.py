"""Label-correction decisions: update epochs, the plan's checks, eligibility, counts, predictions used as labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aide_ray.config import load_config
from aide_ray.methods.aide import Aide
from aide_ray.methods.correction import (CorrectionPlan, correction_count, eligible_mask, has_foreground,
                                         largest_component_per_class, should_update)
from aide_ray.nn.modules import hard_prediction


def test_should_update_on_documented_epochs():
    epochs = [e for e in range(60) if should_update(e, warmup=20, every=10)]
    assert epochs == list(range(20)) + [29, 39, 49, 59]
    assert [e for e in range(6) if should_update(e, warmup=0, every=2)] == [1, 3, 5]


def test_should_update_rejects_bad_period():
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        should_update(0, 1, 0)


@pytest.mark.parametrize("n, ratio, k", [(10, 0.25, 3), (2, 0.25, 1), (1, 0.25, 0), (8, 0.5, 4), (7, 1.0, 7)])
def test_correction_count_rounds_half_up(n, ratio, k):
    assert correction_count(ratio, n) == k


def test_correction_count_checks_its_arguments():
    assert [correction_count(0.25, n) for n in (2, 6, 10)] == [1, 2, 3]  # 0.5, 1.5, 2.5 round up
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\], got 1.5"):
        correction_count(1.5, 3)
    with pytest.raises(ValueError, match="n_eligible must be >= 0, got -1"):
        correction_count(0.5, -1)


def test_hq_is_never_eligible_unless_allowed():
    labelled = np.array([True, True, True, True, False])
    hq = np.array([True, True, False, False, False])
    assert eligible_mask(labelled, hq, correct_hq=False).tolist() == [False, False, True, True, False]
    assert eligible_mask(labelled, hq, correct_hq=True).tolist() == [True, True, True, True, False]


def test_plan_counts_eligible_rows_from_the_split_counts():
    plan = CorrectionPlan(ratio=0.25, targets=(1, 0))
    assert plan.eligible_count({"lq": 10, "hq": 4, "none": 7}) == 10
    assert plan.eligible_count({"lq": 10, "scribble": 5, "hq": 4}) == 15  # a scribble may become a full label
    assert CorrectionPlan(0.25, (1, 0), correct_hq=True).eligible_count({"lq": 10, "hq": 4}) == 14
    assert plan.count(plan.eligible_count({"lq": 10})) == 3
    assert plan.eligible(np.array([True, True]), np.array([False, True])).tolist() == [True, False]


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 0.0, "targets": (1, 0)}, r"ratio must be in \(0, 1\], got 0.0"),
    ({"ratio": 0.5, "targets": ()}, r"targets must name label slots in \[0, 0\), got \(\)"),
    ({"ratio": 0.5, "targets": (2, 0)}, r"targets must name label slots in \[0, 2\), got \(2, 0\)"),
])
def test_plan_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CorrectionPlan(**kwargs)


def test_aide_plans_crossed_corrections_on_the_update_epochs_only():
    cfg = load_config(None, ["aide.warmup_epochs=2", "aide.update_every=5", "aide.update_ratio=0.3",
                             "aide.correct_hq=true", "aide.largest_component=true"])
    aide = Aide.from_config(cfg, 1)
    plans = {epoch: aide.correction_plan(epoch) for epoch in range(10)}
    assert [e for e, p in plans.items() if p is not None] == [0, 1, 4, 9]
    assert plans[0] == CorrectionPlan(ratio=0.3, targets=(1, 0), correct_hq=True, largest_component=True)


def test_empty_predictions_are_not_written():
    pred = np.zeros((3, 2, 2), np.uint8)
    pred[1, 0, 0] = 1
    assert has_foreground(pred).tolist() == [False, True, False]
    assert has_foreground(torch.from_numpy(pred)).tolist() == [False, True, False]


class _Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)
        self.seen_training: list[bool] = []

    def forward(self, x):
        self.seen_training.append(self.training)
        return self.logits


def test_hard_prediction_in_eval_mode_and_largest_component():
    fg = torch.zeros(1, 8, 8)
    fg[0, 1:4, 1:4] = 1  # 9 pixels
    fg[0, 6, 6] = 1  # a stray pixel
    logits = torch.stack([1 - fg, fg], dim=1)
    net = _Fixed(logits).train()
    pred = hard_prediction(net, torch.zeros(1, 1, 8, 8))
    assert pred.dtype == torch.uint8 and pred.sum() == 10
    assert net.seen_training == [False] and net.training
    kept = largest_component_per_class(pred.numpy())
    assert kept.sum() == 9 and kept[0, 6, 6] == 0
