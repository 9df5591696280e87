"""The scoring and validation passes: lowest-k candidates, per-sample Dice, per-case validation Dice,
scribble labels scored on their annotated pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aide_ray.config import load_config
from aide_ray.engine.scoring import LowestK, case_dice, gather_panels, score_pass, val_pass
from aide_ray.eval.dice import dice
from aide_ray.label_values import UNANNOTATED
from aide_ray.labels import LabelCache, LabelStore
from aide_ray.methods.aide import Aide
from aide_ray.methods.correction import CorrectionPlan
from aide_ray.methods.supervised import Supervised

SIZE = 8


class FixedPrediction(nn.Module):
    """A 'net' that predicts the given masks (one per row of the batch, by sample index order)."""

    def __init__(self, masks: np.ndarray) -> None:
        super().__init__()
        fg = torch.from_numpy(masks.astype(np.float32))
        self.register_buffer("logits", torch.stack([1 - fg, fg], dim=1) * 10)

    def forward(self, x):
        return self.logits[: x.shape[0]]


def _rows(n: int, labels: np.ndarray, *, hq=None, case_id=None) -> dict[str, np.ndarray]:
    return {
        "image": np.zeros((n, 1, SIZE, SIZE), np.float32), "label": labels.astype(np.uint8),
        "has_label": np.ones(n, bool), "hq": np.zeros(n, bool) if hq is None else np.asarray(hq),
        "clean_label": labels.astype(np.uint8), "has_clean_label": np.ones(n, bool),
        "sample_index": np.arange(n, dtype=np.int64), "sample_id": np.array([f"s{i}" for i in range(n)], object),
        "case_id": np.array(case_id if case_id is not None else [f"c{i}" for i in range(n)], object),
        "flip_h": np.zeros(n, bool), "flip_v": np.zeros(n, bool),
    }


def test_lowest_k_keeps_the_k_lowest_ties_by_index():
    keep = LowestK(3)
    masks = np.zeros((4, 2, 2), np.uint8)
    keep.add(np.array([5, 2, 9, 1]), np.array([0.5, 0.2, 0.2, 0.9]), masks, masks)
    keep.add(np.array([7, 0]), np.array([0.2, 0.95]), masks[:2], masks[:2])
    assert keep.index.tolist() == [2, 7, 9] and keep.score.tolist() == pytest.approx([0.2, 0.2, 0.2])
    empty = LowestK(0)
    empty.add(np.array([1]), np.array([0.0]), masks[:1], masks[:1])
    assert len(empty.index) == 0


def test_score_pass_scores_each_slot_and_keeps_eligible_candidates():
    cfg = load_config(None, ["model.base_width=4"])
    method = Aide.from_config(cfg, 1)
    labels = np.zeros((4, SIZE, SIZE), np.uint8)
    labels[:, 2:6, 2:6] = 1
    pred1 = labels.copy()
    pred1[1] = 0  # net1 misses sample 1 entirely
    pred2 = np.zeros_like(labels)
    pred2[:, 2:6, 2:4] = 1  # net2 finds half of every mask
    nets = {"net1": FixedPrediction(pred1), "net2": FixedPrediction(pred2)}
    hq = np.array([False, False, True, False])  # sample 2 is HQ: scored, never a candidate
    plan = CorrectionPlan(ratio=0.5, targets=(1, 0))
    out = score_pass(method, nets, [_rows(4, labels, hq=hq)], LabelCache(4, 2, (SIZE, SIZE)), torch.device("cpu"),
                     plan=plan, k_local=2, keep_panels=True)
    expected1 = dice(pred1, labels)
    expected2 = dice(pred2, labels)
    assert out.count == 4
    np.testing.assert_allclose(out.dice_sum, [expected1.sum(), expected2.sum()])
    assert out.candidates[0].index.tolist() == [1, 0]  # Dice 0, then the tie at 1.0 broken by index
    assert out.candidates[1].index.tolist() == [0, 1]
    np.testing.assert_array_equal(out.candidates[1].pred, pred2[[0, 1]])
    assert len(out.score_rows) == 8
    panels = gather_panels(out.panels, 2)
    assert panels["sample_index"].tolist() == [0, 1, 3] and panels["net1"].shape == (3, SIZE, SIZE)


def test_score_pass_without_plan_keeps_no_candidates_and_sees_corrections():
    cfg = load_config(None, ["model.base_width=4", "method=supervised"])
    method = Supervised.from_config(cfg, 1)
    labels = np.zeros((2, SIZE, SIZE), np.uint8)
    labels[:, 0:4] = 1
    store = LabelStore(2, 1, (SIZE, SIZE))
    store.commit(0, 0, np.array([1]), np.zeros((1, SIZE, SIZE), np.uint8), labels[1:])  # sample 1 -> empty
    cache = LabelCache(2, 1, (SIZE, SIZE))
    cache.apply(store.changes_since(0))
    out = score_pass(method, {"net": FixedPrediction(np.zeros_like(labels))}, [_rows(2, labels)], cache,
                     torch.device("cpu"), plan=None, k_local=0, keep_panels=False)
    # An empty prediction scores 0 against sample 0's label and 1 against sample 1's corrected (empty) one.
    assert out.dice_sum.tolist() == [1.0] and len(out.candidates[0].index) == 0


def test_validation_dice_is_per_case_over_workers():
    cfg = load_config(None, ["model.base_width=4", "method=supervised"])
    method = Supervised.from_config(cfg, 1)
    labels = np.zeros((3, SIZE, SIZE), np.uint8)
    labels[0, :4] = 1  # case a, slice 0: 32 pixels
    labels[1, :1] = 1  # case a, slice 1: 8 pixels
    labels[2, :2] = 1  # case b: 16 pixels
    pred = np.zeros_like(labels)
    pred[0, :4] = 1  # case a: slice 0 right, slice 1 missed
    rows = _rows(3, labels, case_id=["a", "a", "b"])
    part0 = val_pass(method, {"net": FixedPrediction(pred[:2])}, [{k: v[:2] for k, v in rows.items()}],
                     torch.device("cpu"))
    part1 = val_pass(method, {"net": FixedPrediction(pred[2:])}, [{k: v[2:] for k, v in rows.items()}],
                     torch.device("cpu"))
    # case a: 2 * 32 / (32 + 40) = 0.889 (not the slice mean 0.5); case b: 0.
    assert case_dice([part0, part1]) == pytest.approx((64 / 72 + 0.0) / 2)
    assert np.isnan(case_dice([{}]))


def _scribbles(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Clean masks (a square) and scribbles drawn on them: a foreground stroke inside the square,
    a background stroke along the last row, UNANNOTATED elsewhere."""
    clean = np.zeros((n, SIZE, SIZE), np.uint8)
    clean[:, 2:6, 2:6] = 1
    scribble = np.full((n, SIZE, SIZE), UNANNOTATED, np.uint8)
    scribble[:, 3:5, 3] = 1
    scribble[:, SIZE - 1, :] = 0
    return clean, scribble


