"""The one Dice (aide_ray.eval.dice): hand-computed values, both empty-mask policies, numpy and torch alike.

In the style of MONAI's DiceMetric tests: perfect and disjoint masks, a partial
overlap computed by hand, every empty-mask case under both policies (1.0 and
NaN), batches of numpy arrays and torch tensors, the multi-class mean, and scribble references
(only the annotated pixels count).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aide_ray.eval.dice import dice, dice_from_counts, mask_dice, overlap_counts
from aide_ray.label_values import UNANNOTATED

NAN = float("nan")
KINDS = ["numpy", "torch"]


def _as(kind: str, arr: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(arr)) if kind == "torch" else arr


def _np(x) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two (H, W) masks as a batch of one: (1, H, W)."""
    return pred[None], ref[None]


# 4 x 4 masks: pred has 4 foreground pixels, ref 6, 3 of them shared -> Dice = 2 * 3 / (4 + 6) = 0.6.
PRED = np.array([[1, 1, 0, 0],
                 [1, 1, 0, 0],
                 [0, 0, 0, 0],
                 [0, 0, 0, 0]], np.uint8)
REF = np.array([[0, 1, 1, 0],
                [1, 1, 1, 0],
                [0, 1, 0, 0],
                [0, 0, 0, 0]], np.uint8)
EMPTY = np.zeros((4, 4), np.uint8)


@pytest.mark.parametrize("kind", KINDS)
def test_perfect_overlap_is_one(kind):
    pred, ref = _pair(REF, REF)
    assert _np(dice(_as(kind, pred), _as(kind, ref))).tolist() == [1.0]


@pytest.mark.parametrize("kind", KINDS)
def test_disjoint_masks_are_zero(kind):
    far = np.zeros((4, 4), np.uint8)
    far[2:, 2:] = 1  # PRED is the top-left 2 x 2 block
    pred, ref = _pair(PRED, far)
    assert _np(dice(_as(kind, pred), _as(kind, ref))).tolist() == [0.0]


@pytest.mark.parametrize("kind", KINDS)
def test_partial_overlap_by_hand(kind):
    inter, p_sum, r_sum = overlap_counts(_as(kind, PRED[None]), _as(kind, REF[None]))
    assert (_np(inter).tolist(), _np(p_sum).tolist(), _np(r_sum).tolist()) == ([[3]], [[4]], [[6]])
    assert _np(dice(_as(kind, PRED[None]), _as(kind, REF[None]))) == pytest.approx([0.6])
    # Symmetric, and any value > 0 counts as foreground in the binary case.
    assert _np(dice(_as(kind, REF[None]), _as(kind, PRED[None] * 255))) == pytest.approx([0.6])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("both_empty", [1.0, NAN])
def test_empty_masks_under_both_policies(kind, both_empty):
    batch_pred = np.stack([EMPTY, EMPTY, PRED])  # both empty, prediction empty, reference empty
    batch_ref = np.stack([EMPTY, REF, EMPTY])
    got = _np(dice(_as(kind, batch_pred), _as(kind, batch_ref), both_empty=both_empty))
    if math.isnan(both_empty):
        assert math.isnan(got[0])
    else:
        assert got[0] == 1.0
    # Exactly one empty mask is a plain miss, whatever the policy.
    assert got[1:].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("both_empty", [1.0, NAN])
def test_dice_from_counts_scalars_and_arrays(both_empty):
    assert dice_from_counts(3, 4, 6) == pytest.approx(0.6) and isinstance(dice_from_counts(3, 4, 6), float)
    assert dice_from_counts(0, 0, 5, both_empty=both_empty) == 0.0
    empty = dice_from_counts(0, 0, 0, both_empty=both_empty)
    assert math.isnan(empty) if math.isnan(both_empty) else empty == 1.0
    scores = dice_from_counts(np.array([3, 0]), np.array([4, 0]), np.array([6, 0]), both_empty=both_empty)
    assert scores.dtype == np.float64 and scores[0] == pytest.approx(0.6)
    t = dice_from_counts(torch.tensor([3, 0]), torch.tensor([4, 0]), torch.tensor([6, 0]), both_empty=both_empty)
    assert t.dtype == torch.float32 and t[0].item() == pytest.approx(0.6)
    assert math.isnan(t[1].item()) if math.isnan(both_empty) else t[1].item() == 1.0


