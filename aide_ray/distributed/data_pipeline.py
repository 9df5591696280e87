"""Ray Data pipelines that feed the training workers.

Three datasets per run, all read from the Parquet shards and decoded in
``map_batches``:
- ``train``: the rows a method trains on, block order randomised on every
  execution (so every epoch sees a new order) and flip-augmented; semi-supervised
  methods get unlabelled rows mixed in at the configured share;
- ``score``: the same rows unaugmented, for the epoch-end scoring pass that
  drives label correction and the training Dice;
- ``val``: the validation split, for the validation Dice.

When the decoded rows fit in a quarter of the object store they are decoded
once per run and cached there in blocks of 32 rows: an epoch then only reorders
blocks and flips, instead of re-listing files, re-reading Parquet and
re-decoding (which cost every epoch 10 s of start-up on our machines, see
docs/performance.md). That one-off decode is a run's start-up, so its splits
branch from one Parquet read planned once on the driver (no listing or footer
actors in its executions) and the executions that materialise them run
concurrently, not one after the other. Larger datasets stream from Parquet every epoch, with
nothing that waits for the whole epoch: the shard files are listed once per
run and read in a new order every epoch (``shuffle="files"``) instead of
reordering decoded blocks (``randomize_block_order`` is an all-to-all barrier:
the first batch would wait until the whole epoch was read and decoded, spilled
to disk when it does not fit the object store), and the workers prefetch more
batches (docs/performance.md, "Streaming at scale").

The ``map_batches`` functions live in this import-safe module (no work at
import) because Ray ships them to worker processes by reference.
"""

from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from aide_ray.data.augment import flip_augment, no_flip
from aide_ray.data.decode import decode_batch
from aide_ray.data.label_kinds import FULL_MASK_KINDS, labelled_rows
from aide_ray.distributed.shard_reader import read_slices, read_splits
from aide_ray.engine.run_setup import has_validation

__all__ = ["build_datasets", "cache_fits", "decoded_bytes", "iter_options", "shuffle_buffer_rows", "use_cache",
           "TRAIN_COLUMNS"]

# Decoded rows are cached in the object store when they take at most this share
# of it (the rest stays for Ray Data's own blocks, checkpoints and the label store).
CACHE_SHARE_OF_OBJECT_STORE = 0.25
CACHE_BLOCK_ROWS = 32
ROW_OVERHEAD_BYTES = 256  # ids, flags and Arrow/numpy bookkeeping per row, a generous bound
# Batches a worker's iterator fetches ahead: cached blocks already sit in the object store; streamed
# blocks come from read tasks (possibly on another node), so a few more hide their latency.
PREFETCH_BATCHES = 1
STREAMING_PREFETCH_BATCHES = 4

# Columns the training path needs; the rest of the schema stays on disk.
TRAIN_COLUMNS = ["sample_index", "sample_id", "case_id", "image", "label", "clean_label", "label_kind",
                 "num_modalities", "height", "width", "slice_index"]


def shuffle_buffer_rows(batch_size: int) -> int:
    """Rows a worker's local shuffle buffer holds: block-order randomisation alone keeps each
    block's rows together, so every epoch would repeat the same batches."""
    return max(8 * batch_size, 64)


def iter_options(batch_size: int, *, train: bool, shuffle: bool, streaming: bool) -> dict[str, Any]:
    """``iter_batches`` keyword arguments of a worker's pass: numpy batches (rows carry strings, and
    label overlays happen in numpy), full batches and the local shuffle buffer for the train pass."""
    return {"batch_size": batch_size, "batch_format": "numpy", "drop_last": train,
            "prefetch_batches": STREAMING_PREFETCH_BATCHES if streaming else PREFETCH_BATCHES,
            "local_shuffle_buffer_size": shuffle_buffer_rows(batch_size) if train and shuffle else None}


def _decoded(ds, max_retries: int, batch_size: int = 64):
    return _map(ds, decode_batch, max_retries, batch_size=batch_size)


def _map(ds, fn, max_retries: int, **kwargs):
    """``ds.map_batches(fn)`` in numpy format with ``max_retries`` task retries.

    A worker that dies inside a Ray Data task is otherwise retried forever. Ray 2.60
    takes ``max_retries`` only as a remote argument and warns that this form goes
    away in 2.64; the warning asks nothing of our users, so it is not shown.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        return ds.map_batches(fn, batch_format="numpy", max_retries=max_retries, **kwargs)


def decoded_bytes(shape: tuple[int, int, int] | list[int], rows: int) -> int:
    """Object-store bytes of ``rows`` decoded slices of ``shape`` (M, H, W): float32 image, two uint8 masks, ids."""
    m, h, w = (int(v) for v in shape)
    return rows * (4 * m * h * w + 2 * h * w + ROW_OVERHEAD_BYTES)


def cache_fits(nbytes: int) -> bool:
    """Whether ``nbytes`` of decoded rows fit in the share of the cluster's object store we allow for them."""
    store = float(ray.cluster_resources().get("object_store_memory", 0.0))
    return nbytes <= CACHE_SHARE_OF_OBJECT_STORE * store


