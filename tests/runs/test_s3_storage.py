"""The run folder, its checkpoints and the shards on object storage (``s3://``), offline, without Ray.

A local S3 (moto's server, fixture ``s3_bucket``) stands in for the bucket; every
``s3://`` path of aide_ray goes through ``pyarrow.fs`` (``aide_ray._internal.fs``),
which the fixture's environment points at it. What a Ray run does with such a
storage path is played here piece by piece: checkpoints written locally by the loop
and copied into the run folder (as Ray Train persists them), the driver's ranking and
finishing of the run folder, a restart's download of a checkpoint (Ray Train's own
``Checkpoint``), a new run refused in a folder with checkpoints, and shards read from the
bucket. The whole run on Ray is ``tests/integration/test_s3_run.py`` (slow).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest

from aide_ray._internal import fs
from aide_ray.config import load_config
from aide_ray.data.shards import load_dataset_info, read_slices_local, shard_files
from aide_ray.data.verify import verify_shards
from aide_ray.engine.report import finish_run
from aide_ray.engine.run_setup import prepare_run
from aide_ray.exceptions import ConfigError
from aide_ray.methods.registry import create_method
from aide_ray.runs.checkpoint import load_state, save_checkpoint, verify_checkpoint
from aide_ray.runs.folder import (BEST_POINTER, CONFIG_FILE, HISTORY_FILE, best_checkpoint, checkpoint_dirs,
                                  checkpoint_metrics, checkpoint_name, latest_checkpoint)


def upload(local: Path, uri: str) -> None:
    """Copy a local folder to ``uri`` (what Ray Train does with a reported checkpoint)."""
    filesystem, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesystem)


def test_fs_helpers_read_write_list_and_copy_on_s3(s3_bucket, tmp_path):
    base = fs.join(s3_bucket, "a")
    assert fs.is_uri(base) and fs.resolve(base) == base and not fs.exists(fs.join(base, "x.txt"))
    fs.write_text(fs.join(base, "x.txt"), "hello")
    assert fs.exists(fs.join(base, "x.txt")) and fs.read_text(fs.join(base, "x.txt")) == "hello"
    fs.copy_file(fs.join(base, "x.txt"), fs.join(base, "sub/y.txt"))  # object to object
    fs.copy_file(fs.join(base, "sub/y.txt"), tmp_path / "y.txt")  # down
    (tmp_path / "z.txt").write_text("z")
    fs.copy_file(tmp_path / "z.txt", fs.join(base, "z.txt"))  # up
    assert (tmp_path / "y.txt").read_text() == "hello" and fs.read_text(fs.join(base, "z.txt")) == "z"
    filesystem, paths = fs.filesystem_and_paths([fs.join(base, "x.txt"), fs.join(base, "z.txt")])
    assert isinstance(filesystem, pafs.S3FileSystem) and paths == [f"{s3_bucket[5:]}/a/x.txt",
                                                                     f"{s3_bucket[5:]}/a/z.txt"]


def _checkpoints(tmp_path: Path, cfg, run_dir: str, dice: list[float]) -> list[str]:
    """Real checkpoints of a supervised net, one per epoch (val Dice ``dice``), copied to ``run_dir`` as Ray
    Train persists them: written locally by rank 0 (artifacts first), then uploaded."""
    method = create_method(cfg, 1)
    nets = method.build_nets()
    history = []
    for epoch, value in enumerate(dice):
        metrics = {"epoch": epoch, "val_dice": value, "loss": 1.0 - value}
        history.append(metrics)
        folder = tmp_path / "local" / checkpoint_name(1.9e9 + epoch)
        folder.mkdir(parents=True)
        pd.DataFrame(history).to_csv(folder / HISTORY_FILE, index=False)
        save_checkpoint(folder, config=cfg, in_channels=1, epoch=epoch, nets=nets, eval_nets=method.eval_nets,
                        optimizers={}, schedulers={}, label_store_snapshot=None, dataset_info={}, metrics=metrics)
        upload(folder, fs.join(run_dir, folder.name))
    return checkpoint_dirs(run_dir)


def test_a_run_folder_on_s3_ranks_finishes_and_restores_its_checkpoints(s3_bucket, tmp_path, tiny_shards):
    storage = fs.join(s3_bucket, "runs")
    cfg = load_config(None, ["method=supervised", "model.base_width=4", f"data.shards={tiny_shards}",
                             f"run.storage_path={storage}", "run.name=r"])
    setup = prepare_run(cfg)  # a new run: the run folder is a URI, nothing is created yet
    run_dir = setup.run_dir
    assert run_dir == f"{storage}/r" and checkpoint_dirs(run_dir) == []

    dirs = _checkpoints(tmp_path, cfg, run_dir, [0.4, 0.7, 0.5])
    assert [d.rsplit("/", 1)[1] for d in dirs] == sorted(p.name for p in (tmp_path / "local").iterdir())
    assert all(d.startswith(f"{run_dir}/checkpoint_") for d in dirs)
    assert checkpoint_metrics(dirs[1])["val_dice"] == 0.7
    assert best_checkpoint(run_dir, "val_dice") == dirs[1] and latest_checkpoint(run_dir) == dirs[2]

    outcome = finish_run(run_dir, cfg, "val_dice")
    assert (outcome.run_dir, outcome.best_checkpoint, outcome.latest_checkpoint) == (run_dir, dirs[1], dirs[2])
    assert outcome.report is None  # the report page is drawn for local run folders only
    assert fs.read_text(fs.join(run_dir, BEST_POINTER)).strip() == dirs[1]  # absolute on object storage
    saved = fs.read_text(fs.join(run_dir, CONFIG_FILE))
    assert saved == cfg.to_yaml()
    history = pd.read_csv(io.StringIO(fs.read_text(fs.join(run_dir, HISTORY_FILE))))  # the latest one's copy
    assert history["epoch"].tolist() == [0, 1, 2] and outcome.history["val_dice"].tolist() == [0.4, 0.7, 0.5]

    # A restart restores from the run folder through Ray Train's Checkpoint: downloaded, verified, loaded.
    from ray.train import Checkpoint

    with Checkpoint(dirs[1]).as_directory() as folder:
        verify_checkpoint(folder)
        assert load_state(folder)["epoch"] == 1

    # A new run into a folder with checkpoints would continue them on Ray: refused, as on a local disk.
    with pytest.raises(ConfigError, match=r"run.name must name a new run folder, got 'r': .* holds 3 checkpoint"):
        prepare_run(cfg)


def test_shards_on_s3_verify_and_read_like_local_ones(s3_bucket, tiny_shards):
    uri = fs.join(s3_bucket, "shards")
    upload(Path(tiny_shards), uri)
    info = verify_shards(uri)  # sizes and SHA-256 of every shard, read from the bucket
    assert info == load_dataset_info(tiny_shards)
    assert [f.rsplit("/", 1)[1] for f in shard_files(uri)] == info["shards"]
    remote, local = read_slices_local(uri, split="train"), read_slices_local(tiny_shards, split="train")
    assert remote["sample_id"].tolist() == local["sample_id"].tolist()
    assert (remote["image"] == local["image"]).all() and (remote["label"] == local["label"]).all()
