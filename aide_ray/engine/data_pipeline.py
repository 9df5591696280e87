"""Ray Data pipelines that feed the training workers.

Three datasets per run, all read from the Parquet shards:
- ``train``: the rows a method trains on, block order randomised on every
  execution (so every epoch sees a new order), decoded and flip-augmented in
  ``map_batches``; semi-supervised methods get unlabelled rows mixed in at the
  configured share;
- ``score``: the same rows unaugmented, for the epoch-end scoring pass that
  drives label correction and the training Dice;
- ``val``: the validation split, for the validation Dice.

The ``map_batches`` functions live in this import-safe module (no work at
import) because Ray ships them to worker processes by reference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from aide_ray.data.decode import decode_batch

__all__ = ["build_datasets", "flip_augment", "has_validation", "TRAIN_COLUMNS"]

# Columns the training path needs; the rest of the schema stays on disk.
TRAIN_COLUMNS = ["sample_index", "sample_id", "case_id", "image", "label", "clean_label", "label_kind",
                 "num_modalities", "height", "width", "slice_index"]


def flip_augment(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Random horizontal/vertical flips, the same for a row's image, label and clean label.

    Labels are flipped here, before the worker overlays label-store corrections,
    so corrections (stored in the unflipped frame) must be flipped the same
    way: the flip flags travel with the batch as ``flip_h``/``flip_v``.
    """
    rng = np.random.default_rng()
    n = len(batch["sample_index"])
    flip_h = rng.random(n) < 0.5
    flip_v = rng.random(n) < 0.5
    out = dict(batch)
    for key in ("image", "label", "clean_label"):
        arr = batch[key].copy()
        arr[flip_h] = arr[flip_h][..., ::-1]
        arr[flip_v] = arr[flip_v][..., ::-1, :]
        out[key] = arr
    out["flip_h"] = flip_h
    out["flip_v"] = flip_v
    return out


def _no_flip(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(batch["sample_index"])
    return {**batch, "flip_h": np.zeros(n, bool), "flip_v": np.zeros(n, bool)}


def _decoded(ds, max_retries: int, batch_size: int = 64):
    return ds.map_batches(decode_batch, batch_format="numpy", batch_size=batch_size, max_retries=max_retries)


def has_validation(val_split: str, counts: dict[str, Any]) -> bool:
    """Whether a run validates: the validation split is named and has labelled rows.

    Args:
        counts: ``dataset.json``'s ``counts.split_label_kind`` (split -> kind -> rows).
    """
    split = counts.get(val_split, {}) if val_split else {}
    return int(split.get("hq", 0)) + int(split.get("lq", 0)) > 0


def build_datasets(shards_dir: str, *, train_split: str, val_split: str, labelled_only: bool,
                   unlabelled_fraction: float, flip: bool, max_retries: int,
                   counts: dict[str, Any]) -> dict[str, Any]:
    """The ``train``, ``score`` and (if the split has rows) ``val`` datasets.

    Args:
        shards_dir: folder written by ``aide-ray ingest``.
        labelled_only: drop rows without a label (every non-semi-supervised method).
        unlabelled_fraction: semi-supervised methods: expected share of unlabelled
            rows in a batch; the unlabelled rows are resampled to reach it.
        counts: ``dataset.json``'s ``counts.split_label_kind`` (split -> kind -> rows).
    """
    from aide_ray.data.shards import read_slices

    def rows(split: str):
        return read_slices(shards_dir, split=split, columns=TRAIN_COLUMNS)

    split_counts = counts.get(train_split, {})
    n_labelled = int(split_counts.get("hq", 0)) + int(split_counts.get("lq", 0))
    n_unlabelled = int(split_counts.get("none", 0))
    base = rows(train_split)
    labelled = base.filter(expr="label_kind != 'none'") if n_unlabelled else base
    train = labelled
    if not labelled_only and n_unlabelled and unlabelled_fraction > 0:
        unlabelled = base.filter(expr="label_kind == 'none'")
        # Rows needed so that unlabelled / (labelled + unlabelled) == fraction.
        wanted = unlabelled_fraction / (1.0 - unlabelled_fraction) * max(n_labelled, 1)
        copies = max(1, math.ceil(wanted / n_unlabelled))
        pool = unlabelled.union(*([unlabelled] * (copies - 1))) if copies > 1 else unlabelled
        fraction = min(1.0, wanted / (n_unlabelled * copies))
        if fraction < 1.0:
            pool = pool.random_sample(fraction)
        train = labelled.union(pool)
    train = train.randomize_block_order()
    train = _decoded(train, max_retries)
    train = train.map_batches(flip_augment if flip else _no_flip, batch_format="numpy", max_retries=max_retries)
    score = _decoded(labelled, max_retries).map_batches(_no_flip, batch_format="numpy", max_retries=max_retries)
    datasets = {"train": train, "score": score}
    if has_validation(val_split, counts):
        val = _decoded(rows(val_split).filter(expr="label_kind != 'none'"), max_retries)
        datasets["val"] = val.map_batches(_no_flip, batch_format="numpy", max_retries=max_retries)
    return datasets
