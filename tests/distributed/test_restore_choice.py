"""Which checkpoint a Ray Train worker group restores when it (re)starts (no Ray cluster needed).

Ray Train registers a checkpoint only once every worker's report of that epoch reached its
controller; a worker lost just after an epoch takes its report along, and Ray then hands the
restarted group the checkpoint before (or none). The run folder still holds the newer one:
the multi-node test lost a node that way and retrained epoch 0 from scratch before the
backend also looked there.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import ray.train
from ray.train import Checkpoint

from aide_ray.config import load_config
from aide_ray.distributed.backend import RayBackend
from aide_ray.engine.local import train_local
from aide_ray.exceptions import CheckpointError
from aide_ray.runs.folder import STATE_FILE, checkpoint_dirs


@pytest.fixture(scope="module")
def two_checkpoints(tiny_shards, tmp_path_factory) -> tuple[Path, Path, Path]:
    storage = tmp_path_factory.mktemp("restore")
    run = train_local(load_config(None, [f"data.shards={tiny_shards}", f"run.storage_path={storage}", "run.name=r",
                                         "method=supervised", "epochs=2", "batch_size=4", "model.base_width=4"]))
    older, newer = map(Path, checkpoint_dirs(run.run_dir))
    return run.run_dir, older, newer


def _backend(run_dir: Path, restore_from: Path | None = None) -> RayBackend:
    """Rank 0 of one worker, as far as choosing a checkpoint goes."""
    backend = object.__new__(RayBackend)
    backend.rank, backend.world_size = 0, 1
    backend._restore_from, backend._run_dir = restore_from and str(restore_from), str(run_dir)
    backend.labels = mock.Mock()
    return backend


def _restored(backend: RayBackend) -> Path | None:
    with backend.checkpoint_to_restore() as folder:
        return None if folder is None else Path(folder)


def test_a_restart_restores_the_newest_checkpoint_of_the_run_folder(two_checkpoints, monkeypatch, capsys, tmp_path):
    run_dir, older, newer = two_checkpoints
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: Checkpoint(str(older)))  # Ray registered the older
    assert _restored(_backend(run_dir)) == newer
    assert f"Restoring {newer.name}, the run folder's newest checkpoint" in capsys.readouterr().out

    # Ray's own newest when it is the folder's newest too (nothing printed), and a resume's choice.
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: Checkpoint(str(newer)))
    assert _restored(_backend(run_dir)) == newer and capsys.readouterr().out == ""
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    assert _restored(_backend(run_dir, restore_from=newer)) == newer

    # Nothing registered, nothing in the folder: a fresh start, with an empty label store.
    backend = _backend(tmp_path / "empty")
    assert _restored(backend) is None
    backend.labels.reset.assert_called_once()


def test_a_newest_checkpoint_that_does_not_verify_is_skipped(two_checkpoints, monkeypatch, capsys, tmp_path):
    run_dir, older, newer = two_checkpoints
    copy = tmp_path / "run"
    for folder in (older, newer):
        (copy / folder.name).mkdir(parents=True)
        for f in folder.iterdir():
            (copy / folder.name / f.name).write_bytes(f.read_bytes())
    state = copy / newer.name / STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: Checkpoint(str(copy / older.name)))
    assert _restored(_backend(copy)) == copy / older.name
    assert f"skipped {newer.name}: " in capsys.readouterr().out

    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)  # and nothing else to fall back on
    with pytest.raises(CheckpointError, match="no checkpoint to restore verifies"):
        _restored(_backend(copy))
