"""Pictures of single cases and samples, and the canvas every figure of aide_ray draws on.

* :func:`overlay_figure`: an image slice with the reference and predicted contours
  (evaluation reports pick the best, median and worst cases by Dice).
* :func:`correction_panels`: one training sample's HQ label (when known), noisy label
  and the labels net1 and net2 corrected it to, as the AIDE paper's Figure 4;
  :func:`correction_grid` stacks N of them.
* :func:`new_figure` and :func:`save_png`: the canvas and the atomic PNG writer shared
  with :mod:`aide_ray.eval.figures_training` (per-epoch plots of a run) and
  :mod:`aide_ray.eval.figures_run` (a run's figures folder).

Every function draws on its own ``Figure`` (never pyplot's global state), so they are
safe in threads and Ray workers and never open a window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from aide_ray._internal.io import atomic_file
from aide_ray.eval.dice import mask_dice

__all__ = [
    "overlay_figure",
    "correction_panels",
    "correction_grid",
    "new_figure",
    "save_png",
]

REF_COLOUR = "#22c55e"  # green
PRED_COLOUR = "#ef4444"  # red
_LABEL_COLOURS = {"clean": "#22c55e", "noisy": "#f59e0b", "net1": "#3b82f6", "net2": "#d946ef"}


def new_figure(width: float, height: float) -> Figure:
    """A Figure of ``width`` x ``height`` inches at 100 dpi, on its own Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as PNG (atomically: a reader never sees half a file); returns ``path``."""
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def _as_2d(name: str, arr: np.ndarray | None) -> np.ndarray | None:
    if arr is None:
        return None
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) array, got shape {arr.shape}")
    return arr


def _show_image(ax, image: np.ndarray) -> None:
    finite = image[np.isfinite(image)]
    lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _contour(ax, mask: np.ndarray, colour: str, style: str = "solid", width: float = 1.5) -> bool:
    """Draw each class's outline; returns False if the mask is empty (nothing drawn)."""
    drawn = False
    for value in np.unique(mask):
        if value == 0:
            continue
        cls = (mask == value).astype(np.float32)
        # Padding closes contours of objects that touch the image edge.
        padded = np.pad(cls, 1)
        ys, xs = np.arange(-1, cls.shape[0] + 1), np.arange(-1, cls.shape[1] + 1)
        ax.contour(xs, ys, padded, levels=[0.5], colors=[colour], linestyles=style, linewidths=width)
        drawn = True
    ax.set_xlim(-0.5, mask.shape[1] - 0.5)
    ax.set_ylim(mask.shape[0] - 0.5, -0.5)
    return drawn


def overlay_figure(image2d: np.ndarray, ref2d: np.ndarray | None, pred2d: np.ndarray | None,
                   path: str | Path, title: str = "") -> Path:
    """An image with the reference (green, solid) and predicted (red, dashed) contours.

    Args:
        image2d: (H, W) intensities (any range; shown between its 0.5 and 99.5 percentiles).
        ref2d: (H, W) integer label map, or None.
        pred2d: (H, W) integer label map, or None.
        path: output PNG.
        title: figure title.
    Returns:
        ``path``.
    Raises:
        ValueError: if an array is not 2D or shapes differ.
    """
    image2d = _as_2d("image2d", image2d)
    ref2d, pred2d = _as_2d("ref2d", ref2d), _as_2d("pred2d", pred2d)
    for name, arr in (("ref2d", ref2d), ("pred2d", pred2d)):
        if arr is not None and arr.shape != image2d.shape:
            raise ValueError(f"{name} must have the image's shape {image2d.shape}, got {arr.shape}")
    h, w = image2d.shape
    scale = 4.5 / max(h, w)
    fig = new_figure(max(w * scale, 2.5), max(h * scale, 2.5) + 0.6)
    ax = fig.add_subplot(1, 1, 1)
    _show_image(ax, image2d)
    handles = []
    if ref2d is not None:
        _contour(ax, ref2d, REF_COLOUR, "solid")
        handles.append(Line2D([], [], color=REF_COLOUR, linestyle="solid", label="reference"))
    if pred2d is not None:
        _contour(ax, pred2d, PRED_COLOUR, "dashed")
        handles.append(Line2D([], [], color=PRED_COLOUR, linestyle="dashed", label="prediction"))
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.7)
    if title:
        ax.set_title(title, fontsize=9)
    return save_png(fig, path)


