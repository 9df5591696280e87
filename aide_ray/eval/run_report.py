"""A training run's report page: one self-contained HTML file, readable offline.

``aide-ray report RUN_DIR`` (and the training drivers, when a run ends) call
:func:`write_run_report`, which writes ``RUN_DIR/report.html``: the training
curves, the label-correction panels and the Dice scatter (drawn with
:mod:`aide_ray.eval.figures_training` and :mod:`aide_ray.eval.figures`, embedded
as base64 PNG data URIs), the per-epoch metrics table, the run's configuration,
and the evaluation folders' summaries with their overlays (embedded, each linking
to its file by a relative path). There is no script and nothing from the network;
the style sheet is inline, so the file can be mailed or opened from a USB stick.

It is its own module because it is about one page (what goes in, how it is
embedded, what to say when an input is missing), where
:mod:`aide_ray.eval.figures_run` writes a folder of separate PNGs.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import yaml

from aide_ray._internal.io import atomic_write_text
from aide_ray.eval.figures import correction_grid
from aide_ray.eval.figures_training import dice_scatter, training_curves
from aide_ray.eval.stats import format_pm
from aide_ray.exceptions import InputError
from aide_ray.runs.folder import (BEST_POINTER, CHECKPOINT_PREFIX, CONFIG_FILE, HISTORY_FILE, REPORT_FILE,
                                  SAMPLES_FILE, SCORES_FILE)

__all__ = ["RunReport", "write_run_report", "is_run_folder", "find_eval_dirs"]

# What `aide-ray evaluate --out DIR` writes (aide_ray.eval.evaluate).
EVAL_SUMMARY = "summary.csv"
EVAL_COMPARISON = "comparison.csv"
EVAL_INDEX = "index.md"
# Errors a figure function raises on an unusable input: the figure is skipped with a note.
_DRAW_ERRORS = (ValueError, KeyError, OSError, zipfile.BadZipFile)
_SAMPLE_ARRAYS = ("image", "clean", "has_clean", "noisy", "net1", "net2", "sample_id")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #1f2937; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #d1d5db; padding-bottom: .2em; margin-top: 1.8em; }
figure { margin: 1em 0; } figcaption { color: #4b5563; font-size: .9em; }
img.figure { max-width: 100%; height: auto; border: 1px solid #e5e7eb; }
img.overlay { width: 280px; height: auto; border: 1px solid #e5e7eb; }
.overlays { display: flex; flex-wrap: wrap; gap: 1em; }
.scroll { overflow-x: auto; max-height: 32em; overflow-y: auto; }
table { border-collapse: collapse; font-size: .85em; }
th, td { border: 1px solid #e5e7eb; padding: .25em .5em; text-align: right; white-space: nowrap; }
th { background: #f3f4f6; position: sticky; top: 0; }
pre { background: #f9fafb; border: 1px solid #e5e7eb; padding: 1em; overflow-x: auto; font-size: .85em; }
.note { color: #92400e; background: #fffbeb; border-left: 4px solid #f59e0b; padding: .4em .8em; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; } dt { font-weight: 600; }
"""


@dataclass
class RunReport:
    """What :func:`write_run_report` wrote.

    Attributes:
        path: the HTML file.
        figures: the figures embedded (training curves, Dice scatter, label correction).
        skipped: one note per part left out, saying why (also shown on the page).
        evals: the evaluation folders shown.
    """

    path: Path
    figures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    evals: list[Path] = field(default_factory=list)


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run folder: a folder with config.yaml, metrics.csv or a checkpoint."""
    path = Path(path)
    if not path.is_dir():
        return False
    return ((path / CONFIG_FILE).is_file() or (path / HISTORY_FILE).is_file()
            or any(p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) for p in path.iterdir()))


def find_eval_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """The run's evaluation folders: its direct subfolders holding an ``aide-ray evaluate`` summary.csv."""
    return sorted(p for p in Path(run_dir).iterdir() if p.is_dir() and (p / EVAL_SUMMARY).is_file())


