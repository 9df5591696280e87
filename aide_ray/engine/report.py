"""What a user sees of a run: the line per epoch, the summary table, and the finished run folder.

Both drivers (local and Ray) end a run with :func:`finish_run`: the best
checkpoint by one rule (:func:`aide_ray.runs.folder.best_checkpoint` on
``eval.best_metric``), the artifacts of the latest checkpoint copied into the
run folder, ``config.yaml``, and the history as a table.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from aide_ray._internal import fs
from aide_ray.config import Config
from aide_ray.eval.run_report import write_run_report
from aide_ray.methods.base import Method
from aide_ray.runs.folder import (CONFIG_FILE, HISTORY_FILE, best_checkpoint, copy_artifacts, latest_checkpoint,
                                  write_best_pointer)

__all__ = ["TrainingOutcome", "progress_line", "summary_table", "finish_run", "SUMMARY_COLUMNS"]


@dataclass
class TrainingOutcome:
    """What a finished run left behind."""

    run_dir: Path | str  # a URI string when the storage path is object storage
    best_checkpoint: Path | str | None
    latest_checkpoint: Path | str | None
    history: pd.DataFrame
    report: Path | None = None  # RUN/report.html; None for an object-storage run folder


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def progress_line(epoch: int, epochs: int, m: Mapping[str, Any], method: Method) -> str:
    """The one line printed per epoch."""
    names = method.net_names[: method.label_slots]
    nets = " ".join(f"{name} {_fmt(m[f'train_dice_{name}'])}" for name in names)
    relabelled = sum(int(m[f"relabelled_{name}"]) for name in names)
    return (f"[aide_ray] epoch {epoch + 1}/{epochs}: loss {m['loss']:.4f} | train Dice {nets} | "
            f"val Dice {_fmt(m['val_dice'])} | relabelled {relabelled} | {m['seconds']:.1f} s, "
            f"{m['slices_per_s']:.1f} slices/s")


SUMMARY_COLUMNS = ["epoch", "loss", "train_dice", "val_dice", "seconds", "slices_per_s"]


def summary_table(history: pd.DataFrame) -> str:
    """The per-epoch table printed at the end of a run (per-net losses, Dice and relabellings included)."""
    if history.empty:
        return "(no epochs reported)"
    per_net = sorted(c for c in history.columns if c.startswith(("loss_", "train_dice_", "relabelled_"))
                     and not c.startswith("loss_all"))
    cols = ["epoch", "loss", *per_net, *SUMMARY_COLUMNS[2:]]
    table = history[[c for c in cols if c in history.columns]].copy()
    table["epoch"] = table["epoch"].astype(int) + 1
    return table.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def _read_history(run_dir: Path | str) -> pd.DataFrame:
    path = fs.join(run_dir, HISTORY_FILE)
    return pd.read_csv(io.StringIO(fs.read_text(path))) if fs.exists(path) else pd.DataFrame()


def finish_run(run_dir: Path | str, cfg: Config, metric: str) -> TrainingOutcome:
    """Best-checkpoint pointer, artifacts of the latest checkpoint and ``config.yaml`` in the run folder."""
    latest = latest_checkpoint(run_dir)
    best = best_checkpoint(run_dir, metric)
    if latest is not None:
        copy_artifacts(latest, run_dir)
    write_best_pointer(run_dir, best)
    fs.write_text(fs.join(run_dir, CONFIG_FILE), cfg.to_yaml())

    def local(path: str | None) -> Path | str | None:
        return Path(path) if path is not None and not fs.is_uri(path) else path

    report = None
    if not fs.is_uri(run_dir):  # the page embeds figures drawn here (~1-2 s); a failure must not fail the run
        try:
            report = write_run_report(run_dir).path
        except OSError as e:
            print(f"report page not written: {e}", flush=True)
    return TrainingOutcome(run_dir=local(str(run_dir)), best_checkpoint=local(best), latest_checkpoint=local(latest),
                           history=_read_history(run_dir), report=report)

