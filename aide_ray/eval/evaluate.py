"""Scoring a folder of predictions against a manifest's references: ``aide-ray evaluate``.

``aide-ray evaluate`` is a thin wrapper over :func:`evaluate_predictions`. The
pieces are separate so that other code (results tables, tests) can reuse them:
:func:`score_predictions` (the per-case table) and :func:`paired_ttests` (the
paper's two-tailed paired t-tests, :func:`aide_ray.eval.stats.paired_ttest` per
metric). How the numbers are shown (printed tables, overlays, ``index.md``) is
:mod:`aide_ray.eval.report`.

Predictions are ``<pred_dir>/<case_id>.nii.gz`` (or ``.nii``, ``.png``, ``.nrrd``,
``.mha``, ``.mhd``); every manifest row of the chosen split with a reference in
the chosen label column is scored. When several rows share a case_id (one per
annotator), the one prediction is scored against each annotator's label and the
per-case table has an ``annotator`` column. Metrics use the reference's spacing
(mm; 2D PNG files record none, so their distances are in pixels).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm.auto import tqdm

from aide_ray._internal.io import atomic_dir, atomic_write_text
from aide_ray.data.image_io import check_same_geometry, read_label_map
from aide_ray.data.manifest import read_manifest
from aide_ray.eval.metrics import METRIC_NAMES, case_metrics, sampling_from_spacing_xyz, summarize
from aide_ray.eval.postprocess import postprocess
from aide_ray.eval.report import index_markdown, write_overlays
from aide_ray.eval.stats import paired_ttest
from aide_ray.exceptions import InputError

__all__ = [
    "PREDICTION_SUFFIXES",
    "LABEL_COLUMNS",
    "EvaluationResult",
    "find_prediction",
    "score_predictions",
    "metric_columns",
    "paired_ttests",
    "evaluate_predictions",
]

PREDICTION_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".png", ".nrrd", ".mha", ".mhd")
LABEL_COLUMNS: tuple[str, ...] = ("label", "clean_label")
KEY_COLUMNS: tuple[str, ...] = ("case_id", "annotator")


@dataclass
class EvaluationResult:
    """What :func:`evaluate_predictions` computed and wrote.

    Attributes:
        per_case: one row per scored (case, annotator) pair.
        summary: mean, std, n, n_excluded per metric column.
        comparison: the paired t-tests (``--compare``), or None.
        out_dir: the report folder.
    """

    per_case: pd.DataFrame
    summary: pd.DataFrame
    comparison: pd.DataFrame | None
    out_dir: Path


def find_prediction(pred_dir: Path, case_id: str) -> Path | None:
    """The prediction file of ``case_id`` in ``pred_dir`` (first of :data:`PREDICTION_SUFFIXES`), or None."""
    for suffix in PREDICTION_SUFFIXES:
        candidate = pred_dir / f"{case_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None




def _select_rows(manifest: pd.DataFrame, split: str | None, label_column: str, source: str) -> pd.DataFrame:
    if label_column not in LABEL_COLUMNS:
        raise InputError(f"label column must be one of {list(LABEL_COLUMNS)}, got {label_column!r}")
    rows = manifest if split is None else manifest[manifest["split"] == split]
    if rows.empty:
        splits = sorted(manifest["split"].unique())
        raise InputError(f"{source} has no row of split {split!r}; its splits are {splits}")
    rows = rows[rows[label_column] != ""]
    if rows.empty:
        raise InputError(f"{source}: no row{'' if split is None else f' of split {split!r}'} has a reference "
                         f"in column {label_column!r}")
    return rows


def score_predictions(pred_dir: str | os.PathLike, manifest: pd.DataFrame, *, split: str | None = None,
                      label_column: str = "label", labels: Sequence[int] | None = None,
                      largest_component: bool = False, fill_holes: bool = False,
                      manifest_name: str = "manifest", progress: bool = True) -> pd.DataFrame:
    """Score every prediction of ``pred_dir`` against its manifest reference(s).

    Args:
        pred_dir: folder of ``<case_id>.<suffix>`` label maps.
        manifest: as returned by ``aide_ray.data.manifest.read_manifest``.
        split: score only this split's rows; None for every row with a reference.
        label_column: "label" (the row's label) or "clean_label" (its HQ reference).
        labels: foreground classes to score separately (keys ``dice_1`` ...); None: binary
            when every reference and prediction is {0, 1}, else the classes found.
        largest_component, fill_holes: post-process predictions before scoring.
        manifest_name: the manifest's file name, for messages.
        progress: show a tqdm bar.
    Returns:
        DataFrame, one row per (case_id, annotator) pair: case_id, annotator (only when the
        manifest names annotators), split, prediction, reference, then one column per metric.
    Raises:
        InputError: no matching rows, a missing prediction (names the case and the folder),
            or a geometry mismatch (names both files).
    """
    # Absolute, so that per_case.csv stays valid from any working directory.
    pred_dir = Path(os.path.abspath(pred_dir))
    if not pred_dir.is_dir():
        raise InputError(f"prediction folder {pred_dir} does not exist")
    rows = _select_rows(manifest, split, label_column, manifest_name)
    missing = [cid for cid in dict.fromkeys(rows["case_id"]) if find_prediction(pred_dir, cid) is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"{pred_dir} has no prediction for case(s) {shown} of {manifest_name} "
                         f"(expected <case_id> with one of {list(PREDICTION_SUFFIXES)})")
    loaded = []
    cache: dict[str, tuple[sitk.Image, np.ndarray]] = {}
    for _, rec in tqdm(list(rows.iterrows()), desc="reading", disable=not progress, leave=False):
        pred_path = find_prediction(pred_dir, rec["case_id"])
        if rec["case_id"] not in cache:
            pred_img, pred = read_label_map(pred_path)
            if largest_component or fill_holes:
                pred = postprocess(pred, largest_component=largest_component, fill_holes=fill_holes)
            cache[rec["case_id"]] = (pred_img, pred)
        pred_img, pred = cache[rec["case_id"]]
        ref_img, ref = read_label_map(rec[label_column])
        check_same_geometry(ref_img, pred_img, rec[label_column], str(pred_path))
        loaded.append((rec, pred_path, pred, ref, sampling_from_spacing_xyz(ref_img.GetSpacing())))
    if labels is None:
        top = max(max(int(p.max(initial=0)), int(r.max(initial=0))) for _, _, p, r, _ in loaded)
        if top > 1:
            found = set()
            for _, _, p, r, _ in loaded:
                found.update(np.unique(p).tolist())
                found.update(np.unique(r).tolist())
            labels = sorted(v for v in found if v > 0)
    with_annotator = bool((rows["annotator"] != "").any())
    records = []
    for rec, pred_path, pred, ref, sampling in tqdm(loaded, desc="scoring", disable=not progress, leave=False):
        row = {"case_id": rec["case_id"]}
        if with_annotator:
            row["annotator"] = rec["annotator"]
        row.update(split=rec["split"], prediction=str(pred_path), reference=rec[label_column])
        row.update(case_metrics(pred, ref, sampling, labels))
        records.append(row)
    return pd.DataFrame.from_records(records)


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The metric columns of a per-case table, in :data:`METRIC_NAMES` order (per class after)."""
    cols = []
    for name in METRIC_NAMES:
        cols += [c for c in table.columns if c == name or (c.startswith(f"{name}_") and c[len(name) + 1:].isdigit())]
    return cols


def _keys(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    both = [k for k in KEY_COLUMNS if k in a.columns and k in b.columns]
    if "case_id" not in both:
        raise InputError("both per-case tables need a 'case_id' column to be compared")
    return both




def paired_ttests(a: pd.DataFrame, b: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Two-tailed paired t-tests (``scipy.stats.ttest_rel``) of A vs B per metric.

    Cases are matched on case_id (and annotator when both tables have one); a pair is
    used for a metric only if both values are finite, so ``n`` may differ by metric
    (:func:`aide_ray.eval.stats.paired_ttest`).

    Args:
        a, b: per-case tables (``per_case.csv``).
        metrics: the metric columns to test; default the metric columns both share.
    Returns:
        DataFrame indexed by metric with mean_a, mean_b, t, p, n (t and p NaN for n < 2
        or when every difference is identical).
    Raises:
        InputError: if the tables share no case.
    """
    keys = _keys(a, b)
    merged = a.merge(b, on=keys, suffixes=("_a", "_b"), how="inner")
    if merged.empty:
        raise InputError(f"the two per-case tables share no case (matched on {keys})")
    if metrics is None:
        metrics = [m for m in metric_columns(a) if m in set(metric_columns(b))]
    rows = {}
    for m in metrics:
        test = paired_ttest(merged[f"{m}_a"].to_numpy(float), merged[f"{m}_b"].to_numpy(float))
        rows[m] = {"mean_a": test.mean_a, "mean_b": test.mean_b, "t": test.t, "p": test.p, "n": test.n}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["mean_a", "mean_b", "t", "p", "n"])
    table.index.name = "metric"
    return table


def evaluate_predictions(pred_dir: str | os.PathLike, manifest_path: str | os.PathLike,
                         out_dir: str | os.PathLike, *, split: str | None = None, label_column: str = "label",
                         compare: str | os.PathLike | None = None, labels: Sequence[int] | None = None,
                         largest_component: bool = False, fill_holes: bool = False, overlays: bool = True,
                         overwrite: bool = False, progress: bool = True) -> EvaluationResult:
    """Score predictions and write the report folder (atomically).

    Writes ``per_case.csv``, ``summary.csv``, ``comparison.csv`` (with ``compare``),
    overlay PNGs and ``index.md`` into ``out_dir``.

    Args:
        pred_dir: folder of ``<case_id>.nii.gz`` (or .png ...) predictions.
        manifest_path: manifest CSV with the references.
        out_dir: report folder (must not exist unless ``overwrite``).
        split: only this split; None for every row with a reference.
        label_column: "label" or "clean_label".
        compare: another run's ``per_case.csv`` for paired t-tests (this run is A).
        labels: classes to score separately; None: automatic (see :func:`score_predictions`).
        largest_component, fill_holes: post-process predictions before scoring.
        overlays: draw the best / median / worst overlays.
        overwrite: replace an existing ``out_dir``.
        progress: show progress bars.
    Returns:
        EvaluationResult.
    Raises:
        InputError: bad manifest, missing predictions, geometry mismatch, bad ``compare``.
        FileExistsError: ``out_dir`` exists and not ``overwrite``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; remove it, choose another --out or pass --overwrite")
    manifest = read_manifest(manifest_path)
    other = None
    if compare is not None:
        if not Path(compare).is_file():
            raise InputError(f"--compare file {compare} does not exist")
        other = pd.read_csv(compare, dtype={"case_id": str, "annotator": str}, keep_default_na=False,
                            na_values=["", "nan", "NaN"])
    per_case = score_predictions(pred_dir, manifest, split=split, label_column=label_column, labels=labels,
                                 largest_component=largest_component, fill_holes=fill_holes,
                                 manifest_name=Path(manifest_path).name, progress=progress)
    if "annotator" in per_case.columns and other is not None and "annotator" in other.columns:
        other["annotator"] = other["annotator"].fillna("").astype(str)
    summary = summarize(per_case, metric_columns(per_case))
    comparison = paired_ttests(per_case, other) if other is not None else None
    result = EvaluationResult(per_case=per_case, summary=summary, comparison=comparison, out_dir=out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        per_case.to_csv(tmp / "per_case.csv", index=False, lineterminator="\n", float_format="%.10g")
        summary.to_csv(tmp / "summary.csv", lineterminator="\n", float_format="%.10g")
        if comparison is not None:
            comparison.to_csv(tmp / "comparison.csv", lineterminator="\n", float_format="%.10g")
        drawn = write_overlays(per_case, manifest, tmp) if overlays else []
        atomic_write_text(tmp / "index.md", index_markdown(
            per_case, summary, comparison, drawn, pred_dir=Path(pred_dir), ref=str(manifest_path),
            compare=None if compare is None else str(compare), label_column=label_column, split=split))
    return result