def write_run_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                     evals: Sequence[str | os.PathLike] | None = None, max_samples: int = 8) -> RunReport:
    """Write a run's report page, one self-contained HTML file (atomically).

    A missing or unusable input (no correction samples for a supervised run, no
    ``train_scores.csv``, no evaluation) leaves its part out with a note on the page.

    Args:
        run_dir: the training run folder.
        out: the HTML file; default ``run_dir/report.html``.
        evals: evaluation folders (``aide-ray evaluate --out``) to show; default the run
            folder's subfolders that hold a summary.csv.
        max_samples: at most this many label-correction samples are drawn.
    Returns:
        RunReport with the path and what was embedded and skipped.
    Raises:
        InputError: if ``run_dir`` is not a run folder, or a folder in ``evals`` has no summary.csv.
    """
    run_dir = Path(run_dir)
    if not is_run_folder(run_dir):
        raise InputError(f"RUN_DIR must be a training run folder (with {CONFIG_FILE}, {HISTORY_FILE} or "
                         f"{CHECKPOINT_PREFIX}*), got {run_dir}")
    if max_samples < 1:
        raise InputError(f"max_samples must be >= 1, got {max_samples}")
    eval_dirs = find_eval_dirs(run_dir) if evals is None else [Path(e) for e in evals]
    for folder in eval_dirs:
        if not (folder / EVAL_SUMMARY).is_file():
            raise InputError(f"evaluation folder must hold {EVAL_SUMMARY} (aide-ray evaluate --out), got {folder}")
    path = Path(out) if out is not None else run_dir / REPORT_FILE
    report = RunReport(path=path, evals=eval_dirs)
    body = [_header(run_dir), _figures(run_dir, report, max_samples), _metrics(run_dir, report),
            _evaluations(eval_dirs, path.parent), _config(run_dir, report)]
    if report.skipped:
        body.append("<h2>Left out</h2>\n<ul>" + "".join(f"<li>{_e(n)}</li>" for n in report.skipped) + "</ul>")
    page = ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>aide_ray run {_e(run_dir.name)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(part for part in body if part) + "\n</body>\n</html>\n")
    atomic_write_text(path, page)
    return report


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _href(target: Path, base: Path) -> str:
    """``target`` relative to the page's folder, as a URL path (so the run folder can be moved whole)."""
    rel = os.path.relpath(Path(target).resolve(), Path(base).resolve())
    return urllib.parse.quote(Path(rel).as_posix())


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _header(run_dir: Path) -> str:
    facts = [("run folder", str(run_dir.resolve()))]
    config = _read_config(run_dir)
    for key in ("method", "epochs"):
        if key in config:
            facts.append((key, str(config[key])))
    if (run_dir / BEST_POINTER).is_file():
        facts.append(("best checkpoint", (run_dir / BEST_POINTER).read_text().strip()))
    history = _read_csv(run_dir / HISTORY_FILE)
    if history is not None and not history.empty:
        facts.append(("epochs done", str(len(history))))
        if "val_dice" in history.columns and history["val_dice"].notna().any():
            val = pd.to_numeric(history["val_dice"], errors="coerce")
            best = history["epoch"][val.idxmax()] if "epoch" in history.columns else val.idxmax()
            facts.append(("val Dice", f"last {val.iloc[-1]:.4f}, best {val.max():.4f} (epoch {best})"))
    facts.append(("written", time.strftime("%Y-%m-%d %H:%M:%S")))
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    return f"<h1>Run <code>{_e(run_dir.name)}</code></h1>\n<dl class=\"facts\">{items}</dl>"


def _read_config(run_dir: Path) -> dict:
    # A plain YAML read, not Config: the page shows what the run wrote, even a config this version refuses.
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def _read_csv(path: Path, **kwargs) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, **kwargs)
    except (OSError, ValueError):
        return None


def _figures(run_dir: Path, report: RunReport, max_samples: int) -> str:
    """The three figures of the run, drawn into a scratch folder and embedded."""
    parts = []
    correction = ("Image, HQ label (when known), noisy label, and the labels net1 and net2 corrected it to, "
                  f"with Dice against HQ (at most {max_samples} samples).")
    scatter = ("Dice(network output, noisy label) against Dice(noisy label, HQ label), coloured by epoch: "
               "networks fit clean labels first, so low-quality labels stand out.")
    plan: list[tuple[str, str, Path, Callable[[Path, Path], object]]] = [
        ("Training curves", "Loss, Dice, labels corrected and throughput per epoch.", run_dir / HISTORY_FILE,
         training_curves),
        ("Label correction", correction, run_dir / SAMPLES_FILE,
         lambda src, dst: _correction_grid(src, dst, max_samples)),
        ("Dice scatter", scatter, run_dir / SCORES_FILE, dice_scatter),
    ]
    with tempfile.TemporaryDirectory(prefix="aide_ray_report_") as scratch:
        for title, caption, source, draw in plan:
            parts.append(f"<h2>{_e(title)}</h2>")
            if not source.is_file():
                note = f"{title.lower()}: {source.name} not found"
                report.skipped.append(note)
                parts.append(_note(note))
                continue
            png = Path(scratch) / f"{len(report.figures)}.png"
            try:
                draw(source, png)
            except _DRAW_ERRORS as e:
                note = f"{title.lower()}: {source.name} unusable ({e})"
                report.skipped.append(note)
                parts.append(_note(note))
                continue
            report.figures.append(title)
            parts.append(f'<figure><img class="figure" alt="{_e(title)}" src="{_data_uri(png.read_bytes())}">'
                         f"<figcaption>{_e(caption)}</figcaption></figure>")
    return "\n".join(parts)


