"""Tests of aide_ray.distributed.tune.report: the results table, the best config and the written outputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ray.tune import Result

from aide_ray.config import Config, load_config
from aide_ray.distributed.tune.report import best_config, results_table, summary_text, write_outputs
from aide_ray.distributed.tune.space import parse_space
from aide_ray.exceptions import ConfigError


def _result(path: str, config: dict | None, dice: list[float], error: Exception | None = None) -> Result:
    """A real Tune ``Result`` with a per-epoch ``val_dice`` history."""
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
    assert "error" not in summary_text(table).splitlines()[0]

    best = best_config(Config().replace(**{"run.name": "sweep"}), table, space, "val_dice")
    aide = best.options_of("aide")
    assert (aide.temperature, aide.warmup_epochs, best.run.name) == (0.7, 2, "")

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


def test_plot_of_a_choice_key(tmp_path):
    # String choices are drawn at category positions, not as numbers.
    space = parse_space({"method": {"choice": ["aide", "supervised"]}}, Config())
    results = [_result("/s/trial-b_00000", {"method": "supervised"}, [0.4]),
               _result("/s/trial-b_00001", {"method": "aide"}, [0.5])]
    table = results_table(results, space, "val_dice", epochs=1)
    assert list(table["method"]) == ["aide", "supervised"]
    write_outputs(tmp_path, table, best_config(Config(), table, space, "val_dice"), space, "val_dice")
    assert (tmp_path / "metric_vs_method.png").read_bytes()[:4] == b"\x89PNG"
