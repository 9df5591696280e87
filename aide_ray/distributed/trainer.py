"""The Ray driver: from a settled run to a ``TorchTrainer`` fit and a finished run folder.

It joins or starts Ray (:func:`~aide_ray.distributed.runtime.init_ray`),
creates the label-store actor, builds the Ray Data datasets and the
``TorchTrainer`` with Ray's own ScalingConfig / RunConfig / CheckpointConfig /
FailureConfig, fits it, and ends the run like the local driver does
(:func:`~aide_ray.engine.report.finish_run`). Tune reuses :func:`build_trainer`.

Every call of :func:`build_trainer` is one training invocation with a fresh run
token: the label-store actor keeps its restart snapshot under that token and
ignores the one another invocation left in the run folder (a killed driver's),
so labels reach a run only from its own work or from the checkpoint it resumes.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Sequence

import ray.train
from ray.data import DataContext
from ray.train.torch import TorchTrainer

from aide_ray._internal import fs
from aide_ray.config import Config
from aide_ray.data.shards import load_dataset_info
from aide_ray.distributed.backend import FAIL_AT_KEY, RESTORE_KEY, RUN_DIR_KEY, STREAMING_KEY, train_loop_per_worker
from aide_ray.distributed.console import quiet_loggers
from aide_ray.distributed.data_pipeline import build_datasets, use_cache
from aide_ray.distributed.label_actor import create_label_store_actor
from aide_ray.distributed.runtime import init_ray
# Defined in a light module of its own: see aide_ray.distributed.splits for why (start-up time).
from aide_ray.distributed.splits import ExactSplits, labelled_count
from aide_ray.engine.report import TrainingOutcome, finish_run, summary_table
from aide_ray.engine.run_setup import best_metric_name, has_validation, prepare_run
from aide_ray.methods.registry import method_class
from aide_ray.runs.folder import LABEL_STORE_LATEST

__all__ = ["build_trainer", "run_training", "scaling_config", "ExactSplits", "labelled_count"]


def quiet_ray_data(verbose: bool = False) -> None:
    """Ray Data's progress bars and per-dataset execution lines on or off (off unless ``verbose``).

    Set on the driver before the datasets are built: the context travels with
    them to the actors that execute them (the split coordinators), which print
    those lines.
    """
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.enable_operator_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    ctx.verbose_stats_logs = verbose


def scaling_config(cfg: Config) -> ray.train.ScalingConfig:
    """Ray Train's ScalingConfig: ``workers`` (or ``(cluster.workers_min, workers)``: elastic), each with
    ``cpus_per_worker`` CPUs, a GPU with ``use_gpu`` and ``cluster.resources_per_worker``."""
    resources = {"CPU": cfg.cpus_per_worker, **cfg.cluster.resources_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    elastic = {"elastic_resize_monitor_interval_s": cfg.cluster.resize_interval_s} \
        if cfg.cluster.elastic(cfg.workers) else {}
    return ray.train.ScalingConfig(num_workers=cfg.cluster.num_workers(cfg.workers), use_gpu=cfg.use_gpu,
                                   resources_per_worker=resources, **elastic)


def build_trainer(cfg: Config, shards: Path | str, name: str, *, callbacks: Sequence[Any] = (),
                  fail_at: dict[str, Any] | None = None, storage_path: str | None = None,
                  restore_from: str | Path | None = None, store_fail_at: dict[str, Any] | None = None,
                  verbose: bool = False):
    """A ``TorchTrainer`` for ``cfg`` (its label-store actor is created here too).

    Args:
        restore_from: the verified checkpoint a resume continues from (the workers
            restore the newest of it and Ray Train's own that verifies).
        fail_at, store_fail_at: fault-test hooks: kill one worker once
            (``FAIL_AT_KEY``), or the label-store actor once while it publishes an
            epoch (:class:`~aide_ray.distributed.label_actor.DyingLabelStore`).
        verbose: keep Ray Data's progress bars and execution lines and Ray Train's INFO logs.

    Returns:
        (trainer, label_store_actor)
    """
    quiet_ray_data(verbose)
    quiet_loggers(verbose)
    info = load_dataset_info(shards)
    method = method_class(cfg.method)
    has_val = has_validation(cfg.data.val_split, info["counts"]["split_label_kind"])
    rows = {"train_split": cfg.data.train_split, "val_split": cfg.data.val_split,
            "labelled_only": not method.uses_unlabelled, "unlabelled_fraction": cfg.data.unlabelled_fraction}
    cache = use_cache(info, **rows)
    datasets = build_datasets(str(shards), **rows, flip=cfg.data.flip_augment, max_retries=cfg.data.max_retries,
                              info=info, cache=cache, shuffle=cfg.data.shuffle)
    storage = storage_path or fs.resolve(cfg.run.storage_path)
    # The actor's own restart snapshot must be a local file; on object storage the
    # per-checkpoint snapshots still hold every epoch's labels.
    snapshot = None if fs.is_uri(storage) else str(Path(storage) / name / LABEL_STORE_LATEST)
    if snapshot:
        Path(snapshot).parent.mkdir(parents=True, exist_ok=True)
    store = create_label_store_actor(int(info["num_samples"]), method.label_slots, tuple(info["shape"][1:]),
                                     snapshot_path=snapshot, run_token=uuid.uuid4().hex, fail_at=store_fail_at,
                                     resources=cfg.cluster.label_store_resources)
    loop_config = {
        "config": cfg.to_dict(),
        "dataset_info": info,
        "label_store": store,
        "has_val": has_val,
        "torch_threads": max(1, int(cfg.cpus_per_worker)),
        "verbose": verbose,
        RESTORE_KEY: None if restore_from is None else str(restore_from),
        RUN_DIR_KEY: fs.join(storage, name),
        STREAMING_KEY: not cache,
    }
    if fail_at:
        loop_config[FAIL_AT_KEY] = fail_at
    kinds = info["counts"]["split_label_kind"]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg),
        dataset_config=ExactSplits({"score": labelled_count(kinds.get(cfg.data.train_split, {})),
                                    "val": labelled_count(kinds.get(cfg.data.val_split, {}))}),
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
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
        datasets=datasets,
    )
    return trainer, store


def run_training(cfg: Config, *, resume: str | Path | None = None, fail_at: dict[str, Any] | None = None,
                 callbacks: Sequence[Any] = (), store_fail_at: dict[str, Any] | None = None,
                 verbose: bool = False) -> TrainingOutcome:
    """Train ``cfg`` on Ray to the end and return the run folder and its history.

    Args:
        resume: a run folder to continue (same storage path and name) from its newest
            checkpoint that verifies, labels included (:func:`prepare_run` says which).
        fail_at, store_fail_at: test hooks, see :func:`build_trainer`.
        verbose: Ray's own progress bars and INFO lines on the console too.
    """
    setup = prepare_run(cfg, resume=resume)
    cfg = setup.cfg
    init_ray(worker_cpus=cfg.workers * cfg.cpus_per_worker)
    if not fs.is_uri(setup.run_dir):
        Path(setup.run_dir).mkdir(parents=True, exist_ok=True)
    trainer, _store = build_trainer(cfg, setup.shards, cfg.run.name, fail_at=fail_at, callbacks=callbacks,
                                    restore_from=setup.restore_from, store_fail_at=store_fail_at, verbose=verbose)
    workers = f"{cfg.cluster.workers_min}-{cfg.workers}" if cfg.cluster.elastic(cfg.workers) else cfg.workers
    print(f"Training {cfg.method} on {setup.shards} with {workers} Ray worker(s); run folder {setup.run_dir}",
          flush=True)
    trainer.fit()
    outcome = finish_run(setup.run_dir, cfg, setup.metric)
    print("\n" + summary_table(outcome.history), flush=True)
    print(f"\nRun folder: {outcome.run_dir}\n  best checkpoint: {outcome.best_checkpoint}", flush=True)
    if outcome.report is not None:
        print(f"  report page: {outcome.report}", flush=True)
    return outcome
