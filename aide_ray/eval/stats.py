"""Statistics of paired comparisons and how their numbers are printed.

One paired t-test and one set of formatters for every report: ``aide-ray
evaluate --compare`` (two per-case tables) and the experiments' results pages
(arms pooled over seeds) both call :func:`paired_ttest`, and every table
prints means as :func:`format_pm` and p-values as :func:`format_p`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = ["PairedTest", "paired_ttest", "format_pm", "format_p"]


@dataclass(frozen=True)
class PairedTest:
    """A two-tailed paired t-test of A against B.

    Attributes:
        mean_a, mean_b: means over the pairs used (NaN when there are none).
        t: the t statistic, positive when A's mean is higher; NaN when undefined.
        p: the two-tailed p-value; NaN when undefined (n < 2, or every difference equal).
        n: the number of pairs with finite values on both sides.
    """

    mean_a: float
    mean_b: float
    t: float
    p: float
    n: int


def paired_ttest(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> PairedTest:
    """``scipy.stats.ttest_rel(a, b)`` over the pairs where both values are finite.

    Args:
        a, b: (n,) paired values (same order).
    Raises:
        ValueError: if the lengths differ.
    """
    va = np.asarray(a, dtype=float)
    vb = np.asarray(b, dtype=float)
    if va.shape != vb.shape:
        raise ValueError(f"a and b must have the same length, got {va.shape} and {vb.shape}")
    ok = np.isfinite(va) & np.isfinite(vb)
    va, vb = va[ok], vb[ok]
    n = int(va.size)
    t = p = math.nan
    if n >= 2 and np.ptp(va - vb) > 0:
        res = stats.ttest_rel(va, vb)
        t, p = float(res.statistic), float(res.pvalue)
    mean_a = float(va.mean()) if n else math.nan
    mean_b = float(vb.mean()) if n else math.nan
    return PairedTest(mean_a=mean_a, mean_b=mean_b, t=t, p=p, n=n)


def format_pm(mean: float, std: float, digits: int = 3) -> str:
    """``"0.912 ± 0.034"``; ``"–"`` when the mean is undefined, no ± part when the std is."""
    if not np.isfinite(mean):
        return "–"
    if not np.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_p(p: float) -> str:
    """p-value with 2 significant digits (scientific notation below 1e-4), ``"–"`` when undefined."""
    if not np.isfinite(p):
        return "–"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.2g}" if p < 0.01 else f"{p:.2f}"
