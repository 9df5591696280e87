"""One epoch, the same on every backend: train pass, scoring, label correction, validation, metrics row.

This is the only implementation of an epoch. The backend supplies the row
batches, the collectives and the label store; everything that decides what
a run computes and records (the step, the correction plan's execution, the
per-case validation Dice, the columns of ``metrics.csv``) is here, so a local
run and a Ray run of the same config write the same kind of run folder.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn
from torch.optim import Optimizer

from aide_ray.engine.backend import Backend
from aide_ray.engine.batches import corrected_rows, to_batch
from aide_ray.engine.relabel import Relabelled, carry_out
from aide_ray.engine.scoring import ScoreResult, case_dice, score_pass, val_pass
from aide_ray.engine.step import train_one_step
from aide_ray.labels import LabelCache
from aide_ray.labels.cache import EntryTable
from aide_ray.methods.base import Method

__all__ = ["TrainState", "EpochResult", "run_epoch", "label_digest"]


@dataclass
class TrainState:
    """Everything an epoch changes, owned by the loop.

    Attributes:
        method: the method instance.
        nets: name -> net (DDP-wrapped where trained on a multi-worker backend).
        optimizers, schedulers: one per trained net, of the current phase.
        cache: this worker's copy of the label store's corrections.
        kind_counts: the training split's rows per label kind (``dataset.json``).
        batch_size: rows per batch per worker.
        precision, channels_last: the step's arithmetic and memory format (``precision``, ``channels_last``).
    """

    method: Method
    nets: dict[str, nn.Module]
    optimizers: dict[str, Optimizer]
    schedulers: dict[str, Any]
    cache: LabelCache
    kind_counts: dict[str, int]
    batch_size: int
    precision: str = "fp32"
    channels_last: bool = False


@dataclass
class EpochResult:
    """An epoch's metrics row, its train_scores rows and (rank 0, when kept) its panels."""

    metrics: dict[str, Any]
    score_rows: list[tuple] = field(default_factory=list)
    scored: ScoreResult | None = None


def _refresh(cache: LabelCache, backend: Backend) -> None:
    """Bring the worker's cache to the store's version with only the changes it lacks.

    A store restored from a snapshot (actor restart after a crash) starts a new
    history that old caches cannot extend: such a cache starts over from version 0.
    """
    try:
        cache.apply(backend.labels.changes_since(cache.version))
    except RuntimeError:
        cache.reset()
        cache.apply(backend.labels.changes_since(0))


def label_digest(labels: EntryTable) -> int:
    """A 48-bit digest of the corrected labels a cache or store holds (every entry, with its slot and sample).

    Two workers with the same digest train on the same labels. 48 bits so that the
    value survives metrics.csv and a float column exactly.
    """
    digest = hashlib.blake2b(digest_size=6)
    for slot, index in zip(*np.nonzero(labels.entries != None)):  # noqa: E711 (element-wise on an object array)
        entry = labels.entries[slot, index]
        digest.update(struct.pack("<qqq", slot, index, len(entry)))
        digest.update(entry)
    return int.from_bytes(digest.digest(), "little")


def _train_pass(state: TrainState, backend: Backend, epoch: int) -> dict[str, Any]:
    method = state.method
    sums: dict[str, float] = defaultdict(float)
    steps = slices = corrected = 0
    data_wait = 0.0
    rows = iter(backend.batches("train", state.batch_size, epoch=epoch))
    while True:
        waited = time.perf_counter()
        raw = next(rows, None)
        data_wait += time.perf_counter() - waited
        if raw is None:
            break
        backend.before_step(epoch, steps)
        batch = to_batch(raw, state.cache, method.label_slots, backend.device)
        corrected += corrected_rows(batch, raw)
        for key, value in train_one_step(method, state.nets, state.optimizers, batch, epoch, precision=state.precision,
                                         channels_last=state.channels_last).items():
            sums[key] += value
        steps += 1
        slices += len(batch)
    return {"sums": dict(sums), "steps": steps, "slices": slices, "corrected_rows": corrected,
            "data_wait": data_wait}


