"""The run folder: every file name in it, and how its checkpoints are listed and ranked.

Both training backends (local and Ray) write the same run folder, and predict,
evaluate, figures, export-labels, Tune and the experiments read it; this is the
one module that spells its file names::

    RUN/config.yaml               the run's configuration
    RUN/metrics.csv               one row per epoch (docs/architecture.md lists the columns)
    RUN/train_scores.csv          per-sample Dice of each net against its label (and label vs HQ label)
    RUN/correction_samples.npz    label-correction panels of the last epoch
    RUN/label_store.npz           the corrected labels after the last epoch
    RUN/best_checkpoint.txt       the checkpoint with the best ``eval.best_metric``, relative to RUN
    RUN/report.html               the run's report page (curves, panels, metrics, config), self-contained
    RUN/checkpoint_<time>/        state.pt, metrics.json, dataset.json, label_store.npz, files.json,
                                  and copies of the artifacts above as of that epoch

Run folders may live on object storage (``s3://``): paths here are strings or
Paths and go through :mod:`aide_ray._internal.fs`.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pyarrow.fs as pafs

from aide_ray._internal import fs

__all__ = [
    "CONFIG_FILE", "HISTORY_FILE", "SCORES_FILE", "SAMPLES_FILE", "LABEL_STORE_FILE", "BEST_POINTER",
    "LABEL_STORE_LATEST", "STATE_FILE", "DATASET_FILE", "METRICS_FILE", "FILES_MANIFEST", "FIGURES_DIR", "REPORT_FILE",
    "CHECKPOINT_PREFIX", "ARTIFACTS", "checkpoint_name", "checkpoint_dirs", "checkpoint_metrics", "best_checkpoint",
    "latest_checkpoint", "looks_complete", "copy_artifacts", "write_best_pointer",
]

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "metrics.csv"
SCORES_FILE = "train_scores.csv"
SAMPLES_FILE = "correction_samples.npz"
LABEL_STORE_FILE = "label_store.npz"
BEST_POINTER = "best_checkpoint.txt"
# The label-store actor's own restart snapshot (rewritten after every commit).
LABEL_STORE_LATEST = "label_store.latest.npz"
FIGURES_DIR = "figures"
# The run's report page (aide_ray.eval.run_report): one self-contained HTML file.
REPORT_FILE = "report.html"

# Inside a checkpoint folder.
STATE_FILE = "state.pt"
DATASET_FILE = "dataset.json"
METRICS_FILE = "metrics.json"
FILES_MANIFEST = "files.json"
CHECKPOINT_PREFIX = "checkpoint_"

# What a checkpoint carries besides the state and what the run folder gets from the latest one.
ARTIFACTS = (HISTORY_FILE, SCORES_FILE, SAMPLES_FILE, LABEL_STORE_FILE)


def checkpoint_name(now: float | None = None) -> str:
    """A new checkpoint folder name, ``checkpoint_YYYY-MM-DD_HH-MM-SS.ffffff`` as Ray Train names them.

    Names sort in time order, which is what :func:`latest_checkpoint` relies on.
    """
    now = time.time() if now is None else now
    micro = int(round((now - math.floor(now)) * 1e6)) % 1_000_000
    return f"{CHECKPOINT_PREFIX}{time.strftime('%Y-%m-%d_%H-%M-%S', time.localtime(now))}.{micro:06d}"


def _listing(run_dir: str | os.PathLike) -> list[str]:
    if fs.is_uri(run_dir):
        filesystem, base = pafs.FileSystem.from_uri(str(run_dir))
        infos = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        return [info.base_name for info in infos if info.type == pafs.FileType.Directory]
    path = Path(run_dir)
    return [p.name for p in path.iterdir() if p.is_dir()] if path.is_dir() else []


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[str]:
    """The run's checkpoint folders (paths or URIs), oldest first."""
    names = sorted(n for n in _listing(run_dir) if n.startswith(CHECKPOINT_PREFIX))
    return [fs.join(run_dir, n) for n in names]


def checkpoint_metrics(checkpoint: str | os.PathLike) -> dict[str, float]:
    """The metrics row a checkpoint was reported with (empty if it has none)."""
    path = fs.join(checkpoint, METRICS_FILE)
    if not fs.exists(path):
        return {}
    try:
        return json.loads(fs.read_text(path))
    except json.JSONDecodeError:
        return {}


def latest_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint folder of the run, or None."""
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def looks_complete(checkpoint: str | os.PathLike) -> bool:
    """Whether a local checkpoint's files have the sizes its ``files.json`` records (no hashing; URIs: True).

    The cheap half of :func:`aide_ray.runs.checkpoint.verify_checkpoint`, for ranking:
    a truncated or unfinished checkpoint is never named best.
    """
    if fs.is_uri(checkpoint):
        return True
    folder = Path(checkpoint)
    try:
        files = json.loads((folder / FILES_MANIFEST).read_text())["files"]
        return all((folder / name).stat().st_size == int(entry["bytes"]) for name, entry in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def best_checkpoint(run_dir: str | os.PathLike, metric: str) -> str | None:
    """The checkpoint with the highest finite ``metric`` (the earliest on ties), or None.

    Both backends pick the best checkpoint with this one rule; checkpoints that are
    truncated or unfinished (:func:`looks_complete`) are passed over.
    """
    best, best_value = None, -math.inf
    for checkpoint in checkpoint_dirs(run_dir):
        if not looks_complete(checkpoint):
            continue
        value = checkpoint_metrics(checkpoint).get(metric)
        if value is not None and math.isfinite(value) and value > best_value:
            best, best_value = checkpoint, value
    return best


def write_best_pointer(run_dir: str | os.PathLike, best: str | None) -> None:
    """``best_checkpoint.txt``: the best checkpoint relative to the run folder (absolute for URIs)."""
    if best is None:
        return
    relative = str(best) if fs.is_uri(run_dir) else os.path.relpath(best, run_dir)
    fs.write_text(fs.join(run_dir, BEST_POINTER), relative + "\n")


def copy_artifacts(checkpoint: str | os.PathLike, run_dir: str | os.PathLike) -> None:
    """Copy the artifacts a user opens (:data:`ARTIFACTS`) from a checkpoint into the run folder."""
    for name in ARTIFACTS:
        src = fs.join(checkpoint, name)
        if fs.exists(src):
            fs.copy_file(src, fs.join(run_dir, name))
