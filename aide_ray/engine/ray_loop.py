"""The per-worker training loop run by Ray Train's ``TorchTrainer``.

Each worker: builds the method's nets (DDP through ``prepare_model``), streams
its shard of the ``train`` dataset and steps the method; then, every epoch,
one pass over its ``score`` shard scores each net against its current labels
(training Dice, and label-correction candidates on update epochs) and one pass
over its ``val`` shard measures the ensemble's validation Dice. Corrections go
through the label-store actor: each worker reports only its local lowest-k
candidates, the store picks the global lowest-R per net, and the workers
holding the winners commit their predictions (crossed: net1's prediction
becomes net2's label). Rank 0 writes the checkpoint, which includes the label
store's snapshot so that a resumed or restarted run sees exactly the labels of
the checkpoint it resumes from.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from aide_ray.config import Config, from_dict
from aide_ray.engine.checkpoint import LABEL_STORE_FILE, init_nets_from, load_state, save_checkpoint
from aide_ray.engine.data_pipeline import shuffle_buffer_rows
from aide_ray.engine.label_store import LabelCache, encode_differences
from aide_ray.engine.step import correction_candidates, ensemble_probs, make_optimizers, train_one_step
from aide_ray.methods.base import Batch, Method
from aide_ray.methods.correction import (correction_count, eligible_mask, has_foreground, should_update,
                                         target_slot)
from aide_ray.methods.registry import method_class

__all__ = ["train_loop_per_worker", "HISTORY_FILE", "SCORES_FILE", "SAMPLES_FILE", "FAIL_AT_KEY"]

HISTORY_FILE = "metrics.csv"
SCORES_FILE = "train_scores.csv"
SAMPLES_FILE = "correction_samples.npz"
FAIL_AT_KEY = "_fail_at"  # test hook: {"epoch", "step", "rank", "marker"}; dies once
PANEL_SAMPLES = 8  # label-correction panels kept for figures
SCORE_SAMPLES_CAP = 4096  # samples per epoch kept in train_scores.csv (for the Dice scatter)


# --------------------------------------------------------------------------- batches

def _current_labels(cache: LabelCache, slots: int, source: np.ndarray, sample_index: np.ndarray,
                    flip_h: np.ndarray, flip_v: np.ndarray) -> np.ndarray:
    """(B, S, H, W) current labels: source with the store's corrections, in the batch's flipped frame.

    Corrections are stored in the unflipped frame, so rows are unflipped, overlaid, flipped back.
    """

    def flip(arr: np.ndarray) -> np.ndarray:
        arr = arr.copy()
        arr[flip_h] = arr[flip_h][..., ::-1]
        arr[flip_v] = arr[flip_v][..., ::-1, :]
        return arr

    if cache.version == 0:
        return np.repeat(source[:, None], slots, axis=1)
    unflipped = flip(source)
    return np.stack([flip(cache.current(s, sample_index, unflipped)) for s in range(slots)], axis=1)


def _to_batch(raw: dict[str, np.ndarray], cache: LabelCache, slots: int, device: torch.device) -> Batch:
    labels = _current_labels(cache, slots, raw["label"], raw["sample_index"], raw["flip_h"], raw["flip_v"])
    batch = Batch(
        image=torch.from_numpy(np.ascontiguousarray(raw["image"], dtype=np.float32)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        labelled=torch.from_numpy(raw["has_label"].astype(bool)),
        hq=torch.from_numpy(raw["hq"].astype(bool)),
        sample_index=torch.from_numpy(raw["sample_index"].astype(np.int64)),
    )
    return batch.to(device)


def _batches(shard, batch_size: int, *, drop_last: bool, shuffle_rows: int | None = None):
    # iter_batches (numpy) rather than iter_torch_batches: rows carry strings
    # (sample_id, case_id) and label overlays happen in numpy before tensors are made.
    return shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=drop_last,
                              prefetch_batches=1, local_shuffle_buffer_size=shuffle_rows)


# --------------------------------------------------------------------------- collectives

def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(obj: Any) -> list[Any]:
    rank, world = _world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _barrier() -> None:
    if _world()[1] > 1:
        dist.barrier()


# --------------------------------------------------------------------------- epoch passes

class _LowestK:
    """A worker's lowest-k correction candidates of one scoring slot (bounded memory)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.index = np.zeros(0, np.int64)
        self.score = np.zeros(0, np.float32)
        self.pred = np.zeros((0, 0, 0), np.uint8)
        self.source = np.zeros((0, 0, 0), np.uint8)

    def add(self, index: np.ndarray, score: np.ndarray, pred: np.ndarray, source: np.ndarray) -> None:
        if self.k == 0 or len(index) == 0:
            return
        if len(self.index) == 0:
            self.pred = np.zeros((0, *pred.shape[1:]), np.uint8)
            self.source = np.zeros((0, *source.shape[1:]), np.uint8)
        index = np.concatenate([self.index, index])
        score = np.concatenate([self.score, score.astype(np.float32)])
        pred = np.concatenate([self.pred, pred])
        source = np.concatenate([self.source, source])
        keep = np.lexsort((index, score))[: self.k]
        self.index, self.score, self.pred, self.source = index[keep], score[keep], pred[keep], source[keep]


