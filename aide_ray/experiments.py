"""Results tables of the paper-style experiments (jobs/experiments/run.py) and docs/results.md.

An experiment folder ``OUT`` (one per setting) is laid out by the driver as::

    OUT/experiment.json             setting, data folder, seeds, arms, sizes, the command that made it
    OUT/eval/<arm>_s<seed>/per_case.csv   `aide-ray evaluate` of the arm's test predictions
    OUT/timing/<stage>_<arm>_s<seed>.json {"arm", "seed", "stage", "rc", "seconds"} per train/predict/evaluate

This module only reads those files: it pools each arm's per-case metrics over
cases and seeds (mean ± std), runs two-tailed paired t-tests of AIDE against
every baseline (``scipy.stats.ttest_rel``), sums the wall time of each arm and
renders the Markdown of ``docs/results.md``. Nothing here trains or predicts,
so the tables can be regenerated from finished runs at any time.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from aide_ray.exceptions import InputError

__all__ = [
    "ArmSpec",
    "SettingSpec",
    "SETTINGS",
    "EXPERIMENT_FILE",
    "run_name",
    "load_experiment",
    "collect_cases",
    "summary_table",
    "paired_tests",
    "wall_times",
    "label_quality",
    "format_pm",
    "format_p",
    "setting_markdown",
    "write_results",
]

EXPERIMENT_FILE = "experiment.json"
KEYS = ("case_id", "annotator")  # what pairs two arms' rows; seeds are averaged first
TABLE_METRICS = ("dice", "assd", "hd95")  # the paper's metrics


@dataclass(frozen=True)
class ArmSpec:
    """One arm of a setting: a config file and the training data it runs on."""

    name: str
    config: str  # path of the arm's YAML, relative to jobs/experiments/
    data: str  # which prepared training set: a key the driver understands (e.g. "noisy", "clean")
    title: str  # as printed in tables
    init_from: str | None = None  # an arm whose run of the same seed starts this arm's nets (model.init_from)


@dataclass(frozen=True)
class SettingSpec:
    """A setting of the paper: its arms, which one is AIDE and what it is tested against."""

    name: str
    title: str
    arms: tuple[ArmSpec, ...]
    # (aide arm, baseline arm) pairs tested with paired t-tests
    comparisons: tuple[tuple[str, str], ...]
    per_annotator: bool = False  # test rows carry an annotator; tables get one column per annotator
    notes: tuple[str, ...] = field(default_factory=tuple)

    def arm(self, name: str) -> ArmSpec:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise InputError(f"setting {self.name!r} has no arm {name!r}; arms are {[a.name for a in self.arms]}")


SETTINGS: dict[str, SettingSpec] = {
    "noisy": SettingSpec(
        name="noisy",
        title="Setting 1: noisy labels (Shenzhen chest X-ray lungs)",
        arms=(
            ArmSpec("supervised_noisy", "noisy/supervised_noisy.yaml", "noisy", "supervised, noisy labels"),
            ArmSpec("coteaching", "noisy/coteaching.yaml", "noisy", "co-teaching, noisy labels"),
            ArmSpec("gce", "noisy/gce.yaml", "noisy", "GCE, noisy labels"),
            ArmSpec("aide", "noisy/aide.yaml", "noisy", "AIDE λ=10, noisy labels"),
            ArmSpec("aide_lambda1", "noisy/aide_lambda1.yaml", "noisy", "AIDE λ=1, noisy labels"),
            ArmSpec("aide_pretrained", "noisy/aide_pretrained.yaml", "noisy",
                    "AIDE λ=1 from the supervised net, noisy labels", init_from="supervised_noisy"),
            ArmSpec("supervised_clean", "noisy/supervised_clean.yaml", "clean", "supervised, clean labels (upper bound)"),
        ),
        comparisons=(("aide", "supervised_noisy"), ("aide", "coteaching"), ("aide", "gce"),
                     ("aide", "supervised_clean"),
                     ("aide_lambda1", "supervised_noisy"), ("aide_lambda1", "coteaching"), ("aide_lambda1", "gce"),
                     ("aide_lambda1", "supervised_clean"), ("aide_lambda1", "aide"),
                     ("aide_pretrained", "supervised_noisy"), ("aide_pretrained", "coteaching"),
                     ("aide_pretrained", "gce"), ("aide_pretrained", "supervised_clean")),
    ),
    "annotators": SettingSpec(
        name="annotators",
        title="Setting 2: multiple annotators (QUBIQ brain growth, 7 raters)",
        arms=(
            ArmSpec("supervised_rater1", "annotators/supervised.yaml", "rater1", "supervised, rater 1"),
            ArmSpec("aide_rater1", "annotators/aide.yaml", "rater1", "AIDE, rater 1"),
            ArmSpec("supervised_random", "annotators/supervised.yaml", "random", "supervised, random rater per case"),
            ArmSpec("aide_random", "annotators/aide.yaml", "random", "AIDE, random rater per case"),
        ),
        comparisons=(("aide_rater1", "supervised_rater1"), ("aide_random", "supervised_random")),
        per_annotator=True,
    ),
    "limited": SettingSpec(
        name="limited",
        title="Setting 3: limited labels (Shenzhen, 10% HQ labels + 90% pseudo-labels)",
        arms=(
            ArmSpec("supervised_hq10", "limited/supervised_hq10.yaml", "hq10", "supervised, 10% HQ"),
            ArmSpec("supervised_hq_lq", "limited/supervised_hq_lq.yaml", "pseudo", "supervised, 10% HQ + 90% LQ"),
            ArmSpec("aide_hq_lq", "limited/aide_hq_lq.yaml", "pseudo", "AIDE, 10% HQ + 90% LQ"),
            ArmSpec("supervised_full", "limited/supervised_full.yaml", "clean", "supervised, 100% HQ (upper bound)"),
        ),
        comparisons=(("aide_hq_lq", "supervised_hq10"), ("aide_hq_lq", "supervised_hq_lq"),
                     ("aide_hq_lq", "supervised_full")),
    ),
}


def run_name(arm: str, seed: int) -> str:
    """Folder name of one arm and seed under ``OUT/train``, ``OUT/pred`` and ``OUT/eval``."""
    return f"{arm}_s{seed}"


# --------------------------------------------------------------------------- reading

def load_experiment(out_dir: str | os.PathLike) -> dict:
    """``OUT/experiment.json`` as written by the driver.

    Raises:
        InputError: the file is missing, not JSON, or names an unknown setting.
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
    if info["setting"] not in SETTINGS:
        raise InputError(f"{path}: setting must be one of {sorted(SETTINGS)}, got {info['setting']!r}")
    return info


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
            path = Path(out_dir) / "eval" / run_name(arm, seed) / "per_case.csv"
            if not path.is_file():
                missing.append(run_name(arm, seed))
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


