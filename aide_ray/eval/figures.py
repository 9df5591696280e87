"""Pictures of results and training runs, as PNG files (matplotlib, Agg backend).

* :func:`overlay_figure`: an image slice with the reference and predicted contours
  (evaluation reports pick the best, median and worst cases by Dice).
* :func:`correction_panels`: one training sample's HQ label (when known), noisy label
  and the labels net1 and net2 corrected it to, as the AIDE paper's Figure 4.
* :func:`dice_scatter`: Dice of each network's output against the label it trains on,
  versus the Dice of that label against the HQ label, coloured by epoch (the paper's
  Figure 2: networks fit clean labels first, so low-quality labels stand out).
* :func:`training_curves`: losses, Dice, corrections and throughput per epoch.
* :func:`write_run_figures`: all of the above for a run folder, with an index.md.

Every function draws on its own ``Figure`` (never pyplot's global state), so they are
safe in threads and Ray workers and never open a window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aide_ray._internal.io import atomic_dir, atomic_file, atomic_write_text

__all__ = [
    "overlay_figure",
    "correction_panels",
    "correction_grid",
    "dice_scatter",
    "training_curves",
    "write_run_figures",
    "RunFigures",
    "CORRECTION_SAMPLES_FILE",
    "TRAIN_SCORES_FILE",
    "METRICS_FILE",
]

CORRECTION_SAMPLES_FILE = "correction_samples.npz"
TRAIN_SCORES_FILE = "train_scores.csv"
METRICS_FILE = "metrics.csv"

REF_COLOUR = "#22c55e"  # green
PRED_COLOUR = "#ef4444"  # red
_LABEL_COLOURS = {"clean": "#22c55e", "noisy": "#f59e0b", "net1": "#3b82f6", "net2": "#d946ef"}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
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
    fig = _new_figure(max(w * scale, 2.5), max(h * scale, 2.5) + 0.6)
    ax = fig.add_subplot(1, 1, 1)
    _show_image(ax, image2d)
    handles = []
    from matplotlib.lines import Line2D

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
    return _save(fig, path)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a != 0, b != 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


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
        note = f"\nDice vs HQ {_dice(arr, clean):.3f}" if clean is not None and key != "clean" else "\n"
        ax.set_title(label + note, fontsize=8)


def _single_colour(colour: str):
    from matplotlib.colors import ListedColormap

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
    fig = _new_figure(11.0, 3.2)
    axes = fig.subplots(1, 5)
    _draw_correction_row(axes, image, clean, noisy, label_net1, label_net2, "")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


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
    fig = _new_figure(11.0, 2.6 * n + 0.4)
    axes = np.asarray(fig.subplots(n, 5)).reshape(n, 5)
    for i in range(n):
        _draw_correction_row(axes[i], image[i], clean[i] if bool(has_clean[i]) else None, noisy[i], net1[i],
                             net2[i], str(sample_id[i]))
    return _save(fig, path)


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
    fig = _new_figure(4.2 * len(slots) + 0.8, 4.0)
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
    from matplotlib.ticker import MaxNLocator

    bar = fig.colorbar(sc, ax=list(axes), label="epoch")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    return _save(fig, path)


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
    from matplotlib.ticker import MaxNLocator

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
    fig = _new_figure(4.0 * len(panels), 3.4)
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
    return _save(fig, path)


@dataclass
class RunFigures:
    """What :func:`write_run_figures` wrote and skipped.

    Attributes:
        out_dir: the figures folder.
        written: file names written, relative to ``out_dir``.
        skipped: one note per figure not drawn, saying why.
    """

    out_dir: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def write_run_figures(run_dir: str | Path, out_dir: str | Path | None = None, *, max_samples: int = 8
                      ) -> RunFigures:
    """Draw every figure a training run's files allow, into ``out_dir`` with an index.md.

    Reads ``metrics.csv`` (training curves), ``train_scores.csv`` (Dice scatter) and
    ``correction_samples.npz`` (label-correction panels) from ``run_dir``; a missing or
    unusable input is skipped with a note. The folder is replaced atomically.

    Args:
        run_dir: the training run folder.
        out_dir: output folder; default ``run_dir/figures``.
        max_samples: at most this many correction samples are drawn.
    Returns:
        RunFigures with what was written and what was skipped.
    Raises:
        FileNotFoundError: if ``run_dir`` is not a folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "figures"
    result = RunFigures(out_dir=out_dir)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        metrics = run_dir / METRICS_FILE
        if metrics.is_file():
            _try(result, "training_curves.png", lambda: training_curves(metrics, tmp / "training_curves.png"))
        else:
            result.skipped.append(f"training curves: {metrics} not found")
        scores = run_dir / TRAIN_SCORES_FILE
        if scores.is_file():
            _try(result, "dice_scatter.png", lambda: dice_scatter(scores, tmp / "dice_scatter.png"))
        else:
            result.skipped.append(f"Dice scatter: {scores} not found")
        samples = run_dir / CORRECTION_SAMPLES_FILE
        if samples.is_file():
            _try(result, "corrections.png", lambda: _correction_figures(samples, tmp, max_samples, result))
        else:
            result.skipped.append(f"label-correction panels: {samples} not found")
        atomic_write_text(tmp / "index.md", _run_index(run_dir, result))
    result.written.append("index.md")
    return result


def _try(result: RunFigures, name: str, draw) -> None:
    try:
        draw()
    except (ValueError, KeyError, OSError) as e:
        result.skipped.append(f"{name}: {e}")
    else:
        result.written.append(name)


def _correction_figures(npz: Path, out: Path, max_samples: int, result: RunFigures) -> None:
    need = ("image", "clean", "has_clean", "noisy", "net1", "net2", "sample_id")
    with np.load(npz, allow_pickle=False) as data:
        missing = [k for k in need if k not in data.files]
        if missing:
            raise ValueError(f"{npz.name} lacks arrays {missing}; it has {sorted(data.files)}")
        arrays = {k: data[k][:max_samples] for k in need}
    ids = [str(s) for s in arrays["sample_id"]]
    (out / "corrections").mkdir(exist_ok=True)
    for i, sid in enumerate(ids):
        name = f"corrections/{_safe_name(sid)}.png"
        correction_panels(arrays["image"][i], arrays["clean"][i] if bool(arrays["has_clean"][i]) else None,
                          arrays["noisy"][i], arrays["net1"][i], arrays["net2"][i], out / name, title=sid)
        result.written.append(name)
    correction_grid(arrays["image"], arrays["clean"], arrays["has_clean"], arrays["noisy"], arrays["net1"],
                    arrays["net2"], ids, out / "corrections.png")


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) or "sample"


def _run_index(run_dir: Path, result: RunFigures) -> str:
    lines = [f"# Figures of run `{run_dir.name}`", ""]
    captions = {
        "training_curves.png": "Training curves (loss, Dice, corrected labels, throughput per epoch)",
        "dice_scatter.png": "Dice(network output, noisy label) vs Dice(noisy label, HQ label), coloured by epoch",
        "corrections.png": "Label correction: HQ label, noisy label, net1 and net2 corrected labels",
    }
    for name in result.written:
        if name in captions:
            lines += [f"## {captions[name]}", "", f"![{name}]({name})", ""]
    per_sample = [n for n in result.written if n.startswith("corrections/")]
    if per_sample:
        lines += ["Per sample: " + ", ".join(f"[{Path(n).stem}]({n})" for n in per_sample), ""]
    if result.skipped:
        lines += ["## Skipped", ""] + [f"- {note}" for note in result.skipped] + [""]
    return "\n".join(lines)
