"""The driver of a setting (aide_ray.experiments.pipeline) and its command line (jobs/experiments/run.py).

The end-to-end tests run the real pipeline and data recipes on a tiny Shenzhen-like folder, with a
stand-in for the ``aide-ray`` CLI that writes what each stage would leave behind: they check the order
of the stages, the waits, the commands, the resume rules and the files, without training anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from aide_ray.exceptions import ConfigError, InputError
from aide_ray.experiments.catalogue import get_setting, load_setting
from aide_ray.experiments.pipeline import RunOptions, arm_overrides, run_setting

from .helpers import install_fake_cli, load_run_script, make_shenzhen, write_eval, write_experiment


# Setting 3's recipe at 16 px, with an arm that starts from another (init_from) and two on pseudo-labels.
SMALL = {
    "title": "Setting 9: small",
    "prepare": {"recipe": "shenzhen_limited", "options": {"labelled_fraction": 0.2, "pseudo_labels_from": "hq"}},
    "inputs": {"cpu": {"size": 16, "spacing": 2.0}, "full": {"size": 32}},
    "config": {"epochs": 1, "batch_size": 2, "workers": 1},
    "arms": [
        {"name": "sup_full", "title": "supervised, all", "data": "clean", "config": {"method": "supervised"}},
        {"name": "aide_pre", "title": "AIDE from sup_full", "data": "clean", "init_from": "sup_full",
         "config": {"method": "aide"}},
        {"name": "hq", "title": "supervised, HQ", "data": "hq10", "config": {"method": "supervised"}},
        {"name": "aide_lq", "title": "AIDE, HQ + LQ", "data": "pseudo", "config": {"method": "aide"}},
        {"name": "sup_lq", "title": "supervised, HQ + LQ", "data": "pseudo", "config": {"method": "supervised"}},
    ],
    "comparisons": [["aide_lq", "sup_lq"]],
}


@pytest.fixture
def small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(setting, data folder, calls file): the small setting, its data, and the stand-in CLI installed."""
    calls = install_fake_cli(tmp_path, monkeypatch)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL, sort_keys=False))
    return load_setting(path), make_shenzhen(tmp_path / "shenzhen"), calls


def _calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _time(calls: list[dict], stage: str, run: str, event: str) -> float:
    return next(c["time"] for c in calls if c["stage"] == stage and c["run"] == run and c["event"] == event)


def test_arm_scoped_overrides_apply_to_their_arm_only() -> None:
    given = ["epochs=40", "aide_lambda1:aide.ramp_epochs=40", "aide.temperature=0.3", "run.name=a:b"]
    assert arm_overrides(given, "aide_lambda1") == ["epochs=40", "aide.ramp_epochs=40", "aide.temperature=0.3",
                                                    "run.name=a:b"]
    assert arm_overrides(given, "aide") == ["epochs=40", "aide.temperature=0.3", "run.name=a:b"]


def test_bad_arguments_fail_before_any_work(tmp_path: Path) -> None:
    noisy = get_setting("noisy")
    out = tmp_path / "exp"
    with pytest.raises(InputError, match="is not a folder"):
        run_setting(noisy, RunOptions(data=str(tmp_path / "none"), out=str(out)))
    with pytest.raises(InputError, match="no arm 'nope'"):
        run_setting(noisy, RunOptions(data=str(tmp_path), out=str(out), overrides=("nope:epochs=2",)))
    with pytest.raises(InputError, match=r"no arm 'aide_lamda1' \(did you mean 'aide_lambda1'\?\)"):
        run_setting(noisy, RunOptions(data=str(tmp_path), out=str(out), arms=("aide_lamda1",)))
    assert not out.exists()
    # A bad override fails when the arm configs are checked, before any data is made.
    with pytest.raises(ConfigError, match="aide.temprature"):
        run_setting(noisy, RunOptions(data=str(tmp_path), out=str(out), overrides=("aide.temprature=0.3",)))
    assert not (out / "data").exists()
    with pytest.raises(InputError, match=r"--backend must be one of \['ray', 'local'\], got 'plain'"):
        RunOptions(data="d", out="o", backend="plain")


