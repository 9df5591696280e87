"""Keep the numbers of an experiment folder without its data, checkpoints and predictions.

An experiment folder (:mod:`aide_ray.experiments.layout`) holds gigabytes of shards,
checkpoints and predictions, and ``runs/`` is not versioned: a page of results whose
folder is gone cannot be regenerated, and a setting whose seeds take several sessions
has to start again. The archive keeps what the report reads, for the runs that
finished (tested), in the same layout:

    ARCHIVE/experiment.json, configs/*.yaml, timing/*.json
    ARCHIVE/eval/<arm>_s<seed>/per_case.csv
    ARCHIVE/train/<arm>_s<seed>/{config.yaml, metrics.csv, train_scores.csv}

so that ``run.py report ARCHIVE`` writes the same tables as from ``OUT``, and copying
the archive back to ``OUT`` lets ``run.py <setting> --out OUT`` skip the runs it holds
(they count as evaluated) and train the rest. Figures, logs, predictions and checkpoints
stay behind (``--figures`` needs the original folder).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from aide_ray.exceptions import InputError
from aide_ray.experiments.layout import EXPERIMENT_FILE, PER_CASE_FILE
from aide_ray.runs.folder import CONFIG_FILE, HISTORY_FILE, SCORES_FILE

__all__ = ["archive_experiment"]

_RUN_FILES = (CONFIG_FILE, HISTORY_FILE, SCORES_FILE)


def _kept_files(out: Path) -> list[Path]:
    """The archived files of ``out``, relative to it: the folder's own records and every evaluated run's numbers."""
    kept = [Path(EXPERIMENT_FILE)]
    kept += [p.relative_to(out) for p in sorted(out.glob("configs/*.yaml"))]
    kept += [p.relative_to(out) for p in sorted(out.glob("timing/*.json"))]
    for per_case in sorted(out.glob(f"eval/*/{PER_CASE_FILE}")):
        run = per_case.parent.name
        kept.append(per_case.relative_to(out))
        kept += [Path("train", run, name) for name in _RUN_FILES if (out / "train" / run / name).is_file()]
    return kept


def archive_experiment(out_dir: str | os.PathLike, archive_dir: str | os.PathLike) -> tuple[Path, int]:
    """Copy the numbers of experiment folder ``out_dir`` to ``archive_dir``, replacing an earlier archive there.

    The copy is written to a temporary folder beside ``archive_dir`` and renamed into place when complete, so a
    failure leaves the earlier archive (or nothing).

    Returns:
        ``archive_dir`` and the number of evaluated runs it holds.
    Raises:
        InputError: ``out_dir`` has no ``experiment.json`` (not an experiment folder), or the archive would be
            inside it.
    """
    out, dest = Path(out_dir).resolve(), Path(archive_dir).resolve()
    if not (out / EXPERIMENT_FILE).is_file():
        raise InputError(f"{out_dir}: not an experiment folder (no {EXPERIMENT_FILE})")
    if dest == out or out in dest.parents:
        raise InputError(f"{archive_dir}: the archive must lie outside the experiment folder {out_dir}")
    files = _kept_files(out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for rel in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(out / rel, tmp / rel)
        old = dest.with_name(f".{dest.name}.old") if dest.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, sum(1 for rel in files if rel.name == PER_CASE_FILE)
