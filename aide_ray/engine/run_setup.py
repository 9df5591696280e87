"""Everything a run settles before training, the same for both backends, before any Ray work.

From a validated config to a :class:`RunSetup`: the shards (the demo data
generated and ingested when none are configured), verified against their
``dataset.json``, the run folder (a new one, or the one being resumed), whether
the run validates, the metric that ranks its checkpoints, and the checks that
must fail early (``model.init_from`` that does not fit, a method with nothing to
train on, a new run into a folder that already holds checkpoints, a resume whose
checkpoints are all broken or whose settings would not fit its checkpoint).

A resume continues from the newest checkpoint that verifies against its
``files.json`` (:func:`~aide_ray.runs.checkpoint.choose_checkpoint`), says which,
and why a newer one was skipped; the command line builds the resumed run's
config from the checkpoint's own (:func:`resume_config`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from aide_ray._internal import fs
from aide_ray.config import Config, from_dict, load_config, parse_overrides
from aide_ray.data.demo import make_demo_data
from aide_ray.data.ingest import ingest
from aide_ray.data.label_kinds import FULL_MASK_KINDS, SCRIBBLE, labelled_rows
from aide_ray.data.preprocess import Preprocessing
from aide_ray.data.shards import load_dataset_info
from aide_ray.data.verify import verify_shards
from aide_ray.exceptions import CheckpointError, ConfigError, InputError
from aide_ray.methods.registry import create_method, method_class
from aide_ray.nn.model_config import parse_init_from
from aide_ray.runs.checkpoint import CheckpointChoice, init_nets_from, load_state, newest_valid_checkpoint
from aide_ray.runs.folder import DATASET_FILE, STATE_FILE, checkpoint_dirs

__all__ = ["RunSetup", "prepare_run", "prepare_shards", "has_validation", "best_metric_name", "check_init_from",
           "resume_config", "choose_resume_checkpoint", "check_resume_fits", "DEMO_SIZE"]

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
        restore_from: the verified checkpoint a resume continues from (None: a new run).
    """

    cfg: Config
    shards: Path | str
    info: dict[str, Any]
    run_dir: Path | str
    has_val: bool
    metric: str
    restore_from: Path | None = None


def prepare_shards(cfg: Config) -> Path | str:
    """The shards folder of ``cfg``; generates and ingests the demo data when none is configured."""
    if cfg.data.shards:
        # One line naming a missing, truncated or garbled shard, before any Ray work.
        verify_shards(cfg.data.shards)
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
    verify_shards(shards)
    return shards


def has_validation(val_split: str, counts: Mapping[str, Any]) -> bool:
    """Whether a run validates: the validation split is named and has rows with full masks.

    Args:
        counts: ``dataset.json``'s ``counts.split_label_kind`` (split -> kind -> rows).
    """
    split = counts.get(val_split, {}) if val_split else {}
    return labelled_rows(split, FULL_MASK_KINDS) > 0


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
    labelled = labelled_rows(split)
    scribbles_in_val = int(info["counts"]["split_label_kind"].get(cfg.data.val_split, {}).get(SCRIBBLE, 0))
    if cfg.data.val_split and scribbles_in_val:
        # A Dice against a partial label would count its unannotated pixels: validation needs full masks.
        raise InputError(f"{shards}: split {cfg.data.val_split!r} (data.val_split) has {scribbles_in_val} scribble "
                         f"slices; validation needs full masks there (corrupt-labels --protocol scribbles keeps "
                         f"them), or set data.val_split to a split with full masks")
    scribbles = int(split.get(SCRIBBLE, 0))
    method = method_class(cfg.method)
    if scribbles and method.requires_full_masks(cfg.options):
        raise InputError(f"{shards}: split {cfg.data.train_split!r} has {scribbles} scribble slices and method "
                         f"{cfg.method!r} needs a class at every pixel; train scribbles with pce, scribble_entmin, tv, "
                         f"mumford_shah, gated_crf, ustm, dmpls, supervised or aide (docs/methods.md)")
    if labelled == 0 and not method.uses_unlabelled:
        raise InputError(f"{shards}: split {cfg.data.train_split!r} has no labelled rows to train {cfg.method!r} on")
    if not split:
        raise InputError(f"{shards}: split {cfg.data.train_split!r} (data.train_split) has no rows")