def test_a_setting_runs_every_stage_in_order_and_a_rerun_skips_it(small, tmp_path: Path) -> None:
    setting, data, calls_file = small
    out = tmp_path / "exp"
    opts = RunOptions(data=str(data), out=str(out), seeds=(0, 1), backend="local", parallel=3)
    assert run_setting(setting, opts) == 0
    calls = _calls(calls_file)
    for seed in (0, 1):
        # Arms wait for the arm they start from, and the pseudo-label arms for the run that predicts them.
        assert _time(calls, "train", f"aide_pre_s{seed}", "start") > _time(calls, "train", f"sup_full_s{seed}", "end")
        for arm in ("aide_lq", "sup_lq"):
            assert _time(calls, "train", f"{arm}_s{seed}", "start") > _time(calls, "predict", f"hq_s{seed}", "end")
        for arm in setting.arm_names:
            assert (out / "eval" / f"{arm}_s{seed}" / "per_case.csv").is_file()
            for stage in ("train", "predict", "evaluate"):
                assert json.loads((out / "timing" / f"{stage}_{arm}_s{seed}.json").read_text())["rc"] == 0
            assert (out / "timing" / f"figures_{arm}_s{seed}.json").is_file() == arm.startswith("aide")
        assert (out / "data" / f"shards_pseudo_s{seed}" / "dataset.json").is_file()
        assert (out / "timing" / f"pseudo_hq_s{seed}.json").is_file()
        assert (out / "logs" / f"pseudo_s{seed}.log").is_file()
    pseudo = [c for c in calls if c["stage"] == "predict" and c.get("split") == "train"]
    assert len(pseudo) == 2  # one pseudo-label prediction per seed, shared by its two arms
    train = next(c["argv"] for c in calls if c["stage"] == "train" and c["run"] == "aide_pre_s1")
    assert train[:5] == ["train", "--backend", "local", "--config", str(out.resolve() / "configs" / "aide_pre.yaml")]
    assert f"model.init_from={out.resolve() / 'train' / 'sup_full_s1'}" in train and "seed=1" in train
    assert yaml.safe_load((out / "configs" / "aide_pre.yaml").read_text()) == setting.arm_config("aide_pre")
    info = json.loads((out / "experiment.json").read_text())
    assert info["command"].endswith(f" --out {out} --seeds 0 1 --backend local")
    assert info["arms"] == setting.arm_names and info["backend"] == "local" and info["seeds"] == [0, 1]
    assert info["size_note"] == "16 x 16 inputs (resampled to spacing 2 px)"
    assert "HQ labels kept for" in info["data_note"] and "`hq` model" in info["data_note"]

    # A rerun finds every arm evaluated and runs nothing; another seed adds to experiment.json.
    assert run_setting(setting, opts) == 0
    assert len(_calls(calls_file)) == len(calls)
    assert run_setting(setting, RunOptions(data=str(data), out=str(out), seeds=(2,), arms=("hq",))) == 0
    assert json.loads((out / "experiment.json").read_text())["seeds"] == [0, 1, 2]


