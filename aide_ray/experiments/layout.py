"""Where things live in an experiment folder: the one place that names its files and folders.

An experiment folder ``OUT`` (one per setting) is written by
:mod:`aide_ray.experiments.pipeline` and read by :mod:`aide_ray.experiments.results`::

    OUT/experiment.json                   setting, data folder, seeds, arms, sizes, the command that made it
    OUT/configs/<arm>.yaml                the training config of an arm, written from the catalogue
    OUT/data/                             manifests and Parquet shards of the training sets
    OUT/train/<arm>_s<seed>/              the training run (checkpoints, metrics.csv, train_scores.csv, figures/)
    OUT/pred/<arm>_s<seed>/               test predictions of the run's best checkpoint
    OUT/eval/<arm>_s<seed>/per_case.csv   `aide-ray evaluate` of those predictions
    OUT/timing/<stage>_<arm>_s<seed>.json {"arm", "seed", "stage", "rc", "seconds", ...} per stage
    OUT/logs/<stage>_<arm>_s<seed>.log    the output of every command

Both sides import these names, so that the writer and the readers cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EXPERIMENT_FILE", "PER_CASE_FILE", "run_name", "train_dir", "pred_dir", "eval_dir", "config_file",
           "timing_file", "log_file", "data_dir"]

EXPERIMENT_FILE = "experiment.json"
PER_CASE_FILE = "per_case.csv"


def run_name(arm: str, seed: int) -> str:
    """Folder name of one arm and seed under ``OUT/train``, ``OUT/pred`` and ``OUT/eval``."""
    return f"{arm}_s{seed}"


def train_dir(out: Path, arm: str, seed: int) -> Path:
    return out / "train" / run_name(arm, seed)


def pred_dir(out: Path, arm: str, seed: int) -> Path:
    return out / "pred" / run_name(arm, seed)


def eval_dir(out: Path, arm: str, seed: int) -> Path:
    return out / "eval" / run_name(arm, seed)


def config_file(out: Path, arm: str) -> Path:
    return out / "configs" / f"{arm}.yaml"


def data_dir(out: Path) -> Path:
    return out / "data"


def timing_file(out: Path, stage: str, arm: str, seed: int) -> Path:
    return out / "timing" / f"{stage}_{run_name(arm, seed)}.json"


def log_file(out: Path, stage: str, name: str) -> Path:
    """``OUT/logs/<stage>_<name>.log``; ``name`` is a run name, or ``s<seed>`` for a seed's pseudo-labels."""
    return out / "logs" / f"{stage}_{name}.log"
