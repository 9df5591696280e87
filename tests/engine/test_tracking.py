"""Tracking: a Tracker's epochs read back from the TensorBoard event files and the MLflow file store.

The read-back tests need the extra (``pip install aide_ray[tracking]``; ``make test`` installs
it) and are skipped without it; the config checks and tags run everywhere.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from aide_ray.config import load_config
from aide_ray.engine.tracking import RUN_DIR_TAG, Tracker, metric_tag, prepare_sweep_tracking
from aide_ray.exceptions import ConfigError

NETS = ("net1", "net2")
ON = ["tracking.tensorboard=true", "tracking.mlflow=true", "run.name=demo"]


def _row(epoch: int) -> dict:
    """A metrics row of an AIDE epoch, as engine/epoch.py writes it."""
    return {"epoch": epoch, "loss": 1.0 - 0.25 * epoch, "loss_net1": 0.5, "loss_net2": 0.5, "ramp": 0.1 * epoch,
            "selected_fraction": 0.5, "train_dice_net1": 0.6 + 0.1 * epoch, "train_dice_net2": 0.6,
            "train_dice": 0.6, "twin_dice": 0.9, "val_dice": float("nan"), "relabelled_net1": 3 * epoch,
            "selected_net1": 4, "corrected_net1": 5 * epoch, "relabelled_net2": 2, "selected_net2": 4,
            "corrected_net2": 2, "label_update": epoch == 1, "label_version_at_start": epoch,
            "rows_with_corrected_label": 7 * epoch, "seconds": 1.5, "train_seconds": 1.0, "data_wait_seconds": 0.1,
            "slices_per_s": 12.0, "lr": 1e-3, "phase": 0}


def _panels(n: int = 2) -> dict:
    rng = np.random.default_rng(0)
    mask = np.zeros((n, 32, 32), np.uint8)
    mask[:, 8:20, 6:26] = 1
    return {"image": rng.normal(size=(n, 1, 32, 32)).astype(np.float32), "clean": mask,
            "has_clean": np.ones(n, bool), "noisy": np.roll(mask, 3, axis=1), "net1": mask, "net2": mask,
            "sample_id": np.array([f"case{i}_s000" for i in range(n)]), "sample_index": np.arange(n)}


def _scalars(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[str]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}, acc.Tags()


@pytest.fixture
def tracking_packages():
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")


def _client(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=str(store))


def test_a_tracker_logs_two_epochs_to_tensorboard_and_mlflow(tracking_packages, tmp_path):
    run_dir = tmp_path / "demo"
    cfg = load_config(None, ON)
    with Tracker(cfg, run_dir) as tracker:
        assert tracker.active and not tracker.wants_panels(0)  # panels_every=0: the loop keeps the last epoch's
        tracker.log_epoch(_row(0))
        tracker.log_epoch(_row(1), _panels())

    scalars, tags = _scalars(run_dir / "tensorboard")
    assert scalars["loss/loss"] == [(0, 1.0), (1, 0.75)]
    assert scalars["labels/relabelled_net1"] == [(0, 0.0), (1, 3.0)]
    assert scalars["labels/corrected_net1"] == [(0, 0.0), (1, 5.0)]
    assert scalars["labels/label_update"] == [(0, 0.0), (1, 1.0)]
    assert [v for _, v in scalars["dice/train_dice_net1"]] == pytest.approx([0.6, 0.7])
    assert "dice/val_dice" not in scalars  # NaN (no validation split) is left out
    assert tags["images"] == ["labels/corrections"] and "config/text_summary" in tags["tensors"]

    client = _client(run_dir / "mlruns")
    experiment = client.get_experiment_by_name("aide_ray")
    (run,) = client.search_runs([experiment.experiment_id])
    assert (run.info.run_name, run.info.status, run.data.tags[RUN_DIR_TAG]) == ("demo", "FINISHED", str(run_dir))
    history = client.get_metric_history(run.info.run_id, "labels/relabelled_net1")
    assert [(m.step, m.value) for m in history] == [(0, 0.0), (1, 3.0)]
    assert run.data.metrics["loss/loss"] == 0.75
    assert run.data.params["method"] == "aide" and run.data.params["run.name"] == "demo"
    assert "aide.temperature" in run.data.params and "gce.q" not in run.data.params  # the chosen method's only
    (artifact,) = client.list_artifacts(run.info.run_id, "corrections")
    assert artifact.path == "corrections/corrections_epoch001.png"


def test_a_resumed_run_continues_its_mlflow_run_and_replaces_repeated_steps(tracking_packages, tmp_path):
    run_dir = tmp_path / "demo"
    cfg = load_config(None, ON)
    with Tracker(cfg, run_dir) as tracker:
        tracker.log_epoch(_row(0))
        tracker.log_epoch(_row(1))
    with Tracker(cfg, run_dir, start_epoch=1) as tracker:  # epoch 1 again, then 2
        tracker.log_epoch({**_row(1), "loss": 0.5})
        tracker.log_epoch(_row(2))
    scalars, _ = _scalars(run_dir / "tensorboard")
    assert scalars["loss/loss"] == [(0, 1.0), (1, 0.5), (2, 0.5)]
    client = _client(run_dir / "mlruns")
    (run,) = client.search_runs([client.get_experiment_by_name("aide_ray").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/loss")] == [0, 1, 1, 2]


def test_panels_every_n_epochs(tracking_packages, tmp_path):
    tracker = Tracker(load_config(None, ["tracking.tensorboard=true", "tracking.panels_every=2"]), tmp_path)
    assert [tracker.wants_panels(e) for e in range(4)] == [False, True, False, True]
    tracker.close()
    tracker.close()  # idempotent


def test_a_sweeps_trials_share_one_experiment_and_store(tracking_packages, tmp_path):
    sweep_dir = tmp_path / "s-tune"
    cfg = prepare_sweep_tracking(load_config(None, ["tracking.mlflow=true"]), sweep_dir, "s")
    assert (cfg.tracking.experiment, cfg.tracking.mlflow_uri) == ("s", str(sweep_dir / "mlruns"))
    for trial in ("s-a", "s-b"):
        with Tracker(cfg.replace(**{"run.name": trial}), tmp_path / "trials" / trial) as tracker:
            tracker.log_epoch(_row(0))
    client = _client(sweep_dir / "mlruns")
    runs = client.search_runs([client.get_experiment_by_name("s").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["s-a", "s-b"]
    assert not (tmp_path / "trials" / "s-a" / "mlruns").exists()


def test_other_ranks_and_a_run_without_tracking_log_nothing(tmp_path):
    for tracker in (Tracker(load_config(None, ON), None), Tracker(load_config(None, []), tmp_path)):
        assert not tracker.active and not tracker.wants_panels(0)
        tracker.log_epoch(_row(0), _panels())
        tracker.close()
    assert list(tmp_path.iterdir()) == []


def test_metric_tags_group_the_columns():
    tags = {name: metric_tag(name, NETS) for name in _row(0)}
    assert {n for n, t in tags.items() if t.startswith("labels/")} == {
        "relabelled_net1", "relabelled_net2", "selected_net1", "selected_net2", "corrected_net1", "corrected_net2",
        "label_update", "label_version_at_start", "rows_with_corrected_label"}
    assert tags["selected_fraction"] == "method/selected_fraction"  # AIDE's small-loss share, a step term
    assert (tags["twin_dice"], tags["loss_net1"], tags["slices_per_s"], tags["lr"]) == (
        "dice/twin_dice", "loss/loss_net1", "time/slices_per_s", "optim/lr")


@pytest.mark.parametrize("overrides, message", [
    (["tracking.mlflow_uri=mlruns"], r"tracking.mlflow_uri must be an MLflow tracking URI .* or an absolute path"),
    (["tracking.tensorboard=true", "run.storage_path=s3://bucket/runs"],
     r"tracking.tensorboard must be false when run.storage_path is object storage"),
    (["tracking.mlflow=true", "run.storage_path=s3://bucket/runs"],
     r"tracking.mlflow_uri must be a tracking server or database URI when run.storage_path is object storage"),
    (["tracking.panels_every=-1"], r"tracking.panels_every must be in \[0, inf\), got -1"),
    (["tracking.tensorbaord=true"], r"did you mean 'tracking.tensorboard'"),
])
def test_tracking_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_server_uri_is_accepted_with_object_storage():
    cfg = load_config(None, ["tracking.mlflow=true", "tracking.mlflow_uri=http://127.0.0.1:5000",
                             "run.storage_path=s3://bucket/runs"])
    assert cfg.tracking.mlflow_uri == "http://127.0.0.1:5000"


def test_a_missing_package_fails_before_training(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    cfg = load_config(None, ["tracking.mlflow=true"])  # loads: predicting from its checkpoint needs no MLflow
    with pytest.raises(ConfigError, match=r"^tracking.mlflow=true needs mlflow: pip install aide_ray\[tracking\]$"):
        cfg.tracking.check_packages()
    with pytest.raises(ConfigError, match=r"needs mlflow"):
        Tracker(cfg, tmp_path)