def test_numpy_and_torch_give_the_same_scores_in_their_own_kind():
    rng = np.random.default_rng(0)
    pred = (rng.random((5, 8, 8)) > 0.5).astype(np.int64)
    ref = (rng.random((5, 8, 8)) > 0.4).astype(np.int64)
    pred[0] = ref[0] = 0  # one both-empty sample
    a = dice(pred, ref)
    b = dice(torch.from_numpy(pred), torch.from_numpy(ref))
    assert isinstance(a, np.ndarray) and a.dtype == np.float64 and a.shape == (5,)
    assert isinstance(b, torch.Tensor) and b.dtype == torch.float32 and b.shape == (5,)
    np.testing.assert_allclose(b.numpy(), a, rtol=1e-6)
    bool_scores = dice(torch.from_numpy(pred).bool(), torch.from_numpy(ref).bool())
    np.testing.assert_allclose(bool_scores.numpy(), a, rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_multi_class_mean_over_foreground_classes(kind):
    # Classes 1 and 2 (3 classes with the background): class 1 as PRED/REF (0.6), class 2 perfect.
    pred = PRED.astype(np.int64).copy()
    ref = REF.astype(np.int64).copy()
    pred[3, 3] = ref[3, 3] = 2
    batch_pred = np.stack([pred, np.where(pred == 2, 0, pred)])  # sample 1: class 2 absent from both
    batch_ref = np.stack([ref, np.where(ref == 2, 0, ref)])
    inter, p_sum, r_sum = overlap_counts(_as(kind, batch_pred), _as(kind, batch_ref), num_classes=3)
    assert _np(inter).tolist() == [[3, 1], [3, 0]] and _np(p_sum).tolist() == [[4, 1], [4, 0]]
    assert _np(r_sum).tolist() == [[6, 1], [6, 0]]
    perfect = _np(dice(_as(kind, batch_pred), _as(kind, batch_ref), num_classes=3))
    assert perfect == pytest.approx([(0.6 + 1.0) / 2, (0.6 + 1.0) / 2])  # absent class counts as 1.0
    ignored = _np(dice(_as(kind, batch_pred), _as(kind, batch_ref), num_classes=3, both_empty=NAN))
    assert ignored == pytest.approx([(0.6 + 1.0) / 2, 0.6])  # absent class left out of the mean
    nothing = _np(dice(_as(kind, np.zeros((1, 4, 4), np.int64)), _as(kind, np.zeros((1, 4, 4), np.int64)),
                       num_classes=3, both_empty=NAN))
    assert math.isnan(nothing[0])  # no class present anywhere: NaN, not a warning


@pytest.mark.parametrize("num_classes", [None, 2])
def test_binary_when_num_classes_is_none_or_two(num_classes):
    assert dice(PRED[None], REF[None], num_classes) == pytest.approx([0.6])


def test_mask_dice_of_two_masks_of_any_shape():
    assert mask_dice(PRED, REF) == pytest.approx(0.6) and isinstance(mask_dice(PRED, REF), float)
    assert mask_dice(PRED[None, None], REF[None, None]) == pytest.approx(0.6)
    assert mask_dice(EMPTY, EMPTY) == 1.0
    assert math.isnan(mask_dice(EMPTY, EMPTY, both_empty=NAN))
    assert mask_dice(EMPTY, REF, both_empty=NAN) == 0.0


def test_shapes_must_match_and_have_a_batch_axis():
    with pytest.raises(ValueError, match=r"pred and ref must have the same shape \(B, \.\.\.\), got \(1, 4, 4\) and "
                                         r"\(1, 4, 3\)"):
        dice(PRED[None], REF[None, :, :3])
    with pytest.raises(ValueError, match="must have the same shape"):
        dice(np.zeros(4), np.zeros(4))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_classes", [None, 3])
def test_only_annotated_pixels_count_against_a_scribble(kind, num_classes):
    # The top two rows are annotated: PRED has 4 foreground pixels there, REF 5, 3 shared -> 6 / 9;
    # pred's pixel in the unannotated bottom-right corner does not count.
    annotated = np.zeros((4, 4), bool)
    annotated[:2] = True
    scribble = np.where(annotated, REF, UNANNOTATED).astype(np.uint8)
    pred = PRED.copy()
    pred[3, 3] = 1
    args = (_as(kind, pred[None]), _as(kind, scribble[None]), num_classes)
    scores = _np(dice(*args, both_empty=NAN, annotated=_as(kind, scribble[None] != UNANNOTATED)))
    assert scores == pytest.approx([6 / 9])
    inter, p_sum, r_sum = overlap_counts(*args, annotated=_as(kind, annotated[None]))
    assert (_np(inter)[0, 0], _np(p_sum)[0, 0], _np(r_sum)[0, 0]) == (3, 4, 5)
    # Without the mask the unannotated pixels count as values: a different (wrong) score.
    assert _np(dice(*args, both_empty=NAN)) != pytest.approx([6 / 9])
    with pytest.raises(ValueError, match="annotated must have the shape of ref"):
        dice(*args, annotated=_as(kind, annotated))