def choose_resume_checkpoint(run_dir: str | Path, *, verbose: bool = True) -> CheckpointChoice:
    """The newest checkpoint of ``run_dir`` that verifies; prints which, and why newer ones were skipped.

    Raises:
        CheckpointError: the folder is missing, holds no checkpoint, or none verifies.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise CheckpointError(f"--resume must be a run folder, got {run_dir}: no such folder")
    choice = newest_valid_checkpoint(run_dir)
    if choice.path is None:
        if not choice.skipped:
            raise CheckpointError(f"--resume {run_dir}: the folder holds no checkpoint to resume from")
        newest, reason = choice.skipped[0]
        raise CheckpointError(f"--resume {run_dir}: none of its {len(choice.skipped)} checkpoint(s) verifies, "
                              f"so there is nothing to resume from; newest {newest.name}: {reason}")
    if verbose:
        for folder, reason in choice.skipped:
            print(f"skipped {folder}: {reason}", flush=True)
        print(f"Resuming from {choice.path} (epoch {choice.epoch + 1} done)", flush=True)
    return choice


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_config(run_dir: str | Path, *, config_file: str | Path | None = None,
                  overrides: Sequence[str] = ()) -> Config:
    """The config of a resumed run: the checkpoint's own, plus ``config_file``'s keys and ``overrides`` only.

    A resume trains on with the settings the run was started with; what the
    command line names explicitly is all that changes.
    """
    choice = choose_resume_checkpoint(run_dir, verbose=False)
    saved = from_dict(load_state(choice.path)["config"], source=str(choice.path / STATE_FILE))
    dotted: dict[str, Any] = {}
    if config_file is not None:
        load_config(config_file)  # unknown keys and bad values fail naming the file
        dotted.update(_flatten(yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}))
    dotted.update(parse_overrides(overrides))
    return saved.replace(**dotted)


def check_resume_fits(cfg: Config, checkpoint: Path, info: Mapping[str, Any]) -> None:
    """Fail when ``cfg`` or the shards would not fit the nets and labels of ``checkpoint``.

    The keys that shape a checkpoint (``method``, ``model.*`` but ``init_from``) and
    the dataset's geometry (slices and their shape) must be what the run was started with.

    Raises:
        ConfigError: naming the key and both values.
    """
    state = load_state(checkpoint, verify=False)  # verified when it was chosen
    saved = from_dict(state["config"], source=str(checkpoint / STATE_FILE))
    old, new = _flatten(saved.to_dict()), _flatten(cfg.to_dict())
    for key in ["method", *(k for k in sorted(old) if k.startswith("model.") and k != "model.init_from")]:
        if old.get(key) != new.get(key):
            raise ConfigError(f"--resume: {key} is {old.get(key)!r} in the run's checkpoint, {new.get(key)!r} now; "
                              f"a checkpoint cannot change it")
    dataset_file = checkpoint / DATASET_FILE
    trained = json.loads(dataset_file.read_text()) if dataset_file.is_file() else {}
    was = (trained.get("num_samples"), trained.get("shape"))
    now = (info.get("num_samples"), info.get("shape"))
    if trained and was != now:
        raise ConfigError(f"--resume: data.shards holds {now[0]} slices of shape {now[1]} now, the run's checkpoint "
                          f"was trained on {was[0]} slices of shape {was[1]}; a checkpoint cannot change it")
    done = int(state["epoch"]) + 1
    if done >= cfg.epochs:
        raise ConfigError(f"epochs must be more than the {done} epoch(s) of {checkpoint} to resume it, "
                          f"got {cfg.epochs}; pass epochs=N to train on")


def prepare_run(cfg: Config, *, resume: str | Path | None = None) -> RunSetup:
    """Settle the run: shards, run folder (new or resumed), validation and checkpoint metric; check inputs.

    Raises:
        ConfigError: a new run into a folder with checkpoints, or a setting that cannot apply.
        CheckpointError: ``--resume`` names no folder, or one without a checkpoint that verifies.
        InputError: the shards are broken or cannot train this method.
    """
    choice = choose_resume_checkpoint(resume) if resume is not None else None
    if choice is not None:
        run_path = choice.path.parent
        cfg = cfg.replace(**{"run.storage_path": str(run_path.parent), "run.name": run_path.name})
    elif not cfg.run.name:
        cfg = cfg.replace(**{"run.name": f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"})
    storage = fs.resolve(cfg.run.storage_path)
    run_dir: Path | str = fs.join(storage, cfg.run.name) if fs.is_uri(storage) else Path(storage) / cfg.run.name
    if choice is None and checkpoint_dirs(run_dir):
        # Ray Train would silently continue the old run's checkpoints under the same name.
        raise ConfigError(f"run.name must name a new run folder, got {cfg.run.name!r}: {run_dir} already holds "
                          f"{len(checkpoint_dirs(run_dir))} checkpoint(s); continue it with --resume {run_dir} "
                          f"or choose another run.name")
    shards = prepare_shards(cfg)
    info = load_dataset_info(shards)
    if choice is not None:
        check_resume_fits(cfg, choice.path, info)
    _check_trainable(cfg, info, shards)
    check_init_from(cfg, shards)
    has_val = has_validation(cfg.data.val_split, info["counts"]["split_label_kind"])
    return RunSetup(cfg=cfg, shards=shards, info=info, run_dir=run_dir, has_val=has_val,
                    metric=best_metric_name(cfg, has_val), restore_from=None if choice is None else choice.path)