def _score_pass(method: Method, nets, shard, cfg: Config, cache: LabelCache, device, k_local: int,
                keep_panels: bool) -> dict[str, Any]:
    """Per-sample Dice of each net against its current label; lowest-k candidates per slot."""
    slots = method.label_slots
    dice_sum = np.zeros(slots)
    count = 0
    candidates = [_LowestK(k_local) for _ in range(slots)]
    score_rows: list[tuple] = []
    panels: dict[str, list] = defaultdict(list)
    for raw in _batches(shard, cfg.batch_size, drop_last=False):
        batch = _to_batch(raw, cache, slots, device)
        results = correction_candidates(method, nets, batch, largest_component=cfg.aide.largest_component)
        labelled = raw["has_label"].astype(bool)
        eligible = eligible_mask(labelled, raw["hq"].astype(bool), cfg.aide.correct_hq)
        current = batch.labels.cpu().numpy().astype(np.uint8)
        clean = raw["clean_label"]
        has_clean = raw["has_clean_label"].astype(bool)
        for slot, (dice, pred) in enumerate(results):
            dice_sum[slot] += float(np.sum(dice[labelled]))
            candidates[slot].add(raw["sample_index"][eligible], dice[eligible], pred[eligible],
                                 raw["label"][eligible])
            for i in np.flatnonzero(has_clean & labelled):
                if raw["sample_index"][i] < SCORE_SAMPLES_CAP:
                    label_vs_clean = _dice(current[i, slot], clean[i])
                    score_rows.append((int(raw["sample_index"][i]), slot, float(dice[i]), label_vs_clean))
        count += int(labelled.sum())
        if keep_panels:
            for i in np.flatnonzero(has_clean & ~raw["hq"].astype(bool)):
                if len(panels["sample_index"]) >= PANEL_SAMPLES:
                    break
                panels["sample_index"].append(int(raw["sample_index"][i]))
                panels["sample_id"].append(str(raw["sample_id"][i]))
                panels["image"].append(raw["image"][i])
                panels["clean"].append(clean[i])
                panels["noisy"].append(raw["label"][i])
                for slot in range(slots):
                    panels[f"slot{slot}"].append(current[i, slot])
    return {"dice_sum": dice_sum, "count": count, "candidates": candidates, "score_rows": score_rows,
            "panels": panels}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def _val_pass(method: Method, nets, shard, cfg: Config, device) -> dict[str, np.ndarray]:
    """Per case: (intersection, predicted, reference) voxel counts of the ensemble's foreground."""
    counts: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3, np.int64))
    with torch.no_grad():
        for raw in _batches(shard, cfg.batch_size, drop_last=False):
            image = torch.from_numpy(np.ascontiguousarray(raw["image"], dtype=np.float32)).to(device)
            pred = ensemble_probs(nets, method.eval_nets, image).argmax(1).cpu().numpy() > 0
            ref = raw["label"] > 0
            for i, case in enumerate(raw["case_id"]):
                counts[str(case)] += (np.logical_and(pred[i], ref[i]).sum(), pred[i].sum(), ref[i].sum())
    return dict(counts)


