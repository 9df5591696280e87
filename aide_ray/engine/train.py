"""The training driver: from a validated config to a finished run folder.

It prepares the data (the demo data is generated and ingested when no shards
are configured), connects to Ray (an embedded local Ray unless an address is
given), creates the label-store actor, builds the ``TorchTrainer`` with Ray's
own ScalingConfig / RunConfig / CheckpointConfig / FailureConfig, fits it, and
leaves in the run folder what a user opens: ``metrics.csv``, the per-sample
training scores, the label-correction samples, the final label-store snapshot,
``best_checkpoint.txt`` and the config. Tune reuses :func:`build_trainer`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from aide_ray._internal import fs
from aide_ray.config import Config
from aide_ray.engine.checkpoint import BEST_POINTER, LABEL_STORE_FILE
from aide_ray.engine.ray_loop import FAIL_AT_KEY, HISTORY_FILE, SAMPLES_FILE, SCORES_FILE, train_loop_per_worker
from aide_ray.exceptions import ConfigError, InputError

__all__ = ["TrainingOutcome", "best_metric_name", "check_init_from", "prepare_shards", "init_ray", "build_trainer",
           "run_training", "run_dir_of", "summary_table"]

DEMO_SIZE = 64  # in-plane size of the demo data


@dataclass
class TrainingOutcome:
    """What a finished run left behind."""

    run_dir: Path | str  # a URI string when the storage path is object storage
    best_checkpoint: Path | None
    latest_checkpoint: Path | None
    history: pd.DataFrame


def prepare_shards(cfg: Config) -> Path:
    """The shards folder of ``cfg``; generates and ingests the demo data when none is configured."""
    from aide_ray.data.shards import load_dataset_info

    if cfg.data.shards:
        load_dataset_info(cfg.data.shards)  # clear error if it is not an ingested folder
        return fs.resolve(cfg.data.shards) if fs.is_uri(cfg.data.shards) else Path(fs.resolve(cfg.data.shards))
    from aide_ray.data.demo import make_demo_data
    from aide_ray.data.ingest import ingest
    from aide_ray.data.preprocess import Preprocessing

    demo = Path(cfg.data.demo_dir).expanduser().resolve()
    shards = demo / "shards"
    if not (shards / "dataset.json").is_file():
        raw = demo / "raw"
        manifest = raw / "manifest.csv"
        if not manifest.is_file():
            print(f"Generating the demo data in {raw} ...", flush=True)
            manifest = make_demo_data(raw, size=DEMO_SIZE, seed=cfg.seed)
        print(f"Ingesting {manifest} into {shards} ...", flush=True)
        ingest(manifest, shards, Preprocessing(target_spacing=None, size=DEMO_SIZE, normalize="zscore"))
    return shards


def init_ray(cfg: Config) -> None:
    """Join the cluster named by RAY_ADDRESS (or the job's cluster), else start an embedded local Ray.

    The embedded Ray advertises more logical CPUs than the training workers
    take, so that Ray Data's tasks always find a slot (on a 2-core machine,
    workers holding every CPU starve the data pipeline and the run hangs).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if os.environ.get("RAY_ADDRESS"):
        # A job's own runtime env wins; passing one here could conflict with it.
        ray.init()
        return
    env = {"env_vars": {"OMP_NUM_THREADS": "1"}}
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # embedded: nothing listens beyond 127.0.0.1
    cpus = max(os.cpu_count() or 1, math.ceil(cfg.workers * cfg.cpus_per_worker) + 2)
    # The dashboard (bound to 127.0.0.1) hosts the state API that Train's
    # controller polls; without it the driver log fills with retry warnings.
    ray.init(num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1", runtime_env=env,
             log_to_driver=True, _node_ip_address="127.0.0.1")


def check_init_from(cfg: Config, shards: Path | str) -> None:
    """Fail before any Ray work when ``model.init_from`` cannot start this model's nets."""
    if not cfg.model.init_from:
        return
    from aide_ray.data.shards import load_dataset_info
    from aide_ray.engine.checkpoint import init_nets_from
    from aide_ray.methods.registry import method_class

    in_channels = int(load_dataset_info(shards)["shape"][0])
    init_nets_from(method_class(cfg.method)(cfg, in_channels).build_nets(), cfg.model.init_from)