def test_a_scribble_label_is_scored_on_its_annotated_pixels():
    cfg = load_config(None, ["model.base_width=4", "method=supervised"])
    method = Supervised.from_config(cfg, 1)
    clean, scribble = _scribbles(2)
    rows = _rows(2, scribble)
    rows["clean_label"] = clean
    missed = clean.copy()
    missed[1] = 0  # row 1 misses the structure (and its stroke)
    plan = CorrectionPlan(ratio=0.5, targets=(0,))
    out = score_pass(method, {"net": FixedPrediction(missed)}, [rows], LabelCache(2, 1, (SIZE, SIZE)),
                     torch.device("cpu"), plan=plan, k_local=1, keep_panels=False)
    # Row 0's full square covers the stroke and none of the background stroke: Dice 1 on the annotated
    # pixels (counting the 255s as foreground, as a plain binary Dice would, gives 2 * 16 / (16 + 56)).
    assert out.dice_sum.tolist() == [1.0]
    assert out.candidates[0].index.tolist() == [1]
    # The label-versus-clean diagnostic reads unannotated as unmarked: 2 of the 16 clean pixels marked.
    assert [row[3] for row in out.score_rows] == pytest.approx([2 * 2 / (2 + 16)] * 2)
    # Validation against a scribble reference counts its annotated pixels too.
    counts = val_pass(method, {"net": FixedPrediction(clean)}, [rows], torch.device("cpu"))
    assert case_dice([counts]) == pytest.approx(1.0)
