"""Everything a run settles before training, the same for both backends, before any Ray work.

From a validated config to a :class:`RunSetup`: the shards (the demo data
generated and ingested when none are configured), their ``dataset.json``, the
run folder (a new one, or the one being resumed), whether the run validates,
the metric that ranks its checkpoints, and the checks that must fail early
(``model.init_from`` that does not fit, a method with nothing to train on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from aide_ray._internal import fs
from aide_ray.config import Config
from aide_ray.data.demo import make_demo_data
from aide_ray.data.ingest import ingest
from aide_ray.data.preprocess import Preprocessing
from aide_ray.data.shards import load_dataset_info
from aide_ray.exceptions import ConfigError, InputError
from aide_ray.methods.registry import create_method, method_class
from aide_ray.nn.model_config import parse_init_from
from aide_ray.runs.checkpoint import init_nets_from

__all__ = ["RunSetup", "prepare_run", "prepare_shards", "has_validation", "best_metric_name", "check_init_from",
           "DEMO_SIZE"]

DEMO_SIZE = 64  # in-plane size of the demo data


@dataclass(frozen=True)
class RunSetup:
    """A run ready to start.

    Attributes:
        cfg: the configuration (with ``run.name`` and ``run.storage_path`` of the run folder).
        shards: the shards folder (a local path or a URI).
        info: the shards' ``dataset.json``.
        run_dir: the run folder (a local Path, or a URI string on object storage).
        has_val: whether the validation split has labelled rows.
        metric: the metric that ranks checkpoints (``eval.best_metric`` resolved).
    """

    cfg: Config
    shards: Path | str
    info: dict[str, Any]
    run_dir: Path | str
    has_val: bool
    metric: str


def prepare_shards(cfg: Config) -> Path | str:
    """The shards folder of ``cfg``; generates and ingests the demo data when none is configured."""
    if cfg.data.shards:
        load_dataset_info(cfg.data.shards)  # clear error if it is not an ingested folder
        resolved = fs.resolve(cfg.data.shards)
        return resolved if fs.is_uri(resolved) else Path(resolved)
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


def has_validation(val_split: str, counts: Mapping[str, Any]) -> bool:
    """Whether a run validates: the validation split is named and has labelled rows.

    Args:
        counts: ``dataset.json``'s ``counts.split_label_kind`` (split -> kind -> rows).
    """
    split = counts.get(val_split, {}) if val_split else {}
    return int(split.get("hq", 0)) + int(split.get("lq", 0)) > 0


def best_metric_name(cfg: Config, has_val: bool) -> str:
    """The metric that ranks checkpoints (and Tune trials): ``eval.best_metric``, "auto" resolved."""
    if cfg.eval.best_metric == "auto":
        return "val_dice" if has_val else "train_dice"
    if cfg.eval.best_metric == "val_dice" and not has_val:
        raise ConfigError(f"eval.best_metric is 'val_dice' but split {cfg.data.val_split!r} has no labelled rows; "
                          f"use 'train_dice' or 'auto'")
    return cfg.eval.best_metric


def check_init_from(cfg: Config, shards: Path | str) -> None:
    """Fail before any Ray work when ``model.init_from`` cannot start this model's nets."""
    if not cfg.model.init_from:
        return
    in_channels = int(load_dataset_info(shards)["shape"][0])
    method = create_method(cfg, in_channels)
    init_nets_from(method.build_nets(), parse_init_from(cfg.model.init_from, method.net_names))


def _check_trainable(cfg: Config, info: Mapping[str, Any], shards: Path | str) -> None:
    split = info["counts"]["split_label_kind"].get(cfg.data.train_split, {})
    labelled = int(split.get("hq", 0)) + int(split.get("lq", 0))
    if labelled == 0 and not method_class(cfg.method).uses_unlabelled:
        raise InputError(f"{shards}: split {cfg.data.train_split!r} has no labelled rows to train {cfg.method!r} on")
    if not split:
        raise InputError(f"{shards}: split {cfg.data.train_split!r} (data.train_split) has no rows")


def prepare_run(cfg: Config, *, resume: str | Path | None = None) -> RunSetup:
    """Settle the run: shards, run folder (new or resumed), validation and checkpoint metric; check inputs.

    Raises:
        ConfigError: ``--resume`` is not a folder, or a setting cannot apply.
        InputError: the shards cannot train this method.
    """
    shards = prepare_shards(cfg)
    info = load_dataset_info(shards)
    if resume is not None:
        resume = Path(resume).expanduser().resolve()
        if not resume.is_dir():
            raise ConfigError(f"--resume {resume} is not a run folder")
        cfg = cfg.replace(**{"run.storage_path": str(resume.parent), "run.name": resume.name})
    elif not cfg.run.name:
        cfg = cfg.replace(**{"run.name": f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"})
    _check_trainable(cfg, info, shards)
    check_init_from(cfg, shards)
    storage = fs.resolve(cfg.run.storage_path)
    run_dir: Path | str = fs.join(storage, cfg.run.name) if fs.is_uri(storage) else Path(storage) / cfg.run.name
    has_val = has_validation(cfg.data.val_split, info["counts"]["split_label_kind"])
    return RunSetup(cfg=cfg, shards=shards, info=info, run_dir=run_dir, has_val=has_val,
                    metric=best_metric_name(cfg, has_val))