def run_dir_of(cfg: Config, name: str) -> Path | str:
    """The run folder: a local Path, or a URI string for object storage."""
    storage = fs.resolve(cfg.run.storage_path)
    return fs.join(storage, name) if fs.is_uri(storage) else Path(storage) / name


def _eligible(cfg: Config, info: dict[str, Any]) -> int:
    counts = info["counts"]["split_label_kind"].get(cfg.data.train_split, {})
    return int(counts.get("lq", 0)) + (int(counts.get("hq", 0)) if cfg.aide.correct_hq else 0)


def best_metric_name(cfg: Config, has_val: bool) -> str:
    """The metric that ranks checkpoints (and Tune trials): ``eval.best_metric``, "auto" resolved."""
    if cfg.eval.best_metric == "auto":
        return "val_dice" if has_val else "train_dice"
    if cfg.eval.best_metric == "val_dice" and not has_val:
        raise ConfigError(f"eval.best_metric is 'val_dice' but split {cfg.data.val_split!r} has no rows; "
                          f"use 'train_dice' or 'auto'")
    return cfg.eval.best_metric


def build_trainer(cfg: Config, shards: Path, name: str, *, callbacks: Sequence[Any] = (),
                  fail_at: dict[str, Any] | None = None, storage_path: str | None = None):
    """A ``TorchTrainer`` for ``cfg`` (its label-store actor is created here too).

    Returns:
        (trainer, label_store_actor)
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from aide_ray.data.shards import load_dataset_info
    from aide_ray.engine.data_pipeline import build_datasets
    from aide_ray.engine.label_store import create_label_store_actor
    from aide_ray.methods.registry import method_class

    info = load_dataset_info(shards)
    method = method_class(cfg.method)
    counts = info["counts"]["split_label_kind"]
    split = counts.get(cfg.data.train_split, {})
    if not method.uses_unlabelled and int(split.get("hq", 0)) + int(split.get("lq", 0)) == 0:
        raise InputError(f"{shards}: split {cfg.data.train_split!r} has no labelled rows to train {cfg.method!r} on")
    datasets = build_datasets(str(shards), train_split=cfg.data.train_split, val_split=cfg.data.val_split,
                              labelled_only=not method.uses_unlabelled,
                              unlabelled_fraction=cfg.data.unlabelled_fraction, flip=cfg.data.flip_augment,
                              max_retries=cfg.data.max_retries, info=info)
    has_val = "val" in datasets
    storage = storage_path or fs.resolve(cfg.run.storage_path)
    # The actor's own restart snapshot must be a local file; on object storage the
    # per-checkpoint snapshots still hold every epoch's labels.
    snapshot = None if fs.is_uri(storage) else str(Path(storage) / name / "label_store.latest.npz")
    if snapshot:
        Path(snapshot).parent.mkdir(parents=True, exist_ok=True)
    store = create_label_store_actor(int(info["num_samples"]), method.label_slots,
                                     tuple(info["shape"][1:]), snapshot_path=snapshot)
    loop_config = {
        "config": cfg.to_dict(),
        "dataset_info": info,
        "label_store": store,
        "eligible": _eligible(cfg, info),
        "has_val": has_val,
        "torch_threads": max(1, int(cfg.cpus_per_worker)),
    }
    if fail_at:
        loop_config[FAIL_AT_KEY] = fail_at
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.run.checkpoints_to_keep,
                checkpoint_score_attribute=best_metric_name(cfg, has_val),
                checkpoint_score_order="max",
            ),
            callbacks=list(callbacks) or None,
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
    )
    return trainer, store


def _collect_outputs(result, run_dir: Path | str, cfg: Config) -> TrainingOutcome:
    """Copy what a user opens from the latest checkpoint into the run folder (local or object storage)."""
    import pyarrow.fs as pafs

    latest = Path(result.checkpoint.path) if result.checkpoint is not None else None
    best = None
    metric = best_metric_name(cfg, has_val=not pd.isna(result.metrics.get("val_dice", float("nan")))) \
        if result.metrics else None
    scored = [(m.get(metric, float("nan")), c) for c, m in (result.best_checkpoints or []) if metric]
    scored = [(v, c) for v, c in scored if not pd.isna(v)]
    if scored:
        best = Path(max(scored, key=lambda vc: vc[0])[1].path)
    history = pd.DataFrame()
    if result.checkpoint is not None:
        src_fs = result.checkpoint.filesystem
        dst_fs, dst = (pafs.FileSystem.from_uri(run_dir) if fs.is_uri(run_dir)
                       else (pafs.LocalFileSystem(), str(run_dir)))
        for name in (HISTORY_FILE, SCORES_FILE, SAMPLES_FILE, LABEL_STORE_FILE):
            src = f"{result.checkpoint.path}/{name}"
            if src_fs.get_file_info(src).type == pafs.FileType.File:
                pafs.copy_files(src, f"{dst}/{name}", source_filesystem=src_fs, destination_filesystem=dst_fs)
        with src_fs.open_input_stream(f"{result.checkpoint.path}/{HISTORY_FILE}") as f:
            history = pd.read_csv(f)
    if best is not None:
        relative = os.path.relpath(best, run_dir) if not fs.is_uri(run_dir) else str(best)
        fs.write_text(fs.join(run_dir, BEST_POINTER), relative + "\n")
    fs.write_text(fs.join(run_dir, "config.yaml"), cfg.to_yaml())
    return TrainingOutcome(run_dir=run_dir, best_checkpoint=best, latest_checkpoint=latest, history=history)


SUMMARY_COLUMNS = ["epoch", "loss", "loss_net1", "loss_net2", "train_dice_net1", "train_dice_net2",
                   "train_dice", "val_dice", "relabelled_net1", "relabelled_net2", "seconds", "slices_per_s"]


def summary_table(history: pd.DataFrame) -> str:
    """The per-epoch table printed at the end of a run."""
    if history.empty:
        return "(no epochs reported)"
    cols = [c for c in SUMMARY_COLUMNS if c in history.columns]
    extra = [c for c in history.columns if c.startswith(("train_dice_", "relabelled_", "loss_")) and c not in cols]
    table = history[cols[:1] + sorted(extra) + cols[1:]] if extra else history[cols]
    return table.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def run_training(cfg: Config, *, resume: str | Path | None = None, fail_at: dict[str, Any] | None = None,
                 callbacks: Sequence[Any] = ()) -> TrainingOutcome:
    """Train ``cfg`` to the end and return the run folder and its history.

    Args:
        resume: a run folder to continue (same storage path and name): Ray Train
            restores its latest checkpoint, labels included.
        fail_at: test hook, kill one worker once (see ray_loop.FAIL_AT_KEY).
    """
    shards = prepare_shards(cfg)
    if resume is not None:
        resume = Path(resume).expanduser().resolve()
        if not resume.is_dir():
            raise ConfigError(f"--resume {resume} is not a run folder")
        cfg = cfg.replace(**{"run.storage_path": str(resume.parent), "run.name": resume.name})
    check_init_from(cfg, shards)
    name = cfg.run.name or f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    init_ray(cfg)
    run_dir = run_dir_of(cfg, name)
    if not fs.is_uri(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    trainer, store = build_trainer(cfg, shards, name, fail_at=fail_at, callbacks=callbacks)
    print(f"Training {cfg.method} on {shards} with {cfg.workers} worker(s); run folder {run_dir}", flush=True)
    result = trainer.fit()
    outcome = _collect_outputs(result, run_dir, cfg)
    print("\n" + summary_table(outcome.history), flush=True)
    print(f"\nRun folder: {run_dir}\n  metrics:  {fs.join(run_dir, HISTORY_FILE)}\n  best checkpoint: {outcome.best_checkpoint}"
          f"\n  latest checkpoint: {outcome.latest_checkpoint}", flush=True)
    return outcome