def _case_dice(gathered: list[dict[str, np.ndarray]]) -> float:
    total: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3, np.int64))
    for part in gathered:
        for case, c in part.items():
            total[case] += c
    if not total:
        return float("nan")
    scores = [1.0 if c[1] + c[2] == 0 else 2.0 * c[0] / (c[1] + c[2]) for c in total.values()]
    return float(np.mean(scores))


# --------------------------------------------------------------------------- checkpoints

def _restore(checkpoint, nets, optimizers, schedulers, store, rank: int) -> tuple[int, list[dict], list[tuple]]:
    with checkpoint.as_directory() as folder:
        state = load_state(folder)
        for name, net in nets.items():
            getattr(net, "module", net).load_state_dict(state["nets"][name])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sch in schedulers.items():
            sch.load_state_dict(state["schedulers"][name])
        history = pd.read_csv(Path(folder) / HISTORY_FILE).to_dict("records") if (Path(folder) / HISTORY_FILE).is_file() else []
        scores_path = Path(folder) / SCORES_FILE
        scores = [tuple(r) for r in pd.read_csv(scores_path).itertuples(index=False)] if scores_path.is_file() else []
        if rank == 0:
            snapshot = (Path(folder) / LABEL_STORE_FILE).read_bytes()
            import ray

            ray.get(store.load_snapshot_bytes.remote(snapshot))
    return int(state["epoch"]) + 1, history, scores


def _write_checkpoint(folder: Path, *, cfg, method, in_channels, epoch, nets, optimizers, schedulers, store,
                      dataset_info, metrics, history, scores, panels) -> None:
    import ray

    save_checkpoint(folder, config=cfg, in_channels=in_channels, epoch=epoch, nets=nets,
                    optimizers=optimizers, schedulers=schedulers,
                    label_store_snapshot=ray.get(store.snapshot_bytes.remote()),
                    dataset_info=dataset_info, metrics=metrics)
    pd.DataFrame(history).to_csv(folder / HISTORY_FILE, index=False)
    pd.DataFrame(scores, columns=["epoch", "sample_index", "slot", "dice_pred_vs_label",
                                  "dice_label_vs_clean"]).to_csv(folder / SCORES_FILE, index=False)
    if panels.get("sample_index"):
        arrays = {
            "image": np.stack(panels["image"]),
            "clean": np.stack(panels["clean"]),
            "has_clean": np.ones(len(panels["clean"]), bool),
            "noisy": np.stack(panels["noisy"]),
            "sample_id": np.array(panels["sample_id"]),
            "sample_index": np.array(panels["sample_index"]),
        }
        for slot in range(method.label_slots):
            arrays[f"net{slot + 1}"] = np.stack(panels[f"slot{slot}"])
        if method.label_slots == 1:
            arrays["net2"] = arrays["net1"]
        np.savez_compressed(folder / SAMPLES_FILE, **arrays)


# --------------------------------------------------------------------------- the loop

def _refresh(cache: LabelCache, store) -> None:
    """Bring the worker's label cache to the store's version with only the changes it lacks.

    A store restored from a snapshot (actor restart after a crash) starts a new
    history that old caches cannot extend: such a cache starts over from version 0.
    """
    import ray

    try:
        cache.apply(ray.get(store.changes_since.remote(cache.version)))
    except RuntimeError:
        cache.reset()
        cache.apply(ray.get(store.changes_since.remote(0)))


