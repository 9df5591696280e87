"""Keep the numbers of an experiment folder without its data, checkpoints and predictions.

An experiment folder (:mod:`aide_ray.experiments.layout`) holds gigabytes of shards,
checkpoints and predictions, and ``runs/`` is not versioned: a page of results whose
folder is gone cannot be regenerated, and a setting whose seeds take several sessions
has to start again. The archive keeps what the report reads, for the runs that
finished (tested), in the same layout:

    ARCHIVE/experiment.json, configs/*.yaml, timing/*.json
    ARCHIVE/eval/<arm>_s<seed>/per_case.csv
    ARCHIVE/train/<arm>_s<seed>/{config.yaml, metrics.csv}
    ARCHIVE/train/<aide arm>_s<seed>/train_scores.csv.gz   (the label-correction table's source)

so that ``run.py report ARCHIVE`` writes the same tables as from ``OUT``, and copying
the archive back to ``OUT`` lets ``run.py <setting> --out OUT`` skip the runs it holds
(they count as evaluated) and train the rest. Figures, logs, predictions and checkpoints
stay behind (``--figures`` needs the original folder).
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

from aide_ray._internal.io import atomic_dir
from aide_ray.exceptions import InputError
from aide_ray.experiments.layout import EXPERIMENT_FILE, PER_CASE_FILE
from aide_ray.experiments.results import shows_label_quality
from aide_ray.runs.folder import CONFIG_FILE, HISTORY_FILE, SCORES_FILE

__all__ = ["archive_experiment"]

_RUN_FILES = (CONFIG_FILE, HISTORY_FILE)
# Per-row scores of every epoch: a few MB per Shenzhen run, read by the report only for the arms that correct
# labels; kept gzipped (the report reads either name).
_SCORES_ARCHIVED = SCORES_FILE + ".gz"


def _kept_files(out: Path) -> list[Path]:
    """The archived files of ``out``, relative to it: the folder's own records and every evaluated run's numbers."""
    kept = [Path(EXPERIMENT_FILE)]
    kept += [p.relative_to(out) for p in sorted(out.glob("configs/*.yaml"))]
    kept += [p.relative_to(out) for p in sorted(out.glob("timing/*.json"))]
    for per_case in sorted(out.glob(f"eval/*/{PER_CASE_FILE}")):
        run = per_case.parent.name
        kept.append(per_case.relative_to(out))
        kept += [Path("train", run, name) for name in _RUN_FILES if (out / "train" / run / name).is_file()]
        arm = run.rsplit("_s", 1)[0]
        if shows_label_quality(arm) and (out / "train" / run / SCORES_FILE).is_file():
            kept.append(Path("train", run, _SCORES_ARCHIVED))
    return kept


def _copy(src_root: Path, rel: Path, dst_root: Path) -> None:
    (dst_root / rel).parent.mkdir(parents=True, exist_ok=True)
    if rel.name == _SCORES_ARCHIVED:
        # mtime=0: archiving unchanged scores again gives the same bytes (no churn in version control).
        with open(src_root / rel.with_name(SCORES_FILE), "rb") as src, \
                gzip.GzipFile(dst_root / rel, "wb", mtime=0) as dst:
            shutil.copyfileobj(src, dst)
    else:
        shutil.copy2(src_root / rel, dst_root / rel)


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
    with atomic_dir(dest, overwrite=True) as tmp:
        for rel in files:
            _copy(out, rel, tmp)
    return dest, sum(1 for rel in files if rel.name == PER_CASE_FILE)
