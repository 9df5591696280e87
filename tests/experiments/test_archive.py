"""The archive of an experiment folder (aide_ray.experiments.archive): the report's numbers without the bulk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from aide_ray.exceptions import InputError
from aide_ray.experiments import pipeline
from aide_ray.experiments.archive import archive_experiment
from aide_ray.experiments.catalogue import settings
from aide_ray.experiments.report import setting_markdown

from .helpers import load_run_script, write_eval


def _with_bulk(exp: Path) -> Path:
    """``exp`` with what a real folder also holds: run files, a checkpoint, predictions, data, logs, configs."""
    for run, epochs in (("aide_s0", 3), ("supervised_noisy_s0", 2), ("coteaching_s0", 2), ("coteaching_s1", 1)):
        folder = exp / "train" / run
        folder.mkdir(parents=True)
        pd.DataFrame({"epoch": range(epochs), "val_dice": [0.8 + 0.01 * e for e in range(epochs)]}).to_csv(
            folder / "metrics.csv", index=False)
        (folder / "config.yaml").write_text("method: aide\n")
        (folder / "checkpoint_2026-01-01_00-00-00.000000").mkdir()
        (folder / "checkpoint_2026-01-01_00-00-00.000000" / "state.pt").write_bytes(b"\0" * 1000)
    pd.DataFrame({"epoch": [0, 0], "sample_index": [0, 0], "slot": [0, 1], "dice_pred_vs_label": 0.5,
                  "dice_label_vs_clean": [0.8, 0.7]}).to_csv(exp / "train" / "aide_s0" / "train_scores.csv",
                                                            index=False)
    # Every run writes per-row scores; only the arms that correct labels have a table made from them.
    shutil.copy(exp / "train" / "aide_s0" / "train_scores.csv", exp / "train" / "supervised_noisy_s0")
    for bulk in ("pred/aide_s0/c00.nii.gz", "data/shards_noisy/part-0.parquet", "logs/train_aide_s0.log"):
        (exp / bulk).parent.mkdir(parents=True, exist_ok=True)
        (exp / bulk).write_bytes(b"\0" * 100)
    (exp / "configs").mkdir()
    (exp / "configs" / "aide.yaml").write_text("method: aide\n")
    return exp


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_the_archive_keeps_the_numbers_of_evaluated_runs_and_reports_the_same(noisy_exp: Path, tmp_path: Path) -> None:
    exp = _with_bulk(noisy_exp)
    # coteaching_s1 trained but was never evaluated: the archive leaves it out, so a setting rerun on the
    # restored folder trains it again instead of predicting from a checkpoint that is not there.
    dest, runs = archive_experiment(exp, tmp_path / "results" / "exp_noisy")
    assert runs == 5
    assert _files(dest) == {
        "experiment.json", "configs/aide.yaml",
        "timing/train_aide_s0.json", "timing/train_aide_s1.json", "timing/train_supervised_noisy_s0.json",
        "timing/predict_supervised_noisy_s0.json",
        *(f"eval/{run}/per_case.csv" for run in ("aide_s0", "aide_s1", "supervised_noisy_s0", "supervised_noisy_s1",
                                                 "coteaching_s0")),
        "train/aide_s0/metrics.csv", "train/aide_s0/config.yaml", "train/aide_s0/train_scores.csv.gz",
        "train/supervised_noisy_s0/metrics.csv", "train/supervised_noisy_s0/config.yaml",
        "train/coteaching_s0/metrics.csv", "train/coteaching_s0/config.yaml"}
    # The same page, but for the note on the unfinished run, which stays with the folder.
    unfinished = "- `coteaching_s1`: training finished, but it has no test evaluation (see `logs/`).\n"
    assert unfinished in setting_markdown(exp)
    assert setting_markdown(dest) == setting_markdown(exp).replace(unfinished, "")
    assert "| epoch | AIDE λ=10, noisy labels s0, net1 |" in setting_markdown(dest)  # read from the .gz

    # Archiving again replaces the archive (a run evaluated since is added; nothing of the old one lingers).
    write_eval(exp, "coteaching", 1, [0.8, 0.8, 0.8, 0.8, 0.8])
    (dest / "stale.txt").write_text("from an earlier archive")
    dest, runs = archive_experiment(exp, dest)
    assert runs == 6 and "stale.txt" not in _files(dest) and "train/coteaching_s1/metrics.csv" in _files(dest)
    assert [p.name for p in dest.parent.iterdir()] == ["exp_noisy"]  # no temporary or old folder left


def test_a_setting_run_on_a_restored_archive_skips_the_archived_runs(noisy_exp: Path, tmp_path: Path) -> None:
    dest, _ = archive_experiment(_with_bulk(noisy_exp), tmp_path / "archive")
    setting = settings()["noisy"]
    opts = pipeline.RunOptions(data="D", out=str(dest), seeds=(0,), arms=(), full=False, overrides=(),
                               backend="local", parallel=1, force=False)
    missing = tmp_path / "missing"
    # Evaluated runs are skipped before any command runs (there is no data, checkpoint or `aide-ray` here) ...
    assert pipeline._train_predict_evaluate(dest, setting, "aide", 0, missing, missing, (), opts)
    # ... while a run the archive does not hold is attempted, and fails for want of its data.
    assert not pipeline._train_predict_evaluate(dest, setting, "coteaching", 1, missing, missing, (), opts)


def test_bad_archive_requests_fail_with_one_line(noisy_exp: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(InputError, match=r"nowhere: not an experiment folder \(no experiment.json\)"):
        archive_experiment(tmp_path / "nowhere", tmp_path / "a")
    with pytest.raises(InputError, match="the archive must lie outside the experiment folder"):
        archive_experiment(noisy_exp, noisy_exp / "archive")
    run = load_run_script()
    assert run.main(["archive", str(noisy_exp), "--to", str(tmp_path / "kept")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'kept'} (5 evaluated runs)"
    assert run.main(["archive", str(tmp_path / "nowhere"), "--to", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.startswith("run.py: error: ")