def test_a_failed_run_skips_the_arms_that_need_it(small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setting, data, calls_file = small
    monkeypatch.setenv("FAKE_FAIL", "hq_s0,sup_full_s0")
    out = tmp_path / "exp"
    assert run_setting(setting, RunOptions(data=str(data), out=str(out), parallel=2)) == 1
    calls = _calls(calls_file)
    assert not any(c["stage"] == "train" and c["run"] in ("aide_lq_s0", "sup_lq_s0") for c in calls)  # no labels
    assert json.loads((out / "timing" / "train_hq_s0.json").read_text())["rc"] == 1
    # An arm whose init run failed still starts once that run is over (the real CLI then fails on init_from).
    assert _time(calls, "train", "aide_pre_s0", "start") > _time(calls, "train", "sup_full_s0", "fail")

    # Once the failure is gone, a rerun does only what is missing: a finished training is not redone.
    monkeypatch.delenv("FAKE_FAIL")
    (out / "eval" / "aide_pre_s0" / "per_case.csv").unlink()
    assert run_setting(setting, RunOptions(data=str(data), out=str(out))) == 0
    rerun = _calls(calls_file)[len(calls):]
    trained = [c["run"] for c in rerun if c["stage"] == "train" and c["event"] == "start"]
    assert sorted(trained) == ["aide_lq_s0", "hq_s0", "sup_full_s0", "sup_lq_s0"]
    assert any(c["stage"] == "evaluate" and c["run"] == "aide_pre_s0" for c in rerun)


def test_the_script_parses_a_setting_and_reports_errors(tmp_path: Path, capsys) -> None:
    run = load_run_script()
    assert "10% HQ labels" in run.build_parser().format_help()  # a % in a title must not break --help
    args = run.build_parser().parse_args(["noisy", "--data", "d", "--out", "o", "--backend", "local", "--seeds",
                                          "0", "1", "--set", "epochs=2", "aide:aide.ramp_epochs=2", "--full"])
    assert run.options(args) == RunOptions(data="d", out="o", seeds=(0, 1), full=True, backend="local",
                                           overrides=("epochs=2", "aide:aide.ramp_epochs=2"))
    for bad in (["--arms", "nope"], ["--engine", "plain"], ["--backend", "plain"]):
        with pytest.raises(SystemExit):
            run.build_parser().parse_args(["noisy", "--data", "d", "--out", "o", *bad])
    assert run.main(["noisy", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "nope:epochs=2"]) == 2
    assert "run.py: error: setting 'noisy' has no arm 'nope'" in capsys.readouterr().err


def test_report_pages_put_their_own_text_around_the_tables(tmp_path: Path, capsys) -> None:
    """`report --page benchmark` writes the benchmark's preamble (with the command that regenerates the page);
    the default page keeps the paper settings' text. An unfinished folder is reported as not run."""
    run = load_run_script()
    exp = tmp_path / "exp_benchmark"
    exp.mkdir()
    for page, title in (("benchmark", "# Results of the noisy-label benchmark"), ("results", "# Results of the three"),
                        ("recipe", "# Results of the three AIDE settings with the new recipe")):
        out = tmp_path / f"{page}.md"
        assert run.main(["report", str(exp), "--out", str(out), "--page", page]) == 0
        text = out.read_text()
        assert text.startswith(title), page
        assert f"report {exp} --out {out}" in text and (f"--page {page}" in text) == (page != "results")
        assert f"Not run: `{exp}` holds no `experiment.json`" in text
    with pytest.raises(SystemExit):
        run.build_parser().parse_args(["report", str(exp), "--page", "nope"])


def test_the_scribble_page_tests_every_method_against_pce(tmp_path: Path) -> None:
    """`report --page scribbles`: the scribble preamble, Dice/ASSD/HD95 per arm, paired tests against pCE
    (per rater on QUBIQ)."""
    run = load_run_script()
    exp = tmp_path / "exp_scribbles_qubiq"
    arms = ["supervised_full", "pce", "tv", "aide"]
    write_experiment(exp, "scribbles_qubiq", [0, 1], arms)
    base = np.array([0.70, 0.75, 0.72, 0.80, 0.78, 0.74])
    for i, arm in enumerate(arms):
        for seed in (0, 1):
            write_eval(exp, arm, seed, base + 0.02 * i + 0.01 * seed, annotators=["rater1", "rater2"])
    out = tmp_path / "results_scribbles.md"
    assert run.main(["report", str(exp), "--out", str(out), "--page", "scribbles"]) == 0
    text = out.read_text()
    assert text.startswith("# Results of the scribble comparison") and "--page scribbles" in text
    assert "## Scribbles 2: weakly supervised segmentation from scribbles (QUBIQ brain growth)" in text
    assert "| arm | Dice | ASSD (px) | HD95 (px) |" in text and "| pCE (baseline) | 0.773 ± 0.035 |" in text
    for title in ("pCE + total variation", "AIDE, scribbles", "supervised, rater 1's full masks (upper bound)"):
        assert f"| {title} | pCE (baseline) |" in text  # arm A against pCE
    assert "| arm A | arm B | p rater1 | p rater2 |" in text
    assert "## How to read these tables" in text