# --------------------------------------------------------------------------- statistics

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
    metric form the pairs (``scipy.stats.ttest_rel(a, b)``, a positive t means
    A's mean is higher).

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
            pair = pair[np.isfinite(pair["a"]) & np.isfinite(pair["b"])]
            n = len(pair)
            diff = (pair["a"] - pair["b"]).to_numpy()
            if n >= 2 and np.ptp(diff) > 0:
                res = stats.ttest_rel(pair["a"], pair["b"])
                t, p = float(res.statistic), float(res.pvalue)
            else:
                t = p = math.nan
            row = {} if by is None else {by: value}
            row.update(metric=metric, mean_a=float(pair["a"].mean()) if n else math.nan,
                       mean_b=float(pair["b"].mean()) if n else math.nan, t=t, p=p, n=n)
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


def label_quality(out_dir: str | os.PathLike, arm: str, seed: int) -> pd.DataFrame | None:
    """Mean Dice of each net's current training labels against the HQ labels, per epoch.

    Read from the run's ``train_scores.csv`` (written by the training loop at
    every epoch; rows without an HQ reference are NaN and left out), so it shows
    whether label correction made the training labels better or worse.

    Returns:
        Columns epoch (1-based), net1, net2 (slots 0 and 1), rows (scored per
        epoch); None when the run has no scores or no HQ references.
    """
    path = Path(out_dir) / "train" / run_name(arm, seed) / "train_scores.csv"
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


def _unfinished_note(out_dir: Path, run: str) -> str | None:
    """What a run without evaluation left behind: how far its training got, from its newest checkpoint."""
    run_dir = out_dir / "train" / run
    if not run_dir.is_dir():
        return None
    if (run_dir / "config.yaml").is_file():
        return f"`{run}`: training finished, but it has no test evaluation (see `logs/`)."
    done = 0
    for folder in run_dir.glob("checkpoint_*"):
        metrics = folder / "metrics.csv"
        if metrics.is_file():
            done = max(done, len(pd.read_csv(metrics)))
    return (f"`{run}`: training started but did not finish; its newest checkpoint is after epoch {done}, "
            f"so it has no test predictions.")


# --------------------------------------------------------------------------- formatting

_DIGITS = {"dice": 3, "assd": 2, "hd95": 2}


def format_pm(mean: float, std: float, digits: int = 3) -> str:
    """``"0.912 ± 0.034"``; ``"–"`` when the mean is undefined, no ± part when the std is."""
    if not np.isfinite(mean):
        return "–"
    if not np.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_p(p: float) -> str:
    """p-value with 2 significant digits (scientific notation below 1e-4), ``"–"`` when undefined."""
    if not np.isfinite(p):
        return "–"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt_seconds(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "–"
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes} min {sec:02d} s" if minutes else f"{sec} s"


def _arm_run_info(out_dir: Path, arm: str, seeds: Sequence[int]) -> dict[str, str]:
    """Epochs and the best validation Dice (with its 1-based epoch) of the first seed's run, from metrics.csv."""
    for seed in seeds:
        metrics = out_dir / "train" / run_name(arm, seed) / "metrics.csv"
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


def setting_markdown(out_dir: str | os.PathLike, *, figures: Sequence[tuple[str, str]] = ()) -> str:
    """The Markdown section of one experiment folder: tables, tests, wall times, figures.

    Args:
        out_dir: experiment folder.
        figures: (caption, relative link) pairs to show after the tables.
    """
    out_dir = Path(out_dir)
    info = load_experiment(out_dir)
    spec = SETTINGS[info["setting"]]
    seeds = [int(s) for s in info["seeds"]]
    arms = [a.name for a in spec.arms if a.name in info.get("arms", [a.name for a in spec.arms])]
    cases, missing = collect_cases(out_dir, arms, seeds)
    done = [a for a in arms if (cases["arm"] == a).any()]
    # A folder run with other settings than the recipe's defaults is a variant: its heading names the folder.
    variant = info.get("engine", "ray") != "ray" or info.get("full") or info.get("overrides")
    lines = [f"## {spec.title}" + (f" — `{out_dir.name}`" if variant else ""), ""]
    if "command" in info:
        size = "full (GPU) size" if info.get("full") else "CPU size" + (" changed by the overrides above"
                                                                        if info.get("overrides") else "")
        lines += [f"Made by `{info['command']}`; seeds {seeds}; {size}: {info.get('size_note', '')}".rstrip(": "),
                  ""]
    if info.get("data_note"):
        lines += [info["data_note"], ""]
    if missing:
        lines += [f"**Not run or not finished:** {', '.join(missing)}. These runs have no row below."]
        lines += [f"- {note}" for note in (_unfinished_note(out_dir, run) for run in missing) if note]
        lines += [""]
    if not done:
        lines += ["No arm of this setting finished, so there are no results.", ""]
        return "\n".join(lines)
    titles = {a.name: a.title for a in spec.arms}
    times = wall_times(out_dir)

    # Main table: mean ± std over test cases (and annotators) and seeds.
    summary = summary_table(cases[cases["arm"].isin(done)], TABLE_METRICS)
    header = ["arm", "Dice", "ASSD (px)", "HD95 (px)", "test rows", "seeds", "epochs", "best val Dice (epoch)",
              "train wall time"]
    rows = []
    for rec in summary.to_dict("records"):
        run = _arm_run_info(out_dir, rec["arm"], seeds)
        t = times[(times["arm"] == rec["arm"]) & (times["stage"] == "train")]["seconds"] if len(times) else []
        excluded = sum(int(rec[f"{m}_excluded"]) for m in ("assd", "hd95"))
        note = f" ({excluded} undefined)" if excluded else ""
        rows.append([titles[rec["arm"]]] + [format_pm(rec[f"{m}_mean"], rec[f"{m}_std"], _DIGITS[m])
                                             + (note if m == "hd95" else "") for m in TABLE_METRICS]
                    + [str(rec["dice_n"]), str(rec["seeds"]), run["epochs"], run["best_val"],
                       _fmt_seconds(float(np.mean(t))) if len(t) else "–"])
    what = "test case × annotator pairs" if spec.per_annotator else "test cases"
    lines += [f"Mean ± std over {what} and seeds (distances in pixels of the 256 × 256 (Shenzhen) or "
              f"128 × 128 (QUBIQ) reference masks):", "", _md_table(header, rows), ""]

    if spec.per_annotator:
        per = summary_table(cases[cases["arm"].isin(done)], ("dice",), by=("arm", "annotator"))
        raters = sorted(per["annotator"].unique(), key=lambda s: (len(s), s))
        header = ["arm"] + raters
        rows = []
        for arm in done:
            sub = per[per["arm"] == arm].set_index("annotator")
            rows.append([titles[arm]] + [format_pm(sub.loc[r, "dice_mean"], sub.loc[r, "dice_std"])
                                         if r in sub.index else "–" for r in raters])
        lines += ["Dice against each annotator separately (the paper's Table 3 layout):", "",
                  _md_table(header, rows), ""]

    # Paired tests, AIDE vs each baseline.
    tests = [(a, b) for a, b in spec.comparisons if a in done and b in done]
    if tests:
        lines += ["Two-tailed paired t-tests (scipy.stats.ttest_rel) of AIDE against each baseline over the test "
                  "cases (each case's metric averaged over seeds"
                  + (" and over the 7 raters" if spec.per_annotator else "")
                  + " first; for ASSD and HD95 lower is better):", ""]
        header = ["AIDE arm", "baseline", "Dice AIDE / baseline", "p (Dice)", "p (ASSD)", "p (HD95)", "pairs"]
        rows = []
        # In setting 2 one prediction is scored against 7 raters: average them per case, so a case is one pair.
        keys = ("case_id",) if spec.per_annotator else KEYS
        for a, b in tests:
            res = paired_tests(cases, a, b, TABLE_METRICS, keys=keys).set_index("metric")
            rows.append([titles[a], titles[b], f"{res.loc['dice', 'mean_a']:.3f} / {res.loc['dice', 'mean_b']:.3f}",
                         format_p(res.loc["dice", "p"]), format_p(res.loc["assd", "p"]),
                         format_p(res.loc["hd95", "p"]), str(int(res.loc["dice", "n"]))])
        lines += [_md_table(header, rows), ""]
        if spec.per_annotator:
            raters = sorted(cases["annotator"].unique(), key=lambda s: (len(s), s))
            header = ["AIDE arm", "baseline"] + [f"p {r}" for r in raters]
            rows = []
            for a, b in tests:
                res = paired_tests(cases, a, b, ("dice",), by="annotator").set_index("annotator")
                rows.append([titles[a], titles[b]] + [format_p(res.loc[r, "p"]) for r in raters])
            lines += ["Dice p-values per annotator:", "", _md_table(header, rows), ""]

    quality = [(arm, seed, label_quality(out_dir, arm, seed)) for arm in done if arm.startswith("aide")
               for seed in seeds]
    quality = [(arm, seed, q) for arm, seed, q in quality if q is not None]
    if quality:
        lines += ["Label correction: mean Dice of the training labels each AIDE net used in an epoch against the "
                  "HQ labels, over the training rows that have one, at the training resolution (`train_scores.csv`; "
                  "epoch 1 shows the labels as given"
                  + ("; plain-loop runs record only those and the labels after the last epoch"
                     if info.get("engine") == "plain" else "") + "):", ""]
        for arm, seed, q in quality:
            header = ["epoch"] + [f"{titles[arm]} s{seed}, {c}" for c in q.columns if c.startswith("net")]
            rows = [[str(int(r["epoch"]))] + [f"{r[c]:.3f}" for c in q.columns if c.startswith("net")]
                    for r in q.to_dict("records")]
            lines += [_md_table(header, rows), ""]

    if len(times):
        agg = times.groupby(["arm", "stage"], sort=False)["seconds"].agg(["mean", "sum", "count"]).reset_index()
        header = ["arm", "stage", "runs", "mean wall time per run", "total"]
        rows = [[titles.get(r["arm"], r["arm"]), r["stage"], str(int(r["count"])), _fmt_seconds(r["mean"]),
                 _fmt_seconds(r["sum"])] for r in agg.to_dict("records")]
        failed = times[times["rc"] != 0]
        lines += ["Wall time of each stage (from `timing/*.json`; `train` includes starting the embedded Ray):", "",
                  _md_table(header, rows), ""]
        if len(failed):
            lines += ["Stages that exited with an error: " + ", ".join(
                f"{r['stage']} {run_name(r['arm'], r['seed'])} (exit {r['rc']})" for r in failed.to_dict("records")),
                ""]
    for caption, link in figures:
        lines += [f"![{caption}]({link})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def write_results(out_dirs: Sequence[str | os.PathLike], out_md: str | os.PathLike, *, preamble: str = "",
                  postscript: str = "", figures_dir: str | os.PathLike | None = None,
                  figure_runs: Sequence[tuple[str, str, str]] = ()) -> Path:
    """Write ``docs/results.md`` from finished experiment folders.

    Args:
        out_dirs: experiment folders (a missing one gets a "not run" section
            when it is named in ``experiment.json`` form; a folder without
            ``experiment.json`` is reported as not run).
        out_md: Markdown file to write (atomically).
        preamble: Markdown placed before the settings (machine, command).
        postscript: Markdown placed after them (differences from the paper).
        figures_dir: where figure PNGs are copied (next to ``out_md`` by default: ``figures/``).
        figure_runs: (experiment folder, arm_seed run name, caption-prefix): copy that run's
            ``figures/{corrections,dice_scatter,training_curves}.png`` and show them.
    Returns:
        ``out_md``.
    """
    from aide_ray._internal.io import atomic_write_text

    out_md = Path(out_md)
    figures_dir = Path(figures_dir) if figures_dir is not None else out_md.parent / "figures"
    sections = [preamble.rstrip() + "\n"] if preamble else []
    for out_dir in out_dirs:
        out_dir = Path(out_dir)
        if not (out_dir / EXPERIMENT_FILE).is_file():
            # Name the setting when the folder's name says which one it was meant for.
            titles = [spec.title for name, spec in SETTINGS.items() if name in out_dir.name]
            title = titles[0] if len(titles) == 1 else out_dir.name
            sections.append(f"## {title}\n\nNot run: `{out_dir}` holds no `{EXPERIMENT_FILE}`, so this setting "
                            f"has no results.\n")
            continue
        figs = []
        for exp, run, prefix in figure_runs:
            if Path(exp).resolve() != out_dir.resolve():
                continue
            for stem, caption in (("corrections", "label-correction panels (image, HQ, noisy, net1/net2 labels)"),
                                  ("dice_scatter", "Dice(prediction, current label) vs Dice(noisy, HQ label)"),
                                  ("training_curves", "training curves")):
                src = out_dir / "train" / run / "figures" / f"{stem}.png"
                if src.is_file():
                    figures_dir.mkdir(parents=True, exist_ok=True)
                    dst = figures_dir / f"{_setting_name(out_dir)}_{run}_{stem}.png"
                    _copy_small_png(src, dst)
                    figs.append((f"{prefix}: {caption}", os.path.relpath(dst, out_md.parent)))
        sections.append(setting_markdown(out_dir, figures=figs))
    if postscript:
        sections.append(postscript.rstrip() + "\n")
    atomic_write_text(out_md, "\n".join(sections))
    return out_md


FIGURE_MAX_PIXELS = 350_000  # figures copied into docs/ are scaled down to at most this many pixels


def _copy_small_png(src: Path, dst: Path, max_pixels: int = FIGURE_MAX_PIXELS) -> Path:
    """Copy a PNG, scaled down (aspect kept) and palette-quantised so that docs/ stays small."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(src) as im:
            im = im.convert("RGB")
            scale = min(1.0, math.sqrt(max_pixels / (im.width * im.height)))
            if scale < 1.0:
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                               Image.Resampling.LANCZOS)
            im.quantize(colors=256).save(dst, optimize=True)
    except UnidentifiedImageError:
        shutil.copyfile(src, dst)  # not a PNG we can read: copy as it is
    return dst


def _setting_name(out_dir: Path) -> str:
    """The setting name of an experiment folder (for figure file names)."""
    return load_experiment(out_dir)["setting"]
