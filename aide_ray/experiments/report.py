"""The Markdown of ``docs/results.md``: one section per experiment folder, and the figures it shows.

Tables of :mod:`aide_ray.experiments.results` (mean ± std per arm, Dice per
annotator, paired tests of AIDE against each baseline of the setting's
catalogue entry, label quality, wall times) are formatted here with the
shared :func:`aide_ray.eval.stats.format_pm` and ``format_p``; the figures of
named runs are copied, scaled down, next to the page. Kept apart from the
numbers so that the numbers can be tested and reused without the layout.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from aide_ray._internal.io import atomic_write_text
from aide_ray.eval.stats import format_p, format_pm
from aide_ray.experiments.catalogue import Setting, get_setting, settings
from aide_ray.experiments.layout import EXPERIMENT_FILE, run_name
from aide_ray.experiments.results import (KEYS, TABLE_METRICS, arm_run_info, collect_cases, label_quality,
                                          load_experiment, paired_tests, shows_label_quality, summary_table,
                                          train_throughput, unfinished_note, wall_times)
from aide_ray.runs.folder import FIGURES_DIR

__all__ = ["FIGURE_MAX_PIXELS", "setting_markdown", "write_results"]

_DIGITS = {"dice": 3, "assd": 2, "hd95": 2}
FIGURE_MAX_PIXELS = 350_000  # figures copied into docs/ are scaled down to at most this many pixels
# The `aide-ray figures` PNGs a results page shows for a named run, with their captions.
_FIGURES = (("corrections", "label-correction panels (image, HQ, noisy, net1/net2 labels)"),
            ("dice_scatter", "Dice(prediction, current label) vs Dice(noisy, HQ label)"),
            ("training_curves", "training curves"))


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt_seconds(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "–"
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes} min {sec:02d} s" if minutes else f"{sec} s"


def _fmt_rate(value: float) -> str:
    return f"{value:.1f}" if np.isfinite(value) else "–"


def _raters(values) -> list[str]:
    return sorted(values, key=lambda s: (len(s), s))  # rater2 before rater10


def setting_markdown(out_dir: str | os.PathLike, *, figures: Sequence[tuple[str, str]] = ()) -> str:
    """The Markdown section of one experiment folder: tables, tests, wall times, figures.

    Args:
        out_dir: experiment folder.
        figures: (caption, relative link) pairs to show after the tables.
    """
    out_dir = Path(out_dir)
    info = load_experiment(out_dir)
    spec = get_setting(info.setting)
    seeds = list(info.seeds)
    arms = [a for a in spec.arm_names if info.arms is None or a in info.arms]
    cases, missing = collect_cases(out_dir, arms, seeds)
    done = [a for a in arms if (cases["arm"] == a).any()]
    # A folder run with other settings than the recipe's defaults is a variant: its heading names the folder.
    variant = info.backend != "ray" or info.full or info.overrides
    lines = [f"## {spec.title}" + (f" — `{out_dir.name}`" if variant else ""), ""]
    if info.command is not None:
        size = "full (GPU) size" if info.full else "CPU size" + (" changed by the overrides above"
                                                                  if info.overrides else "")
        lines += [f"Made by `{info.command}`; seeds {seeds}; {size}: {info.size_note}".rstrip(": "), ""]
    if info.data_note:
        lines += [info.data_note, ""]
    if missing:
        lines += [f"**Not run or not finished:** {', '.join(missing)}. These runs have no row below."]
        lines += [f"- {note}" for note in (unfinished_note(out_dir, run) for run in missing) if note]
        lines += [""]
    if not done:
        lines += ["No arm of this setting finished, so there are no results.", ""]
        return "\n".join(lines)
    titles = {a.name: a.title for a in spec.arms}
    times = wall_times(out_dir)

    # Main table: mean ± std over test cases (and annotators) and seeds.
    summary = summary_table(cases[cases["arm"].isin(done)], TABLE_METRICS)
    header = ["arm", "Dice", "ASSD (px)", "HD95 (px)", "test rows", "seeds", "epochs", "best val Dice (epoch)",
              "train wall time", "train slices/s"]
    rows = []
    for rec in summary.to_dict("records"):
        run = arm_run_info(out_dir, rec["arm"], seeds)
        t = times[(times["arm"] == rec["arm"]) & (times["stage"] == "train")]["seconds"] if len(times) else []
        excluded = sum(int(rec[f"{m}_excluded"]) for m in ("assd", "hd95"))
        note = f" ({excluded} undefined)" if excluded else ""
        rows.append([titles[rec["arm"]]] + [format_pm(rec[f"{m}_mean"], rec[f"{m}_std"], _DIGITS[m])
                                             + (note if m == "hd95" else "") for m in TABLE_METRICS]
                    + [str(rec["dice_n"]), str(rec["seeds"]), run["epochs"], run["best_val"],
                       _fmt_seconds(float(np.mean(t))) if len(t) else "–", _fmt_rate(train_throughput(
                           out_dir, rec["arm"], seeds))])
    what = "test case × annotator pairs" if spec.per_annotator else "test cases"
    lines += [f"Mean ± std over {what} and seeds (distances in pixels of the 256 × 256 (Shenzhen) or "
              f"128 × 128 (QUBIQ) reference masks; train wall time: mean over seeds; train slices/s: median "
              f"over the epochs of every seed's run, from `metrics.csv`):", "", _md_table(header, rows), ""]

    if spec.per_annotator:
        per = summary_table(cases[cases["arm"].isin(done)], ("dice",), by=("arm", "annotator"))
        raters = _raters(per["annotator"].unique())
        rows = []
        for arm in done:
            sub = per[per["arm"] == arm].set_index("annotator")
            rows.append([titles[arm]] + [format_pm(sub.loc[r, "dice_mean"], sub.loc[r, "dice_std"])
                                         if r in sub.index else "–" for r in raters])
        lines += ["Dice against each annotator separately (the paper's Table 3 layout):", "",
                  _md_table(["arm"] + raters, rows), ""]

    lines += _test_lines(spec, cases, done, titles)
    lines += _quality_lines(out_dir, info.backend, done, seeds, titles)

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


def _test_lines(spec: Setting, cases: pd.DataFrame, done: Sequence[str], titles: dict[str, str]) -> list[str]:
    """Paired tests of each comparison of the setting that ran, arm A against arm B (A is the AIDE arm where
    there is one), and per annotator in setting 2."""
    tests = [(a, b) for a, b in spec.comparisons if a in done and b in done]
    if not tests:
        return []
    lines = ["Two-tailed paired t-tests (scipy.stats.ttest_rel) of arm A against arm B over the test "
             "cases (each case's metric averaged over seeds"
             + (" and over the 7 raters" if spec.per_annotator else "")
             + " first; for ASSD and HD95 lower is better):", ""]
    header = ["arm A", "arm B", "Dice A / B", "p (Dice)", "p (ASSD)", "p (HD95)", "pairs"]
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
        raters = _raters(cases["annotator"].unique())
        rows = []
        for a, b in tests:
            res = paired_tests(cases, a, b, ("dice",), by="annotator").set_index("annotator")
            rows.append([titles[a], titles[b]] + [format_p(res.loc[r, "p"]) for r in raters])
        lines += ["Dice p-values per annotator:", "",
                  _md_table(["arm A", "arm B"] + [f"p {r}" for r in raters], rows), ""]
    return lines


def _quality_lines(out_dir: Path, backend: str, done: Sequence[str], seeds: Sequence[int],
                   titles: dict[str, str]) -> list[str]:
    """One table per AIDE run: the training labels' Dice against the HQ labels per epoch and net."""
    quality = [(arm, seed, label_quality(out_dir, arm, seed)) for arm in done if shows_label_quality(arm)
               for seed in seeds]
    quality = [(arm, seed, q) for arm, seed, q in quality if q is not None]
    if not quality:
        return []
    lines = ["Label correction: mean Dice of the training labels each AIDE net used in an epoch against the "
             "HQ labels, over the training rows that have one, at the training resolution (`train_scores.csv`; "
             "epoch 1 shows the labels as given"
             + ("; plain-loop runs record only those and the labels after the last epoch"
                if backend == "plain" else "") + "):", ""]
    for arm, seed, q in quality:
        nets = [c for c in q.columns if c.startswith("net")]
        header = ["epoch"] + [f"{titles[arm]} s{seed}, {c}" for c in nets]
        rows = [[str(int(r["epoch"]))] + [f"{r[c]:.3f}" for c in nets] for r in q.to_dict("records")]
        lines += [_md_table(header, rows), ""]
    return lines


