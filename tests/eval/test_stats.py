"""Paired t-tests and the number formats of every report (aide_ray.eval.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from aide_ray.eval.stats import PairedTest, format_p, format_pm, paired_ttest

NAN = float("nan")


def test_paired_ttest_matches_scipy():
    a = [0.91, 0.85, 0.78, 0.88, 0.95]
    b = [0.89, 0.80, 0.79, 0.84, 0.90]
    res = paired_ttest(a, b)
    ref = stats.ttest_rel(a, b)
    assert isinstance(res, PairedTest) and res.n == 5
    assert res.t == pytest.approx(ref.statistic) and res.p == pytest.approx(ref.pvalue)
    assert res.mean_a == pytest.approx(np.mean(a)) and res.mean_b == pytest.approx(np.mean(b))
    assert res.t > 0  # A higher than B
    flipped = paired_ttest(b, a)
    assert flipped.t == pytest.approx(-res.t) and flipped.p == pytest.approx(res.p)


def test_pairs_with_a_non_finite_side_are_dropped():
    a = np.array([0.9, NAN, 0.7, 0.6, np.inf])
    b = np.array([0.8, 0.5, NAN, 0.55, 0.4])
    res = paired_ttest(a, b)
    ref = stats.ttest_rel([0.9, 0.6], [0.8, 0.55])
    assert res.n == 2 and res.p == pytest.approx(ref.pvalue)
    assert res.mean_a == pytest.approx(0.75) and res.mean_b == pytest.approx(0.675)


@pytest.mark.parametrize("a, b, n", [
    ([0.9], [0.8], 1),                      # one pair: no variance
    ([1.0, 2.0, 3.0], [0.5, 1.5, 2.5], 3),  # every difference equal (exactly, in binary): t undefined
    ([0.9, 0.8], [0.9, 0.8], 2),            # identical
])
def test_undefined_tests_give_nan_t_and_p(a, b, n):
    res = paired_ttest(a, b)
    assert res.n == n and math.isnan(res.t) and math.isnan(res.p)
    assert res.mean_a == pytest.approx(np.mean(a))


def test_no_pairs_and_mismatched_lengths():
    res = paired_ttest([NAN, 1.0], [0.5, NAN])
    assert res.n == 0 and all(math.isnan(v) for v in (res.mean_a, res.mean_b, res.t, res.p))
    with pytest.raises(ValueError, match=r"a and b must have the same length, got \(3,\) and \(2,\)"):
        paired_ttest([1, 2, 3], [1, 2])


def test_format_pm():
    assert format_pm(0.91234, 0.0345) == "0.912 ± 0.035"
    assert format_pm(0.91234, 0.0345, 4) == "0.9123 ± 0.0345"
    assert format_pm(2.5, NAN, 2) == "2.50"  # one case: no spread
    assert format_pm(NAN, 0.1) == "–"
    assert format_pm(math.inf, 0.1) == "–"


@pytest.mark.parametrize("p, text", [
    (0.5, "0.50"), (0.04321, "0.04"), (0.01, "0.01"), (0.004321, "0.0043"), (1e-4, "0.0001"),
    (1.234e-7, "1.2e-07"), (NAN, "–"),
])
def test_format_p(p, text):
    assert format_p(p) == text
