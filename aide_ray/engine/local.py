"""The local backend: the training loop in this process, on the CPU or one GPU, without Ray.

The shards are decoded into memory once; every epoch draws its own order and
flips from a generator seeded with (seed, epoch), so a resumed run repeats
the order it would have had. The label store is a plain
:class:`~aide_ray.labels.LabelStore` object; checkpoints go straight into the
run folder, kept by the same rule as Ray Train's ``CheckpointConfig`` (the
best ``checkpoints_to_keep`` by ``eval.best_metric``, and the latest).
"""

from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from aide_ray.config import Config
from aide_ray.data.augment import flip_augment, no_flip
from aide_ray.data.shards import read_slices_local
from aide_ray.engine.backend import Backend, Split
from aide_ray.engine.loop import train_loop
from aide_ray.engine.report import TrainingOutcome, finish_run, summary_table
from aide_ray.engine.run_setup import RunSetup, prepare_run
from aide_ray.exceptions import ConfigError
from aide_ray.labels import LabelStore
from aide_ray.methods.registry import method_class
from aide_ray.runs.folder import checkpoint_dirs, checkpoint_metrics, checkpoint_name

__all__ = ["LocalBackend", "train_local", "epoch_rows"]


def _take(rows: Mapping[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {key: value[index] for key, value in rows.items()}


def epoch_rows(labelled: np.ndarray, unlabelled: np.ndarray, fraction: float, rng: np.random.Generator, *,
               shuffle: bool) -> np.ndarray:
    """The training rows of one epoch: every labelled row, plus unlabelled rows making up ``fraction`` of them.

    Args:
        labelled: indices of the labelled rows.
        unlabelled: indices of the unlabelled rows a semi-supervised method may use (empty otherwise).
        fraction: expected share of unlabelled rows among the epoch's rows, in [0, 1).
        shuffle: random order; False keeps labelled rows in index order, then the unlabelled draw.
    """
    extra = np.zeros(0, np.int64)
    if len(unlabelled) and fraction > 0:
        wanted = int(round(fraction / (1.0 - fraction) * max(len(labelled), 1)))
        extra = rng.choice(unlabelled, size=wanted, replace=wanted > len(unlabelled))
    rows = np.concatenate([labelled, extra]).astype(np.int64)
    return rng.permutation(rows) if shuffle else rows


class LocalBackend(Backend):
    """One process, in-memory rows, a plain label store; see the module docstring."""

    def __init__(self, setup: RunSetup, store: LabelStore, *, restore_from: str | Path | None = None) -> None:
        cfg = setup.cfg
        if cfg.use_gpu and not torch.cuda.is_available():
            raise ConfigError("use_gpu is true but torch sees no CUDA device")
        self.device = torch.device("cuda" if cfg.use_gpu else "cpu")
        self.labels = store
        self.has_val = setup.has_val
        self._cfg = cfg
        self._run_dir = Path(setup.run_dir)
        self._metric = setup.metric
        self._restore_from = restore_from
        self._train = read_slices_local(setup.shards, split=cfg.data.train_split)
        has_label = self._train["has_label"]
        self._labelled = np.flatnonzero(has_label)
        uses_unlabelled = method_class(cfg.method).uses_unlabelled
        self._unlabelled = np.flatnonzero(~has_label) if uses_unlabelled else np.zeros(0, np.int64)
        self._val = None
        if setup.has_val:
            val = read_slices_local(setup.shards, split=cfg.data.val_split)
            self._val = _take(val, np.flatnonzero(val["has_label"]))

    def prepare_net(self, net: nn.Module) -> nn.Module:
        return net.to(self.device)

    def batches(self, split: Split, batch_size: int, *, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        if split == "train":
            rng = np.random.default_rng([self._cfg.seed, epoch])
            order = epoch_rows(self._labelled, self._unlabelled, self._cfg.data.unlabelled_fraction, rng,
                               shuffle=self._cfg.data.shuffle)
            for start in range(0, len(order) - batch_size + 1, batch_size):  # incomplete last batch dropped
                batch = _take(self._train, order[start:start + batch_size])
                yield flip_augment(batch, rng) if self._cfg.data.flip_augment else no_flip(batch)
            return
        rows, order = (self._train, self._labelled) if split == "score" else (self._val, None)
        if rows is None:
            return
        order = np.arange(len(rows["sample_index"])) if order is None else order
        for start in range(0, len(order), batch_size):
            yield no_flip(_take(rows, order[start:start + batch_size]))

    @contextlib.contextmanager
    def checkpoint_to_restore(self) -> Iterator[Path | None]:
        yield None if self._restore_from is None else Path(self._restore_from)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:
            return
        final = self._run_dir / checkpoint_name()
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.copytree(checkpoint_dir, tmp)
        tmp.rename(final)  # a checkpoint folder appears complete or not at all
        self._prune()

    def _prune(self) -> None:
        """Keep the best ``run.checkpoints_to_keep`` checkpoints by the run's metric, and the latest."""
        dirs = checkpoint_dirs(self._run_dir)
        keep = self._cfg.run.checkpoints_to_keep
        if len(dirs) <= keep:
            return

        def score(path: str) -> float:
            value = checkpoint_metrics(path).get(self._metric)
            return value if value is not None and math.isfinite(value) else -math.inf

        # Best first; on ties the earlier checkpoint wins, as best_checkpoint() picks it.
        ranked = sorted(range(len(dirs)), key=lambda i: (-score(dirs[i]), i))
        kept = {dirs[i] for i in ranked[:keep]} | {dirs[-1]}
        for path in dirs:
            if path not in kept:
                shutil.rmtree(path, ignore_errors=True)


def train_local(cfg: Config, *, resume: str | Path | None = None) -> TrainingOutcome:
    """Train ``cfg`` in this process (CPU, or one GPU with ``use_gpu``) and return the finished run folder.

    Args:
        resume: a run folder to continue from its newest checkpoint that verifies, labels included.
    """
    setup = prepare_run(cfg, resume=resume)
    if not isinstance(setup.run_dir, Path):
        raise ConfigError(f"run.storage_path: the local backend writes to a local folder, got {setup.run_dir}")
    setup.run_dir.mkdir(parents=True, exist_ok=True)
    method = method_class(setup.cfg.method)
    store = LabelStore(int(setup.info["num_samples"]), method.label_slots, tuple(setup.info["shape"][1:]))
    # prepare_run chose the newest checkpoint that verifies (resume), or refused a folder with checkpoints.
    backend = LocalBackend(setup, store, restore_from=setup.restore_from)
    torch.set_num_threads(max(1, int(setup.cfg.cpus_per_worker)))
    print(f"Training {setup.cfg.method} on {setup.shards} in this process ({backend.device}); "
          f"run folder {setup.run_dir}", flush=True)
    train_loop(setup.cfg, setup.info, backend)
    outcome = finish_run(setup.run_dir, setup.cfg, setup.metric)
    print("\n" + summary_table(outcome.history), flush=True)
    print(f"\nRun folder: {outcome.run_dir}\n  best checkpoint: {outcome.best_checkpoint}", flush=True)
    if outcome.report is not None:
        print(f"  report page: {outcome.report}", flush=True)
    return outcome