def write_results(out_dirs: Sequence[str | os.PathLike], out_md: str | os.PathLike, *, preamble: str = "",
                  postscript: str = "", figures_dir: str | os.PathLike | None = None,
                  figure_runs: Sequence[tuple[str, str, str]] = ()) -> Path:
    """Write ``docs/results.md`` from finished experiment folders.

    Args:
        out_dirs: experiment folders; one without ``experiment.json`` is reported as not run (under its
            setting's title when the folder's name contains exactly one setting name).
        out_md: Markdown file to write (atomically).
        preamble: Markdown placed before the settings (machine, command).
        postscript: Markdown placed after them (differences from the paper).
        figures_dir: where figure PNGs are copied (next to ``out_md`` by default: ``figures/``).
        figure_runs: (experiment folder, arm_seed run name, caption-prefix): copy that run's
            ``figures/{corrections,dice_scatter,training_curves}.png`` and show them.
    Returns:
        ``out_md``.
    """
    out_md = Path(out_md)
    figures_dir = Path(figures_dir) if figures_dir is not None else out_md.parent / "figures"
    sections = [preamble.rstrip() + "\n"] if preamble else []
    for out_dir in out_dirs:
        out_dir = Path(out_dir)
        if not (out_dir / EXPERIMENT_FILE).is_file():
            # Name the setting when the folder's name says which one it was meant for: the longest setting
            # name in it, so that `exp_methods_noisy` is methods_noisy's, not noisy's.
            names = sorted((name for name in settings() if name in out_dir.name), key=len, reverse=True)
            one = names and (len(names) == 1 or len(names[0]) > len(names[1]))
            title = settings()[names[0]].title if one else out_dir.name
            sections.append(f"## {title}\n\nNot run: `{out_dir}` holds no `{EXPERIMENT_FILE}`, so this setting "
                            f"has no results.\n")
            continue
        figs = []
        for exp, run, prefix in figure_runs:
            if Path(exp).resolve() != out_dir.resolve():
                continue
            for stem, caption in _FIGURES:
                src = out_dir / "train" / run / FIGURES_DIR / f"{stem}.png"
                if src.is_file():
                    figures_dir.mkdir(parents=True, exist_ok=True)
                    dst = figures_dir / f"{load_experiment(out_dir).setting}_{run}_{stem}.png"
                    _copy_small_png(src, dst)
                    figs.append((f"{prefix}: {caption}", os.path.relpath(dst, out_md.parent)))
        sections.append(setting_markdown(out_dir, figures=figs))
    if postscript:
        sections.append(postscript.rstrip() + "\n")
    atomic_write_text(out_md, "\n".join(sections))
    return out_md


def _copy_small_png(src: Path, dst: Path, max_pixels: int = FIGURE_MAX_PIXELS) -> Path:
    """Copy a PNG, scaled down (aspect kept) and palette-quantised so that docs/ stays small."""
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
