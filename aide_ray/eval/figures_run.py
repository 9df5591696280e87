"""A training run's figures folder: every figure its files allow, with an index.md.

``aide-ray figures RUN`` (which the experiment jobs run for every arm) calls
:func:`write_run_figures`, which finds the run's inputs by their run-folder names
(:mod:`aide_ray.runs.folder`), draws what it can with :mod:`aide_ray.eval.figures`
and :mod:`aide_ray.eval.figures_training`, and says what it skipped and why. It is
its own module because it is about files (what exists, what to skip, the index),
not drawing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aide_ray._internal.io import atomic_dir, atomic_write_text
from aide_ray.eval.figures import correction_grid, correction_panels
from aide_ray.eval.figures_training import dice_scatter, training_curves
from aide_ray.runs.folder import FIGURES_DIR, HISTORY_FILE, SAMPLES_FILE, SCORES_FILE

__all__ = ["RunFigures", "write_run_figures"]


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
    out_dir = Path(out_dir) if out_dir is not None else run_dir / FIGURES_DIR
    result = RunFigures(out_dir=out_dir)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        metrics = run_dir / HISTORY_FILE
        if metrics.is_file():
            _try(result, "training_curves.png", lambda: training_curves(metrics, tmp / "training_curves.png"))
        else:
            result.skipped.append(f"training curves: {metrics} not found")
        scores = run_dir / SCORES_FILE
        if scores.is_file():
            _try(result, "dice_scatter.png", lambda: dice_scatter(scores, tmp / "dice_scatter.png"))
        else:
            result.skipped.append(f"Dice scatter: {scores} not found")
        samples = run_dir / SAMPLES_FILE
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