def _progress_line(epoch: int, epochs: int, m: dict[str, float], method: Method) -> str:
    nets = " ".join(f"{name} {m[f'train_dice_{name}']:.3f}" for name in method.net_names[: method.label_slots])
    relabelled = sum(m[f"relabelled_{name}"] for name in method.net_names[: method.label_slots])
    return (f"[aide_ray] epoch {epoch + 1}/{epochs}: loss {m['loss']:.4f} | train Dice {nets} | "
            f"val Dice {m['val_dice']:.3f} | relabelled {relabelled} | {m['seconds']:.1f} s, "
            f"{m['slices_per_s']:.1f} slices/s")


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker.

    ``loop_config`` keys: ``config`` (Config.to_dict()), ``dataset_info``
    (dataset.json), ``label_store`` (actor handle), ``eligible`` (eligible
    training samples for correction), ``torch_threads``; optional ``_fail_at``.
    """
    import ray.train
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    torch.set_num_threads(int(loop_config["torch_threads"]))
    cfg: Config = from_dict(loop_config["config"], source="train_loop_config")
    info = loop_config["dataset_info"]
    store = loop_config["label_store"]
    fail_at = loop_config.get(FAIL_AT_KEY)
    rank, world = _world()
    device = get_device()

    in_channels = int(info["shape"][0])
    method = method_class(cfg.method)(cfg, in_channels)
    torch.manual_seed(cfg.seed)
    nets = method.build_nets()
    if cfg.model.init_from:
        init_nets_from(nets, cfg.model.init_from)
    nets = {name: prepare_model(net) if name in method.trained_nets else net.to(device)
            for name, net in nets.items()}
    optimizers, schedulers = make_optimizers(cfg, nets, method.trained_nets)

    start_epoch, history, scores = 0, [], []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        start_epoch, history, scores = _restore(checkpoint, nets, optimizers, schedulers, store, rank)
    _barrier()
    cache = LabelCache(int(info["num_samples"]), method.label_slots, tuple(info["shape"][1:]))
    cache.apply(ray.get(store.changes_since.remote(0)))

    n_eligible = int(loop_config["eligible"])
    k_global = correction_count(cfg.aide.update_ratio, n_eligible)
    train_shard = ray.train.get_dataset_shard("train")
    score_shard = ray.train.get_dataset_shard("score")
    val_shard = ray.train.get_dataset_shard("val") if loop_config["has_val"] else None

    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        for net in nets.values():
            net.train()
        sums: dict[str, float] = defaultdict(float)
        steps = slices = corrected_rows = 0
        version_at_start = cache.version
        data_wait = 0.0
        batches = iter(_batches(train_shard, cfg.batch_size, drop_last=True,
                                shuffle_rows=shuffle_buffer_rows(cfg.batch_size)))
        for step in itertools.count():
            waited = time.perf_counter()
            raw = next(batches, None)
            data_wait += time.perf_counter() - waited
            if raw is None:
                break
            if fail_at and (epoch, step, rank) == (fail_at["epoch"], fail_at["step"], fail_at["rank"]) \
                    and not os.path.exists(fail_at["marker"]):
                Path(fail_at["marker"]).write_text(f"killed at epoch {epoch} step {step}\n")
                os._exit(1)
            batch = _to_batch(raw, cache, method.label_slots, device)
            # Rows whose current label differs from the source: proof that corrections reach the batches.
            source = torch.from_numpy(raw["label"].astype(np.int64)).to(device)
            corrected_rows += int((batch.labels != source[:, None]).flatten(1).any(1).sum())
            for key, value in train_one_step(method, nets, optimizers, batch, epoch).items():
                sums[key] += value
            steps += 1
            slices += len(batch)
        for sch in schedulers.values():
            sch.step()
        train_seconds = time.perf_counter() - started

        update = method.corrects_labels and should_update(epoch, cfg.aide.warmup_epochs, cfg.aide.update_every)
        scored = _score_pass(method, nets, score_shard, cfg, cache, device, k_global if update else 0,
                             keep_panels=(rank == 0 and epoch == cfg.epochs - 1))
        changed = [0] * method.label_slots
        if update and k_global > 0:
            for slot, cand in enumerate(scored["candidates"]):
                ray.get(store.report_candidates.remote(epoch, slot, cand.index, cand.score))
            _barrier()
            for slot, cand in enumerate(scored["candidates"]):
                winners = ray.get(store.select.remote(epoch, slot, k_global))
                # An empty prediction never replaces a label (reference: `if save_data.sum() > 0`);
                # the sample still counts towards k.
                mine = np.isin(cand.index, winners) & has_foreground(cand.pred)
                # Encoded here, so only ~100 bytes per label travel to the actor instead of two masks.
                packed = encode_differences(cand.pred[mine], cand.source[mine])
                ray.get(store.commit_encoded.remote(epoch, target_slot(slot), cand.index[mine], packed))
                changed[target_slot(slot)] = int(sum(p for p in _gather(int(mine.sum()))))
            _barrier()
        _refresh(cache, store)

        parts = _gather({"dice_sum": scored["dice_sum"], "count": scored["count"], "steps": steps,
                         "corrected_rows": corrected_rows,
                         "slices": slices, "sums": dict(sums), "rows": scored["score_rows"],
                         "val": _val_pass(method, nets, val_shard, cfg, device) if val_shard else {}})
        elapsed = time.perf_counter() - started
        total_count = max(sum(p["count"] for p in parts), 1)
        total_steps = max(sum(p["steps"] for p in parts), 1)
        metrics: dict[str, float] = {"epoch": epoch}
        for key in sorted({k for p in parts for k in p["sums"]}):
            metrics[key] = sum(p["sums"].get(key, 0.0) for p in parts) / total_steps
        dice = sum(p["dice_sum"] for p in parts) / total_count
        for slot in range(method.label_slots):
            metrics[f"train_dice_{method.net_names[slot]}"] = float(dice[slot])
        metrics["train_dice"] = float(np.mean(dice))
        metrics["val_dice"] = _case_dice([p["val"] for p in parts]) if val_shard else float("nan")
        store_stats = ray.get(store.stats.remote())
        for slot in range(method.label_slots):
            metrics[f"relabelled_{method.net_names[slot]}"] = changed[slot]
            metrics[f"corrected_{method.net_names[slot]}"] = int(store_stats["corrected"][slot])
        metrics["label_update"] = bool(update)
        metrics["label_version_at_start"] = version_at_start
        metrics["rows_with_corrected_label"] = sum(p["corrected_rows"] for p in parts)
        metrics["seconds"] = elapsed
        metrics["train_seconds"] = train_seconds
        metrics["data_wait_seconds"] = data_wait  # rank 0's; time its training pass waited for batches
        metrics["slices_per_s"] = sum(p["slices"] for p in parts) / max(train_seconds, 1e-9)
        metrics["lr"] = float(next(iter(optimizers.values())).param_groups[0]["lr"])
        history.append(metrics)
        scores.extend((epoch, *row) for p in parts for row in p["rows"])

        if rank == 0:
            print(_progress_line(epoch, cfg.epochs, metrics, method), flush=True)
            with tempfile.TemporaryDirectory(prefix="aide-ckpt-") as tmp:
                _write_checkpoint(Path(tmp), cfg=cfg, method=method, in_channels=in_channels, epoch=epoch,
                                  nets=nets, optimizers=optimizers, schedulers=schedulers, store=store,
                                  dataset_info=info, metrics=metrics, history=history, scores=scores,
                                  panels=scored["panels"])
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)
