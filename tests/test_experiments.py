"""Results tables of the experiment recipes (aide_ray.experiments) on small synthetic evaluation CSVs,
and the recipe configs of jobs/experiments/ (every arm's YAML must load, with and without --full)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from aide_ray.config import load_config
from aide_ray.exceptions import InputError
from aide_ray.experiments import (SETTINGS, collect_cases, format_p, format_pm, label_quality, load_experiment,
                                  paired_tests, setting_markdown, summary_table, wall_times, write_results)

REPO = Path(__file__).resolve().parents[1]
EXP_DIR = REPO / "jobs" / "experiments"


def _write_eval(out: Path, arm: str, seed: int, dice, assd=None, hd95=None, annotators=None) -> None:
    n = len(dice)
    cases = [f"c{i:02d}" for i in range(n)]
    table = pd.DataFrame({"case_id": cases, "split": "test", "dice": dice,
                          "assd": assd if assd is not None else np.linspace(1, 2, n),
                          "hd95": hd95 if hd95 is not None else np.linspace(3, 5, n)})
    if annotators is not None:
        table = pd.concat([table.assign(annotator=a) for a in annotators], ignore_index=True)
    folder = out / "eval" / f"{arm}_s{seed}"
    folder.mkdir(parents=True)
    table.to_csv(folder / "per_case.csv", index=False)


def _write_timing(out: Path, arm: str, seed: int, stage: str, seconds: float, rc: int = 0) -> None:
    (out / "timing").mkdir(parents=True, exist_ok=True)
    (out / "timing" / f"{stage}_{arm}_s{seed}.json").write_text(
        json.dumps({"arm": arm, "seed": seed, "stage": stage, "rc": rc, "seconds": seconds}))


def _experiment(out: Path, setting: str, seeds, arms) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps({
        "setting": setting, "seeds": seeds, "arms": arms, "full": False,
        "command": f"python jobs/experiments/run.py {setting} --data D --out O", "size_note": "128 x 128 inputs",
        "data_note": "synthetic"}))


@pytest.fixture
def noisy_exp(tmp_path: Path) -> Path:
    """Two seeds; AIDE beats supervised_noisy on every case, coteaching lacks seed 1."""
    out = tmp_path / "exp_noisy"
    _experiment(out, "noisy", [0, 1], ["supervised_noisy", "coteaching", "aide"])
    base = np.array([0.80, 0.82, 0.78, 0.85, 0.81])
    _write_eval(out, "supervised_noisy", 0, base)
    _write_eval(out, "supervised_noisy", 1, base + 0.01)
    _write_eval(out, "aide", 0, base + np.array([0.05, 0.03, 0.06, 0.02, 0.04]))
    _write_eval(out, "aide", 1, base + np.array([0.04, 0.05, 0.05, 0.03, 0.02]),
                assd=np.array([1.0, np.nan, 1.2, 1.3, 1.4]))
    _write_eval(out, "coteaching", 0, base + 0.02)
    _write_timing(out, "aide", 0, "train", 600.0)
    _write_timing(out, "aide", 1, "train", 660.0)
    _write_timing(out, "supervised_noisy", 0, "train", 300.0)
    _write_timing(out, "supervised_noisy", 0, "predict", 20.0, rc=1)
    return out


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


def test_paired_test_names_an_arm_without_results(noisy_exp: Path) -> None:
    cases, _ = collect_cases(noisy_exp, ["aide"], [0])
    with pytest.raises(InputError, match="no per-case results for arm 'gce'"):
        paired_tests(cases, "aide", "gce")


def test_paired_test_per_annotator(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    raters = ["rater1", "rater2"]
    _write_eval(out, "supervised_rater1", 0, [0.8, 0.7, 0.9, 0.6], annotators=raters)
    _write_eval(out, "aide_rater1", 0, [0.82, 0.75, 0.91, 0.66], annotators=raters)
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
    (tmp_path / "experiment.json").write_text(json.dumps({"setting": "weak", "seeds": [0]}))
    with pytest.raises(InputError, match=r"setting must be one of \['annotators', 'limited', 'noisy'\], got 'weak'"):
        load_experiment(tmp_path)


def test_formatting() -> None:
    assert format_pm(0.91234, 0.0345) == "0.912 ± 0.035"
    assert format_pm(2.5, float("nan"), 2) == "2.50"
    assert format_pm(float("nan"), 0.1) == "–"
    assert format_p(0.04321) == "0.04"
    assert format_p(0.004321) == "0.0043"
    assert format_p(1.234e-7) == "1.2e-07"
    assert format_p(float("nan")) == "–"


def test_setting_markdown_has_tables_tests_and_wall_times(noisy_exp: Path) -> None:
    (noisy_exp / "train" / "aide_s0").mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 1, 2], "val_dice": [0.85, 0.9, 0.7]}).to_csv(
        noisy_exp / "train" / "aide_s0" / "metrics.csv", index=False)
    text = setting_markdown(noisy_exp)
    assert "| 10 | 2 | 3 | 0.900 (epoch 2) |" in text  # test rows, seeds, epochs, best val Dice of AIDE
    assert text.startswith("## Setting 1: noisy labels")
    assert "**Not run or not finished:** coteaching_s1" in text
    assert "`coteaching_s1`" not in text  # never started: nothing to say beyond the list
    cases, _ = collect_cases(noisy_exp, ["aide"], [0, 1])
    assert format_pm(cases["dice"].mean(), cases["dice"].std(ddof=1)) in text
    p = paired_tests(*collect_cases(noisy_exp, ["supervised_noisy", "aide"], [0, 1])[:1], "aide",
                     "supervised_noisy", ("dice",)).iloc[0]["p"]
    assert "| AIDE λ=10, noisy labels | supervised, noisy labels | " in text and format_p(p) in text
    assert "| AIDE λ=10, noisy labels | train | 2 | 10 min 30 s | 21 min 00 s |" in text
    assert "predict supervised_noisy_s0 (exit 1)" in text
    assert "gce" not in text.split("Two-tailed")[1]  # no test against an arm that did not run


def test_write_results_copies_figures_and_marks_missing_settings(noisy_exp: Path, tmp_path: Path) -> None:
    figs = noisy_exp / "train" / "aide_s0" / "figures"
    figs.mkdir(parents=True)
    (figs / "dice_scatter.png").write_bytes(b"\x89PNG fake")
    md = tmp_path / "docs" / "results.md"
    write_results([noisy_exp, tmp_path / "exp_limited"], md, preamble="# Results\n", postscript="## Notes\n",
                  figure_runs=[(str(noisy_exp), "aide_s0", "noisy AIDE")])
    text = md.read_text(encoding="utf-8")
    assert text.startswith("# Results")
    assert (tmp_path / "docs" / "figures" / "noisy_aide_s0_dice_scatter.png").read_bytes() == b"\x89PNG fake"
    assert "](figures/noisy_aide_s0_dice_scatter.png)" in text
    assert "## Setting 3: limited labels (Shenzhen, 10% HQ labels + 90% pseudo-labels)\n\nNot run:" in text
    assert text.rstrip().endswith("## Notes")


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_every_arm_config_loads_with_and_without_full(setting: str) -> None:
    run = _load_run_module()
    full = run.load_full_overrides(setting)
    for arm in SETTINGS[setting].arms:
        cpu = load_config(EXP_DIR / arm.config)
        big = load_config(EXP_DIR / arm.config, full)
        assert cpu.model.base_width == 8 and not cpu.use_gpu
        assert big.model.base_width == 64 and big.use_gpu and big.epochs == 100
        assert arm.name.startswith(cpu.method) or (arm.name.startswith("supervised") and cpu.method == "supervised")
    with pytest.raises(SystemExit):
        run.build_parser().parse_args([setting, "--data", "d", "--out", "o", "--arms", "nope"])


def _load_run_module():
    spec = importlib.util.spec_from_file_location("exp_run", EXP_DIR / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return run


def test_annotator_manifests_hold_one_label_per_case(tmp_path: Path) -> None:
    """prepare_annotators on a tiny QUBIQ-like folder: rater1 / random rater per case, train kind lq, no test rows."""
    import SimpleITK as sitk

    data = tmp_path / "qubiq"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for c in range(1, 11):
        sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, (16, 16), dtype=np.uint8)),
                        str(data / "images" / f"case{c:02d}.png"))
        for r in range(1, 4):
            mask = np.zeros((16, 16), np.uint8)
            mask[4:10 + r, 4:10] = 255
            sitk.WriteImage(sitk.GetImageFromArray(mask), str(data / "masks" / f"case{c:02d}_rater{r}.png"))
    run = _load_run_module()
    out = tmp_path / "exp"
    prepared = run.prepare_annotators(data, out, 16, None)
    every = pd.read_csv(prepared["reference"])
    assert len(every) == 30 and set(every["split"]) == {"train", "val", "test"}
    for name in ("rater1", "random"):
        table = pd.read_csv(out / "data" / f"train_{name}.csv")
        assert set(table["split"]) == {"train", "val"}
        assert table["case_id"].is_unique
        assert set(table["case_id"]) == set(every[every["split"] != "test"]["case_id"])
        assert set(table[table["split"] == "train"]["label_kind"]) == {"lq"}
        assert set(table[table["split"] == "val"]["label_kind"]) == {"hq"}
        assert (prepared["train"][name] / "dataset.json").is_file()
    assert set(pd.read_csv(out / "data" / "train_rater1.csv")["annotator"]) == {"rater1"}
    assert pd.read_csv(out / "data" / "train_random.csv")["annotator"].nunique() > 1
    assert "3 raters" in prepared["note"]


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
    text = setting_markdown(noisy_exp)
    assert "| epoch | AIDE λ=10, noisy labels s0, net1 | AIDE λ=10, noisy labels s0, net2 |" in text
    assert "| 2 | 0.900 | 0.600 |" in text


def test_unfinished_run_says_how_far_training_got(noisy_exp: Path) -> None:
    ckpt = noisy_exp / "train" / "coteaching_s1" / "checkpoint_2026-01-01_00-00-00.000000"
    ckpt.mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 1, 2], "val_dice": [0.8, 0.85, 0.86]}).to_csv(ckpt / "metrics.csv", index=False)
    text = setting_markdown(noisy_exp)
    assert ("- `coteaching_s1`: training started but did not finish; its newest checkpoint is after epoch 3, "
            "so it has no test predictions.") in text


def test_arm_scoped_overrides_apply_to_their_arm_only() -> None:
    run = _load_run_module()
    given = ["epochs=40", "aide_lambda1:aide.ramp_epochs=40", "aide.temperature=0.3", "run.name=a:b"]
    assert run.arm_overrides(given, "aide_lambda1") == ["epochs=40", "aide.ramp_epochs=40", "aide.temperature=0.3",
                                                        "run.name=a:b"]
    assert run.arm_overrides(given, "aide") == ["epochs=40", "aide.temperature=0.3", "run.name=a:b"]
    assert run.build_parser().parse_args(["noisy", "--data", "d", "--out", "o", "--engine", "plain"]).engine == "plain"
    args = run.build_parser().parse_args(["noisy", "--data", "d", "--out", "o", "--set", "nope:epochs=2"])
    args.data = str(Path(__file__).parent)  # an existing folder: the arm check comes before any data work
    with pytest.raises(InputError, match="no arm 'nope'"):
        run.run_setting(args)


def test_a_variant_folder_is_named_in_its_heading(noisy_exp: Path) -> None:
    assert setting_markdown(noisy_exp).splitlines()[0] == "## Setting 1: noisy labels (Shenzhen chest X-ray lungs)"
    info = json.loads((noisy_exp / "experiment.json").read_text())
    info.update(engine="plain", overrides=["epochs=40"])
    (noisy_exp / "experiment.json").write_text(json.dumps(info))
    text = setting_markdown(noisy_exp)
    assert text.splitlines()[0] == "## Setting 1: noisy labels (Shenzhen chest X-ray lungs) — `exp_noisy`"
    assert "CPU size changed by the overrides above" in text
