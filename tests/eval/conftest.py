"""Fixtures of the figure tests: a PNG check, a disc mask and small synthetic run files (samples, scores, metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest


def _check_png(path: Path) -> Path:
    assert path.is_file() and path.stat().st_size > 0, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img.std() > 0  # something was drawn
    return path


def _disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _samples(n: int = 3, m: int = 2, size: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(n, m, size, size)).astype(np.float32)
    clean = np.stack([_disk(size, size, 16, 16, 8 + i) for i in range(n)])
    noisy = np.stack([_disk(size, size, 12, 18, 10) for _ in range(n)])
    return {
        "image": image, "clean": clean, "has_clean": np.array([True, False, True][:n]), "noisy": noisy,
        "net1": clean.copy(), "net2": np.roll(clean, 2, axis=2),
        "sample_id": np.array([f"case{i}/a/3" for i in range(n)]),
    }


def _scores(epochs: int = 3, n: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for e in range(epochs):
        for i in range(n):
            q = rng.uniform(0.3, 1.0)
            for slot in (0, 1):
                rows.append({"epoch": e, "sample_index": i, "slot": slot,
                             "dice_pred_vs_label": min(1.0, q + rng.normal(0, 0.05)),
                             "dice_label_vs_clean": q if i < 8 else float("nan")})
    return pd.DataFrame(rows)


def _metrics(epochs: int = 4) -> pd.DataFrame:
    e = np.arange(epochs)
    return pd.DataFrame({"epoch": e, "loss": 1.0 / (e + 1), "loss_net1": 1.1 / (e + 1), "loss_net2": 0.9 / (e + 1),
                         "train_dice": 0.5 + 0.1 * e, "val_dice": [np.nan, 0.6, 0.65, 0.7][:epochs],
                         "corrected_net1": [0, 0, 3, 2][:epochs], "seconds": 2.0, "slices_per_s": 50.0 + e})


@pytest.fixture()
def assert_png() -> Callable[[Path], Path]:
    """Check that a file is a valid PNG of more than 50 x 50 pixels with something drawn on it."""
    return _check_png


@pytest.fixture()
def disk() -> Callable[..., np.ndarray]:
    """``disk(h, w, cy, cx, r)``: (h, w) uint8 mask of the disc of radius ``r`` centred at (cy, cx)."""
    return _disk


@pytest.fixture()
def correction_samples() -> Callable[..., dict[str, np.ndarray]]:
    """Factory of the arrays of ``correction_samples.npz``: (n, m, size, size) images and (n, size, size) labels."""
    return _samples


@pytest.fixture()
def train_scores() -> Callable[..., pd.DataFrame]:
    """Factory of a ``train_scores.csv`` table: ``epochs`` x ``n`` samples x 2 slots."""
    return _scores


@pytest.fixture()
def epoch_metrics() -> Callable[..., pd.DataFrame]:
    """Factory of a ``metrics.csv`` table of ``epochs`` rows."""
    return _metrics
