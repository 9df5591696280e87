"""The training loop: one train function for every backend.

:func:`train_loop` builds the method and its nets, resumes from the
backend's checkpoint when there is one, runs :func:`~aide_ray.engine.epoch.run_epoch`
for every remaining epoch, starts fresh optimisers when the method enters a
new phase, and has rank 0 write each epoch's checkpoint (nets, optimisers,
schedulers, the label store's snapshot, the artifacts of the run folder)
before handing it to the backend. On Ray it is the body of every Train
worker; locally it runs in the calling process.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from aide_ray.config import Config
from aide_ray.engine.backend import Backend
from aide_ray.engine.epoch import EpochResult, TrainState, run_epoch
from aide_ray.engine.report import progress_line
from aide_ray.engine.scoring import gather_panels
from aide_ray.engine.step import check_precision, make_optimizers, to_channels_last
from aide_ray.labels import LabelCache
from aide_ray.methods.base import Method
from aide_ray.methods.registry import create_method
from aide_ray.nn.model_config import parse_init_from
from aide_ray.nn.modules import unwrap
from aide_ray.runs.checkpoint import init_nets_from, load_state, save_checkpoint
from aide_ray.runs.folder import HISTORY_FILE, LABEL_STORE_FILE, SAMPLES_FILE, SCORES_FILE

__all__ = ["train_loop", "SCORE_COLUMNS"]

SCORE_COLUMNS = ["epoch", "sample_index", "slot", "dice_pred_vs_label", "dice_label_vs_clean"]


def _build(cfg: Config, in_channels: int, backend: Backend) -> tuple[Method, dict[str, torch.nn.Module], list[str]]:
    """The method and its nets on the backend's device; also what ``model.init_from`` left at initialisation."""
    check_precision(cfg.precision, backend.device)
    method = create_method(cfg, in_channels)
    torch.manual_seed(cfg.seed)
    nets = method.build_nets()
    sources = parse_init_from(cfg.model.init_from, method.net_names)
    notes = [loaded.describe() for loaded in init_nets_from(nets, sources) if loaded.partial] if sources else []
    if cfg.channels_last:
        nets = {name: to_channels_last(net) for name, net in nets.items()}
    nets = {name: backend.prepare_net(net) if name in method.trained_nets else net.to(backend.device)
            for name, net in nets.items()}
    return method, nets, notes


def _restore(folder: Path, nets: dict[str, torch.nn.Module], backend: Backend) -> tuple[int, dict[str, Any],
                                                                                       list[dict], list[tuple]]:
    """Nets, label store (rank 0), history and scores of a checkpoint; returns (next epoch, state, history, scores)."""
    state = load_state(folder)
    for name, net in nets.items():
        unwrap(net).load_state_dict(state["nets"][name])
    history = pd.read_csv(folder / HISTORY_FILE).to_dict("records") if (folder / HISTORY_FILE).is_file() else []
    scores_path = folder / SCORES_FILE
    scores = [tuple(r) for r in pd.read_csv(scores_path).itertuples(index=False)] if scores_path.is_file() else []
    if backend.rank == 0:
        backend.labels.load_snapshot_bytes((folder / LABEL_STORE_FILE).read_bytes())
    return int(state["epoch"]) + 1, state, history, scores


def _optimizers(cfg: Config, method: Method, nets: dict[str, torch.nn.Module], epoch: int):
    return make_optimizers(cfg.optim, nets, method.trained_nets, lr=cfg.optim.lr * method.phase(epoch).lr_factor)


def _write_checkpoint(folder: Path, *, cfg: Config, state: TrainState, info: dict[str, Any], epoch: int,
                      backend: Backend, result: EpochResult, history: list[dict], scores: list[tuple]) -> None:
    """Artifacts first, then the state and ``files.json`` (written last: the checkpoint is complete)."""
    pd.DataFrame(history).to_csv(folder / HISTORY_FILE, index=False)
    pd.DataFrame(scores, columns=SCORE_COLUMNS).to_csv(folder / SCORES_FILE, index=False)
    panels = gather_panels(result.scored.panels, state.method.label_slots) if result.scored else None
    if panels is not None:
        np.savez_compressed(folder / SAMPLES_FILE, **panels)
    save_checkpoint(folder, config=cfg, in_channels=int(info["shape"][0]), epoch=epoch, nets=state.nets,
                    eval_nets=state.method.eval_nets, optimizers=state.optimizers, schedulers=state.schedulers,
                    label_store_snapshot=backend.labels.snapshot_bytes(), dataset_info=info,
                    metrics=result.metrics, run_id=cfg.run.name)


def train_loop(cfg: Config, info: dict[str, Any], backend: Backend, *, verbose: bool = True) -> list[dict]:
    """Train ``cfg`` on ``backend`` from its checkpoint (or from scratch) to ``cfg.epochs``.

    Args:
        cfg: the run's validated configuration.
        info: the shards' ``dataset.json``.
        backend: where to run (every worker calls this with its own backend).
        verbose: rank 0 prints one line per epoch.

    Returns:
        The metrics rows of every epoch (including restored ones).
    """
    in_channels = int(info["shape"][0])
    method, nets, init_notes = _build(cfg, in_channels, backend)
    start_epoch, restored, history, scores = 0, None, [], []
    with backend.checkpoint_to_restore() as folder:
        if folder is not None:
            start_epoch, restored, history, scores = _restore(Path(folder), nets, backend)
    if restored is None and backend.rank == 0 and verbose:
        for note in init_notes:  # a resumed run's nets come from its checkpoint instead
            backend.announce(note)
    optimizers, schedulers = _optimizers(cfg, method, nets, start_epoch)
    # Optimiser state carries over only within a phase; a new phase starts fresh optimisers.
    if restored is not None and method.phase(start_epoch - 1).index == method.phase(start_epoch).index:
        for name, opt in optimizers.items():
            opt.load_state_dict(restored["optimizers"][name])
        for name, sch in schedulers.items():
            sch.load_state_dict(restored["schedulers"][name])
    backend.barrier()  # rank 0 has restored the label store
    cache = LabelCache(int(info["num_samples"]), method.label_slots, tuple(info["shape"][1:]))
    cache.apply(backend.labels.changes_since(0))
    kind_counts = info["counts"]["split_label_kind"].get(cfg.data.train_split, {})
    state = TrainState(method=method, nets=nets, optimizers=optimizers, schedulers=schedulers, cache=cache,
                       kind_counts=kind_counts, batch_size=cfg.batch_size, precision=cfg.precision,
                       channels_last=cfg.channels_last)

    for epoch in range(start_epoch, cfg.epochs):
        if epoch > start_epoch and method.phase(epoch).index != method.phase(epoch - 1).index:
            state.optimizers, state.schedulers = _optimizers(cfg, method, nets, epoch)
        result = run_epoch(state, backend, epoch, keep_panels=epoch == cfg.epochs - 1)
        history.append(result.metrics)
        scores.extend(row for part in backend.gather(result.score_rows) for row in part)
        if backend.rank == 0:
            if verbose:
                backend.announce(progress_line(epoch, cfg.epochs, result.metrics, method))
            with tempfile.TemporaryDirectory(prefix="aide-ckpt-") as tmp:
                _write_checkpoint(Path(tmp), cfg=cfg, state=state, info=info, epoch=epoch, backend=backend,
                                  result=result, history=history, scores=scores)
                backend.report(result.metrics, Path(tmp))
        else:
            backend.report(result.metrics, None)
    return history
