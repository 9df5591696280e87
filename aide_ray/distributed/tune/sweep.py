"""Running a sweep: one Tune function trainable per trial, each driving one Ray Train run.

A sweep is many ordinary training runs that differ in a few config keys. Each
Tune trial is a *function* trainable that acts as the driver of one Ray Train
run (the Train-inside-Tune pattern of Ray Train v2): it builds the trial's
config (base config + the trial's parameters), builds the ``TorchTrainer``
with :func:`aide_ray.distributed.trainer.build_trainer`, and fits it; Ray's
``TuneReportCallback`` forwards every epoch's metrics to Tune, whose scheduler
(:mod:`~aide_ray.distributed.tune.schedule`) stops trials that trail the
others. The shards are prepared once on the sweep's driver and shared by all
trials. Its own file because it is the only part of a sweep that starts Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.optuna import OptunaSearch

from aide_ray._internal import fs
from aide_ray.config import Config, from_dict
from aide_ray.data.shards import load_dataset_info
from aide_ray.distributed.runtime import init_ray
from aide_ray.distributed.trainer import build_trainer
from aide_ray.distributed.tune.report import (
    BEST_CONFIG_FILE,
    RESULTS_FILE,
    best_config,
    plot_file,
    results_table,
    summary_text,
    write_outputs,
)
from aide_ray.distributed.tune.schedule import (
    make_scheduler,
    max_concurrent_trials,
    resources_per_trial,
    sweep_metric,
    trial_resources,
)
from aide_ray.distributed.tune.space import Param, SearchAlgorithm, check_search, plain_value, tune_param_space
from aide_ray.engine.run_setup import check_init_from, has_validation, prepare_shards
from aide_ray.exceptions import ConfigError

__all__ = ["TRIALS_DIR", "SweepOutcome", "trial_config", "train_trial", "run_sweep"]

# Each trial's Ray Train run goes under this folder of the sweep folder.
TRIALS_DIR = "trials"


@dataclass
class SweepOutcome:
    """What a finished sweep left behind."""

    out_dir: Path
    metric: str
    table: pd.DataFrame
    best: Config


def trial_config(base: Config, params: Mapping[str, Any], *, name: str, storage_path: str, shards: str) -> Config:
    """A trial's config: ``base`` with the trial's parameters, its run name and storage, and the sweep's shards."""
    dotted = {key: plain_value(value) for key, value in params.items()}
    dotted.update({"run.name": name, "run.storage_path": storage_path, "data.shards": shards})
    return base.replace(**dotted)


def train_trial(params: dict[str, Any], *, base: dict[str, Any], shards: str, sweep_name: str,
                trials_storage: str) -> None:
    """Tune function trainable: drive one Ray Train run with the trial's parameters."""
    trial_id = tune.get_context().get_trial_id()
    # The trial id, not a timestamp: a restarted trial must find its own Train run again.
    cfg = trial_config(from_dict(base, source="sweep base config"), params, name=f"{sweep_name}-{trial_id}",
                       storage_path=trials_storage, shards=shards)
    trainer, store = build_trainer(cfg, shards if fs.is_uri(shards) else Path(shards), cfg.run.name,
                                   callbacks=[TuneReportCallback()], storage_path=trials_storage)
    try:
        trainer.fit()
    finally:
        ray.kill(store)


def _trial_dirname(trial: Any) -> str:
    return f"trial-{trial.trial_id}"


def _has_val(cfg: Config, shards: Path | str) -> bool:
    return has_validation(cfg.data.val_split, load_dataset_info(shards)["counts"]["split_label_kind"])


def _sweep_folders(cfg: Config, out: str | Path | None) -> tuple[str, str, str, Path]:
    """(run name, storage, sweep folder, outputs folder); refuses to overwrite an earlier sweep."""
    name = cfg.run.name or f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = fs.resolve(cfg.run.storage_path)
    sweep_dir = fs.join(storage, f"{name}-tune")
    if out is None:
        # The outputs are local files; with object storage they go to the working directory.
        out_dir = Path.cwd() / f"{name}-tune" if fs.is_uri(storage) else Path(sweep_dir)
    else:
        out_dir = Path(out).expanduser().resolve()
    if fs.exists(sweep_dir):
        raise FileExistsError(f"sweep folder {sweep_dir} already exists; set another run.name or remove it")
    if (out_dir / RESULTS_FILE).exists():
        raise FileExistsError(f"{out_dir / RESULTS_FILE} already exists; choose another --out or remove it")
    return name, storage, sweep_dir, out_dir


