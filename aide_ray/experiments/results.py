"""The numbers of finished experiment folders: per-case tables, pooled summaries, paired tests, wall times.

This module only reads what the driver wrote (:mod:`aide_ray.experiments.layout`):
it pools each arm's per-case metrics over cases and seeds (mean ± std), runs
two-tailed paired t-tests of AIDE against a baseline
(:func:`aide_ray.eval.stats.paired_ttest`), sums the wall time of each stage and
reads how the training labels changed. Nothing here trains, predicts or
formats, so the tables can be recomputed from finished runs at any time;
:mod:`aide_ray.experiments.report` turns them into Markdown.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from aide_ray.eval.stats import paired_ttest
from aide_ray.exceptions import AideRayError, InputError
from aide_ray.experiments.catalogue import get_setting
from aide_ray.experiments.layout import EXPERIMENT_FILE, PER_CASE_FILE, eval_dir, train_dir
from aide_ray.runs.folder import CHECKPOINT_PREFIX, CONFIG_FILE, HISTORY_FILE, SCORES_FILE

__all__ = ["KEYS", "TABLE_METRICS", "Experiment", "load_experiment", "collect_cases", "summary_table",
           "paired_tests", "wall_times", "shows_label_quality", "label_quality", "unfinished_note", "arm_run_info",
           "train_throughput"]

KEYS = ("case_id", "annotator")  # what pairs two arms' rows; seeds are averaged first
TABLE_METRICS = ("dice", "assd", "hd95")  # the paper's metrics


@dataclass(frozen=True)
class Experiment:
    """``OUT/experiment.json``, as the driver wrote it.

    Attributes:
        setting: the catalogue name of the setting.
        seeds: training seeds run so far.
        arms: arms run so far; None in folders older than that key (all arms).
        full: run at the paper's GPU size.
        backend: the training backend ("ray", "local"; "plain" for folders made by the old plain loop).
        overrides: the ``--set`` items.
        command: the command that made the folder (None when not recorded).
        size_note, data_note: sentences about the inputs and the data.
    """

    setting: str
    seeds: tuple[int, ...]
    arms: tuple[str, ...] | None = None
    full: bool = False
    backend: str = "ray"
    overrides: tuple[str, ...] = ()
    command: str | None = None
    size_note: str = ""
    data_note: str = ""


def load_experiment(out_dir: str | os.PathLike) -> Experiment:
    """Read ``OUT/experiment.json``.

    Raises:
        InputError: the file is missing, not JSON, lacks ``setting`` or ``seeds``, or names an unknown setting.
    """
    path = Path(out_dir) / EXPERIMENT_FILE
    if not path.is_file():
        raise InputError(f"{path} not found: {out_dir} is not an experiment folder of jobs/experiments/run.py")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: {e}") from e
    for key in ("setting", "seeds"):
        if key not in info:
            raise InputError(f"{path}: missing key {key!r}")
    try:
        get_setting(info["setting"])
    except AideRayError as e:
        raise InputError(f"{path}: {e}") from e
    # Folders of the old plain loop say "engine": "plain" instead of a backend.
    backend = info.get("backend") or ("plain" if info.get("engine") == "plain" else "ray")
    return Experiment(setting=info["setting"], seeds=tuple(int(s) for s in info["seeds"]),
                      arms=tuple(info["arms"]) if "arms" in info else None, full=bool(info.get("full")),
                      backend=backend, overrides=tuple(info.get("overrides") or ()), command=info.get("command"),
                      size_note=info.get("size_note", ""), data_note=info.get("data_note", ""))


def collect_cases(out_dir: str | os.PathLike, arms: Sequence[str], seeds: Sequence[int]) -> tuple[pd.DataFrame,
                                                                                                   list[str]]:
    """Every arm's and seed's ``per_case.csv``, stacked.

    Args:
        out_dir: experiment folder.
        arms: arm names.
        seeds: training seeds.
    Returns:
        (table with added columns ``arm`` and ``seed`` (and ``annotator`` = "" when absent),
        the ``<arm>_s<seed>`` runs whose evaluation is missing).
    """
    frames, missing = [], []
    for arm in arms:
        for seed in seeds:
            path = eval_dir(Path(out_dir), arm, seed) / PER_CASE_FILE
            if not path.is_file():
                missing.append(path.parent.name)
                continue
            table = pd.read_csv(path, dtype={"case_id": str, "annotator": str}, keep_default_na=True)
            if "case_id" not in table.columns:
                raise InputError(f"{path}: missing column 'case_id'; columns are {list(table.columns)}")
            if "annotator" not in table.columns:
                table["annotator"] = ""
            table["annotator"] = table["annotator"].fillna("")
            table.insert(0, "seed", int(seed))
            table.insert(0, "arm", arm)
            frames.append(table)
    cases = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["arm", "seed", *KEYS])
    return cases, missing


def summary_table(cases: pd.DataFrame, metrics: Sequence[str] = TABLE_METRICS,
                  by: Sequence[str] = ("arm",)) -> pd.DataFrame:
    """Mean and sample std (ddof = 1) of each metric over all cases and seeds of a group.

    NaN values (a distance undefined because a prediction is empty) are left
    out and counted in ``<metric>_excluded``.

    Args:
        cases: as :func:`collect_cases` returns.
        metrics: metric columns.
        by: grouping columns, e.g. ("arm",) or ("arm", "annotator").
    Returns:
        One row per group (in order of first appearance) with ``<m>_mean``, ``<m>_std``, ``<m>_n``,
        ``<m>_excluded`` per metric, plus ``cases`` (distinct case ids) and ``seeds`` (distinct seeds).
    """
    missing = [m for m in metrics if m not in cases.columns]
    if missing:
        raise InputError(f"per-case table has no column(s) {missing}; columns are {list(cases.columns)}")
    rows = []
    for key, group in cases.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        for m in metrics:
            values = pd.to_numeric(group[m], errors="coerce").to_numpy(dtype=float)
            finite = values[np.isfinite(values)]
            row[f"{m}_mean"] = float(finite.mean()) if finite.size else math.nan
            row[f"{m}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
            row[f"{m}_n"] = int(finite.size)
            row[f"{m}_excluded"] = int(values.size - finite.size)
        row["cases"] = int(group["case_id"].nunique())
        row["seeds"] = int(group["seed"].nunique())
        rows.append(row)
    return pd.DataFrame(rows)


def _per_case_means(cases: pd.DataFrame, arm: str, metric: str, keys: Sequence[str]) -> pd.Series:
    table = cases[cases["arm"] == arm]
    values = pd.to_numeric(table[metric], errors="coerce")
    # Seeds are averaged per case first, so a case counts once in the test whatever the number of seeds.
    return values.groupby([table[k] for k in keys]).mean()


def paired_tests(cases: pd.DataFrame, arm_a: str, arm_b: str, metrics: Sequence[str] = TABLE_METRICS, *,
                 by: str | None = None, keys: Sequence[str] = KEYS) -> pd.DataFrame:
    """Two-tailed paired t-tests of arm A against arm B over the test cases.

    Each arm's values are first averaged over its seeds (and over every column
    not in ``keys``) per key; keys present in both arms with finite values for a
    metric form the pairs (:func:`aide_ray.eval.stats.paired_ttest`, a positive t
    means A's mean is higher).

    Args:
        cases: as :func:`collect_cases` returns.
        arm_a, arm_b: arm names (A is AIDE in the results tables).
        metrics: metric columns.
        by: optional column to test separately per value (e.g. "annotator").
        keys: what one pair is: ("case_id", "annotator") by default; ("case_id",)
            averages a case's scores against several annotators first, so that one
            prediction counts once.
    Returns:
        Columns [by,] metric, mean_a, mean_b, t, p, n; t and p are NaN when
        n < 2 or all differences are equal (the test is undefined).
    """
    for arm in (arm_a, arm_b):
        if not (cases["arm"] == arm).any():
            raise InputError(f"no per-case results for arm {arm!r}; arms present are "
                             f"{sorted(cases['arm'].unique())}")
    groups = [(None, cases)] if by is None else list(cases.groupby(by, sort=True))
    rows = []
    for value, group in groups:
        for metric in metrics:
            a = _per_case_means(group, arm_a, metric, keys)
            b = _per_case_means(group, arm_b, metric, keys)
            pair = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner")
            test = paired_ttest(pair["a"].to_numpy(dtype=float), pair["b"].to_numpy(dtype=float))
            row = {} if by is None else {by: value}
            row.update(metric=metric, mean_a=test.mean_a, mean_b=test.mean_b, t=test.t, p=test.p, n=test.n)
            rows.append(row)
    return pd.DataFrame(rows)


def wall_times(out_dir: str | os.PathLike) -> pd.DataFrame:
    """Wall time per arm, seed and stage from ``OUT/timing/*.json``.

    Returns:
        Columns arm, seed, stage, rc, seconds (sorted by arm, seed, stage);
        empty when no timing was recorded.
    """
    rows = []
    for path in sorted((Path(out_dir) / "timing").glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path} is not valid JSON: {e}") from e
        for key in ("arm", "seed", "stage", "seconds"):
            if key not in rec:
                raise InputError(f"{path}: missing key {key!r}")
        rows.append({"arm": rec["arm"], "seed": int(rec["seed"]), "stage": rec["stage"],
                     "rc": int(rec["rc"]) if "rc" in rec else 0, "seconds": float(rec["seconds"])})
    table = pd.DataFrame(rows, columns=["arm", "seed", "stage", "rc", "seconds"])
    return table.sort_values(["arm", "seed", "stage"], ignore_index=True)


def shows_label_quality(arm: str) -> bool:
    """Whether the page has a label-correction table for ``arm`` (AIDE's arms, the ones that correct labels)."""
    return arm.startswith("aide")


def label_quality(out_dir: str | os.PathLike, arm: str, seed: int) -> pd.DataFrame | None:
    """Mean Dice of each net's current training labels against the HQ labels, per epoch.

    Read from the run's ``train_scores.csv`` (written by the training loop at
    every epoch; rows without an HQ reference are NaN and left out), so it shows
    whether label correction made the training labels better or worse.

    Returns:
        Columns epoch (1-based), net1, net2 (slots 0 and 1), rows (scored per
        epoch); None when the run has no scores or no HQ references.
    """
    path = train_dir(Path(out_dir), arm, seed) / SCORES_FILE
    if not path.is_file():
        path = path.with_name(SCORES_FILE + ".gz")  # as an archive keeps it (aide_ray.experiments.archive)
        if not path.is_file():
            return None
    scores = pd.read_csv(path)
    for col in ("epoch", "slot", "dice_label_vs_clean"):
        if col not in scores.columns:
            raise InputError(f"{path}: missing column {col!r}; columns are {list(scores.columns)}")
    # A run without any HQ reference writes the column empty, which pandas reads as text.
    scores["dice_label_vs_clean"] = pd.to_numeric(scores["dice_label_vs_clean"], errors="coerce")
    scores = scores[np.isfinite(scores["dice_label_vs_clean"])]
    if scores.empty:
        return None
    table = scores.pivot_table(index="epoch", columns="slot", values="dice_label_vs_clean", aggfunc="mean")
    table.columns = [f"net{int(c) + 1}" for c in table.columns]
    table["rows"] = scores.groupby("epoch").size() // max(1, scores["slot"].nunique())
    table = table.reset_index()
    table["epoch"] = table["epoch"] + 1
    return table


def unfinished_note(out_dir: str | os.PathLike, run: str) -> str | None:
    """What a run without evaluation left behind: how far its training got, from its newest checkpoint.

    Args:
        out_dir: experiment folder.
        run: ``<arm>_s<seed>``.
    Returns:
        A Markdown sentence, or None when the run never started.
    """
    run_dir = Path(out_dir) / "train" / run
    if not run_dir.is_dir():
        return None
    if (run_dir / CONFIG_FILE).is_file():
        return f"`{run}`: training finished, but it has no test evaluation (see `logs/`)."
    done = 0
    for folder in run_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        metrics = folder / HISTORY_FILE
        if metrics.is_file():
            done = max(done, len(pd.read_csv(metrics)))
    return (f"`{run}`: training started but did not finish; its newest checkpoint is after epoch {done}, "
            f"so it has no test predictions.")


def arm_run_info(out_dir: str | os.PathLike, arm: str, seeds: Sequence[int]) -> dict[str, str]:
    """Epochs and the best validation Dice (with its 1-based epoch) of the first seed's run, from metrics.csv."""
    for seed in seeds:
        metrics = train_dir(Path(out_dir), arm, seed) / HISTORY_FILE
        if metrics.is_file():
            history = pd.read_csv(metrics)
            if history.empty:
                continue
            val = history["val_dice"] if "val_dice" in history.columns else pd.Series(dtype=float)
            if val.notna().any():
                at = int(val.idxmax())
                best = f"{val[at]:.3f} (epoch {int(history.loc[at, 'epoch']) + 1})"
            else:
                best = "–"
            return {"epochs": str(len(history)), "best_val": best}
    return {"epochs": "–", "best_val": "–"}


def train_throughput(out_dir: str | os.PathLike, arm: str, seeds: Sequence[int]) -> float:
    """Training slices per second of an arm: the median of ``slices_per_s`` over the epochs of its seeds' runs.

    The median leaves out the epochs in which a run was paused or shared the cores. Every row of a
    training batch counts, unlabelled ones included (``metrics.csv``: the training pass only).

    Returns:
        NaN when no run of the arm has a ``metrics.csv`` with that column.
    """
    values = []
    for seed in seeds:
        metrics = train_dir(Path(out_dir), arm, seed) / HISTORY_FILE
        if metrics.is_file():
            history = pd.read_csv(metrics)
            if "slices_per_s" in history.columns:
                values.append(pd.to_numeric(history["slices_per_s"], errors="coerce").to_numpy(dtype=float))
    values = np.concatenate(values) if values else np.zeros(0)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else math.nan
