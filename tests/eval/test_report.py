"""The printed tables and index.md of an evaluation (aide_ray.eval.report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from aide_ray.eval.report import format_comparison, format_summary, index_markdown, write_overlays

NAN = float("nan")


def _summary() -> pd.DataFrame:
    table = pd.DataFrame({"mean": [0.91234, 1.5, NAN], "std": [0.0345, NAN, NAN], "n": [4, 1, 0],
                          "n_excluded": [0, 3, 4]}, index=["dice", "assd", "hd95"])
    table.index.name = "metric"
    return table


def _comparison() -> pd.DataFrame:
    table = pd.DataFrame({"mean_a": [0.9, 1.25], "mean_b": [0.8, 2.0], "t": [3.21, NAN], "p": [0.0123456, NAN],
                          "n": [5, 1]}, index=["dice", "assd"])
    table.index.name = "metric"
    return table


def test_format_summary_aligns_mean_pm_std_n_and_excluded():
    assert format_summary(_summary()).splitlines() == [
        "metric                        mean ± std     n  excluded",
        "dice                     0.9123 ± 0.0345     4         0",
        "assd                              1.5000     1         3",  # one case: no std
        "hd95                                   –     0         4",  # no case: undefined
    ]


def test_format_comparison():
    lines = format_comparison(_comparison(), "A (this)", "B (other)").splitlines()
    assert lines[0] == "metric                A (this)     B (other)         t           p     n"
    assert lines[1] == "dice                    0.9000        0.8000     3.210      0.0123     5"
    assert lines[2].split() == ["assd", "1.2500", "2.0000", "nan", "nan", "1"]


def test_index_markdown_lists_inputs_tables_tests_and_overlays():
    per_case = pd.DataFrame({"case_id": ["a", "b"], "dice": [0.9, 0.8]})
    text = index_markdown(per_case, _summary(), _comparison(), [("best: a, Dice 0.900", "overlay_best_a.png")],
                          pred_dir=Path("/preds"), ref="m.csv", compare="other.csv", label_column="label",
                          split="test")
    assert "- predictions: `/preds`" in text and "(column `label`, split test)" in text
    assert "- cases scored: 2" in text and "[comparison.csv](comparison.csv)" in text
    assert "| dice | 0.9123 ± 0.0345 | 4 | 0 |" in text and "| hd95 | – | 0 | 4 |" in text
    assert "## Paired two-tailed t-tests vs `other.csv`" in text
    assert "| dice | 0.9000 | 0.8000 | 3.210 | 0.0123 | 5 |" in text
    assert "![best: a, Dice 0.900](overlay_best_a.png)" in text
    plain = index_markdown(per_case, _summary(), None, [], pred_dir=Path("/preds"), ref="m.csv", compare=None,
                           label_column="clean_label", split=None)
    assert "comparison" not in plain and "t-tests" not in plain and "Overlays" not in plain
    assert "split all" in plain


def test_write_overlays_without_a_ranked_case_writes_nothing(tmp_path):
    per_case = pd.DataFrame({"case_id": ["a"], "dice": [np.nan], "prediction": ["p"], "reference": ["r"]})
    manifest = pd.DataFrame({"case_id": ["a"], "image": ["i.nii.gz"]})
    assert write_overlays(per_case, manifest, tmp_path) == []
    assert list(tmp_path.iterdir()) == []