def _correction_grid(npz: Path, png: Path, max_samples: int) -> None:
    with np.load(npz, allow_pickle=False) as data:
        missing = [k for k in _SAMPLE_ARRAYS if k not in data.files]
        if missing:
            raise ValueError(f"it lacks arrays {missing}; it has {sorted(data.files)}")
        a = {k: data[k][:max_samples] for k in _SAMPLE_ARRAYS}
    correction_grid(a["image"], a["clean"], a["has_clean"], a["noisy"], a["net1"], a["net2"],
                    [str(s) for s in a["sample_id"]], png)


def _table(df: pd.DataFrame, *, index: bool = False) -> str:
    return ('<div class="scroll">' + df.to_html(index=index, border=0, na_rep="–", escape=True,
                                                float_format=lambda v: f"{v:.4f}") + "</div>")


def _metrics(run_dir: Path, report: RunReport) -> str:
    head = "<h2>Metrics per epoch</h2>"
    history = _read_csv(run_dir / HISTORY_FILE)
    if history is None or history.empty:
        note = f"metrics table: {HISTORY_FILE} not found or empty"
        report.skipped.append(note)
        return head + "\n" + _note(note)
    return (f"{head}\n<p>{_e(HISTORY_FILE)}: one row per epoch (epochs count from 0); the columns are listed in "
            "the README (What a run leaves behind).</p>\n" + _table(history))


def _evaluations(eval_dirs: list[Path], base: Path) -> str:
    if not eval_dirs:
        return ("<h2>Evaluation</h2>\n<p>No evaluation folder found (a subfolder with summary.csv, as "
                "<code>aide-ray evaluate --out RUN_DIR/eval</code> writes; or <code>aide-ray report --eval DIR"
                "</code>).</p>")
    parts = ["<h2>Evaluation</h2>"]
    for folder in eval_dirs:
        links = [f'<a href="{_href(folder / name, base)}">{_e(name)}</a>'
                 for name in (EVAL_INDEX, "per_case.csv", EVAL_SUMMARY, EVAL_COMPARISON) if (folder / name).is_file()]
        parts.append(f"<h3><code>{_e(folder.name)}</code></h3>\n<p>{_e(folder.resolve())}: {', '.join(links)}</p>")
        summary = _read_csv(folder / EVAL_SUMMARY, index_col=0)
        if summary is not None and {"mean", "std", "n"} <= set(summary.columns):
            shown = pd.DataFrame({"mean ± std": [format_pm(m, s, 4) for m, s in zip(summary["mean"], summary["std"])],
                                  "n": summary["n"].astype(int)}, index=summary.index)
            if "n_excluded" in summary.columns:
                shown["excluded"] = summary["n_excluded"].astype(int)
            parts.append(_table(shown, index=True))
        elif summary is not None:
            parts.append(_table(summary, index=True))
        comparison = _read_csv(folder / EVAL_COMPARISON, index_col=0)
        if comparison is not None:
            parts.append("<p>Paired two-tailed t-tests (this run = a):</p>\n" + _table(comparison, index=True))
        overlays = sorted(folder.glob("overlay_*.png"))
        if overlays:
            parts.append("<p>Overlays (reference green, solid; prediction red, dashed); each links to its file:</p>")
            cells = [f'<figure><a href="{_href(p, base)}"><img class="overlay" alt="{_e(p.stem)}" '
                     f'src="{_data_uri(p.read_bytes())}"></a><figcaption>{_e(p.name)}</figcaption></figure>'
                     for p in overlays]
            parts.append('<div class="overlays">' + "".join(cells) + "</div>")
    return "\n".join(parts)


def _config(run_dir: Path, report: RunReport) -> str:
    head = f"<h2>Configuration (<code>{_e(CONFIG_FILE)}</code>)</h2>"
    try:
        text = (run_dir / CONFIG_FILE).read_text(encoding="utf-8")
    except OSError:
        note = f"configuration: {CONFIG_FILE} not found"
        report.skipped.append(note)
        return head + "\n" + _note(note)
    return f"{head}\n<pre>{_e(text)}</pre>"
