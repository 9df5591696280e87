"""Tests of aide_ray.engine.tune: search-space parsing, the scheduling rules, the outputs, and one real sweep."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from aide_ray.cli.main import main
from aide_ray.config import Config, demo_config, load_config
from aide_ray.engine.tune import (
    DEFAULT_SPACE,
    best_config,
    check_search,
    default_space,
    grace_period,
    load_space,
    make_scheduler,
    max_concurrent_trials,
    parse_space,
    resources_per_trial,
    results_table,
    trial_config,
    tune_param_space,
    write_outputs,
)
from aide_ray.exceptions import ConfigError

REPO = Path(__file__).resolve().parents[2]
HAS_OPTUNA = importlib.util.find_spec("optuna") is not None


# --------------------------------------------------------------------------- space parsing

def test_default_space_file_matches_default_space():
    assert load_space(REPO / "jobs/configs/space.default.yaml", Config()) == default_space()
    space = default_space()
    assert list(space) == list(DEFAULT_SPACE)
    assert space["aide.update_ratio"].values == (0.05, 0.5)
    assert space["aide.temperature"].values == (0.1, 1.0)
    # randint's upper bound is excluded: warm-up 5 ... 30.
    assert space["aide.warmup_epochs"].candidates() == (5, 30)
    assert space["aide.consistency_weight"].values == (1.0, 20.0)


def test_kuberay_tune_config_and_default_space_load_together():
    cfg = load_config(REPO / "jobs/configs/kuberay_tune.yaml")
    load_space(REPO / "jobs/configs/space.default.yaml", cfg)


@pytest.mark.parametrize("raw, match", [
    ({"aide.update_rato": {"uniform": [0.1, 0.2]}},
     r"unknown config key 'aide.update_rato'.*did you mean 'aide.update_ratio'"),
    ({"epochs": {"randint": [2, 5]}}, r"epochs cannot be swept: it is the ASHA budget"),
    ({"run.name": {"choice": ["a", "b"]}}, r"run.name cannot be swept"),
    ({"aide.temperature": {"unifrom": [0.1, 0.2]}},
     r"aide.temperature: distribution must be one of .*did you mean 'uniform'"),
    ({"aide.temperature": [0.1, 0.2]}, r"aide.temperature must be one distribution"),
    ({"aide.temperature": {"uniform": [0.5, 0.1]}}, r"aide.temperature: uniform must be \[lo, hi\] with lo < hi"),
    ({"aide.temperature": {"uniform": [0.1]}}, r"aide.temperature: uniform must be \[lo, hi\] with two finite numbers"),
    ({"aide.temperature": {"loguniform": [0.0, 1.0]}}, r"aide.temperature: loguniform needs 0 < lo < hi"),
    ({"aide.warmup_epochs": {"uniform": [1, 5]}}, r"aide.warmup_epochs is an integer setting; use randint"),
    ({"aide.warmup_epochs": {"randint": [1.5, 5]}}, r"aide.warmup_epochs: randint bounds must be integers"),
    ({"aide.correct_hq": {"uniform": [0, 1]}}, r"aide.correct_hq is a bool setting; use choice or grid"),
    ({"aide.update_ratio": {"uniform": [0.0, 0.5]}},
     r"aide.update_ratio: uniform .* rejects: aide.update_ratio must be in \(0, 1\], got 0.0"),
    ({"aide.warmup_epochs": {"choice": [3, -1]}},
     r"aide.warmup_epochs: choice .* rejects: aide.warmup_epochs must be in \[0, inf[\])], got -1"),
    ({"aide.correct_hq": {"grid": [True, "maybe"]}}, r"aide.correct_hq: grid .* must be true or false"),
    ({"aide.temperature": {"choice": []}}, r"aide.temperature: choice must list at least one value"),
    ({"aide.temperature": {"grid": [0.5, 0.5]}}, r"aide.temperature: grid values must be distinct"),
    ({}, r"must be a non-empty mapping"),
])
def test_parse_space_rejects_naming_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_space(raw, Config())


def test_parse_space_checks_values_against_the_base_config(tmp_path):
    # method 'supervised' is a valid value; 'aid' is not, and the message says which key.
    space = parse_space({"method": {"choice": ["aide", "supervised"]}}, Config())
    assert space["method"].values == ("aide", "supervised")
    path = tmp_path / "space.yaml"
    path.write_text("method: {choice: [aide, aid]}\n")
    with pytest.raises(ConfigError, match=rf"{path}: method: choice .*did you mean 'aide'"):
        load_space(path, Config())
    path.write_text("aide.temperature: {uniform: [0.1, 0.2]\n")
    with pytest.raises(ConfigError, match=rf"search space file {path} is not valid YAML"):
        load_space(path, Config())
    with pytest.raises(ConfigError, match="does not exist"):
        load_space(tmp_path / "missing.yaml", Config())


def test_tune_param_space_grid_only_under_grid_search():
    from ray.tune.search.sample import Categorical, Float, Integer

    space = parse_space({"aide.temperature": {"grid": [0.3, 0.6]}, "aide.update_ratio": {"loguniform": [0.05, 0.5]},
                         "aide.warmup_epochs": {"randint": [0, 3]}}, Config())
    grid = tune_param_space(space, "grid")
    assert grid["aide.temperature"] == {"grid_search": [0.3, 0.6]}
    assert isinstance(grid["aide.update_ratio"], Float)
    assert isinstance(grid["aide.warmup_epochs"], Integer)
    assert (grid["aide.warmup_epochs"].lower, grid["aide.warmup_epochs"].upper) == (0, 3)
    random = tune_param_space(space, "random")
    assert isinstance(random["aide.temperature"], Categorical)
    assert random["aide.temperature"].categories == [0.3, 0.6]


def test_check_search():
    space = default_space()
    with pytest.raises(ConfigError, match=r"--search grid needs at least one '\{grid: \[...\]\}' entry"):
        check_search("grid", space, 1)
    with pytest.raises(ConfigError, match="--search must be one of"):
        check_search("bayes", space, 1)
    with pytest.raises(ConfigError, match="--num-samples must be >= 1, got 0"):
        check_search("random", space, 0)
    check_search("random", space, 3)


@pytest.mark.skipif(HAS_OPTUNA, reason="optuna is installed")
def test_optuna_missing_names_the_install_command():
    with pytest.raises(ConfigError, match=r"optuna package.*pip install optuna .*pip install -e '\.\[tune\]'"):
        check_search("optuna", default_space(), 4)


@pytest.mark.skipif(not HAS_OPTUNA, reason="optuna is not installed (pip install -e '.[tune]')")
def test_optuna_search_samples_inside_the_space():
    from ray.tune.search.optuna import OptunaSearch

    space = default_space()
    check_search("optuna", space, 4)
    searcher = OptunaSearch(seed=0)
    assert searcher.set_search_properties("val_dice", "max", tune_param_space(space, "optuna"))
    params = searcher.suggest("trial-1")
    assert 0.05 <= params["aide.update_ratio"] <= 0.5
    assert 5 <= params["aide.warmup_epochs"] <= 30
    trial_config(Config(), params, name="t", storage_path="/tmp", shards="/tmp/shards")


# --------------------------------------------------------------------------- scheduling rules

def test_grace_period_covers_the_largest_warmup():
    cfg = Config()  # aide, warm-up 20
    assert grace_period(default_space(), cfg) == 31  # randint [5, 31]: largest warm-up 30
    assert grace_period(parse_space({"aide.warmup_epochs": {"choice": [3, 12, 7]}}, cfg), cfg) == 13
    assert grace_period(parse_space({"aide.warmup_epochs": {"grid": [0]}}, cfg), cfg) == 1
    # Warm-up not swept: the config's.
    assert grace_period(parse_space({"aide.temperature": {"uniform": [0.1, 1.0]}}, cfg), cfg) == 21
    # A method without label correction has no warm-up to wait for.
    supervised = cfg.replace(method="supervised")
    assert grace_period(default_space(), supervised) == 1
    # ... unless a method that corrects labels is among the swept ones.
    both = parse_space({"method": {"choice": ["supervised", "aide"]}}, supervised)
    assert grace_period(both, supervised) == 21


def test_make_scheduler_asha_after_the_warmup_else_fifo():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    cfg = Config(epochs=40)
    asha, text = make_scheduler(default_space(), cfg, "val_dice")
    assert isinstance(asha, ASHAScheduler)
    assert (asha._time_attr, asha._max_t, asha._stop_last_trials) == ("training_iteration", 40, False)
    assert asha._brackets[0]._rungs[-1][0] == 31  # first milestone: grace period 31
    assert text == "ASHA on val_dice: grace period 31 epochs, max_t 40, reduction factor 4"
    fifo, text = make_scheduler(default_space(), cfg.replace(epochs=31), "train_dice")
    assert isinstance(fifo, FIFOScheduler) and not isinstance(fifo, ASHAScheduler)
    assert text.startswith("no early stopping: the grace period (31 epochs")


def test_max_concurrent_trials_from_cluster_resources():
    one = Config(workers=1)
    # 1 worker CPU + driver 0.1 + 1 CPU for Ray Data = 2.1 per trial.
    assert resources_per_trial(one) == {"CPU": pytest.approx(2.1)}
    assert max_concurrent_trials(one, {"CPU": 4.0}) == 1
    assert max_concurrent_trials(one, {"CPU": 4.2}) == 2
    assert max_concurrent_trials(Config(workers=2, cpus_per_worker=2.0), {"CPU": 32.0}) == 6
    assert max_concurrent_trials(one, {"CPU": 1.0}) == 1  # at least one
    assert max_concurrent_trials(one, {}) == 1
    gpu = Config(workers=2, use_gpu=True, cpus_per_worker=4.0)
    assert resources_per_trial(gpu)["GPU"] == 2.0
    assert max_concurrent_trials(gpu, {"CPU": 64.0, "GPU": 5.0}) == 2
    assert max_concurrent_trials(gpu, {"CPU": 64.0}) == 1


def test_trial_config_applies_numpy_params():
    cfg = trial_config(Config(), {"aide.warmup_epochs": np.int64(7), "aide.temperature": np.float64(0.25)},
                       name="sweep-abc_00001", storage_path="/tmp/s/trials", shards="/data/shards")
    assert (cfg.aide.warmup_epochs, cfg.aide.temperature) == (7, 0.25)
    assert type(cfg.aide.warmup_epochs) is int
    assert (cfg.run.name, cfg.run.storage_path, cfg.data.shards) == ("sweep-abc_00001", "/tmp/s/trials", "/data/shards")


# --------------------------------------------------------------------------- outputs (real Tune Result objects)

def _result(path: str, config: dict | None, dice: list[float], error: Exception | None = None):
    from ray.tune import Result

    history = pd.DataFrame({"epoch": range(len(dice)), "val_dice": dice, "training_iteration": range(1, len(dice) + 1)})
    metrics = dict(history.iloc[-1], trial_id=Path(path).name.removeprefix("trial-"), config=config) if dice else {}
    return Result(metrics=metrics, checkpoint=None, error=error, path=path,
                  metrics_dataframe=history if dice else None)


def test_results_table_best_config_and_outputs(tmp_path):
    space = parse_space({"aide.temperature": {"uniform": [0.1, 1.0]}, "aide.warmup_epochs": {"choice": [0, 2]}},
                        Config())
    results = [
        _result("/s/trial-a_00000", {"aide.temperature": 0.2, "aide.warmup_epochs": 0}, [0.5, 0.6, 0.55]),
        _result("/s/trial-a_00001", {"aide.temperature": 0.7, "aide.warmup_epochs": np.int64(2)}, [0.4, 0.7, 0.65]),
        _result("/s/trial-a_00002", {"aide.temperature": 0.9, "aide.warmup_epochs": 0}, [0.3]),
        _result("/s/trial-a_00003", None, [], error=RuntimeError("worker died\nOOM in epoch 0")),
    ]
    configs = {"/s/trial-a_00003": {"aide.temperature": 0.5, "aide.warmup_epochs": 2}}
    table = results_table(results, space, "val_dice", epochs=3, configs=configs)
    assert list(table["trial_id"]) == ["a_00001", "a_00000", "a_00002", "a_00003"]
    assert list(table["best_val_dice"][:3]) == [0.7, 0.6, 0.3]
    assert math.isnan(table["best_val_dice"].iloc[3])
    assert list(table["final_val_dice"][:3]) == [0.65, 0.55, 0.3]
    assert list(table["epochs"]) == [3, 3, 1, 0]
    assert list(table["status"]) == ["completed", "completed", "stopped early", "error"]
    assert table["error"].iloc[3] == "OOM in epoch 0"
    assert table["aide.temperature"].iloc[3] == 0.5  # from the experiment's configs

    best = best_config(Config().replace(**{"run.name": "sweep"}), table, space, "val_dice")
    assert (best.aide.temperature, best.aide.warmup_epochs, best.run.name) == (0.7, 2, "")

    out = tmp_path / "out"
    write_outputs(out, table, best, space, "val_dice")
    assert load_config(out / "best_config.yaml") == best
    assert pd.read_csv(out / "results.csv")["trial_id"].tolist() == list(table["trial_id"])
    for key in space:
        png = out / f"metric_vs_{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    failed = results_table(results[3:], space, "val_dice", epochs=3, configs=configs)
    with pytest.raises(ConfigError, match="no trial of the sweep reported 'val_dice'; trial errors: OOM in epoch 0"):
        best_config(Config(), failed, space, "val_dice")


def test_cli_rejects_a_bad_space_before_any_ray_work(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"aide.temprature": {"uniform": [0.1, 0.5]}}))
    assert main(["tune", "--space", str(space), f"run.storage_path={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "aide-ray tune: error: unknown config key 'aide.temprature'" in err
    assert "did you mean 'aide.temperature'" in err
    assert main(["tune", "--search", "grid", f"run.storage_path={tmp_path}"]) == 2
    assert "--search grid needs at least one" in capsys.readouterr().err
    assert main(["tune", "aide.temperature=0"]) == 2
    assert "error: aide.temperature must be in (0, inf" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [space]  # nothing written


# --------------------------------------------------------------------------- a real sweep

@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    from aide_ray.data.demo import make_demo_data
    from aide_ray.data.ingest import ingest
    from aide_ray.data.preprocess import Preprocessing

    root = tmp_path_factory.mktemp("tune-data")
    manifest = make_demo_data(root / "raw", cases=4, slices=4, size=32)
    return ingest(manifest, root / "shards", Preprocessing(target_spacing=None, size=32, normalize="zscore"))


@pytest.mark.ray
@pytest.mark.slow
def test_two_trial_sweep(ray_cluster, tiny_shards, tmp_path):
    from aide_ray.engine.tune import run_sweep

    cfg = demo_config(["epochs=2", "workers=1", "model.base_width=4", "batch_size=4", "aide.ramp_epochs=1",
                       "aide.update_every=1", f"data.shards={tiny_shards}", f"run.storage_path={tmp_path / 'runs'}",
                       "run.name=sweep"])
    # Two grid points; grace period 2 == epochs, so no trial is stopped early: a trial Tune stops
    # relies on Ray Train's PlacementGroupCleaner, which cannot reach the state API when several
    # local Ray instances share a machine (as on CI runners), and would leak its worker's CPU
    # into the later tests of the session.
    space = parse_space({"aide.update_ratio": {"uniform": [0.1, 0.5]}, "aide.warmup_epochs": {"grid": [0, 1]}},
                        cfg)
    outcome = run_sweep(cfg, space, num_samples=1, search="grid", max_concurrent=1)

    sweep = tmp_path / "runs" / "sweep-tune"
    assert outcome.out_dir == sweep and outcome.metric == "val_dice"  # the demo data has a validation split
    table = pd.read_csv(sweep / "results.csv")
    assert len(table) == 2
    assert (table["status"] != "error").all(), table["error"].tolist()
    assert table["best_val_dice"].is_monotonic_decreasing
    assert table["best_val_dice"].between(0.0, 1.0).all()
    assert (table["epochs"] == 2).all() and (table["status"] == "completed").all()
    assert table["aide.update_ratio"].between(0.1, 0.5).all()
    assert sorted(table["aide.warmup_epochs"]) == [0, 1]

    best = load_config(sweep / "best_config.yaml")
    assert best.aide.update_ratio == pytest.approx(table["aide.update_ratio"].iloc[0])
    assert best.aide.warmup_epochs == table["aide.warmup_epochs"].iloc[0]
    assert best.run.name == "" and best.epochs == 2 and best.model.base_width == 4
    assert best == cfg.replace(**{"aide.update_ratio": best.aide.update_ratio,
                                  "aide.warmup_epochs": best.aide.warmup_epochs, "run.name": ""})
    # Every trial released its workers' resources (no placement group left behind).
    assert ray_cluster.available_resources()["CPU"] == pytest.approx(ray_cluster.cluster_resources()["CPU"])
    for key in space:
        assert (sweep / f"metric_vs_{key}.png").stat().st_size > 0
    # Each trial trained as an ordinary Ray Train run under the sweep folder.
    runs = sorted(p.name for p in (sweep / "trials").iterdir() if p.is_dir())
    assert runs == sorted(f"sweep-{t}" for t in table["trial_id"])
    # A second sweep of the same name does not overwrite the first.
    with pytest.raises(FileExistsError, match="sweep folder .*sweep-tune already exists"):
        run_sweep(cfg, space, num_samples=1)