def _row_counts(info: dict[str, Any], train_split: str, val_split: str, labelled_only: bool,
                unlabelled_fraction: float) -> tuple[int, int, bool, int]:
    """(labelled train rows, unlabelled train rows, whether they are used, validation rows)."""
    counts = info["counts"]["split_label_kind"]
    split_counts = counts.get(train_split, {})
    n_unlabelled = int(split_counts.get("none", 0))
    n_val = labelled_rows(counts[val_split], FULL_MASK_KINDS) if has_validation(val_split, counts) else 0
    use_unlabelled = not labelled_only and n_unlabelled > 0 and unlabelled_fraction > 0
    return labelled_rows(split_counts), n_unlabelled, use_unlabelled, n_val


def use_cache(info: dict[str, Any], *, train_split: str, val_split: str, labelled_only: bool,
              unlabelled_fraction: float) -> bool:
    """Whether :func:`build_datasets` caches the decoded rows (they fit :func:`cache_fits`) or streams them."""
    n_labelled, n_unlabelled, use_unlabelled, n_val = _row_counts(info, train_split, val_split, labelled_only,
                                                                  unlabelled_fraction)
    return cache_fits(decoded_bytes(info["shape"], n_labelled + n_val + (n_unlabelled if use_unlabelled else 0)))


def build_datasets(shards_dir: str, *, train_split: str, val_split: str, labelled_only: bool,
                   unlabelled_fraction: float, flip: bool, max_retries: int,
                   info: dict[str, Any], cache: bool | None = None, shuffle: bool = True) -> dict[str, Any]:
    """The ``train``, ``score`` and (if the split has rows) ``val`` datasets.

    Args:
        shards_dir: folder written by ``aide-ray ingest``.
        labelled_only: drop rows without a label (every non-semi-supervised method).
        unlabelled_fraction: semi-supervised methods: expected share of unlabelled
            rows in a batch; the unlabelled rows are resampled to reach it.
        info: the shards' ``dataset.json`` (row counts per split and kind, slice shape).
        cache: decode once and keep the decoded rows in the object store (every
            epoch then only reorders and flips them); None: when they take at most
            ``CACHE_SHARE_OF_OBJECT_STORE`` of the cluster's object store.
        shuffle: a new block order every epoch (streaming: a new order of the shard
            files); False keeps the rows in sample order (with one worker and no local
            shuffle buffer, the local backend's order).
    """
    n_labelled, n_unlabelled, use_unlabelled, n_val = _row_counts(info, train_split, val_split, labelled_only,
                                                                  unlabelled_fraction)
    validate = n_val > 0
    if cache is None:
        cache = use_cache(info, train_split=train_split, val_split=val_split, labelled_only=labelled_only,
                          unlabelled_fraction=unlabelled_fraction)

    # Cached: the splits are branches of one read planned once, and their one-off decodes run concurrently.
    sources = read_splits(shards_dir, [train_split] + ([val_split] if validate else []),
                          columns=TRAIN_COLUMNS) if cache else {}

    def decoded(split: str, kind_filter: str | None, rows: int, shuffled: bool = False):
        if cache:
            ds = sources[split]
        else:  # executed every epoch: list the files once; shuffle them, not the decoded blocks
            ds = read_slices(shards_dir, split=split, columns=TRAIN_COLUMNS, plan_once=True, shuffle_files=shuffled)
        if kind_filter:
            ds = ds.filter(expr=kind_filter)
        ds = _decoded(ds, max_retries)
        if cache:
            # Small blocks, so that reordering blocks every epoch mixes rows of many cases.
            ds = ds.repartition(max(1, math.ceil(rows / CACHE_BLOCK_ROWS)))
        return ds

    labelled = decoded(train_split, "label_kind != 'none'" if n_unlabelled else None, n_labelled, shuffle)
    unlabelled = decoded(train_split, "label_kind == 'none'", n_unlabelled, shuffle) if use_unlabelled else None
    val = decoded(val_split, "label_kind != 'none'", n_val) if validate else None
    if cache:
        labelled, unlabelled, val = _materialize_concurrently(labelled, unlabelled, val)
    train = labelled
    if unlabelled is not None:
        # Rows needed so that unlabelled / (labelled + unlabelled) == fraction.
        wanted = unlabelled_fraction / (1.0 - unlabelled_fraction) * max(n_labelled, 1)
        copies = max(1, math.ceil(wanted / n_unlabelled))
        pool = unlabelled.union(*([unlabelled] * (copies - 1))) if copies > 1 else unlabelled
        fraction = min(1.0, wanted / (n_unlabelled * copies))
        if fraction < 1.0:
            pool = pool.random_sample(fraction)
        train = labelled.union(pool)
    if shuffle and cache:
        train = train.randomize_block_order()
    train = _map(train, flip_augment if flip else no_flip, max_retries)
    datasets = {"train": train, "score": _map(labelled, no_flip, max_retries)}
    if val is not None:
        datasets["val"] = _map(val, no_flip, max_retries)
    return datasets


def _materialize_concurrently(*datasets: Any) -> list[Any]:
    """``ds.materialize()`` of each dataset (None stays None), the executions running at the same time.

    Ray Data has no execution with more than one output dataset, and ``materialize()`` blocks
    until its execution ends; run from one thread each, the executions (each with its own
    streaming executor) overlap their start-up and their tasks instead of adding them up.
    """
    todo = [ds for ds in datasets if ds is not None]
    if len(todo) < 2:
        done = [ds.materialize() for ds in todo]
    else:
        with ThreadPoolExecutor(max_workers=len(todo), thread_name_prefix="aide-ray-cache") as pool:
            done = list(pool.map(lambda ds: ds.materialize(), todo))
    results = iter(done)
    return [None if ds is None else next(results) for ds in datasets]
