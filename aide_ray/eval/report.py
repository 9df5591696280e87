"""How an evaluation is shown: the printed tables, the best / median / worst overlays, ``index.md``.

:mod:`aide_ray.eval.evaluate` computes the per-case, summary and comparison
tables; this module only presents them, so the CLI's text tables and the report
folder's Markdown print means the same way (:func:`aide_ray.eval.stats.format_pm`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from aide_ray.data.image_io import read_image, read_label_map
from aide_ray.data.manifest import image_columns
from aide_ray.eval.figures import overlay_figure
from aide_ray.eval.stats import format_pm

__all__ = ["format_summary", "format_comparison", "write_overlays", "index_markdown"]


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as an aligned text table: metric, mean ± std, n, excluded."""
    lines = [f"{'metric':<16}{'mean ± std':>24}{'n':>6}{'excluded':>10}"]
    for metric, row in summary.iterrows():
        mean_std = format_pm(row["mean"], row["std"], 4)
        lines.append(f"{metric:<16}{mean_std:>24}{int(row['n']):>6}{int(row['n_excluded']):>10}")
    return "\n".join(lines)


def format_comparison(comparison: pd.DataFrame, name_a: str = "A", name_b: str = "B") -> str:
    """The paired t-tests as an aligned text table."""
    lines = [f"{'metric':<16}{name_a[:14]:>14}{name_b[:14]:>14}{'t':>10}{'p':>12}{'n':>6}"]
    for metric, row in comparison.iterrows():
        lines.append(f"{metric:<16}{row['mean_a']:>14.4f}{row['mean_b']:>14.4f}{row['t']:>10.3f}"
                     f"{row['p']:>12.3g}{int(row['n']):>6}")
    return "\n".join(lines)


def _ranking_score(table: pd.DataFrame) -> pd.Series:
    cols = [c for c in table.columns if c == "dice" or (c.startswith("dice_") and c[5:].isdigit())]
    return table[cols].astype(float).mean(axis=1, skipna=True)


def write_overlays(per_case: pd.DataFrame, manifest: pd.DataFrame, out_dir: Path,
                   image_column: str | None = None) -> list[tuple[str, str]]:
    """Overlay PNGs of the best, median and worst cases by Dice.

    For a 3D case the slice (numpy axis 0) with the largest reference area is shown (the
    largest predicted area if the reference is empty).

    Args:
        per_case: as returned by :func:`aide_ray.eval.evaluate.score_predictions` (needs prediction,
            reference).
        manifest: the manifest (for the case's first image).
        out_dir: folder to write ``overlay_<rank>_<case>.png`` into.
        image_column: manifest column of the shown image; default the first modality.
    Returns:
        (caption, file name) pairs, in best, median, worst order (fewer if fewer cases).
    """
    score = _ranking_score(per_case).dropna().sort_values(ascending=False, kind="stable")
    if score.empty:
        return []
    picks = {"best": score.index[0], "median": score.index[len(score) // 2], "worst": score.index[-1]}
    image_column = image_column or image_columns(list(manifest.columns))[0]
    written, seen = [], set()
    for rank, idx in picks.items():
        if idx in seen:
            continue
        seen.add(idx)
        rec = per_case.loc[idx]
        match = manifest[manifest["case_id"] == rec["case_id"]]
        image = sitk.GetArrayFromImage(read_image(match.iloc[0][image_column])).astype(np.float32)
        _, pred = read_label_map(rec["prediction"])
        _, ref = read_label_map(rec["reference"])
        who = f" ({rec['annotator']})" if "annotator" in per_case.columns and rec["annotator"] else ""
        title = f"{rank}: {rec['case_id']}{who}, Dice {score[idx]:.3f}"
        if image.ndim == 3:
            area = (ref != 0).reshape(len(ref), -1).sum(1)
            if not area.any():
                area = (pred != 0).reshape(len(pred), -1).sum(1)
            z = int(area.argmax()) if area.any() else len(ref) // 2
            image, pred, ref = image[z], pred[z], ref[z]
            title += f", slice {z}"
        name = f"overlay_{rank}_{_safe(rec['case_id'])}{_safe('_' + rec['annotator']) if who else ''}.png"
        overlay_figure(image, ref, pred, out_dir / name, title)
        written.append((title, name))
    return written


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text))


def index_markdown(per_case: pd.DataFrame, summary: pd.DataFrame, comparison: pd.DataFrame | None,
                   overlays: list[tuple[str, str]], *, pred_dir: Path, ref: str, compare: str | None,
                   label_column: str, split: str | None) -> str:
    """The report folder's ``index.md``: inputs, summary table, t-tests, overlays.

    Args:
        per_case, summary, comparison: the tables of :func:`aide_ray.eval.evaluate.evaluate_predictions`
            (``comparison`` None without ``--compare``).
        overlays: (caption, file name) pairs from :func:`write_overlays`.
        pred_dir, ref, compare: the prediction folder, manifest and compared table, as given.
        label_column, split: what was scored.
    """
    lines = [
        "# Evaluation", "",
        f"- predictions: `{pred_dir}`",
        f"- references: `{ref}` (column `{label_column}`, split {split or 'all'})",
        f"- cases scored: {len(per_case)}",
        "- tables: [per_case.csv](per_case.csv), [summary.csv](summary.csv)"
        + (", [comparison.csv](comparison.csv)" if comparison is not None else ""),
        "",
        "## Summary (mean ± std; distances in mm, in pixels for images without spacing such as PNG)", "",
        "| metric | mean ± std | n | excluded |", "|---|---|---|---|",
    ]
    for metric, row in summary.iterrows():
        lines.append(f"| {metric} | {format_pm(row['mean'], row['std'], 4)} | {int(row['n'])} | "
                     f"{int(row['n_excluded'])} |")
    lines.append("")
    lines.append("Excluded: cases where the metric is undefined (one mask empty); see docs/evaluation.md.")
    lines.append("")
    if comparison is not None:
        lines += [f"## Paired two-tailed t-tests vs `{compare}`", "",
                  "| metric | mean (this) | mean (other) | t | p | n |", "|---|---|---|---|---|---|"]
        for metric, row in comparison.iterrows():
            lines.append(f"| {metric} | {row['mean_a']:.4f} | {row['mean_b']:.4f} | {row['t']:.3f} | "
                         f"{row['p']:.3g} | {int(row['n'])} |")
        lines.append("")
    if overlays:
        lines += ["## Overlays (reference: green, solid; prediction: red, dashed)", ""]
        for caption, name in overlays:
            lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    return "\n".join(lines)
