"""The results page (aide_ray.experiments.report) of small synthetic experiment folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from aide_ray.eval.stats import format_p, format_pm
from aide_ray.experiments.report import setting_markdown, write_results
from aide_ray.experiments.results import collect_cases, paired_tests

from .helpers import RUN_SCRIPT, load_run_script, write_eval, write_experiment


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


def test_per_annotator_setting_has_a_column_per_rater(tmp_path: Path) -> None:
    out = tmp_path / "exp_annotators"
    write_experiment(out, "annotators", [0], ["supervised_rater1", "aide_rater1"])
    raters = ["rater1", "rater2", "rater10"]
    write_eval(out, "supervised_rater1", 0, [0.8, 0.7, 0.9, 0.6], annotators=raters)
    write_eval(out, "aide_rater1", 0, [0.82, 0.75, 0.91, 0.66], annotators=raters)
    text = setting_markdown(out)
    assert "| arm | rater1 | rater2 | rater10 |" in text  # natural order of the rater names
    assert "| arm A | arm B | p rater1 | p rater2 | p rater10 |" in text
    assert "over the test cases (each case's metric averaged over seeds and over the 7 raters first" in text
    assert "| AIDE, rater 1 | supervised, rater 1 | 0.785 / 0.750 |" in text
    assert "| 4 |\n" in text.split("Two-tailed")[1]  # one pair per case


def test_label_quality_table_of_an_aide_run(noisy_exp: Path) -> None:
    run = noisy_exp / "train" / "aide_s0"
    run.mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 0, 1, 1], "sample_index": [0, 0, 0, 0], "slot": [0, 1, 0, 1],
                  "dice_pred_vs_label": 0.5, "dice_label_vs_clean": [0.8, 0.8, 0.9, 0.6]}).to_csv(
        run / "train_scores.csv", index=False)
    text = setting_markdown(noisy_exp)
    assert "| epoch | AIDE λ=10, noisy labels s0, net1 | AIDE λ=10, noisy labels s0, net2 |" in text
    assert "| 2 | 0.900 | 0.600 |" in text
    assert "plain-loop runs" not in text


def test_unfinished_run_says_how_far_training_got(noisy_exp: Path) -> None:
    ckpt = noisy_exp / "train" / "coteaching_s1" / "checkpoint_2026-01-01_00-00-00.000000"
    ckpt.mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 1, 2], "val_dice": [0.8, 0.85, 0.86]}).to_csv(ckpt / "metrics.csv", index=False)
    text = setting_markdown(noisy_exp)
    assert ("- `coteaching_s1`: training started but did not finish; its newest checkpoint is after epoch 3, "
            "so it has no test predictions.") in text


def test_a_variant_folder_is_named_in_its_heading(noisy_exp: Path) -> None:
    assert setting_markdown(noisy_exp).splitlines()[0] == "## Setting 1: noisy labels (Shenzhen chest X-ray lungs)"
    info = json.loads((noisy_exp / "experiment.json").read_text())
    (noisy_exp / "experiment.json").write_text(json.dumps({**info, "engine": "plain", "overrides": ["epochs=40"]}))
    text = setting_markdown(noisy_exp)
    assert text.splitlines()[0] == "## Setting 1: noisy labels (Shenzhen chest X-ray lungs) — `exp_noisy`"
    assert "CPU size changed by the overrides above" in text
    (noisy_exp / "experiment.json").write_text(json.dumps({**info, "backend": "local"}))
    assert setting_markdown(noisy_exp).splitlines()[0].endswith("— `exp_noisy`")
    (noisy_exp / "experiment.json").write_text(json.dumps({**info, "backend": "ray", "full": True}))
    text = setting_markdown(noisy_exp)
    assert text.splitlines()[0].endswith("— `exp_noisy`") and "; full (GPU) size: 128 x 128 inputs" in text


def test_a_folder_where_no_arm_finished(tmp_path: Path) -> None:
    out = tmp_path / "exp_limited"
    write_experiment(out, "limited", [0], ["supervised_hq10"])
    text = setting_markdown(out)
    assert "**Not run or not finished:** supervised_hq10_s0." in text
    assert text.rstrip().endswith("No arm of this setting finished, so there are no results.")


def test_write_results_copies_figures_and_marks_missing_settings(noisy_exp: Path, tmp_path: Path) -> None:
    figs = noisy_exp / "train" / "aide_s0" / "figures"
    figs.mkdir(parents=True)
    (figs / "dice_scatter.png").write_bytes(b"\x89PNG fake")
    Image.fromarray(np.full((1000, 800, 3), 200, np.uint8)).save(figs / "training_curves.png")
    md = tmp_path / "docs" / "results.md"
    write_results([noisy_exp, tmp_path / "exp_limited"], md, preamble="# Results\n", postscript="## Notes\n",
                  figure_runs=[(str(noisy_exp), "aide_s0", "noisy AIDE")])
    text = md.read_text(encoding="utf-8")
    assert text.startswith("# Results")
    assert (tmp_path / "docs" / "figures" / "noisy_aide_s0_dice_scatter.png").read_bytes() == b"\x89PNG fake"
    assert "](figures/noisy_aide_s0_dice_scatter.png)" in text
    with Image.open(tmp_path / "docs" / "figures" / "noisy_aide_s0_training_curves.png") as im:
        assert im.width * im.height <= 350_000 and abs(im.width / im.height - 0.8) < 0.01  # scaled, aspect kept
    assert "*noisy AIDE: training curves*" in text
    assert "corrections" not in text  # no such PNG in the run
    assert "## Setting 3: limited labels (Shenzhen, 10% HQ labels + 90% pseudo-labels)\n\nNot run:" in text
    assert text.rstrip().endswith("## Notes")


def test_every_page_of_the_report_command_has_its_preamble_and_postscript() -> None:
    # `run.py report --page P` reads jobs/experiments/P_preamble.md and P_postscript.md; a missing one
    # is a traceback after hours of experiments.
    for page in load_run_script().PAGES:
        preamble = RUN_SCRIPT.parent / f"{page}_preamble.md"
        assert "{command}" in preamble.read_text(encoding="utf-8"), preamble
        assert (RUN_SCRIPT.parent / f"{page}_postscript.md").is_file(), page
