"""Ray Data readers of the Parquet slice shards: the readers of the training pipelines and the epoch summary.

The shard layout (schema, ``dataset.json``, the pyarrow reader) lives in
:mod:`aide_ray.data.shards`, which stays free of Ray; this module is its Ray
Data side, used by the training pipelines
(:mod:`aide_ray.distributed.data_pipeline`) and ``aide-ray data-summary``.
:func:`_summary_batch` is a module-level function because Ray ships
``map_batches`` functions to worker processes by reference.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import ray.data
from ray.data.expressions import col

from aide_ray.data.decode import decode_batch
from aide_ray.data.shards import SCHEMA, check_split, load_dataset_info, shard_files
from aide_ray.exceptions import InputError
from aide_ray.label_values import UNANNOTATED

__all__ = ["read_slices", "read_splits", "summarize"]


@contextlib.contextmanager
def _planned_on_the_driver() -> Iterator[None]:
    """``read_parquet`` through Ray Data's V1 Parquet datasource while in this block.

    The V2 datasource (Ray 2.60's default, ``DataContext.use_datasource_v2``) lists the
    files and reads their footers again on every execution, in one listing task per
    path, each of which starts ``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS`` (32) footer-reading
    actors (``ray/data/_internal/datasource_v2/formats/parquet/footer_file_indexer.py``).
    V1 lists the files once, on the driver, when the dataset is created (and samples a few
    of them to size its blocks); an execution then only runs its read tasks. The flag is
    read by ``read_parquet`` itself, so it is set for that call only.
    """
    ctx = ray.data.DataContext.get_current()
    before = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    try:
        yield
    finally:
        ctx.use_datasource_v2 = before


def read_slices(path: str | os.PathLike, split: str | None = None, *,
                columns: Sequence[str] | None = None, plan_once: bool = False,
                shuffle_files: bool = False) -> ray.data.Dataset:
    """Stream slice rows with Ray Data (raw, undecoded columns of :data:`aide_ray.data.shards.SCHEMA`).

    Args:
        path: shards folder.
        split: keep only rows of this split (pushed down into the Parquet scan); None: all rows.
        columns: keep only these columns; None: all.
        plan_once: for a dataset executed every epoch (the streaming pipeline): list the
            shards once, here, instead of in every execution (:func:`_planned_on_the_driver`).
        shuffle_files: read the shard files in a new random order in every execution
            (``shuffle="files"``), a shuffle without a barrier (a worker's local shuffle
            buffer then mixes the rows of the files in flight).
    Returns:
        A lazy ``ray.data.Dataset``; decode with
        ``ds.map_batches(decode_batch, batch_format="numpy")``.
    Raises:
        InputError: not a shards folder, or a split that the dataset lacks.
    """
    info = load_dataset_info(path)
    check_split(split, info, path)
    _check_columns(columns)
    options = {"shuffle": "files"} if shuffle_files else {}
    with _planned_on_the_driver() if plan_once else contextlib.nullcontext():
        ds = ray.data.read_parquet(shard_files(path), **options)
    return _select(ds, split, columns)


def read_splits(path: str | os.PathLike, splits: Sequence[str], *,
                columns: Sequence[str] | None = None) -> dict[str, ray.data.Dataset]:
    """The rows of several splits as branches of one read, planned once (``plan_once`` of :func:`read_slices`).

    One :func:`read_slices` call per split would list the shards and sample their footers on
    the driver once per split, one after the other; here that happens once for all of them.
    Each branch is a lazy dataset like ``read_slices(path, split, columns=columns, plan_once=True)``:
    its split is filtered in the Parquet scan, so executing it reads the shards and keeps that
    split's rows. Branches of one read can be executed one after the other or concurrently.

    Args:
        path: shards folder.
        splits: the splits wanted (a split named twice gives one branch).
        columns: keep only these columns; None: all.
    Returns:
        Split -> lazy ``ray.data.Dataset`` of its raw rows.
    Raises:
        InputError: not a shards folder, or a split that the dataset lacks.
    """
    info = load_dataset_info(path)
    for split in splits:
        check_split(split, info, path)
    _check_columns(columns)
    with _planned_on_the_driver():
        ds = ray.data.read_parquet(shard_files(path))
    return {split: _select(ds, split, columns) for split in dict.fromkeys(splits)}


def _check_columns(columns: Sequence[str] | None) -> None:
    unknown = sorted(set(columns or ()) - set(SCHEMA.names))
    if unknown:
        raise InputError(f"columns must be among {SCHEMA.names}, got unknown {unknown}")


def _select(ds: ray.data.Dataset, split: str | None, columns: Sequence[str] | None) -> ray.data.Dataset:
    """``ds`` restricted to the rows of ``split`` (None: all) and to ``columns`` (None: all)."""
    if split is not None:
        ds = ds.filter(expr=col("split") == split)
    if columns is not None:
        ds = ds.select_columns(list(columns))
    return ds


def _foreground_pixels(labels: np.ndarray) -> np.ndarray:
    """(B,) int64: pixels of each (B, H, W) label that hold a foreground class (neither 0 nor unannotated)."""
    return ((labels > 0) & (labels != UNANNOTATED)).reshape(len(labels), -1).sum(axis=1, dtype=np.int64)


def _summary_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-row statistics of a raw batch (runs in Ray Data tasks)."""
    decoded = decode_batch(batch)
    pixels = decoded["label"].shape[1] * decoded["label"].shape[2] if len(decoded["label"]) else 0
    return {
        "split": np.asarray(batch["split"]).astype(str),
        "label_kind": np.asarray(batch["label_kind"]).astype(str),
        "has_label": decoded["has_label"],
        # Foreground pixels, not the sum of values: a scribble's unannotated pixels hold 255.
        "foreground": _foreground_pixels(decoded["label"]),
        "has_clean_label": decoded["has_clean_label"],
        "clean_foreground": decoded["clean_label"].reshape(len(decoded["clean_label"]), -1).sum(axis=1)
        .astype(np.int64),
        "pixels": np.full(len(decoded["label"]), pixels, dtype=np.int64),
        "image_mean": decoded["image"].reshape(len(decoded["image"]), -1).mean(axis=1).astype(np.float64),
    }


def summarize(shards_dir: str | os.PathLike, *, batch_size: int = 16) -> pd.DataFrame:
    """Stream one epoch through Ray Data and tabulate it.

    Uses the current Ray session (Ray Data starts one if none is running).

    Args:
        shards_dir: shards folder.
        batch_size: rows per batch streamed to the driver.
    Returns:
        One row per (split, label_kind) with columns ``split``, ``label_kind``,
        ``slices``, ``labelled``, ``foreground_fraction`` (mean over labelled
        slices), ``clean_foreground_fraction`` (over slices with a clean label),
        ``image_mean``; ``attrs`` holds ``shape`` [M, H, W], ``batches``,
        ``seconds`` and ``slices_per_s``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    info = load_dataset_info(shards_dir)
    ds = read_slices(shards_dir).map_batches(_summary_batch, batch_format="numpy")
    parts: list[pd.DataFrame] = []
    batches = 0
    start = time.perf_counter()
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        parts.append(pd.DataFrame({k: np.asarray(v) for k, v in batch.items()}))
        batches += 1
    seconds = time.perf_counter() - start
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[
        "split", "label_kind", "has_label", "foreground", "has_clean_label", "clean_foreground", "pixels",
        "image_mean"])
    out = []
    for (split, kind), g in rows.groupby(["split", "label_kind"], sort=True):
        lab, clean = g[g["has_label"]], g[g["has_clean_label"]]
        out.append({
            "split": split, "label_kind": kind, "slices": len(g), "labelled": len(lab),
            "foreground_fraction": float(lab["foreground"].sum() / lab["pixels"].sum()) if len(lab) else float("nan"),
            "clean_foreground_fraction": float(clean["clean_foreground"].sum() / clean["pixels"].sum())
            if len(clean) else float("nan"),
            "image_mean": float(g["image_mean"].mean()),
        })
    table = pd.DataFrame(out, columns=["split", "label_kind", "slices", "labelled", "foreground_fraction",
                                       "clean_foreground_fraction", "image_mean"])
    table.attrs.update(shape=list(info["shape"]), batches=batches, seconds=seconds,
                       slices_per_s=(len(rows) / seconds) if seconds > 0 else float("nan"))
    return table
