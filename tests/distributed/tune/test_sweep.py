"""Tests of aide_ray.distributed.tune.sweep: a trial's config, the CLI's early refusals, and one real sweep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from aide_ray.cli.main import main
from aide_ray.config import Config, demo_config, load_config
from aide_ray.data.demo import make_demo_data
from aide_ray.data.ingest import ingest
from aide_ray.data.preprocess import Preprocessing
from aide_ray.distributed.tune.space import parse_space
from aide_ray.distributed.tune.sweep import run_sweep, trial_config


def test_trial_config_applies_numpy_params():
    cfg = trial_config(Config(), {"aide.warmup_epochs": np.int64(7), "aide.temperature": np.float64(0.25)},
                       name="sweep-abc_00001", storage_path="/tmp/s/trials", shards="/data/shards")
    aide = cfg.options_of("aide")
    assert (aide.warmup_epochs, aide.temperature) == (7, 0.25)
    assert type(aide.warmup_epochs) is int
    assert (cfg.run.name, cfg.run.storage_path, cfg.data.shards) == ("sweep-abc_00001", "/tmp/s/trials", "/data/shards")


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


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune-data")
    manifest = make_demo_data(root / "raw", cases=4, slices=4, size=32)
    return ingest(manifest, root / "shards", Preprocessing(target_spacing=None, size=32, normalize="zscore"))


@pytest.mark.ray
@pytest.mark.slow
def test_two_trial_sweep(ray_cluster, tiny_shards, tmp_path):
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
    aide = best.options_of("aide")
    assert aide.update_ratio == pytest.approx(table["aide.update_ratio"].iloc[0])
    assert aide.warmup_epochs == table["aide.warmup_epochs"].iloc[0]
    assert best.run.name == "" and best.epochs == 2 and best.model.base_width == 4
    assert best == cfg.replace(**{"aide.update_ratio": aide.update_ratio,
                                  "aide.warmup_epochs": aide.warmup_epochs, "run.name": ""})
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
