"""Plots of a training run's per-epoch tables: the Dice scatter and the training curves.

* :func:`dice_scatter`: Dice of each network's output against the label it trains on,
  versus the Dice of that label against the HQ label, coloured by epoch (the paper's
  Figure 2: networks fit clean labels first, so low-quality labels stand out); from
  ``train_scores.csv``.
* :func:`training_curves`: losses, Dice, corrections and throughput per epoch; from
  ``metrics.csv``.

They read tables (pandas) and draw axes, where :mod:`aide_ray.eval.figures` draws
images and masks; both share its canvas (:func:`~aide_ray.eval.figures.new_figure`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from aide_ray.eval.figures import new_figure, save_png

__all__ = ["dice_scatter", "training_curves"]


def dice_scatter(scores: pd.DataFrame | str | Path, path: str | Path, *, max_epochs: int = 12) -> Path:
    """Dice of network output vs its current label, against Dice of that label vs the HQ label.

    One panel per label slot (net), points coloured by epoch (paper Figure 2). Rows
    without an HQ label (NaN ``dice_label_vs_clean``) are left out.

    Args:
        scores: DataFrame or ``train_scores.csv`` with columns epoch, sample_index, slot,
            dice_pred_vs_label, dice_label_vs_clean.
        path: output PNG.
        max_epochs: at most this many epochs are drawn (evenly spaced, last included),
            so that long runs stay readable.
    Returns:
        ``path``.
    Raises:
        ValueError: on a missing column, or no row with both Dice values.
    """
    df = pd.read_csv(scores) if not isinstance(scores, pd.DataFrame) else scores
    need = ["epoch", "slot", "dice_pred_vs_label", "dice_label_vs_clean"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"train scores must have columns {need}; missing {missing}")
    df = df[np.isfinite(df["dice_pred_vs_label"].astype(float)) & np.isfinite(df["dice_label_vs_clean"].astype(float))]
    if df.empty:
        raise ValueError("train scores have no row with both dice_pred_vs_label and dice_label_vs_clean "
                         "(HQ labels of training samples unknown?)")
    epochs = np.sort(df["epoch"].unique())
    if len(epochs) > max_epochs:
        keep = epochs[np.unique(np.linspace(0, len(epochs) - 1, max_epochs).round().astype(int))]
        df = df[df["epoch"].isin(keep)]
    slots = sorted(df["slot"].unique())
    fig = new_figure(4.2 * len(slots) + 0.8, 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(slots), squeeze=False)[0])
    lo, hi = float(df["epoch"].min()), float(df["epoch"].max())
    for ax, slot in zip(axes, slots):
        part = df[df["slot"] == slot]
        sc = ax.scatter(part["dice_label_vs_clean"], part["dice_pred_vs_label"], c=part["epoch"], cmap="viridis",
                        vmin=lo, vmax=max(hi, lo + 1), s=10, alpha=0.75, edgecolors="none")
        ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, linestyle=":")
        last = part[part["epoch"] == part["epoch"].max()]
        r = _pearson(last["dice_label_vs_clean"], last["dice_pred_vs_label"])
        ax.set_title(f"net{int(slot) + 1}" + (f" (last epoch r = {r:.2f})" if math.isfinite(r) else ""), fontsize=9)
        ax.set_xlabel("Dice(noisy label, HQ label)")
        ax.set_ylabel("Dice(network output, noisy label)")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    bar = fig.colorbar(sc, ax=list(axes), label="epoch")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    return save_png(fig, path)


def _pearson(x: pd.Series, y: pd.Series) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


_CURVE_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss", "loss_net1", "loss_net2")),
    ("Dice", ("train_dice_net1", "train_dice_net2", "train_dice", "val_dice")),
    ("labels corrected", ("corrected_net1", "corrected_net2")),
    ("slices / s", ("slices_per_s",)),
)


def training_curves(metrics_csv: str | Path | pd.DataFrame, path: str | Path) -> Path:
    """Per-epoch curves of a run: losses, Dice, corrected labels, throughput.

    Columns that are absent or all-NaN are skipped, and so are panels left empty.

    Args:
        metrics_csv: ``metrics.csv`` (or its DataFrame) with an ``epoch`` column and any of
            loss, loss_net1, loss_net2, train_dice_net1, train_dice_net2, train_dice, val_dice,
            corrected_net1, corrected_net2, slices_per_s.
        path: output PNG.
    Returns:
        ``path``.
    Raises:
        ValueError: if there is no epoch column or nothing to plot.
    """
    df = metrics_csv if isinstance(metrics_csv, pd.DataFrame) else pd.read_csv(metrics_csv)
    if "epoch" not in df.columns:
        raise ValueError(f"metrics must have an 'epoch' column; columns are {list(df.columns)}")
    panels = []
    for title, columns in _CURVE_PANELS:
        present = [c for c in columns if c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any()]
        if present:
            panels.append((title, present))
    if not panels:
        raise ValueError("metrics have no column to plot; expected some of "
                         f"{[c for _, cols in _CURVE_PANELS for c in cols]}")
    fig = new_figure(4.0 * len(panels), 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    epoch = pd.to_numeric(df["epoch"], errors="coerce")
    for ax, (title, columns) in zip(axes, panels):
        for col in columns:
            values = pd.to_numeric(df[col], errors="coerce")
            ok = values.notna() & epoch.notna()
            ax.plot(epoch[ok], values[ok], marker="o", markersize=3, linewidth=1.2, label=col)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_png(fig, path)