def run_epoch(state: TrainState, backend: Backend, epoch: int, *, keep_panels: bool = False) -> EpochResult:
    """Train, score, correct (when the method's plan says so), validate; every worker calls it.

    Returns:
        The epoch's metrics row (identical on every worker), this worker's
        contribution to train_scores.csv and, on rank 0, the scoring result.
    """
    method = state.method
    started = time.perf_counter()
    version_at_start = state.cache.version
    digest_at_start = label_digest(state.cache)
    trained = _train_pass(state, backend, epoch)
    for scheduler in state.schedulers.values():
        scheduler.step()
    train_seconds = time.perf_counter() - started

    plan = method.correction_plan(epoch)
    ks = [0] * method.label_slots
    if plan is not None:
        n_eligible = plan.eligible_count(state.kind_counts)
        corrected = backend.labels.stats()["corrected"]
        ks = [plan.count(n_eligible, int(corrected[target])) for target in plan.targets]
    scored = score_pass(method, state.nets, backend.batches("score", state.batch_size, epoch=epoch), state.cache,
                        backend.device, plan=plan, k_local=max(ks), keep_panels=keep_panels and backend.rank == 0)
    relabelled = carry_out(plan, scored.candidates, backend, epoch, ks) if plan is not None \
        else Relabelled.none(method.label_slots)
    _refresh(state.cache, backend)
    val = val_pass(method, state.nets, backend.batches("val", state.batch_size, epoch=epoch), backend.device) \
        if backend.has_val else {}

    parts = backend.gather({"dice_sum": scored.dice_sum, "twin_dice_sum": scored.twin_dice_sum,
                            "count": scored.count, "val": val, "label_digest": digest_at_start, **trained})
    store_stats = backend.labels.stats()
    metrics = _metrics_row(method, epoch, parts, relabelled, store_stats, has_val=backend.has_val)
    metrics.update(
        label_update=plan is not None,
        label_version_at_start=version_at_start,
        # What every worker trains on: the digest of rank 0's labels, and how many workers' labels differ from it.
        label_digest_at_start=digest_at_start,
        label_digest_mismatch=sum(p["label_digest"] != parts[0]["label_digest"] for p in parts),
        staging_workers=relabelled.staging_workers,
        workers=len(parts),
        rows_with_corrected_label=sum(p["corrected_rows"] for p in parts),
        seconds=time.perf_counter() - started,
        train_seconds=train_seconds,
        data_wait_seconds=trained["data_wait"],  # this worker's time waiting for batches
        slices_per_s=sum(p["slices"] for p in parts) / max(train_seconds, 1e-9),
        lr=float(next(iter(state.optimizers.values())).param_groups[0]["lr"]),
        phase=method.phase(epoch).index,
    )
    return EpochResult(metrics=metrics, score_rows=[(epoch, *row) for row in scored.score_rows], scored=scored)


def _metrics_row(method: Method, epoch: int, parts: list[dict[str, Any]], relabelled: Relabelled,
                 store_stats: dict[str, Any], *, has_val: bool) -> dict[str, Any]:
    """The columns every method shares (docs/architecture.md), from every worker's part."""
    total_steps = max(sum(p["steps"] for p in parts), 1)
    total_count = max(sum(p["count"] for p in parts), 1)
    metrics: dict[str, Any] = {"epoch": epoch}
    for key in sorted({k for p in parts for k in p["sums"]}):
        metrics[key] = sum(p["sums"].get(key, 0.0) for p in parts) / total_steps
    dice = sum(p["dice_sum"] for p in parts) / total_count
    for slot in range(method.label_slots):
        metrics[f"train_dice_{method.net_names[slot]}"] = float(dice[slot])
    metrics["train_dice"] = float(np.mean(dice))
    if method.label_slots >= 2:
        metrics["twin_dice"] = sum(p["twin_dice_sum"] for p in parts) / total_count
    metrics["val_dice"] = case_dice([p["val"] for p in parts]) if has_val else float("nan")
    for slot in range(method.label_slots):
        name = method.net_names[slot]
        metrics[f"relabelled_{name}"] = int(relabelled.changed[slot])
        metrics[f"selected_{name}"] = int(relabelled.selected[slot])
        metrics[f"corrected_{name}"] = int(store_stats["corrected"][slot])
    return metrics

