"""Metrics against hand-computed values and against medpy 0.5.2 (an independent implementation)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from medpy.metric import binary as mb

from aide_ray.eval.metrics import (
    METRIC_NAMES,
    binary_metrics,
    case_metrics,
    sampling_from_spacing_xyz,
    summarize,
    surface_distances,
)


def _medpy(pred: np.ndarray, ref: np.ndarray, sampling) -> dict[str, float]:
    return {
        "dice": mb.dc(pred, ref),
        "iou": mb.jc(pred, ref),
        "ravd": mb.ravd(pred, ref),
        "assd": mb.assd(pred, ref, voxelspacing=sampling),
        "mssd": mb.hd(pred, ref, voxelspacing=sampling),
        "hd95": mb.hd95(pred, ref, voxelspacing=sampling),
        "sensitivity": mb.sensitivity(pred, ref),
        "specificity": mb.specificity(pred, ref),
        "precision": mb.precision(pred, ref),
    }


def _blob(shape, rng, n_blobs=3) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n_blobs):
        centre = [rng.uniform(0.2 * s, 0.8 * s) for s in shape]
        radius = [rng.uniform(0.1 * s, 0.3 * s) for s in shape]
        mask |= sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)) <= 1.0
    return mask


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape,sampling", [
    ((40, 48), (0.7, 1.9)),
    ((9, 32, 28), (5.0, 0.8, 0.6)),
    ((12, 20, 24), (1.5, 0.9, 3.0)),
])
def test_matches_medpy_on_random_blobs(seed, shape, sampling):
    rng = np.random.default_rng(seed)
    pred, ref = _blob(shape, rng), _blob(shape, rng)
    # Noise makes ragged surfaces and islands, objects touching the border included.
    pred ^= rng.random(shape) < 0.03
    ours = binary_metrics(pred, ref, sampling)
    theirs = _medpy(pred, ref, sampling)
    for name in METRIC_NAMES:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6, rel=1e-9), name


def test_matches_medpy_on_hand_made_masks_touching_border():
    ref = np.zeros((6, 10, 12), bool)
    ref[1:5, 0:6, 3:12] = True  # touches two image faces
    pred = np.zeros_like(ref)
    pred[2:6, 2:8, 0:7] = True
    pred[0, 9, 11] = True  # a far island
    sampling = (4.0, 0.5, 1.25)
    ours = binary_metrics(pred, ref, sampling)
    theirs = _medpy(pred, ref, sampling)
    for name in METRIC_NAMES:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6), name


def test_spacing_order_matters_and_converts_from_simpleitk_order():
    ref = np.zeros((5, 20, 20), bool)
    ref[2, 5:10, 5:10] = True
    pred = np.zeros_like(ref)
    pred[3, 5:10, 5:10] = True  # one slice further along z
    sampling = sampling_from_spacing_xyz((0.8, 0.8, 5.0))
    assert sampling == (5.0, 0.8, 0.8)
    m = binary_metrics(pred, ref, sampling)
    assert m["mssd"] == pytest.approx(5.0)
    assert m["assd"] == pytest.approx(5.0)
    # The reverse (SimpleITK) order would claim 0.8 mm.
    assert binary_metrics(pred, ref, (0.8, 0.8, 5.0))["mssd"] == pytest.approx(0.8)


def test_perfect_prediction():
    ref = np.zeros((8, 8), np.uint8)
    ref[2:6, 2:6] = 1
    m = binary_metrics(ref, ref, (0.5, 2.0))
    assert m == {"dice": 1.0, "iou": 1.0, "ravd": 0.0, "assd": 0.0, "mssd": 0.0, "hd95": 0.0,
                 "sensitivity": 1.0, "specificity": 1.0, "precision": 1.0}


def test_disjoint_masks_hand_computed():
    # ref: column 0 rows 0-1; pred: column 3 rows 0-1 -> 3 pixels apart along x at 2 mm each.
    ref = np.zeros((2, 4), bool)
    ref[:, 0] = True
    pred = np.zeros((2, 4), bool)
    pred[:, 3] = True
    m = binary_metrics(pred, ref, (1.0, 2.0))
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["ravd"] == 0.0  # same volume: (FP - FN) / (TP + FN) = (2 - 2) / 2
    assert m["assd"] == pytest.approx(6.0) and m["mssd"] == pytest.approx(6.0) and m["hd95"] == pytest.approx(6.0)
    assert m["sensitivity"] == 0.0 and m["precision"] == 0.0
    assert m["specificity"] == pytest.approx(4 / 6)  # TN = 4 of the 6 reference-background pixels


def test_partial_overlap_hand_computed():
    # 1D-like 2D case: ref = 4 pixels, pred = 6 pixels, 3 shared.
    ref = np.zeros((1, 10), bool)
    ref[0, 0:4] = True
    pred = np.zeros((1, 10), bool)
    pred[0, 1:7] = True
    m = binary_metrics(pred, ref)
    tp, fp, fn, tn = 3, 3, 1, 3
    assert m["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))  # 0.6
    assert m["iou"] == pytest.approx(tp / (tp + fp + fn))  # 3/7
    assert m["ravd"] == pytest.approx((fp - fn) / (tp + fn))  # 0.5
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    # With face connectivity every pixel of a one-row mask is surface; pred->ref: 0,0,0,1,2,3 ; ref->pred: 1,0,0,0
    pooled = np.array([0, 0, 0, 1, 2, 3, 1, 0, 0, 0], float)
    assert m["assd"] == pytest.approx(pooled.mean())
    assert m["mssd"] == pytest.approx(3.0)
    assert m["hd95"] == pytest.approx(np.percentile(pooled, 95))


def test_both_empty_is_perfect_by_default_and_nan_on_request():
    empty = np.zeros((3, 6, 6), bool)
    m = binary_metrics(empty, empty, (2.0, 1.0, 1.0))
    assert m["dice"] == 1.0 and m["iou"] == 1.0 and m["ravd"] == 0.0
    assert m["assd"] == 0.0 and m["mssd"] == 0.0 and m["hd95"] == 0.0
    assert m["sensitivity"] == 1.0 and m["precision"] == 1.0 and m["specificity"] == 1.0
    assert all(math.isnan(v) for v in binary_metrics(empty, empty, both_empty="nan").values())


def test_prediction_empty_reference_not():
    ref = np.zeros((6, 6), bool)
    ref[1:3, 1:3] = True
    m = binary_metrics(np.zeros_like(ref), ref)
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["ravd"] == -1.0
    assert m["sensitivity"] == 0.0 and m["specificity"] == 1.0
    assert math.isnan(m["precision"])
    assert all(math.isnan(m[k]) for k in ("assd", "mssd", "hd95"))


def test_reference_empty_prediction_not():
    pred = np.zeros((6, 6), bool)
    pred[1:3, 1:3] = True
    m = binary_metrics(pred, np.zeros_like(pred))
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert math.isnan(m["ravd"]) and math.isnan(m["sensitivity"])
    assert m["precision"] == 0.0 and m["specificity"] == pytest.approx(32 / 36)
    assert all(math.isnan(m[k]) for k in ("assd", "mssd", "hd95"))


def test_reference_covering_image_has_undefined_specificity():
    full = np.ones((4, 4), bool)
    assert math.isnan(binary_metrics(full, full)["specificity"])


def test_multiclass_keys_and_values_match_binary_per_class():
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 3, size=(16, 16))
    pred = rng.integers(0, 3, size=(16, 16))
    m = case_metrics(pred, ref, (1.0, 0.5), labels=[1, 2])
    assert set(m) == {f"{n}_{c}" for n in METRIC_NAMES for c in (1, 2)}
    for c in (1, 2):
        b = binary_metrics(pred == c, ref == c, (1.0, 0.5))
        assert all(m[f"{n}_{c}"] == pytest.approx(b[n], nan_ok=True) for n in METRIC_NAMES)
    assert set(case_metrics(pred > 0, ref > 0)) == set(METRIC_NAMES)


def test_errors_name_the_problem():
    a = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match=r"same shape, got \(4, 4\) and \(4, 5\)"):
        binary_metrics(a, np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match=r"one value per mask axis \(2\), got \(1.0, 1.0, 1.0\)"):
        binary_metrics(a, a, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="sampling must be positive"):
        binary_metrics(a, a, (1.0, 0.0))
    with pytest.raises(ValueError, match="both_empty must be one of"):
        binary_metrics(a, a, both_empty="zero")
    with pytest.raises(ValueError, match=r"labels must be non-empty foreground class values \(> 0\), got \[0, 1\]"):
        case_metrics(a, a, labels=[0, 1])
    with pytest.raises(ValueError, match="two non-empty masks"):
        surface_distances(a, a)


def test_summarize_reports_excluded_cases():
    table = pd.DataFrame({"case_id": ["a", "b", "c"], "dice": [0.5, 0.7, 0.0],
                          "assd": [1.0, 3.0, float("nan")]})
    s = summarize(table)
    assert list(s.index) == ["dice", "assd"]
    assert s.loc["dice", "mean"] == pytest.approx(0.4) and s.loc["dice", "n"] == 3
    assert s.loc["dice", "std"] == pytest.approx(np.std([0.5, 0.7, 0.0], ddof=1))
    assert s.loc["assd", "mean"] == pytest.approx(2.0)
    assert s.loc["assd", "n"] == 2 and s.loc["assd", "n_excluded"] == 1