def _draw_correction_row(axes: Sequence, image: np.ndarray, clean: np.ndarray | None, noisy: np.ndarray,
                         label_net1: np.ndarray, label_net2: np.ndarray, name: str) -> None:
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be (M, H, W), got shape {image.shape}")
    shape = image.shape[1:]
    panels = [("clean", "HQ label", clean), ("noisy", "noisy label", noisy),
              ("net1", "net1 corrected", label_net1), ("net2", "net2 corrected", label_net2)]
    for key, _, arr in panels:
        if arr is not None and _as_2d(key, arr).shape != shape:
            raise ValueError(f"{key} must have the image's in-plane shape {shape}, got {np.shape(arr)}")
    _show_image(axes[0], image[0])
    axes[0].set_title(f"{name}\nimage" if name else "image", fontsize=8)
    for ax, (key, label, arr) in zip(axes[1:], panels):
        _show_image(ax, image[0])
        if arr is None:
            ax.set_title(f"{label}\n(unknown)", fontsize=8)
            continue
        ax.imshow(np.ma.masked_equal(np.asarray(arr) != 0, False), cmap=_single_colour(_LABEL_COLOURS[key]),
                  alpha=0.35, vmin=0, vmax=1, interpolation="nearest")
        _contour(ax, np.asarray(arr) != 0, _LABEL_COLOURS[key], "solid", 1.0)
        note = f"\nDice vs HQ {mask_dice(arr, clean):.3f}" if clean is not None and key != "clean" else "\n"
        ax.set_title(label + note, fontsize=8)


def _single_colour(colour: str) -> ListedColormap:
    return ListedColormap([colour, colour])


def correction_panels(image: np.ndarray, clean: np.ndarray | None, noisy: np.ndarray, label_net1: np.ndarray,
                      label_net2: np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """One training sample's labels before and after AIDE's correction (paper Figure 4).

    Panels: image, HQ label (when known), the noisy training label, and the current
    (corrected) labels of net1 and net2, each with its Dice against the HQ label.

    Args:
        image: (M, H, W) float, the sample's modalities (the first one is shown).
        clean: (H, W) HQ label in {0, 1, ...}, or None when unknown.
        noisy: (H, W) the label the sample was given for training.
        label_net1: (H, W) net1's current label of the sample.
        label_net2: (H, W) net2's current label of the sample.
        path: output PNG.
        title: figure title (e.g. the sample id).
    Returns:
        ``path``.
    Raises:
        ValueError: on a bad shape.
    """
    fig = new_figure(11.0, 3.2)
    axes = fig.subplots(1, 5)
    _draw_correction_row(axes, image, clean, noisy, label_net1, label_net2, "")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, path)


def correction_grid(image: np.ndarray, clean: np.ndarray, has_clean: np.ndarray, noisy: np.ndarray,
                    net1: np.ndarray, net2: np.ndarray, sample_id: Sequence[str], path: str | Path) -> Path:
    """Correction panels of N samples in one figure, one row per sample.

    Args:
        image: (N, M, H, W) float.
        clean: (N, H, W) HQ labels (rows where ``has_clean`` is False are ignored).
        has_clean: (N,) bool.
        noisy, net1, net2: (N, H, W) labels.
        sample_id: N names.
        path: output PNG.
    Returns:
        ``path``.
    Raises:
        ValueError: if N is 0 or the arrays disagree on N.
    """
    n = len(image)
    lengths = {"clean": len(clean), "has_clean": len(has_clean), "noisy": len(noisy), "net1": len(net1),
               "net2": len(net2), "sample_id": len(sample_id)}
    bad = {k: v for k, v in lengths.items() if v != n}
    if n == 0 or bad:
        raise ValueError(f"correction arrays must all hold the same N >= 1 samples; image has {n}, "
                         f"others {lengths}")
    fig = new_figure(11.0, 2.6 * n + 0.4)
    axes = np.asarray(fig.subplots(n, 5)).reshape(n, 5)
    for i in range(n):
        _draw_correction_row(axes[i], image[i], clean[i] if bool(has_clean[i]) else None, noisy[i], net1[i],
                             net2[i], str(sample_id[i]))
    return save_png(fig, path)

