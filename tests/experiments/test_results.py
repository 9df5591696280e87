"""The numbers of experiment folders (aide_ray.experiments.results) on small synthetic evaluation CSVs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from aide_ray.exceptions import InputError
from aide_ray.experiments.results import (collect_cases, label_quality, load_experiment, paired_tests,
                                          summary_table, unfinished_note, wall_times)

from .helpers import write_eval


def test_collect_cases_stacks_arms_and_seeds_and_lists_missing_runs(noisy_exp: Path) -> None:
    cases, missing = collect_cases(noisy_exp, ["supervised_noisy", "coteaching", "aide"], [0, 1])
    assert missing == ["coteaching_s1"]
    assert len(cases) == 5 * 5
    assert set(cases["annotator"]) == {""}
    assert cases.groupby("arm")["seed"].nunique().to_dict() == {"aide": 2, "coteaching": 1, "supervised_noisy": 2}


def test_summary_pools_cases_and_seeds_and_counts_undefined_values(noisy_exp: Path) -> None:
    cases, _ = collect_cases(noisy_exp, ["supervised_noisy", "aide"], [0, 1])
    summary = summary_table(cases).set_index("arm")
    aide = cases[cases["arm"] == "aide"]
    assert summary.loc["aide", "dice_mean"] == pytest.approx(aide["dice"].mean())
    assert summary.loc["aide", "dice_std"] == pytest.approx(aide["dice"].std(ddof=1))
    assert summary.loc["aide", "dice_n"] == 10
    assert summary.loc["aide", "assd_n"] == 9 and summary.loc["aide", "assd_excluded"] == 1
    assert summary.loc["aide", "assd_mean"] == pytest.approx(np.nanmean(aide["assd"]))
    assert summary.loc["aide", "cases"] == 5 and summary.loc["aide", "seeds"] == 2


def test_summary_rejects_a_missing_metric_column(noisy_exp: Path) -> None:
    cases, _ = collect_cases(noisy_exp, ["aide"], [0])
    with pytest.raises(InputError, match=r"no column\(s\) \['iou'\]"):
        summary_table(cases, ("dice", "iou"))


def test_paired_test_averages_seeds_per_case_then_matches_scipy(noisy_exp: Path) -> None:
    cases, _ = collect_cases(noisy_exp, ["supervised_noisy", "aide"], [0, 1])
    res = paired_tests(cases, "aide", "supervised_noisy").set_index("metric")
    a = cases[cases["arm"] == "aide"].groupby("case_id")["dice"].mean()
    b = cases[cases["arm"] == "supervised_noisy"].groupby("case_id")["dice"].mean()
    expected = stats.ttest_rel(a, b)
    assert res.loc["dice", "n"] == 5
    assert res.loc["dice", "t"] == pytest.approx(expected.statistic) and res.loc["dice", "t"] > 0
    assert res.loc["dice", "p"] == pytest.approx(expected.pvalue)
    assert res.loc["dice", "mean_a"] == pytest.approx(a.mean())
    # ASSD: case c01 is NaN in one of AIDE's seeds; the seed mean skips it, so all 5 cases still pair.
    assert res.loc["assd", "n"] == 5


def test_paired_test_is_undefined_for_constant_differences(noisy_exp: Path) -> None:
    cases, _ = collect_cases(noisy_exp, ["supervised_noisy", "coteaching"], [0])
    res = paired_tests(cases, "coteaching", "supervised_noisy", ("dice",)).iloc[0]
    assert res["n"] == 5 and math.isnan(res["t"]) and math.isnan(res["p"])
    assert res["mean_a"] - res["mean_b"] == pytest.approx(0.02)


def test_paired_test_drops_cases_without_a_value_on_both_sides(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    write_eval(out, "a", 0, [0.9, 0.8, 0.7, 0.6], assd=[1.0, np.nan, 2.0, 3.0])
    write_eval(out, "b", 0, [0.8, 0.8, 0.6, 0.4], assd=[1.5, 1.0, 2.0, np.nan])
    cases, _ = collect_cases(out, ["a", "b"], [0])
    res = paired_tests(cases, "a", "b", ("assd",)).iloc[0]
    assert res["n"] == 2 and res["mean_a"] == pytest.approx(1.5) and res["mean_b"] == pytest.approx(1.75)


def test_paired_test_names_an_arm_without_results(noisy_exp: Path) -> None:
    cases, _ = collect_cases(noisy_exp, ["aide"], [0])
    with pytest.raises(InputError, match="no per-case results for arm 'gce'"):
        paired_tests(cases, "aide", "gce")


def test_paired_test_per_annotator(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    raters = ["rater1", "rater2"]
    write_eval(out, "supervised_rater1", 0, [0.8, 0.7, 0.9, 0.6], annotators=raters)
    write_eval(out, "aide_rater1", 0, [0.82, 0.75, 0.91, 0.66], annotators=raters)
    cases, _ = collect_cases(out, ["supervised_rater1", "aide_rater1"], [0])
    res = paired_tests(cases, "aide_rater1", "supervised_rater1", ("dice",), by="annotator")
    assert list(res["annotator"]) == raters
    expected = stats.ttest_rel([0.82, 0.75, 0.91, 0.66], [0.8, 0.7, 0.9, 0.6]).pvalue
    assert res["p"].to_numpy() == pytest.approx([expected, expected])
    assert list(res["n"]) == [4, 4]
    pooled = paired_tests(cases, "aide_rater1", "supervised_rater1", ("dice",), keys=("case_id",)).iloc[0]
    assert pooled["n"] == 4  # one pair per case, its two raters' scores averaged
    assert pooled["p"] == pytest.approx(expected)


def test_wall_times_reads_every_stage_and_rejects_incomplete_records(noisy_exp: Path) -> None:
    times = wall_times(noisy_exp)
    assert len(times) == 4
    assert times[(times["arm"] == "aide") & (times["stage"] == "train")]["seconds"].mean() == pytest.approx(630.0)
    (noisy_exp / "timing" / "bad.json").write_text(json.dumps({"arm": "aide", "seed": 0, "stage": "train"}))
    with pytest.raises(InputError, match=r"bad\.json: missing key 'seconds'"):
        wall_times(noisy_exp)


def test_load_experiment_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="experiment.json not found"):
        load_experiment(tmp_path)
    (tmp_path / "experiment.json").write_text("{")
    with pytest.raises(InputError, match="is not valid JSON"):
        load_experiment(tmp_path)
    (tmp_path / "experiment.json").write_text(json.dumps({"setting": "noisy"}))
    with pytest.raises(InputError, match="missing key 'seeds'"):
        load_experiment(tmp_path)
    (tmp_path / "experiment.json").write_text(json.dumps({"setting": "weak", "seeds": [0]}))
    with pytest.raises(InputError, match=r"setting must be one of \['annotators', 'benchmark', 'benchmark_mixed', "
                                         r"'domain_shift', 'headroom', 'limited', "
                                         r"'methods_noisy', 'methods_semi', 'noisy', 'scribbles', 'scribbles_qubiq'\], got 'weak'"):
        load_experiment(tmp_path)


def test_load_experiment_reads_old_and_new_folders(tmp_path: Path) -> None:
    """Folders of the old plain loop say "engine": "plain"; older ones have no "arms" (all arms ran)."""
    (tmp_path / "experiment.json").write_text(json.dumps({"setting": "noisy", "seeds": [1, 0], "engine": "plain"}))
    info = load_experiment(tmp_path)
    assert info.backend == "plain" and info.arms is None and info.seeds == (1, 0) and info.command is None
    (tmp_path / "experiment.json").write_text(json.dumps({"setting": "noisy", "seeds": [0], "backend": "local",
                                                          "arms": ["aide"], "overrides": ["epochs=2"]}))
    info = load_experiment(tmp_path)
    assert info.backend == "local" and info.arms == ("aide",) and info.overrides == ("epochs=2",)


def test_label_quality_averages_label_vs_hq_dice_per_epoch_and_net(noisy_exp: Path) -> None:
    run = noisy_exp / "train" / "aide_s0"
    run.mkdir(parents=True)
    assert label_quality(noisy_exp, "aide", 0) is None  # no scores written
    (run / "train_scores.csv").write_text("epoch,sample_index,slot,dice_pred_vs_label,dice_label_vs_clean\n"
                                          "0,0,0,0.5,\n0,0,1,0.5,\n")
    assert label_quality(noisy_exp, "aide", 0) is None  # no HQ references at all
    pd.DataFrame({"epoch": [0, 0, 0, 0, 1, 1, 1, 1], "sample_index": [0, 1, 0, 1, 0, 1, 0, 1],
                  "slot": [0, 0, 1, 1, 0, 0, 1, 1], "dice_pred_vs_label": 0.5,
                  "dice_label_vs_clean": [0.8, 0.6, 0.8, 0.6, 0.9, np.nan, 0.7, 0.5]}).to_csv(
        run / "train_scores.csv", index=False)
    q = label_quality(noisy_exp, "aide", 0)
    assert list(q["epoch"]) == [1, 2]
    assert q["net1"].tolist() == pytest.approx([0.7, 0.9])  # the NaN row (no HQ label) is left out
    assert q["net2"].tolist() == pytest.approx([0.7, 0.6])


def test_unfinished_note_says_how_far_training_got(noisy_exp: Path) -> None:
    assert unfinished_note(noisy_exp, "coteaching_s1") is None  # never started
    ckpt = noisy_exp / "train" / "coteaching_s1" / "checkpoint_2026-01-01_00-00-00.000000"
    ckpt.mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 1, 2], "val_dice": [0.8, 0.85, 0.86]}).to_csv(ckpt / "metrics.csv", index=False)
    assert unfinished_note(noisy_exp, "coteaching_s1") == (
        "`coteaching_s1`: training started but did not finish; its newest checkpoint is after epoch 3, "
        "so it has no test predictions.")
    (noisy_exp / "train" / "coteaching_s1" / "config.yaml").write_text("method: coteaching\n")
    assert "training finished, but it has no test evaluation" in unfinished_note(noisy_exp, "coteaching_s1")