def run_sweep(cfg: Config, space: Mapping[str, Param], *, num_samples: int, search: SearchAlgorithm = "random",
              out: str | Path | None = None, max_concurrent: int | None = None,
              reduction_factor: int = 4) -> SweepOutcome:
    """Run a Tune sweep of ``cfg`` over ``space`` and write its outputs.

    Args:
        cfg: base config of every trial.
        space: validated space (:func:`~aide_ray.distributed.tune.space.parse_space`).
        num_samples: trials (random, optuna), or repetitions of the grid (grid).
        search: ``random``, ``grid`` or ``optuna``.
        out: folder for results.csv, best_config.yaml and the plots; default
            ``<run.storage_path>/<name>-tune`` (the sweep folder), where name is
            ``run.name`` or ``<method>-<timestamp>``.
        max_concurrent: trials at once; default from the cluster's resources
            (:func:`~aide_ray.distributed.tune.schedule.max_concurrent_trials`).
        reduction_factor: ASHA's reduction factor.
    Returns:
        The outputs folder, the metric, the results table and the best config.
    Raises:
        ConfigError: invalid search, or every trial failed.
        FileExistsError: the sweep folder (or results.csv in ``out``) exists already.
    """
    check_search(search, space, num_samples)
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {max_concurrent!r}")
    name, storage, sweep_dir, out_dir = _sweep_folders(cfg, out)

    shards = prepare_shards(cfg)  # once, on the sweep's driver; every trial reads the same shards
    check_init_from(cfg, shards)
    metric = sweep_metric(cfg, _has_val(cfg, shards))

    init_ray(worker_cpus=cfg.workers * cfg.cpus_per_worker)
    cluster = ray.cluster_resources()
    concurrent = max_concurrent or max_concurrent_trials(cfg, cluster)
    need = resources_per_trial(cfg)
    scheduler, stopping = make_scheduler(space, cfg, metric, reduction_factor=reduction_factor)
    search_alg = OptunaSearch(seed=cfg.seed) if search == "optuna" else None
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=cfg.to_dict(), shards=str(shards), sweep_name=name,
                             trials_storage=fs.join(sweep_dir, TRIALS_DIR)),
        trial_resources(cfg),
    )
    print(f"Sweeping {len(space)} parameter(s) of {cfg.method} on {shards}: {search} search, {num_samples} "
          f"sample(s), up to {concurrent} trial(s) at once (each: {need}; cluster: "
          f"CPU {cluster['CPU'] if 'CPU' in cluster else 0:g}, GPU {cluster['GPU'] if 'GPU' in cluster else 0:g}); "
          f"{stopping}.\nSweep folder: {sweep_dir}", flush=True)
    tuner = tune.Tuner(
        trainable,
        param_space=tune_param_space(space, search),
        tune_config=tune.TuneConfig(metric=metric, mode="max", num_samples=num_samples, search_alg=search_alg,
                                    scheduler=scheduler, max_concurrent_trials=concurrent,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=f"{name}-tune", storage_path=storage),
    )
    grid = tuner.fit()
    configs = tune.ExperimentAnalysis(grid.experiment_path).get_all_configs()
    table = results_table(list(grid), space, metric, cfg.epochs, configs)
    best = best_config(cfg, table, space, metric)
    write_outputs(out_dir, table, best, space, metric)
    print("\n" + summary_text(table), flush=True)
    failed = int((table["status"] == "error").sum())
    if failed:
        print(f"\n{failed} of {len(table)} trial(s) failed; see the error column of {RESULTS_FILE}", flush=True)
    print(f"\nBest config ({metric} = {table[f'best_{metric}'].iloc[0]:.4f}): {out_dir / BEST_CONFIG_FILE}"
          f"\n  results: {out_dir / RESULTS_FILE}\n  plots:   {out_dir}/{plot_file('*')}"
          f"\n  train it: aide-ray train --config {out_dir / BEST_CONFIG_FILE}", flush=True)
    return SweepOutcome(out_dir=out_dir, metric=metric, table=table, best=best)
